"""destination_verification: the callout against a real SMTP server on loopback that
takes some recipients and refuses others, the cache's two lifetimes, and routes that
are down or silent."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from gate_harness import Sink, free_port
from smtpgate.checks.destination_verification import destination_verification, verify


class MemoryCache:
    """A cache with TTLs on an injected clock (the gate uses its state store)."""

    def __init__(self):
        self.now = 1000.0
        self.data: dict[str, tuple[str, float]] = {}

    async def get(self, key):
        v = self.data.get(key)
        return v[0] if v and v[1] > self.now else None

    async def set(self, key, value, ttl_s):
        self.data[key] = (value, self.now + ttl_s)


@pytest.fixture(scope="module")
def route():
    sink = Sink().start()
    yield ("127.0.0.1", sink.port)
    sink.stop()


def check(cache, route, address, **kw):
    answer = asyncio.run(verify(cache, route, address, helo="mx.gate.test", **kw))
    return answer, destination_verification(answer, address, route)


def test_existing_missing_and_temporarily_failing_recipients(route):
    cache = MemoryCache()
    answer, result = check(cache, route, "alice@example.test")
    assert answer.status == "exists" and result is None
    answer, result = check(cache, route, "reject-me@example.test")
    assert result.classification == "destination_does_not_exist"
    assert result.reply() == "550 5.1.1 Destination address does not exist"
    assert "550" in result.evidence
    answer, result = check(cache, route, "tempfail-me@example.test")
    assert result.classification == "destination_unverified"
    assert result.reply() == "451 4.4.0 Unable to verify destination address"


def test_answers_are_cached_with_separate_lifetimes_and_tempfails_not_at_all(route):
    cache = MemoryCache()
    check(cache, route, "alice@example.test", positive_ttl=100, negative_ttl=10)
    check(cache, route, "reject-me@example.test", positive_ttl=100, negative_ttl=10)
    check(cache, route, "tempfail-me@example.test")
    assert check(cache, route, "alice@example.test")[0].cached
    assert check(cache, route, "reject-me@example.test")[0].cached
    assert not check(cache, route, "tempfail-me@example.test")[0].cached
    cache.now += 50                      # the negative answer has expired, the positive not
    assert check(cache, route, "alice@example.test")[0].cached
    assert not check(cache, route, "reject-me@example.test")[0].cached


def test_a_route_that_is_down_or_silent_tempfails_within_the_timeout():
    cache = MemoryCache()
    down = ("127.0.0.1", free_port())
    answer, result = check(cache, down, "a@example.test", timeout=2)
    assert result.classification == "destination_unverified" and not cache.data
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)                     # accepts, never says 220
    try:
        t0 = time.monotonic()
        answer, result = check(cache, silent.getsockname(), "a@example.test", timeout=0.5)
        assert time.monotonic() - t0 < 2.0
        assert result.classification == "destination_unverified"
    finally:
        silent.close()
