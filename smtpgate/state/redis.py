"""The shared state store: Redis, for several gate nodes behind one MX.

Every operation touches one Redis key and is atomic there: a single command where one
suffices (``GET``, ``SET ... PX``, ``ZREM``, ``ZCOUNT``), otherwise a Lua script, which
Redis runs to completion before any other command (a window's prune-add-sum, a lease's
expire-check-add). One key per operation also keeps the store usable on a Redis Cluster.

Key layout under ``prefix`` (default ``mailsift:``):

- ``<prefix>w:<key>``: a window, a hash of bucket index -> count (at most
  ``WINDOW_BUCKETS`` fields; stale ones are dropped by the next hit);
- ``<prefix>l:<key>``: leases, a sorted set of holder scored by ``expires_at``;
- ``<prefix>v:<key>``: a value, the string ``<expires_at>|<value>`` (``expires_at`` empty
  for no expiry).

Two clocks. Whether an entry is still there is decided on the caller's clock (the
``now`` passed in or the store's ``clock``): windows by bucket index, leases by score,
values by the ``expires_at`` they carry, exactly as the SQLite backend decides, so both
pass the same tests with an injected clock. Reclaiming the memory is left to Redis's own
clock: every key is written with a relative expiry (``PEXPIRE``/``PX``) equal to how long
its content still counts, so a key disappears by itself once nothing in it counts any
more.

Why memory stays bounded under a flood of distinct IPs: every key that traffic creates
expires on its own (a window one window after its newest bucket, a leases set with its
longest lease, a value at its TTL; only values set with ``ttl_s=None``, which traffic does
not create, never expire), and a window key holds at most ``WINDOW_BUCKETS`` fields
however often it is hit. For a hard cap, as the SQLite store's ``max_rows``, run Redis with
``maxmemory`` and ``maxmemory-policy volatile-ttl``: Redis then evicts the keys nearest to
expiry first and never a key without expiry, the same choice the SQLite cap makes.

A Redis that is down, slow or refusing raises ``StateUnavailable`` within ``timeout_s``
(connection, pool wait and command included), which the gate answers with 451.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .base import StateStore, StateUnavailable, Window

# A Redis on the LAN answers one of these operations in well under a millisecond
# (bench/state_bench.py); half a second is hundreds of times that, and short enough that a
# dead Redis costs each SMTP command half a second rather than the client's patience.
TIMEOUT_S = 0.5
# Connections to Redis per gate process: enough for the commands in flight at once (each
# holds a connection for a fraction of a millisecond); more callers wait their turn for a
# free one, within the timeout.
MAX_CONNECTIONS = 32
PREFIX = "mailsift:"

# Set a key's expiry to how long its longest-lived lease still counts.
_LEASE_EXPIRY = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local ms = math.ceil((tonumber(last[2]) - tonumber(ARGV[NOW])) * 1000)
redis.call('PEXPIRE', KEYS[1], math.max(ms, 1))
"""

# KEYS[1] the window hash; ARGV: bucket, oldest, amount, ttl_ms of the bucket.
_WINDOW = """
local oldest = tonumber(ARGV[2])
local amount = tonumber(ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
local stale = {}
for i = 1, #fields, 2 do
  if tonumber(fields[i]) < oldest then
    stale[#stale + 1] = fields[i]
  else
    total = total + tonumber(fields[i + 1])
  end
end
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
if amount > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], amount)
  total = total + amount
  local ttl = tonumber(ARGV[4])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return total
"""

# KEYS[1] the leases zset; ARGV: holder, limit, expires_at, now.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
""" + _LEASE_EXPIRY.replace("ARGV[NOW]", "ARGV[4]") + """
return 1
"""

# KEYS[1] the leases zset; ARGV: holder, expires_at, now.
_RENEW = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
""" + _LEASE_EXPIRY.replace("ARGV[NOW]", "ARGV[3]") + """
return 1
"""

# The live part of a value, or nil: its "<expires_at>|" prefix is checked against now.
_LIVE = """
local function live(raw, now)
  if not raw then return nil end
  local sep = string.find(raw, '|', 1, true)
  local exp = string.sub(raw, 1, sep - 1)
  if exp ~= '' and tonumber(exp) <= now then return nil end
  return string.sub(raw, sep + 1)
end
local function put(blob, ttl_ms)
  if ttl_ms == '' then redis.call('SET', KEYS[1], blob)
  else redis.call('SET', KEYS[1], blob, 'PX', ttl_ms) end
end
"""

# KEYS[1] the value; ARGV: blob, ttl_ms ('' for none), now. Returns {created, value}.
_GET_OR_SET = _LIVE + """
local cur = live(redis.call('GET', KEYS[1]), tonumber(ARGV[3]))
if cur then return {0, cur} end
put(ARGV[1], ARGV[2])
return {1, ''}
"""

# KEYS[1] the value; ARGV: amount, expires_at ('' for none), ttl_ms ('' for none), now.
# Returns the new total as a string, or false if the live value is not an integer.
_INCR = _LIVE + """
local total = tonumber(ARGV[1])
local cur = live(redis.call('GET', KEYS[1]), tonumber(ARGV[4]))
if cur then
  if not string.match(cur, '^-?%d+$') then return false end
  total = total + tonumber(cur)
end
local text = string.format('%d', total)
put(ARGV[2] .. '|' .. text, ARGV[3])
return text
"""


def _ttl_ms(expires_at: float | None, now: float) -> str:
    """The relative expiry Redis reclaims the key after ('' for none)."""
    if expires_at is None:
        return ""
    return str(max(1, math.ceil((expires_at - now) * 1000)))


def _blob(value: bytes, expires_at: float | None) -> bytes:
    return (b"" if expires_at is None else repr(expires_at).encode("ascii")) + b"|" + value


class RedisStore(StateStore):
    """The state in the Redis at ``url`` (``redis://[:password@]host:port/db``,
    ``rediss://`` for TLS, ``unix:///path``). Every gate node opens its own; they share
    everything under ``prefix``."""

    backend = "redis"

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = PREFIX,
                 timeout_s: float = TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                 clock: Callable[[], float] = time.time):
        super().__init__(clock=clock)
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._redis: redis.asyncio.Redis | None = None

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self.prefix!r})"

    @property
    def _where(self) -> str:
        # the URL without a password
        scheme, sep, rest = self.url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else self.url

    # -- plumbing ----------------------------------------------------------------------
    async def _call(self, what: str, make: Callable):
        if self._redis is None:
            raise RuntimeError(f"{self!r} is not open")
        try:
            async with asyncio.timeout(self.timeout_s), self._slots:
                return await make(self._redis)
        except (RedisError, OSError, TimeoutError) as exc:
            detail = str(exc) or f"no answer within {self.timeout_s} s"
            raise StateUnavailable(f"redis {self._where}: {what}: "
                                   f"{type(exc).__name__}: {detail}") from exc

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> RedisStore:
        if self._redis is None:
            # One retry, no backoff: a pooled connection broken by a Redis restart is
            # retried once on a fresh one; anything longer is the timeout's business.
            # Callers queue for a connection on a FIFO semaphore, not in redis-py's
            # BlockingConnectionPool: its condition variable lets newcomers overtake
            # waiters, and under 64 concurrent callers on 32 connections some waited
            # past the timeout (bench/state_bench.py, loaded).
            pool = redis.asyncio.ConnectionPool.from_url(
                self.url, max_connections=self.max_connections,
                socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 1))
            self._slots = asyncio.Semaphore(self.max_connections)
            client = redis.asyncio.Redis.from_pool(pool)
            self._scripts = {name: client.register_script(src) for name, src in (
                ("window", _WINDOW), ("acquire", _ACQUIRE), ("renew", _RENEW),
                ("get_or_set", _GET_OR_SET), ("incr", _INCR))}
            self._redis = client
        return self

    async def close(self) -> None:
        if self._redis is not None:
            client, self._redis = self._redis, None
            await client.aclose()

    async def ping(self) -> None:
        await self._call("PING", lambda r: r.ping())

    # -- windows -----------------------------------------------------------------------
    async def _window(self, key: str, window: Window, amount: int) -> int:
        ttl = _ttl_ms(window.expires_at, window.now)
        script = self._scripts["window"]
        return int(await self._call("window", lambda r: script(
            keys=[f"{self.prefix}w:{key}"], args=[window.bucket, window.oldest, amount, ttl],
            client=r)))

    async def _window_reset(self, key: str) -> None:
        await self._call("window reset", lambda r: r.delete(f"{self.prefix}w:{key}"))

    # -- leases ------------------------------------------------------------------------
    async def _acquire(self, key: str, holder: str, limit: int, expires_at: float,
                       now: float) -> bool:
        script = self._scripts["acquire"]
        return bool(await self._call("acquire", lambda r: script(
            keys=[f"{self.prefix}l:{key}"], args=[holder, limit, repr(expires_at), repr(now)],
            client=r)))

    async def _renew(self, key: str, holder: str, expires_at: float, now: float) -> bool:
        script = self._scripts["renew"]
        return bool(await self._call("renew", lambda r: script(
            keys=[f"{self.prefix}l:{key}"], args=[holder, repr(expires_at), repr(now)],
            client=r)))

    async def _release(self, key: str, holder: str) -> None:
        await self._call("release", lambda r: r.zrem(f"{self.prefix}l:{key}", holder))

    async def _leases(self, key: str, now: float) -> int:
        return int(await self._call("leases", lambda r: r.zcount(
            f"{self.prefix}l:{key}", f"({now!r}", "+inf")))

    # -- values ------------------------------------------------------------------------
    async def _get(self, key: str, now: float) -> bytes | None:
        raw = await self._call("get", lambda r: r.get(f"{self.prefix}v:{key}"))
        if raw is None:
            return None
        expires, _, value = raw.partition(b"|")
        if expires and float(expires) <= now:
            return None
        return value

    async def _set(self, key: str, value: bytes, expires_at: float | None, now: float) -> None:
        ttl = _ttl_ms(expires_at, now)
        await self._call("set", lambda r: r.set(f"{self.prefix}v:{key}", _blob(value, expires_at),
                                                px=int(ttl) if ttl else None))

    async def _get_or_set(self, key: str, value: bytes, expires_at: float | None,
                          now: float) -> tuple[bytes, bool]:
        script = self._scripts["get_or_set"]
        created, current = await self._call("get_or_set", lambda r: script(
            keys=[f"{self.prefix}v:{key}"],
            args=[_blob(value, expires_at), _ttl_ms(expires_at, now), repr(now)], client=r))
        return (value, True) if created else (current, False)

    async def _incr(self, key: str, amount: int, expires_at: float | None, now: float) -> int:
        script = self._scripts["incr"]
        total = await self._call("incr", lambda r: script(
            keys=[f"{self.prefix}v:{key}"],
            args=[amount, "" if expires_at is None else repr(expires_at),
                  _ttl_ms(expires_at, now), repr(now)], client=r))
        if total is None:
            raise ValueError(f"incr on {key!r}: its value is not an integer")
        return int(total)

    async def _delete(self, key: str) -> None:
        await self._call("delete", lambda r: r.delete(f"{self.prefix}v:{key}"))
