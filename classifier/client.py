"""The scorer's client, as the SMTP gate and ``mailsift score --remote`` use it.

- One channel per address, made once and reused; calls go round-robin over them.
- Every call has a deadline (``deadline`` seconds unless the call gives its own).
- Retries only where safe. Score, Explain and Learn are idempotent (Learn by the
  message's digest), so a call answered UNAVAILABLE (nothing listening, connection
  lost) or RESOURCE_EXHAUSTED (that process is full) is retried on the next address,
  within the same overall deadline. DEADLINE_EXCEEDED is never retried, because the
  deadline is the caller's whole budget. Reload is not retried.
"""
from __future__ import annotations

import itertools
import threading
import time

import grpc

from . import wire
from .facts import GateFacts
from .proto import scorer_pb2 as pb
from .proto import scorer_pb2_grpc as pb_grpc
from .scorer import Verdict

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class MessageTooLarge(ValueError):
    """The message is larger than a scorer accepts. That is the message's fault, not the
    scorer's: refuse it, do not retry it."""


class ScorerUnavailable(Exception):
    """No scorer answered in time: the gate tempfails (internal_error), never accepts."""

    def __init__(self, code: grpc.StatusCode, detail: str):
        super().__init__(f"{code.name}: {detail}")
        self.code = code


def _triage(exc: grpc.RpcError) -> grpc.RpcError:
    """Raise what must not be retried; return a failure worth another address."""
    # gRPC says RESOURCE_EXHAUSTED both for a full worker (worth another address) and
    # for a message over the size limit (never worth one)
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (exc.details() or ""):
        raise MessageTooLarge(exc.details()) from None
    if exc.code() not in _RETRYABLE:
        raise exc
    return exc


def _exhausted(last: grpc.RpcError | None) -> ScorerUnavailable:
    if last is None:
        return ScorerUnavailable(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left to try another scorer")
    return ScorerUnavailable(last.code(), last.details() or "")


class _Base:
    """What both clients share: addresses, limits, and how requests are built."""

    def __init__(self, addresses: list[str] | str, deadline: float = 5.0,
                 max_message_bytes: int = 25 * 1024 * 1024):
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        if not addresses:
            raise ValueError("no scorer addresses")
        self.addresses = list(addresses)
        self.deadline = deadline
        self.max_message_bytes = max_message_bytes
        self._options = [("grpc.max_send_message_length", max_message_bytes + 64 * 1024),
                         ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                         ("grpc.enable_retries", 0)]  # retries are ours, across addresses
        self._next = itertools.cycle(range(len(self.addresses)))

    def _check_size(self, message: bytes) -> None:
        if len(message) > self.max_message_bytes:
            raise MessageTooLarge(f"message of {len(message)} bytes is over the scorer's limit of"
                                  f" {self.max_message_bytes}")

    def _score_request(self, message: bytes, facts: GateFacts | None = None,
                       envelope: pb.Envelope | None = None, settings_id: str = "",
                       threshold: float | None = None, evidence: int = 0,
                       request_id: str = "") -> pb.ScoreRequest:
        self._check_size(message)
        req = pb.ScoreRequest(message=message, facts=wire.facts_to_proto(facts), envelope=envelope,
                              settings_id=settings_id, evidence=evidence, request_id=request_id)
        if threshold is not None:
            req.threshold = threshold
        return req


class AsyncRemoteScorer(_Base):
    """The same client for asyncio callers (the SMTP gate): grpc.aio channels on the
    caller's event loop, the same deadlines, retries and errors as ``RemoteScorer``."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._channels = [grpc.aio.insecure_channel(a, options=self._options) for a in self.addresses]
        self._stubs = [pb_grpc.ScorerStub(c) for c in self._channels]

    async def close(self) -> None:
        for c in self._channels:
            await c.close()

    async def _call(self, method: str, request, deadline: float | None, retry: bool):
        end = time.monotonic() + (self.deadline if deadline is None else deadline)
        last = None
        for _ in range(len(self._stubs) if retry else 1):
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                return await getattr(self._stubs[next(self._next)], method)(request, timeout=remaining)
            except grpc.RpcError as exc:
                last = _triage(exc)
        raise _exhausted(last)

    async def score_raw(self, message: bytes, deadline: float | None = None, **kw) -> pb.ScoreReply:
        return await self._call("Score", self._score_request(message, **kw), deadline, retry=True)

    async def score(self, message: bytes, **kw) -> Verdict:
        return wire.verdict_from_proto(await self.score_raw(message, **kw))

    async def learn(self, message: bytes, label: str, source: str, who: str = "",
                    classifiers: list[str] | None = None, deadline: float | None = None,
                    trusted: bool = False) -> pb.LearnReply:
        return await self._call("Learn", _learn_request(self, message, label, source, who, classifiers, trusted),
                                deadline, retry=True)


def _learn_request(client: _Base, message: bytes, label: str, source: str, who: str,
                   classifiers: list[str] | None, trusted: bool = False) -> pb.LearnRequest:
    """``trusted``: the feedback store vouches for ``who`` (an admin on ``[feedback] trusted``)."""
    client._check_size(message)
    return pb.LearnRequest(message=message, label=wire.LABEL_NUMBERS[label],
                           source=wire.SOURCE_NUMBERS[source], who=who, trusted=trusted,
                           classifiers=[wire.enum_of(c) for c in classifiers or []])


class RemoteScorer(_Base):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._channels = [grpc.insecure_channel(a, options=self._options) for a in self.addresses]
        self._stubs = [pb_grpc.ScorerStub(c) for c in self._channels]
        self._lock = threading.Lock()

    def close(self) -> None:
        for c in self._channels:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method: str, request, deadline: float | None, retry: bool):
        budget = self.deadline if deadline is None else deadline
        end = time.monotonic() + budget
        tries = len(self._stubs) if retry else 1
        last = None
        for _ in range(tries):
            with self._lock:
                i = next(self._next)
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                return getattr(self._stubs[i], method)(request, timeout=remaining)
            except grpc.RpcError as exc:
                last = _triage(exc)
        raise _exhausted(last)

    def score_raw(self, message: bytes, deadline: float | None = None, **kw) -> pb.ScoreReply:
        return self._call("Score", self._score_request(message, **kw), deadline, retry=True)

    def score(self, message: bytes, **kw) -> Verdict:
        return wire.verdict_from_proto(self.score_raw(message, **kw))

    def learn(self, message: bytes, label: str, source: str, who: str = "",
              classifiers: list[str] | None = None, deadline: float | None = None,
              trusted: bool = False) -> pb.LearnReply:
        return self._call("Learn", _learn_request(self, message, label, source, who, classifiers, trusted),
                          deadline, retry=True)

    def explain(self, message: bytes, per_classifier: int = 10, deadline: float | None = None) -> pb.ExplainReply:
        self._check_size(message)
        return self._call("Explain", pb.ExplainRequest(message=message, per_classifier=per_classifier),
                          deadline, retry=True)

    def reload(self, deadline: float | None = None) -> pb.ReloadReply:
        return self._call("Reload", pb.ReloadRequest(), deadline or 60.0, retry=False)
