#!/usr/bin/env python3
"""The state store (``smtpgate/state``): what it costs a connection with each backend,
and how the embedded store grows under a million distinct client IPs.

    python3 bench/state_bench.py [--connections 5000] [--concurrency 64] [--rounds 3]
        [--ips 1000000] [--redis-ips 50000] [--out bench/out/state.json]

Backends: ``sqlite`` (the default store: calls inline, the worker thread only when the
file is locked, for checkpoints and purges), ``sqlite-thread`` (the same store with
``inline=False``: every call hops to the worker thread, the design not chosen) and
``redis`` (a redis-server started here on loopback by ``tests/redisserver.py``; the
bench process and Redis share this machine's cores).

1. Latency. A connection's operations, as ``ip_concurrency_limit``, ``ip_rate_limit``
   and a lockout/greylist lookup will make them: ``acquire`` a lease on the client IP
   (limit 10, ttl 600 s), ``hit`` its one-minute rate window, ``get`` a value, and at
   the end ``release``. Connections come from 1000 client IPs in turn, at the wall
   clock, yielding to the loop between operations as a session awaiting its client does.
   Measured per operation and per connection (the four added up), p50 and p99,
   in microseconds, and connections per second: "idle" runs one connection at a time
   (the cost a connection adds); "loaded" runs ``--concurrency`` connections at once in
   the loop with no pause between them (a closed loop: its latency is mostly waiting for
   the other 63, so its point is the throughput, and the p99 of that wait). ``--rounds`` rounds interleave the backends,
   and the samples of all rounds are pooled. The SQLite file is on this machine's disk
   (a temporary directory), ``synchronous=NORMAL``.
2. Growth. ``--ips`` distinct client IPs, each one connection's worth of state: the
   four operations above plus ``get_or_set`` of a greylist triplet (subnet, sender,
   recipient) with a two-day TTL (a retry window), on an injected clock that advances
   1 ms per IP (a flood of 1000 new IPs a second, 17 minutes for a million). Rows per
   table, the file and WAL sizes are recorded at 100k, 300k and 1M (and at ``--ips``);
   then the clock moves past every expiry and ``purge()`` runs: rows and sizes again.
   The same flood on Redis for ``--redis-ips`` (redis-py costs ~150 us a call here):
   ``used_memory`` growth per IP and how many keys carry an expiry.

Writes ``--out`` (JSON) and prints a summary.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import sqlite3
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from smtpgate.state import SqliteStore, StateStore  # noqa: E402

OPS = ("acquire", "hit", "get", "release")


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(samples: list[float]) -> dict:
    return {"p50_us": round(pct(samples, 0.50), 1), "p99_us": round(pct(samples, 0.99), 1),
            "mean_us": round(statistics.fmean(samples), 1), "n": len(samples)}


async def connection(store: StateStore, n: int, samples: dict[str, list[float]]) -> None:
    """One connection's state operations from client IP number n % 1000."""
    ip = f"198.51.{(n % 1000) // 250}.{n % 250}"
    holder = f"bench:{n}"
    times = []
    for op in (store.acquire(f"conc:{ip}", holder, 10, 600), store.hit(f"rate:ip:60:{ip}", 60),
               store.get(f"lockout:{ip}"), store.release(f"conc:{ip}", holder)):
        t = time.perf_counter()
        await op
        times.append((time.perf_counter() - t) * 1e6)
        # A session awaits its client between commands: the loop runs others meanwhile.
        await asyncio.sleep(0)
    for op, us in zip(OPS, times):
        samples[op].append(us)
    samples["connection"].append(sum(times))


async def latency_round(store: StateStore, n: int, concurrency: int,
                        samples: dict[str, list[float]], start: int) -> None:
    if concurrency <= 1:
        for i in range(n):
            await connection(store, start + i, samples)
        return
    counter = iter(range(start, start + n))

    async def client():
        for i in counter:
            await connection(store, i, samples)
    await asyncio.gather(*(client() for _ in range(concurrency)))


async def thread_hop_us(n: int = 5000) -> float:
    """What one run_in_executor round trip costs on this machine (the inline design's
    saving per call)."""
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as ex:
        await loop.run_in_executor(ex, int)
        t = time.perf_counter()
        for _ in range(n):
            await loop.run_in_executor(ex, int)
        return (time.perf_counter() - t) / n * 1e6


async def bench_latency(args, stores: dict[str, StateStore]) -> dict:
    out = {}
    for mode, concurrency in (("idle", 1), (f"loaded{args.concurrency}", args.concurrency)):
        samples = {name: {op: [] for op in (*OPS, "connection")} for name in stores}
        for name, store in stores.items():                        # warm-up
            await latency_round(store, 200, concurrency, {op: [] for op in (*OPS, "connection")}, 0)
        elapsed = dict.fromkeys(stores, 0.0)
        for r in range(args.rounds):
            order = list(stores) if r % 2 == 0 else list(reversed(stores))
            for name in order:
                t = time.perf_counter()
                await latency_round(stores[name], args.connections, concurrency, samples[name],
                                    start=(r + 1) * args.connections)
                elapsed[name] += time.perf_counter() - t
        for name in stores:
            out.setdefault(name, {})[mode] = {op: summary(v) for op, v in samples[name].items()}
            out[name][mode]["connections_per_s"] = round(args.rounds * args.connections / elapsed[name])
    return out


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def client_ip(i: int) -> str:
    """The i-th distinct client IP (10.0.0.0/8 then 100.64.0.0/10: 20M addresses)."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" if i < 1 << 24 else \
        f"100.{64 + ((i >> 16) & 63)}.{(i >> 8) & 255}.{i & 255}"


async def flood(store: StateStore, clock: Clock, first: int, n: int, *,
                concurrent: bool = False) -> None:
    """IPs first..first+n, one connection each, the clock 1 ms further for each."""
    async def one(i: int) -> None:
        ip = client_ip(i)
        subnet = ip.rsplit(".", 1)[0] + ".0/24"
        await store.acquire(f"conc:{ip}", f"bench:{i}", 10, 600)
        await store.hit(f"rate:ip:60:{ip}", 60)
        await store.get(f"lockout:{ip}")
        await store.get_or_set(f"grey:{subnet}:s{i}@example.net:rcpt@example.org",
                               int(clock.now), 2 * 86400)
        await store.release(f"conc:{ip}", f"bench:{i}")

    if not concurrent:
        for i in range(first, first + n):
            clock.now += 0.001
            await one(i)
        return
    for start in range(first, first + n, 200):
        batch = range(start, min(first + n, start + 200))
        clock.now += 0.001 * len(batch)
        await asyncio.gather(*(one(i) for i in batch))


async def bench_growth_sqlite(args, tmp: pathlib.Path) -> dict:
    clock = Clock(1_700_000_000.0)
    store = await SqliteStore(tmp / "growth.db", clock=clock).open()
    marks = sorted({m for m in (100_000, 300_000, 1_000_000) if m < args.ips} | {args.ips})
    points, done, started = [], 0, time.perf_counter()
    for mark in marks:
        await flood(store, clock, done, mark - done)
        done = mark
        stats = await store.stats()
        points.append({"ips": mark, "elapsed_s": round(time.perf_counter() - started, 1),
                       "clock_s": round(clock.now - 1_700_000_000.0, 1), **stats})
        print(f"  sqlite {mark:>9,} IPs: kv {stats['kv']:,} win {stats['win']:,} "
              f"lease {stats['lease']:,} rows; file {stats['file_bytes'] / 1e6:.1f} MB, "
              f"WAL {stats['wal_bytes'] / 1e6:.1f} MB ({points[-1]['elapsed_s']} s)", flush=True)
    last = points[-1]
    t = time.perf_counter()
    purged = await store.purge(clock.now + 2 * 86400 + 1)
    after = await store.stats()
    after.update(purged=purged, purge_s=round(time.perf_counter() - t, 2))
    print(f"  sqlite after every expiry + purge(): {after['kv'] + after['win'] + after['lease']} rows,"
          f" file {after['file_bytes'] / 1e6:.2f} MB ({purged:,} rows purged in {after['purge_s']} s)")
    await store.close()
    on_disk = (tmp / "growth.db").stat().st_size
    return {"ips": args.ips, "ttl_greylist_s": 2 * 86400, "window_s": 60, "lease_ttl_s": 600,
            "arrivals_per_clock_s": 1000, "points": points, "after_purge": after,
            "file_bytes_on_disk_after_close": on_disk,
            "bytes_per_live_row": round(last["file_bytes"] / max(1, last["kv"] + last["win"]), 1),
            "max_rows_per_table": store.max_rows}


async def bench_growth_redis(args, url: str) -> dict:
    import redis

    from smtpgate.state.redis import RedisStore

    clock = Clock(1_700_000_000.0)
    with redis.Redis.from_url(url) as admin:
        admin.flushdb()
        store = await RedisStore(url, clock=clock, prefix="bench:").open()
        await flood(store, clock, 10_000_000, 200, concurrent=True)   # open the pool
        admin.flushdb()
        base = admin.info("memory")["used_memory"]
        t = time.perf_counter()
        await flood(store, clock, 0, args.redis_ips, concurrent=True)
        elapsed = time.perf_counter() - t
        mem = admin.info("memory")["used_memory"]
        keyspace = admin.info("keyspace").get("db0", {"keys": 0, "expires": 0})
        await store.close()
        admin.flushdb()
    out = {"ips": args.redis_ips, "used_memory_growth_bytes": mem - base,
           "bytes_per_ip": round((mem - base) / args.redis_ips, 1),
           "keys": keyspace["keys"], "keys_with_expiry": keyspace["expires"],
           "elapsed_s": round(elapsed, 1)}
    print(f"  redis {args.redis_ips:,} IPs: {out['keys']:,} keys, {out['keys_with_expiry']:,} "
          f"with expiry, +{out['used_memory_growth_bytes'] / 1e6:.1f} MB "
          f"({out['bytes_per_ip']} B per IP)")
    return out


async def main_async(args) -> dict:
    from redisserver import RedisServer, find_redis_server

    from smtpgate.state.redis import RedisStore

    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "sqlite": sqlite3.sqlite_version, "platform": platform.platform()},
              "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="state-bench-", dir=args.tmp) as tmp:
        tmp = pathlib.Path(tmp)
        server = RedisServer() if find_redis_server() and not args.redis else None
        if server:
            server.start()
        url = args.redis or (server.url if server else None)
        try:
            import redis
            if url:
                with redis.Redis.from_url(url) as admin:
                    result["machine"]["redis"] = admin.info("server")["redis_version"]
            stores: dict[str, StateStore] = {
                "sqlite": await SqliteStore(tmp / "inline.db").open(),
                "sqlite-thread": await SqliteStore(tmp / "thread.db", inline=False).open(),
            }
            if url:
                stores["redis"] = await RedisStore(url, prefix="lat:").open()
            result["thread_hop_us"] = round(await thread_hop_us(), 1)
            print(f"thread hop (run_in_executor round trip): {result['thread_hop_us']} us")
            result["latency"] = await bench_latency(args, stores)
            for store in stores.values():
                await store.close()
            print_latency(result["latency"])
            print("growth:")
            if args.ips:
                result["growth_sqlite"] = await bench_growth_sqlite(args, tmp)
            if url and args.redis_ips:
                result["growth_redis"] = await bench_growth_redis(args, url)
        finally:
            if server:
                server.stop()
    return result


def print_latency(latency: dict) -> None:
    for mode in next(iter(latency.values())):
        print(f"latency, {mode} (us, p50 / p99):")
        print(f"  {'backend':<14}" + "".join(f"{op:>18}" for op in (*OPS, "connection"))
              + "   connections/s")
        for name, modes in latency.items():
            row = modes[mode]
            print(f"  {name:<14}" + "".join(
                f"{row[op]['p50_us']:>9.0f} /{row[op]['p99_us']:>7.0f}" for op in (*OPS, "connection"))
                + f"{row['connections_per_s']:>18,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=5000, help="per backend and round")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ips", type=int, default=1_000_000, help="SQLite growth flood (0: skip)")
    ap.add_argument("--redis-ips", type=int, default=50_000, help="Redis growth flood (0: skip)")
    ap.add_argument("--redis", help="a Redis URL to use instead of starting redis-server")
    ap.add_argument("--tmp", help="directory for the SQLite files (default: the system's)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "state.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    result = asyncio.run(main_async(args))
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['elapsed_s']} s)")


if __name__ == "__main__":
    main()
