"""The state store's contract (``smtpgate/state/base.py``), the same tests for both
backends: SQLite on a fresh file, and a real redis-server on loopback.

Time moves by the injected clock (``clock.advance``), never by sleeping; the windows in
these tests are a minute (one-second buckets) unless a test says otherwise, and start
at ``T0``, a bucket boundary.
"""
from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import stat
import time

import pytest

# The fixtures (backend, store, clock, run, sqlite_backend, redis_server) come from
# tests/state_fixtures.py as a plugin; registered for assert rewriting before T0 is
# imported from it, or pytest warns that it was imported too early to rewrite.
pytest.register_assert_rewrite("state_fixtures")
pytest_plugins = ["state_fixtures"]

from state_fixtures import T0  # noqa: E402

from smtpgate.state import WINDOW_BUCKETS, StateUnavailable  # noqa: E402

MINUTE = 60.0


# --- sliding windows ----------------------------------------------------------------------

def test_hit_records_and_counts_the_events_in_the_window(store, run):
    assert [run(store.hit("rate:ip:60:192.0.2.1", MINUTE)) for _ in range(3)] == [1, 2, 3]
    assert run(store.count("rate:ip:60:192.0.2.1", MINUTE)) == 3
    assert run(store.count("rate:ip:60:192.0.2.1", MINUTE)) == 3      # count records nothing
    assert run(store.count("rate:ip:60:192.0.2.2", MINUTE)) == 0      # keys are apart
    assert run(store.hit("rate:ip:60:192.0.2.1", MINUTE, amount=5)) == 8


def test_an_event_counts_for_exactly_the_window(store, clock, run):
    run(store.hit("k", MINUTE))
    assert run(store.count("k", MINUTE, T0 + 59.999)) == 1
    assert run(store.count("k", MINUTE, T0 + 60.0)) == 0


def test_the_window_slides(store, clock, run):
    run(store.hit("k", MINUTE))
    run(store.hit("k", MINUTE))
    clock.advance(30)
    assert run(store.hit("k", MINUTE)) == 3
    clock.advance(29.9)                                  # T0 + 59.9: all three
    assert run(store.count("k", MINUTE)) == 3
    clock.advance(0.1)                                   # T0 + 60: the first two left
    assert run(store.count("k", MINUTE)) == 1
    clock.advance(30)                                    # T0 + 90: the third left
    assert run(store.count("k", MINUTE)) == 0
    assert run(store.hit("k", MINUTE)) == 1


def test_an_event_is_forgotten_at_most_one_bucket_early_never_late(store, run):
    """The price of bucketed windows (base.py): 1/60 of the window, in the lenient
    direction, so a limit is never stricter than configured."""
    bucket = MINUTE / WINDOW_BUCKETS
    run(store.hit("k", MINUTE, T0 + 0.5 * bucket))
    assert run(store.count("k", MINUTE, T0 + MINUTE - 0.001)) == 1
    assert run(store.count("k", MINUTE, T0 + MINUTE)) == 0        # half a bucket early


def test_longer_windows_and_a_key_idle_for_long(store, run):
    hour, day = 3600.0, 86400.0
    run(store.hit("quota:hour:alice", hour))
    assert run(store.count("quota:hour:alice", hour, T0 + hour - 1)) == 1
    assert run(store.count("quota:hour:alice", hour, T0 + hour)) == 0
    run(store.hit("quota:day:alice", day, amount=3))
    assert run(store.hit("quota:day:alice", day, T0 + day - 1)) == 4
    assert run(store.hit("quota:day:alice", day, T0 + 10 * day)) == 1


def test_reset_forgets_a_window_only(store, run):
    run(store.hit("auth:user:alice", MINUTE))
    run(store.set("auth:user:alice", b"locked", 60))
    run(store.reset("auth:user:alice"))
    assert run(store.count("auth:user:alice", MINUTE)) == 0
    assert run(store.get("auth:user:alice")) == b"locked"


def test_bad_arguments_are_refused(store, run):
    for call in (store.hit("k", 0), store.hit("k", MINUTE, amount=0), store.hit("", MINUTE),
                 store.acquire("k", "h", 0, 10), store.acquire("k", "h", 1, -1),
                 store.set("k", 1.5, 10), store.set("k", b"v", 0)):
        with pytest.raises((ValueError, TypeError)):
            run(call)


# --- leases ------------------------------------------------------------------------------

def test_leases_up_to_the_limit(store, run):
    assert [run(store.acquire("conc:192.0.2.1", h, 3, 600)) for h in "abc"] == [True] * 3
    assert run(store.acquire("conc:192.0.2.1", "d", 3, 600)) is False
    assert run(store.leases("conc:192.0.2.1")) == 3
    run(store.release("conc:192.0.2.1", "b"))
    assert run(store.acquire("conc:192.0.2.1", "d", 3, 600)) is True
    assert run(store.acquire("conc:192.0.2.2", "e", 3, 600)) is True   # keys are apart
    run(store.release("conc:192.0.2.1", "nobody"))                      # harmless


def test_acquiring_twice_takes_one_slot(store, run):
    assert run(store.acquire("k", "a", 2, 600))
    assert run(store.acquire("k", "a", 2, 600))
    assert run(store.leases("k")) == 1
    assert run(store.acquire("k", "b", 2, 600))
    assert run(store.acquire("k", "a", 2, 600))        # still its own, at the limit


def test_a_dead_nodes_leases_lapse_after_their_ttl(backend, clock, run):
    node1, node2 = backend.node(), backend.node()
    assert run(node1.acquire("k", "node1:1", 2, 30)) and run(node1.acquire("k", "node1:2", 2, 30))
    backend.close(node1)                                       # node1 dies, never releases
    assert run(node2.acquire("k", "node2:1", 2, 30, T0 + 29.999)) is False
    assert run(node2.leases("k", T0 + 29.999)) == 2
    assert run(node2.leases("k", T0 + 30)) == 0
    assert run(node2.acquire("k", "node2:1", 2, 30, T0 + 30)) is True


def test_renew_keeps_a_lease_and_a_lapsed_one_stays_lapsed(store, clock, run):
    assert run(store.acquire("k", "a", 1, 30))
    clock.advance(20)
    assert run(store.renew("k", "a", 30)) is True             # now until T0 + 50
    clock.advance(29.9)
    assert run(store.acquire("k", "b", 1, 30)) is False
    clock.advance(0.1)                                         # T0 + 50
    assert run(store.renew("k", "a", 30)) is False
    assert run(store.acquire("k", "b", 1, 30)) is True
    run(store.release("k", "b"))
    assert run(store.renew("k", "b", 30)) is False             # released is lapsed too


def test_two_nodes_share_one_limit(backend, run):
    a, b = backend.node(), backend.node()
    got = [run(node.acquire("conc:198.51.100.7", f"{name}:{i}", 4, 600))
           for i in range(4) for name, node in (("a", a), ("b", b))]
    assert got.count(True) == 4
    assert run(a.leases("conc:198.51.100.7")) == run(b.leases("conc:198.51.100.7")) == 4
    run(b.release("conc:198.51.100.7", "b:0"))
    assert run(a.acquire("conc:198.51.100.7", "a:9", 4, 600)) is True


# --- values ------------------------------------------------------------------------------

def test_values_of_each_type_come_back_as_bytes(store, run):
    run(store.set("b", b"\x00\xff", 60))
    run(store.set("s", "grüß", 60))
    run(store.set("i", 42, 60))
    assert run(store.get("b")) == b"\x00\xff"
    assert run(store.get("s")) == "grüß".encode()
    assert run(store.get("i")) == b"42"
    assert run(store.get("never")) is None
    run(store.delete("s"))
    assert run(store.get("s")) is None
    run(store.delete("never"))


def test_a_value_lives_exactly_its_ttl(store, clock, run):
    run(store.set("lockout:192.0.2.1", b"1", 10))
    assert run(store.get("lockout:192.0.2.1", T0 + 9.999)) == b"1"
    assert run(store.get("lockout:192.0.2.1", T0 + 10)) is None


def test_set_replaces_value_and_lifetime(store, clock, run):
    run(store.set("k", b"old", 10))
    run(store.set("k", b"new", 100))
    assert run(store.get("k", T0 + 50)) == b"new"
    run(store.set("k", b"short", 1, T0 + 50))
    assert run(store.get("k", T0 + 51)) is None


def test_a_value_without_ttl_stays(store, run):
    run(store.set("user:alice", b"$scrypt$...", None))
    assert run(store.get("user:alice", T0 + 10 * 365 * 86400)) == b"$scrypt$..."


def test_get_or_set_keeps_the_first_value(backend, clock, run):
    a, b = backend.node(), backend.node()
    first = str(int(T0)).encode()
    assert run(a.get_or_set("grey:192.0.2.0/24:s:r", int(T0), 300)) == (first, True)
    clock.advance(60)
    assert run(b.get_or_set("grey:192.0.2.0/24:s:r", int(clock.now), 300)) == (first, False)
    clock.advance(240)                                       # the first one expired
    assert run(b.get_or_set("grey:192.0.2.0/24:s:r", b"later", 300)) == (b"later", True)


def test_incr_counts_and_is_forgotten_a_ttl_after_it_last_moved(store, clock, run):
    assert run(store.incr("rep:192.0.2.0/24", 10)) == 1
    clock.advance(8)
    assert run(store.incr("rep:192.0.2.0/24", 10, amount=2)) == 3
    clock.advance(9.999)                                     # T0 + 17.999
    assert run(store.get("rep:192.0.2.0/24")) == b"3"
    clock.advance(0.001)                                     # T0 + 18
    assert run(store.get("rep:192.0.2.0/24")) is None
    assert run(store.incr("rep:192.0.2.0/24", 10, amount=-1)) == -1
    run(store.set("text", b"abc", 10))
    with pytest.raises(ValueError):
        run(store.incr("text", 10))


def test_values_windows_and_leases_are_apart(store, run):
    run(store.set("k", b"v", 60))
    assert run(store.hit("k", MINUTE)) == 1
    assert run(store.acquire("k", "h", 1, 60))
    run(store.delete("k"))
    assert run(store.count("k", MINUTE)) == 1
    assert run(store.leases("k")) == 1


# --- concurrency -------------------------------------------------------------------------

def test_concurrent_hits_on_two_nodes_count_exactly(backend, run):
    a, b = backend.node(), backend.node()

    async def flood():
        return await asyncio.gather(*(node.hit("rate:ip:60:203.0.113.9", MINUTE)
                                      for _ in range(150) for node in (a, b)))
    assert sorted(run(flood())) == list(range(1, 301))
    assert run(a.count("rate:ip:60:203.0.113.9", MINUTE)) == 300


def test_concurrent_acquires_on_two_nodes_grant_exactly_the_limit(backend, run):
    a, b = backend.node(), backend.node()

    async def rush():
        return await asyncio.gather(*(node.acquire("conc:203.0.113.9", f"{i}", 10, 600)
                                      for i, node in enumerate([a, b] * 20)))
    assert run(rush()).count(True) == 10
    assert run(b.leases("conc:203.0.113.9")) == 10


def test_concurrent_get_or_set_has_one_winner(backend, run):
    a, b = backend.node(), backend.node()

    async def race():
        return await asyncio.gather(*(node.get_or_set("grey:t", f"{i}", 300)
                                      for i, node in enumerate([a, b] * 10)))
    results = run(race())
    assert [created for _, created in results].count(True) == 1
    assert len({value for value, _ in results}) == 1


def test_concurrent_incr_loses_nothing(backend, run):
    a, b = backend.node(), backend.node()

    async def bump():
        await asyncio.gather(*(node.incr("rep:x", 600) for node in [a, b] * 100))
    run(bump())
    assert run(a.get("rep:x")) == b"200"


# --- bounded under a flood of distinct IPs -------------------------------------------------

# SQLite's boundedness is this project's code (purge, cap), so it gets the full 100k; a
# Redis key expires by Redis's own mechanism, the same for 20k keys as for 100k, and
# redis-py costs ~150 us a call here (bench/state_bench.py floods it with more).
FLOOD = {"sqlite": 100_000, "redis": 20_000}


async def _flood(store, n: int, now: float, first: int = 0) -> None:
    """n distinct client IPs (numbered from ``first``), each leaving one connection's
    state: half a rate window (one minute), half a value with a five-minute TTL (a
    greylist triplet). SQLite inline is fastest one call after the other; Redis calls
    overlap."""
    def op(i):
        return (store.hit(f"rate:ip:60:{i}", MINUTE, now) if i % 2 else
                store.set(f"grey:{i}", b"1", 300, now))
    if store.backend == "sqlite":
        for i in range(first, first + n):
            await op(i)
    else:
        for start in range(first, first + n, 500):
            await asyncio.gather(*(op(i) for i in range(start, min(first + n, start + 500))))


def test_everything_a_flood_creates_expires(backend, clock, run):
    """Distinct keys by the 100k: every one has an expiry and is reclaimed once it
    passes; what was set without TTL stays."""
    store = backend.node()
    n = FLOOD[backend.kind]
    run(store.set("user:alice", b"hash", None))
    run(_flood(store, n, T0))
    if backend.kind == "sqlite":
        before = run(store.stats())
        assert before["win"] + before["kv"] == n + 1
        assert run(store.purge(T0 + 299)) == n // 2           # the windows went first
        assert run(store.purge(T0 + 300)) == n // 2
        after = run(store.stats())
        assert (after["win"], after["kv"], after["lease"]) == (0, 1, 0)
        assert after["file_bytes"] < before["file_bytes"] / 10   # pages went back
        assert after["wal_bytes"] == 0
    else:
        import redis
        with redis.Redis.from_url(backend.server.url) as admin:
            keyspace = admin.info("keyspace")["db0"]
            assert keyspace["keys"] == n + 1
            assert keyspace["expires"] == n                    # all but user:alice
            assert admin.ttl("test:v:user:alice") == -1
            assert 0 < admin.pttl("test:w:rate:ip:60:1") <= MINUTE * 1000
            assert 0 < admin.pttl("test:v:grey:0") <= 300 * 1000
    assert run(store.get("user:alice")) == b"hash"


def test_a_cap_holds_under_a_flood_faster_than_expiry(backend, clock, run):
    """SQLite: ``max_rows`` per table; Redis: ``maxmemory`` with ``volatile-ttl``. Both
    evict what would expire soonest and never what has no expiry."""
    n = 20_000
    if backend.kind == "sqlite":
        store = backend.node(max_rows=1000, purge_every=100)
        run(store.set("user:alice", b"hash", None))
        highest = 0
        for start in range(0, n, 1000):
            run(_flood(store, 1000, T0, first=start))     # distinct keys, none expired
            stats = run(store.stats())
            highest = max(highest, stats["win"], stats["kv"])
        assert highest <= 1000 + 100
    else:
        import redis
        store = backend.node()
        run(store.set("user:alice", b"hash", None))
        run(_flood(store, 500, T0, first=n))          # opens the pool's connections
        with redis.Redis.from_url(backend.server.url) as admin:
            cap = admin.info("memory")["used_memory"] + 512 * 1024
            admin.config_set("maxmemory", cap)
            try:
                run(_flood(store, n // 2, T0))        # about 1 MB of keys
                info = admin.info()
            finally:
                admin.config_set("maxmemory", 0)
        assert info["evicted_keys"] > 0
        assert info["used_memory"] <= cap * 1.05
    assert run(store.get("user:alice")) == b"hash"


# --- SQLite: a file that outlives the process, shared by processes --------------------------

def test_sqlite_writes_purge_expired_rows_without_being_asked(sqlite_backend, clock, run):
    """No purge() call: the writes' own purge steps reclaim what expired (each step
    deletes up to purge_chunk rows a table, twice what purge_every writes create)."""
    store = sqlite_backend.node(purge_every=100, purge_chunk=200)
    run(_flood(store, 2000, T0))                     # 1000 windows, 1000 values (300 s)
    clock.advance(300)                               # all of them expired
    run(_flood(store, 1000, clock.now, first=2000))
    stats = run(store.stats())
    assert (stats["win"], stats["kv"]) == (500, 500)   # only the second flood's



def test_sqlite_state_survives_a_restart(sqlite_backend, clock, run):
    store = sqlite_backend.node()
    run(store.hit("rate:ip:60:192.0.2.1", MINUTE))
    run(store.acquire("conc:192.0.2.1", "n1:1", 1, 600))
    run(store.set("grey:t", b"first", 3600))
    sqlite_backend.close(store)

    store = sqlite_backend.node()
    clock.advance(10)
    assert run(store.hit("rate:ip:60:192.0.2.1", MINUTE)) == 2
    assert run(store.acquire("conc:192.0.2.1", "n1:2", 1, 600)) is False
    assert run(store.get("grey:t")) == b"first"
    assert stat.S_IMODE(os.stat(sqlite_backend.path).st_mode) == 0o600


def test_sqlite_locked_by_another_process_waits_off_the_loop_then_gives_up(sqlite_backend, run):
    store = sqlite_backend.node(busy_timeout_s=0.3)
    other = sqlite3.connect(sqlite_backend.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")                 # another process holds the write lock

        async def while_locked():
            task = asyncio.ensure_future(store.hit("k", MINUTE))
            await asyncio.sleep(0)                       # the hit runs its first step
            assert not task.done()                       # it waits in the thread, not here
            assert await store.count("k", MINUTE) == 0   # reads go on meanwhile (WAL)
            with pytest.raises(StateUnavailable, match="locked"):
                await task
        run(while_locked())          # the other process still holds the lock

        async def until_unlocked():
            task = asyncio.ensure_future(store.hit("k", MINUTE))
            await asyncio.sleep(0)
            other.execute("COMMIT")
            return await task
        assert run(until_unlocked()) == 1
    finally:
        other.close()


# --- Redis: a store that can go away -------------------------------------------------------

def _unavailable_within(run, store, timeout_s: float) -> None:
    for call in (store.hit("k", MINUTE), store.count("k", MINUTE), store.acquire("k", "h", 1, 9),
                 store.release("k", "h"), store.get("k"), store.set("k", b"v", 9),
                 store.get_or_set("k", b"v", 9), store.incr("k", 9), store.ping()):
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="redis"):
            run(call)
        # generous: the bound is what matters (a dead Redis must not hang the gate)
        assert time.monotonic() - started < timeout_s + 1.0


def test_redis_down_is_state_unavailable_within_the_timeout(redis_server, run):
    from redisserver import RedisServer

    from smtpgate.state.redis import RedisStore

    with RedisServer() as server:
        store = run(RedisStore(server.url, timeout_s=0.3).open())
        run(store.hit("k", MINUTE))
    try:
        _unavailable_within(run, store, 0.3)                # connection refused
    finally:
        run(store.close())


def test_redis_that_never_answers_is_state_unavailable_within_the_timeout(redis_server, run):
    from smtpgate.state.redis import RedisStore

    with socket.socket() as blackhole:                   # accepts in the backlog, never reads
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        port = blackhole.getsockname()[1]
        store = run(RedisStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.1).open())
        try:
            _unavailable_within(run, store, 0.1)
        finally:
            run(store.close())
