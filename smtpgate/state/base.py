"""The state store's contract: what the stateful checks may remember, and how it expires.

Five primitives serve every check of issue 6; none of them knows a check:

- **Sliding windows** (``hit``, ``count``, ``reset``): "how many events under this key in
  the last ``window_s`` seconds". Rate limits per IP and per sender, failed AUTH per IP and
  per user, invalid RCPTs per IP, outgoing quotas per hour and per day.
- **Leases** (``acquire``, ``renew``, ``release``, ``leases``): "at most ``limit`` holders of
  this key at once", counted across every gate node sharing the store. A lease lapses
  ``ttl_s`` after it was taken or last renewed, so a node that dies does not leak its
  connections for longer than that. ``ip_concurrency_limit``.
- **Values with a lifetime** (``get``, ``set``, ``get_or_set``, ``delete``): lockouts,
  the callout cache (positive and negative answers with their own TTLs), greylist
  triplets (``get_or_set`` records the first attempt atomically, so two nodes that see the
  same triplet at once agree on when it was first seen), the installation's learning
  window start, hashed credentials (``ttl_s=None``).
- **Counters with a lifetime** (``incr``): reputation of a subnet (passed retries, ham
  delivered, authenticated sessions), forgotten ``ttl_s`` after its last increment.

Time. Every timed operation takes ``now`` (seconds since the epoch, float); left out, the
store asks its ``clock`` (given at construction, ``time.time`` by default), so
``get(key)`` and ``set(key, value, ttl_s)`` are the cache ``destination_verification``
already expects. Tests inject a clock and never sleep; gate nodes sharing one Redis must keep their clocks in step
(NTP), as their windows and leases are compared on those clocks.

Expiry. An entry written at ``now`` with ``ttl_s`` is visible while ``t < now + ttl_s``
and gone from ``now + ttl_s`` on, for every backend, whatever the backend does to
reclaim the space (SQLite purges rows later, Redis drops keys on its own clock).

Windows are bucketed: a window is cut into ``WINDOW_BUCKETS`` buckets of
``window_s / WINDOW_BUCKETS`` seconds and a key keeps one count per bucket, so a key
costs at most ``WINDOW_BUCKETS`` small records however fast it is hit (an exact log of
events would cost one record per event, and a flooding client would own the store). The
price is resolution: an event is never counted longer than ``window_s`` after it
happened, and stops counting at most one bucket (1/60 of the window) early, so a limit
is never stricter than configured. Use one ``window_s`` per key (put it in the key:
``rate:ip:60:192.0.2.1``): the buckets depend on it.

Keys are str; values are bytes, str (stored UTF-8) or int (stored as its decimal
text); ``get`` returns bytes. A backend that cannot answer (Redis down, SQLite locked
past its busy timeout, disk error) raises ``StateUnavailable``, which the gate answers
with ``internal_error`` (451 4.3.0): a sender retries, nothing is accepted unchecked.
"""
from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

# 60 buckets: a one-minute window counts at one-second resolution, an hour at one
# minute, a day at 24 minutes; a key costs at most 60 records. Every node sharing a
# store must use the same number, hence a constant and not a setting.
WINDOW_BUCKETS = 60

Value = bytes | str | int


class StateUnavailable(Exception):
    """The store cannot answer now; the message names the backend and the cause."""


@dataclass(frozen=True, slots=True)
class Window:
    """Where ``now`` falls in a bucketed window of ``window_s`` seconds."""

    bucket: int          # index of the bucket an event at ``now`` is counted in
    oldest: int          # oldest bucket still counted at ``now``
    expires_at: float    # when ``bucket`` stops counting (and may be reclaimed)
    now: float

    @classmethod
    def at(cls, window_s: float, now: float) -> Window:
        # now * B / window_s rather than now / (window_s / B): an integral ``now`` on a
        # bucket boundary then lands on it exactly, with no rounding below it.
        bucket = math.floor(now * WINDOW_BUCKETS / window_s)
        return cls(bucket, bucket - WINDOW_BUCKETS + 1,
                   (bucket + WINDOW_BUCKETS) * window_s / WINDOW_BUCKETS, now)


def encode(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    raise TypeError(f"state values are bytes, str or int, not {type(value).__name__}")


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"state keys are non-empty str, got {key!r}")


def _positive(name: str, value: float) -> None:
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


class StateStore(abc.ABC):
    """The interface of issue 6's state; the public methods validate and fix the
    semantics once, the backends implement the underscored ones.

    Lifecycle: ``await store.open()`` (or ``async with store:``), ``await store.close()``.
    A store object belongs to the event loop that opened it.
    """

    backend = "abstract"

    def __init__(self, *, clock: Callable[[], float] = time.time):
        self.clock = clock

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else float(now)

    # -- lifecycle -----------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> StateStore:
        """Connect or create; returns self."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads; the store's content stays."""

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``StateUnavailable`` unless the backend answers (a start-up check)."""

    async def purge(self, now: float | None = None) -> int:
        """Reclaim expired entries now; returns how many went (0 where the backend
        expires entries on its own)."""
        return 0

    # -- sliding windows ------------------------------------------------------------------
    async def hit(self, key: str, window_s: float, now: float | None = None, *,
                  amount: int = 1) -> int:
        """Record ``amount`` events at ``now`` under ``key`` and return how many events
        the last ``window_s`` seconds hold, these included. Atomic across nodes: N
        concurrent hits on a fresh key return 1..N, each once."""
        _check_key(key)
        _positive("window_s", window_s)
        if not isinstance(amount, int) or amount < 1:
            raise ValueError(f"amount must be a positive int, got {amount!r}")
        return await self._window(key, Window.at(window_s, self._now(now)), amount)

    async def count(self, key: str, window_s: float, now: float | None = None) -> int:
        """How many events the last ``window_s`` seconds hold under ``key``; records none."""
        _check_key(key)
        _positive("window_s", window_s)
        return await self._window(key, Window.at(window_s, self._now(now)), 0)

    async def reset(self, key: str) -> None:
        """Forget every event of ``key``'s window."""
        _check_key(key)
        await self._window_reset(key)

    # -- leases ---------------------------------------------------------------------------
    async def acquire(self, key: str, holder: str, limit: int, ttl_s: float,
                      now: float | None = None) -> bool:
        """Take one of ``limit`` leases on ``key`` for ``holder`` until ``now + ttl_s``.

        False when ``limit`` other holders hold unexpired leases. A holder that already
        holds one keeps it (renewed to ``now + ttl_s``) and gets True: acquiring twice
        never takes two slots. ``holder`` must be unique across nodes
        (``"<node>:<connection>"``)."""
        _check_key(key)
        _check_key(holder)
        _positive("ttl_s", ttl_s)
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        now = self._now(now)
        return await self._acquire(key, holder, limit, now + ttl_s, now)

    async def renew(self, key: str, holder: str, ttl_s: float, now: float | None = None) -> bool:
        """Extend ``holder``'s lease to ``now + ttl_s``; False if it has lapsed or was
        released (the slot may be someone else's by now: acquire again)."""
        _check_key(key)
        _check_key(holder)
        _positive("ttl_s", ttl_s)
        now = self._now(now)
        return await self._renew(key, holder, now + ttl_s, now)

    async def release(self, key: str, holder: str) -> None:
        """Give ``holder``'s lease back; nothing if it holds none."""
        _check_key(key)
        _check_key(holder)
        await self._release(key, holder)

    async def leases(self, key: str, now: float | None = None) -> int:
        """How many unexpired leases ``key`` has (for evidence: "11 of 10")."""
        _check_key(key)
        return await self._leases(key, self._now(now))

    # -- values ---------------------------------------------------------------------------
    async def get(self, key: str, now: float | None = None) -> bytes | None:
        """The value of ``key``, or None if it was never set, was deleted or expired."""
        _check_key(key)
        return await self._get(key, self._now(now))

    async def set(self, key: str, value: Value, ttl_s: float | None,
                  now: float | None = None) -> None:
        """Store ``value`` until ``now + ttl_s``, replacing any value and lifetime.

        ``ttl_s=None`` keeps it until deleted: only for records whose number does not
        grow with traffic (credentials, the installation's start), since nothing
        reclaims them."""
        _check_key(key)
        data = encode(value)
        now = self._now(now)
        await self._set(key, data, self._expiry(ttl_s, now), now)

    async def get_or_set(self, key: str, value: Value, ttl_s: float | None,
                         now: float | None = None) -> tuple[bytes, bool]:
        """Atomically: if ``key`` has a live value return ``(it, False)``; otherwise store
        ``value`` as ``set`` does and return ``(value, True)``. Across nodes exactly one
        of several racing callers gets True."""
        _check_key(key)
        data = encode(value)
        now = self._now(now)
        return await self._get_or_set(key, data, self._expiry(ttl_s, now), now)

    async def incr(self, key: str, ttl_s: float | None, now: float | None = None, *,
                   amount: int = 1) -> int:
        """Atomically add ``amount`` to the integer at ``key`` (absent or expired: 0) and
        return the sum; the key then lives until ``now + ttl_s`` (each increment
        restarts its lifetime, so a counter is forgotten ``ttl_s`` after it last moved).
        A live non-integer value raises ValueError."""
        _check_key(key)
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError(f"amount must be an int, got {amount!r}")
        now = self._now(now)
        return await self._incr(key, amount, self._expiry(ttl_s, now), now)

    async def delete(self, key: str) -> None:
        """Remove the value of ``key`` (not its window nor its leases)."""
        _check_key(key)
        await self._delete(key)

    @staticmethod
    def _expiry(ttl_s: float | None, now: float) -> float | None:
        if ttl_s is None:
            return None
        _positive("ttl_s", ttl_s)
        return now + ttl_s

    # -- what a backend implements -------------------------------------------------------
    @abc.abstractmethod
    async def _window(self, key: str, window: Window, amount: int) -> int:
        """Add ``amount`` (0: none) to ``window.bucket`` and return the sum of the buckets
        from ``window.oldest`` on; the bucket may be reclaimed from ``window.expires_at``."""

    @abc.abstractmethod
    async def _window_reset(self, key: str) -> None: ...

    @abc.abstractmethod
    async def _acquire(self, key: str, holder: str, limit: int, expires_at: float,
                       now: float) -> bool:
        """Leases with ``expires_at <= now`` no longer count."""

    @abc.abstractmethod
    async def _renew(self, key: str, holder: str, expires_at: float, now: float) -> bool: ...

    @abc.abstractmethod
    async def _release(self, key: str, holder: str) -> None: ...

    @abc.abstractmethod
    async def _leases(self, key: str, now: float) -> int: ...

    @abc.abstractmethod
    async def _get(self, key: str, now: float) -> bytes | None:
        """Values with ``expires_at <= now`` are absent."""

    @abc.abstractmethod
    async def _set(self, key: str, value: bytes, expires_at: float | None, now: float) -> None: ...

    @abc.abstractmethod
    async def _get_or_set(self, key: str, value: bytes, expires_at: float | None,
                          now: float) -> tuple[bytes, bool]: ...

    @abc.abstractmethod
    async def _incr(self, key: str, amount: int, expires_at: float | None, now: float) -> int: ...

    @abc.abstractmethod
    async def _delete(self, key: str) -> None: ...
