#!/usr/bin/env python3
"""The durable queue's cost: messages per second accepted and delivered end to end by
the gate with the queue (``[queue] enabled = true``, every message fsync'd before its
250, delivered by the workers afterwards) against the same gate relaying while the
sender waits (``[queue] enabled = false``), in one run; and the time from end of DATA
to the reply in both.

    python bench/queue_bench.py [--clients 16] [--messages 300] [--rounds 3]
                                [--out bench/out/queue/queue_bench.json]

Everything but the two gate configurations comes from bench/gate_bench.py (imported,
not copied): dnsmasq, the sink in its own process (it counts what it receives), the
real scorer with the shipped model, the load generator (``--clients`` asyncio clients,
a new connection per ~2 KB message, a third of them spam that the scorer refuses with
550 and the gate quarantines), the CPU accounting. Two gate processes run side by side
against those peers, identical but for ``[queue] enabled``, both with the stateful
protections off (all clients come from one address).

Per round and mode:
- accepted msgs/s: replies (250 or 550) per second of the load, first connection to
  last reply: what a sending server sees;
- delivered msgs/s: 250s per second from the first connection until the sink has
  received every message the gate answered 250 for: end to end. With the queue the
  deliveries trail the replies; without it each 250 came after the sink's;
- end of DATA to reply, p50 and p99: the queue replaces the relay to the sink with
  an fsync'd enqueue;
- CPU ms per message of the gate (delivery included) and the others.

Rounds: a warm-up of each mode, then ``--rounds`` pairs in alternating order (queue,
sync; sync, queue; ...), as gate_bench.py does on this shared, noisy machine. The check:
in every round the sink received exactly the messages the gate answered 250 for.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import gate_bench as gb   # noqa: E402  (after the path: bench/ and tests/ modules)

# The stateful protections off in both (gate_bench's "off"): every client comes from one
# address, which the default per-IP concurrency limit (10) would turn away at 16 clients.
MODES = {"queue": gb.STATEFUL_OFF + "\n[queue]\nenabled = true\n",
         "sync": gb.STATEFUL_OFF + "\n[queue]\nenabled = false\n"}
DELIVERY_TIMEOUT = 120.0


def run_round(bench: gb.Bench, mode: str, n: int, label: str) -> dict:
    a = bench.args
    bench.use(mode)
    g = bench.gates[mode]
    if g["proc"].poll() is not None:
        raise RuntimeError(f"the gate ({mode}) exited:\n{gb.tail(g['log'])}")
    made = [gb.make_message(i, a.seed) for i in range(n)]
    sink0 = bench.sink.snapshot()
    cpu0 = bench.cpu()
    t0 = time.perf_counter()
    wall, results = asyncio.run(gb.load(bench.gate_port, [p for _, p in made], a.clients))
    n250 = sum(r["code"] == 250 for r in results)
    # end to end: until the sink holds every message the gate said 250 for
    end = time.monotonic() + DELIVERY_TIMEOUT
    while bench.sink.snapshot()[0] - sink0[0] < n250 and time.monotonic() < end:
        time.sleep(0.002)
    e2e = time.perf_counter() - t0
    time.sleep(0.2)                      # anything beyond the 250s would show up now
    cpu1 = bench.cpu()
    delivered = bench.sink.snapshot()[0] - sink0[0]
    lat = [r["latency"] for r in results if r["latency"] is not None]
    codes: dict[str, int] = {}
    for r in results:
        k = f"{r['code'] // 100}xx" if r["code"] else "error"
        codes[k] = codes.get(k, 0) + 1
    done = sum(r["code"] != 0 for r in results)
    used = {k: cpu1[k] - cpu0[k] for k in cpu0 if k != "machine"}
    return {
        "label": label, "mode": mode, "messages": n, "clients": a.clients,
        "load_s": round(wall, 3), "end_to_end_s": round(e2e, 3),
        "accepted_msgs_per_s": round(done / wall, 2), "delivered_msgs_per_s": round(n250 / e2e, 2),
        "latency_ms": {"p50": gb.ms(gb.pct(lat, 0.50)), "p99": gb.ms(gb.pct(lat, 0.99)),
                       "mean": gb.ms(statistics.fmean(lat) if lat else None)},
        "replies": codes, "replied_250": n250, "sink_delivered": delivered,
        "delivered_matches_250": delivered == n250,
        "cpu_ms_per_msg": {k: round(v * 1000 / n, 3) for k, v in used.items()},
        "_latencies": lat,
    }


def summarise(rounds: list[dict]) -> dict:
    out = {}
    for mode in MODES:
        rs = [r for r in rounds if r["mode"] == mode]
        lat = [x for r in rs for x in r["_latencies"]]
        out[mode] = {
            "rounds": len(rs),
            "accepted_msgs_per_s_median": round(statistics.median(r["accepted_msgs_per_s"] for r in rs), 2),
            "delivered_msgs_per_s_median": round(statistics.median(r["delivered_msgs_per_s"] for r in rs), 2),
            "accepted_msgs_per_s_rounds": [r["accepted_msgs_per_s"] for r in rs],
            "delivered_msgs_per_s_rounds": [r["delivered_msgs_per_s"] for r in rs],
            "latency_ms_p50": gb.ms(gb.pct(lat, 0.50)), "latency_ms_p99": gb.ms(gb.pct(lat, 0.99)),
            "latency_ms_p99_rounds": [r["latency_ms"]["p99"] for r in rs],
            "gate_cpu_ms_per_msg_median": round(statistics.median(r["cpu_ms_per_msg"]["gate"] for r in rs), 3),
            "all_cpu_ms_per_msg_median": round(statistics.median(sum(r["cpu_ms_per_msg"].values()) for r in rs), 3),
            "delivered_matches_250": all(r["delivered_matches_250"] for r in rs),
        }
    q, s = out["queue"], out["sync"]
    out["delivered_ratio_queue_over_sync"] = round(q["delivered_msgs_per_s_median"] / s["delivered_msgs_per_s_median"], 3)
    out["accepted_ratio_queue_over_sync"] = round(q["accepted_msgs_per_s_median"] / s["accepted_msgs_per_s_median"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--messages", type=int, default=300, help="messages per round")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per mode")
    p.add_argument("--workers", type=int, default=1, help="scorer worker processes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "queue" / "queue_bench.json"))
    a = p.parse_args(argv)
    # what gate_bench.Bench reads from its arguments, at gate_bench's defaults
    a.model, a.dnsbl_zone, a.stateful = None, None, False
    a.log_level, a.scorer_log_level = "INFO", "INFO"

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, gb._interrupt)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mailsift-queue-bench-"))
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if not a.keep:
            stack.callback(shutil.rmtree, tmp, True)
        bench = gb.Bench(a, tmp, stack)
        print("starting dnsmasq, the sink, the scorer and two gates (queue, sync) ...", file=sys.stderr)
        bench.start()                         # its own gate ("gate") stays idle
        for mode, extra in MODES.items():
            bench.start_gate(mode, extra)
        schedule = [("warmup", m, max(1, a.messages // 2)) for m in MODES]
        for i in range(a.rounds):
            order = ("queue", "sync") if i % 2 == 0 else ("sync", "queue")
            schedule += [(f"round {i + 1}", m, a.messages) for m in order]
        rounds = []
        for label, mode, n in schedule:
            r = run_round(bench, mode, n, label)
            print(f"  {label:<9} {mode:<6} accepted {r['accepted_msgs_per_s']:>7.1f}/s  delivered "
                  f"{r['delivered_msgs_per_s']:>7.1f}/s  EOD->reply p50 {r['latency_ms']['p50']} ms"
                  f"  p99 {r['latency_ms']['p99']} ms  replies {r['replies']}  sink +{r['sink_delivered']}"
                  f"  gate {r['cpu_ms_per_msg']['gate']:.2f} ms CPU/msg", file=sys.stderr)
            if label != "warmup":
                rounds.append(r)
        summary = summarise(rounds)

    res = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_end": os.getloadavg()},
        "parameters": {"clients": a.clients, "messages": a.messages, "rounds": a.rounds, "workers": a.workers,
                       "seed": a.seed, "modes": {m: x.strip() for m, x in MODES.items()}},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "total_s": round(time.monotonic() - t_start, 1),
        "rounds": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rounds],
        "summary": summary,
    }
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print()
    for mode in MODES:
        x = summary[mode]
        print(f"{mode:<6} accepted {x['accepted_msgs_per_s_median']} msgs/s {x['accepted_msgs_per_s_rounds']}, "
              f"delivered end to end {x['delivered_msgs_per_s_median']} msgs/s {x['delivered_msgs_per_s_rounds']}, "
              f"EOD->reply p50 {x['latency_ms_p50']} ms p99 {x['latency_ms_p99']} ms, "
              f"gate CPU {x['gate_cpu_ms_per_msg_median']} ms/msg")
    print(f"queue/sync: delivered {summary['delivered_ratio_queue_over_sync']}, "
          f"accepted {summary['accepted_ratio_queue_over_sync']}")
    ok = all(summary[m]["delivered_matches_250"] for m in MODES)
    print(f"every 250 reached the sink, nothing else did: {ok}")
    print(f"wrote {out} ({res['total_s']} s in all)")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every peer stopped", file=sys.stderr)
        sys.exit(130)
