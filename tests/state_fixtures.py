"""Fixtures for the state store's tests: a real Redis, an injected clock, and each backend.

A test module takes them as a plugin (``pytest_plugins = ["state_fixtures"]``, as
``test_state_store.py`` does); conftest could import them instead. For one backend
alone: ``sqlite_backend``, ``redis_backend``. Without redis-server (Debian package
redis-server) or the ``redis`` client the Redis half skips with the reason, which CI
(CI=true) turns into a failure.

- ``clock``: a ``FakeClock`` at ``T0``; every store of the test reads it. Tests move it
  with ``clock.advance(s)`` and never sleep.
- ``backend`` (parametrized ``sqlite``/``redis``): ``backend.node()`` opens a store on
  the backend, one more gate node each call (SQLite: another connection to the same
  file; Redis: another client). Fresh per test: a new file, or a flushed Redis.
- ``store``: the backend's first node.
- ``run``: runs a coroutine on the test's event loop, the loop its stores belong to.
"""
from __future__ import annotations

import asyncio

import pytest
from redisserver import RedisServer, find_redis_server

# 2023-11-14 22:00:00 UTC, a whole hour: every window of a minute or an hour starts a
# bucket exactly here, so boundary tests need no rounding slack.
T0 = 472_222 * 3600.0


class FakeClock:
    """The injected clock: ``clock()`` is ``clock.now``."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Backend:
    """One backend for one test; ``node()`` opens one more store sharing it."""

    def __init__(self, kind: str, factory, loop: asyncio.AbstractEventLoop, **details):
        self.kind = kind
        self._factory = factory
        self._loop = loop
        self._open = []
        self.__dict__.update(details)

    def node(self, **options):
        store = self._loop.run_until_complete(self._factory(**options).open())
        self._open.append(store)
        return store

    def close(self, store) -> None:
        self._loop.run_until_complete(store.close())
        self._open.remove(store)

    def close_all(self) -> None:
        for store in list(self._open):
            self.close(store)


@pytest.fixture(scope="session")
def redis_server():
    """redis-server on 127.0.0.1 (``.url``), shared by the session's tests."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (Debian package redis-server): the "
                    "Redis state store is tested against a real Redis")
    pytest.importorskip("redis", reason="the redis client (PyPI redis) is not installed")
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def state_loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def run(state_loop):
    return state_loop.run_until_complete


@pytest.fixture
def clock():
    return FakeClock()


def make_backend(kind: str, request, loop, clock, tmp_path) -> Backend:
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        import redis

        from smtpgate.state.redis import RedisStore

        with redis.Redis.from_url(server.url) as admin:
            admin.flushdb()
            admin.config_set("maxmemory", 0)        # a test may have set one

        def factory(**options):
            return RedisStore(server.url, clock=clock, prefix="test:", **options)
        return Backend("redis", factory, loop, server=server)
    from smtpgate.state.sqlite import SqliteStore

    path = tmp_path / "state" / "state.db"

    def factory(**options):
        return SqliteStore(path, clock=clock, **options)
    return Backend("sqlite", factory, loop, path=path)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, state_loop, clock, tmp_path):
    """Each backend in turn."""
    b = make_backend(request.param, request, state_loop, clock, tmp_path)
    yield b
    b.close_all()


@pytest.fixture
def sqlite_backend(request, state_loop, clock, tmp_path):
    """The SQLite backend alone, for what only it has (a file to reopen, to lock)."""
    b = make_backend("sqlite", request, state_loop, clock, tmp_path)
    yield b
    b.close_all()


@pytest.fixture
def redis_backend(request, state_loop, clock, tmp_path):
    """The Redis backend alone, for what only it has (a server to lose)."""
    b = make_backend("redis", request, state_loop, clock, tmp_path)
    yield b
    b.close_all()


@pytest.fixture
def store(backend):
    return backend.node()
