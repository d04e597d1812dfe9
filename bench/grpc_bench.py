#!/usr/bin/env python3
"""What the gRPC scoring service (``mailsift scorer serve``) costs over scoring in process,
how it scales with worker processes, and its latency under an open-loop load.

    python3 bench/grpc_bench.py --corpus ../shared/corpora/spamassassin --out bench/out/grpc.json

Messages: the batch split's test part of ``--corpus`` (``--quick``: its first 200).
Model: ``--model``, the shipped bundle by default (it was trained on the whole corpus,
which does not matter for speed). Each server is started as its own subprocess
(``python -m classifier.cli scorer serve``), with a fresh learn-log directory, free
ports picked at start, Prometheus metrics in multiprocess mode as in production but no
metrics HTTP port; it is stopped (SIGTERM, then SIGKILL of its process group) even on
error. The bench waits for its ready file (written once every worker listens) and
then for health SERVING on each worker's own port. Targets from the
issue are printed beside the numbers, never asserted. These machines are shared: each
measurement also records the CPU other processes took meanwhile (/proc/stat, minus
the server's and this process'; steal time counts), and the summary says when that
was enough to blur the numbers.

1. Overhead: the server's CPU time per scored message over gRPC, against the CPU time
   per message of ``Scorer.score(raw)`` in this process. The server's CPU is utime +
   stime from /proc of the supervisor and all its descendants (the worker and
   multiprocessing's resource tracker), read before and after each round; that
   includes everything the service pays per message (gRPC, protobuf in both
   directions, metrics, logging) and its fixed background work (the supervisor's
   0.2 s loop, the worker's learn-log poll), which is measured idle as well. One
   worker, one client thread sending the messages one after another to the worker's
   own port, so the server never runs two requests at once. In-process and server
   rounds are interleaved; each figure is the median over rounds, as in
   bench/speed.py, because these machines are shared and noisy. The speed rows run
   with ``--log-level WARNING`` (no line per decision); a second server with INFO
   logging (one JSON line per decision on stderr, written to a file, the production
   default) is measured in the same rounds. Target: server/in-process <= 1.25.
2. Scale: messages per second with 1 and with 2 worker processes, a load client
   keeping ``--inflight`` (8) requests outstanding, round-robin over the workers' own
   addresses, for all the messages, rounds interleaved between the two servers,
   median. The load client runs on the same 2 cores, so its own CPU per message is
   reported too: it is what the workers lose. Target: 2 workers / 1 worker >= 1.6.
   Two load client designs: ``futures`` (``Score.future`` calls kept as 8 independent
   chains of calls: each reply's done callback issues the next call) and ``threads``
   (8 threads making blocking calls). ``--load-client`` picks the one used, and one
   round of the other on the 2-worker server records what it would have cost. Futures
   is the default: over 5 alternating rounds on 2 workers both cost the load client
   the same CPU within the noise (0.37 and 0.38 ms/message, nearly all of it gRPC's
   own per-call work), a first futures design (a semaphore released by callbacks,
   waking the sending thread each time) cost more, and futures are what the open-loop
   generator of 3 needs anyway.
3. Latency at half the 2-worker throughput: an open-loop generator sends at a fixed
   rate = ``--latency-fraction`` (0.5) x the throughput measured in 2, on a fixed
   timetable, with futures so that a slow reply does not delay the next send, for
   ``--latency-seconds``; latency runs from the scheduled send time to the reply (so
   a late send counts against it). Target: p99 < 50 ms.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from classifier.bundle import DEFAULT_BUNDLE  # noqa: E402
from classifier.proto import scorer_pb2 as pb  # noqa: E402
from classifier.proto import scorer_pb2_grpc as pb_grpc  # noqa: E402
from classifier.scorer import Scorer  # noqa: E402
from training.corpus import batch_split, read_corpus  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
RPC_TIMEOUT = 30.0
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 * 1024 * 1024),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.enable_retries", 0)]


# ------------------------------------------------------------------ processes
def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime + stime in seconds) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            s = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()   # the command name may hold spaces and parentheses
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                children.setdefault(st[0], []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine, all cores (/proc/stat: all but idle and iowait).
    Minus what the server and this process used, it is what others took meanwhile."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK_TCK


def free_port_block(n: int) -> int:
    """A port P with P .. P+n-1 all free on 127.0.0.1 (the shared port and the workers' own)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no block of {n} free ports")


class Server:
    """One ``mailsift scorer serve`` subprocess (supervisor + workers)."""

    def __init__(self, model: str, workers: int, log_level: str, tmp: pathlib.Path, name: str):
        self.model, self.workers, self.log_level, self.name = model, workers, log_level, name
        self.dir = tmp / name
        self.dir.mkdir(parents=True)
        self.stderr_path = self.dir / "stderr.log"
        self.proc: subprocess.Popen | None = None
        self.addresses: list[str] = []
        self.pids: list[int] = []
        self.channels: list[grpc.Channel] = []

    def start(self, timeout: float = 120.0) -> "Server":
        port = free_port_block(self.workers + 1)
        ready = self.dir / "ready"
        cmd = [sys.executable, "-m", "classifier.cli", "scorer", "serve", "--workers", str(self.workers),
               "--model", self.model, "--state", str(self.dir / "state"), "--bind", f"127.0.0.1:{port}",
               "--metrics-port", "0", "--log-level", self.log_level, "--ready-file", str(ready)]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=self._stderr, start_new_session=True)
        end = time.monotonic() + timeout
        while not (ready.exists() and ready.read_text().endswith("\n")):
            self._check_alive()
            if time.monotonic() > end:
                raise RuntimeError(f"{self.name}: no ready file after {timeout:.0f} s")
            time.sleep(0.05)
        self.addresses = [a for a in ready.read_text().strip().split(",") if a]
        self.channels = [grpc.insecure_channel(a, options=CHANNEL_OPTIONS) for a in self.addresses]
        for addr, ch in zip(self.addresses, self.channels):   # each worker's own port
            health = health_pb2_grpc.HealthStub(ch)
            while True:
                self._check_alive()
                try:
                    r = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > end:
                    raise RuntimeError(f"{self.name}: {addr} not SERVING after {timeout:.0f} s")
                time.sleep(0.1)
        self.pids = descendants(self.proc.pid)
        if len(self.pids) < 1 + self.workers:
            raise RuntimeError(f"{self.name}: expected {self.workers} worker processes, found pids {self.pids}")
        return self

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name}: server exited with {self.proc.returncode}:\n{self.stderr_tail()}")

    def stderr_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stubs(self) -> list[pb_grpc.ScorerStub]:
        return [pb_grpc.ScorerStub(c) for c in self.channels]

    def cpu(self) -> dict[int, float]:
        """CPU seconds of every server process seen at start; a vanished one raises."""
        out = {}
        for p in self.pids:
            st = _stat(p)
            if st is None:
                raise RuntimeError(f"{self.name}: server process {p} is gone:\n{self.stderr_tail()}")
            out[p] = st[1]
        return out

    def cpu_total(self) -> float:
        return sum(self.cpu().values())

    def role(self, pid: int) -> str:
        if pid == self.proc.pid:
            return "supervisor"
        try:
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return "gone"
        return "worker" if b"spawn_main" in cmd else "resource_tracker" if b"resource_tracker" in cmd else "other"

    def score_log_lines(self) -> int:
        n = 0
        with open(self.stderr_path, "rb") as fh:
            for line in fh:
                n += b'"event": "score"' in line
        return n

    def stop(self) -> None:
        for c in self.channels:
            c.close()
        self.channels = []
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # the supervisor stops its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        # whatever is left of this server (its own process group, start_new_session=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._stderr.close()
        self.proc = None


# ------------------------------------------------------------------ load clients
class Counts:
    def __init__(self):
        self.ok = 0
        self.errors: dict[str, int] = {}

    def add(self, exc) -> None:
        if exc is None:
            self.ok += 1
        else:
            k = exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__
            self.errors[k] = self.errors.get(k, 0) + 1


class Tally(Counts):
    """Counts for ``n`` calls finishing in gRPC's callback threads; ``done`` is set by the last."""

    def __init__(self, n: int):
        super().__init__()
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()

    def finish(self, exc) -> None:
        with self.lock:
            self.add(exc)
            self.left -= 1
            if self.left == 0:
                self.done.set()


def sequential(stub: pb_grpc.ScorerStub, reqs: list[pb.ScoreRequest]) -> tuple[list[float], Counts]:
    scores, counts = [], Counts()
    for r in reqs:
        try:
            scores.append(stub.Score(r, timeout=RPC_TIMEOUT).score)
            counts.add(None)
        except grpc.RpcError as exc:
            scores.append(float("nan"))
            counts.add(exc)
    return scores, counts


def health_calls(server: Server, n: int) -> float:
    """Server CPU seconds per Health/Check call: what a unary RPC costs the sync gRPC server
    with no application work, the floor under any per-message overhead."""
    stub = health_pb2_grpc.HealthStub(server.channels[0])
    req = health_pb2.HealthCheckRequest(service="")
    c0 = server.cpu_total()
    for _ in range(n):
        stub.Check(req, timeout=RPC_TIMEOUT)
    return (server.cpu_total() - c0) / n


def load_futures(stubs, reqs, inflight: int) -> Counts:
    """``inflight`` chains of futures: each reply's done callback (on gRPC's channel
    thread) issues the next call, so no Python thread waits and wakes per request."""
    nxt = itertools.count()
    k, n = len(stubs), len(reqs)
    counts = Tally(n)
    done = counts.done

    def issue():
        i = next(nxt)
        if i < n:
            stubs[i % k].Score.future(reqs[i], timeout=RPC_TIMEOUT).add_done_callback(on_done)

    def on_done(fut):
        counts.finish(fut.exception())
        issue()

    for _ in range(min(inflight, n)):
        issue()
    if not done.wait(RPC_TIMEOUT * 2 + n):
        raise RuntimeError("load (futures): replies missing")
    return counts


def load_threads(stubs, reqs, inflight: int) -> Counts:
    """``inflight`` threads, each making blocking calls."""
    counts, lock = Counts(), threading.Lock()
    nxt = itertools.count()
    k, n = len(stubs), len(reqs)

    def run():
        while True:
            i = next(nxt)
            if i >= n:
                return
            try:
                stubs[i % k].Score(reqs[i], timeout=RPC_TIMEOUT)
                exc = None
            except grpc.RpcError as e:
                exc = e
            with lock:
                counts.add(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


LOAD_CLIENTS = {"futures": load_futures, "threads": load_threads}


def measure_load(server: Server, reqs, inflight: int, client: str) -> dict:
    stubs = server.stubs()
    m0, s0, c0, t0 = machine_busy(), server.cpu_total(), time.process_time(), time.perf_counter()
    counts = LOAD_CLIENTS[client](stubs, reqs, inflight)
    wall, ccpu, scpu = time.perf_counter() - t0, time.process_time() - c0, server.cpu_total() - s0
    others = machine_busy() - m0 - ccpu - scpu
    return {"msgs_per_s": counts.ok / wall, "wall_s": wall, "ok": counts.ok, "errors": counts.errors,
            "server_cpu_ms_per_msg": 1000 * scpu / len(reqs), "client_cpu_ms_per_msg": 1000 * ccpu / len(reqs),
            "client_cpu_cores": ccpu / wall, "server_cpu_cores": scpu / wall,
            "others_cpu_cores": max(0.0, others / wall)}


def open_loop(server: Server, reqs, rate: float, seconds: float) -> dict:
    """Send at ``rate`` on a fixed timetable; latency from the scheduled time to the reply."""
    stubs = server.stubs()
    k, m = len(stubs), len(reqs)
    n = max(1, int(rate * seconds))
    lat = [float("nan")] * n
    lag = [0.0] * n
    counts = Tally(n)
    done = counts.done

    def on_done(i, t_sched, fut):
        lat[i] = time.perf_counter() - t_sched
        counts.finish(fut.exception())

    m0, s0, c0 = machine_busy(), server.cpu_total(), time.process_time()
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        t_sched = t0 + i / rate
        d = t_sched - time.perf_counter()
        if d > 0:
            time.sleep(d)
        lag[i] = time.perf_counter() - t_sched
        stubs[i % k].Score.future(reqs[i % m], timeout=RPC_TIMEOUT).add_done_callback(
            functools.partial(on_done, i, t_sched))
    t_sent = time.perf_counter()
    if not done.wait(RPC_TIMEOUT * 2):
        raise RuntimeError("open loop: replies missing")
    wall = time.perf_counter() - t0
    ccpu, scpu = time.process_time() - c0, server.cpu_total() - s0
    others = machine_busy() - m0 - ccpu - scpu
    ok_lat = sorted(x for x in lat if x == x)
    ms = [1000 * x for x in ok_lat]
    lag_ms = sorted(1000 * x for x in lag)
    return {"rate_target": rate, "requests": n, "seconds": seconds, "ok": counts.ok, "errors": counts.errors,
            "send_rate_achieved": n / (t_sent - t0) if t_sent > t0 else float("nan"),
            "latency_ms_p50": pct(ms, 50), "latency_ms_p90": pct(ms, 90), "latency_ms_p99": pct(ms, 99),
            "latency_ms_max": ms[-1] if ms else float("nan"),
            "latency_ms_mean": statistics.fmean(ms) if ms else float("nan"),
            "send_lag_ms_p50": pct(lag_ms, 50), "send_lag_ms_p99": pct(lag_ms, 99), "send_lag_ms_max": lag_ms[-1],
            "server_cpu_cores": scpu / wall, "client_cpu_cores": ccpu / wall,
            "others_cpu_cores": max(0.0, others / wall),
            "client_cpu_ms_per_msg": 1000 * ccpu / n, "server_cpu_ms_per_msg": 1000 * scpu / n}


def pct(sorted_xs: list[float], q: float) -> float:
    """The q-th percentile, nearest rank."""
    if not sorted_xs:
        return float("nan")
    i = min(len(sorted_xs) - 1, max(0, int(round(q / 100 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[i]


def warm_up(server: Server, reqs, n: int) -> None:
    counts = load_futures(server.stubs(), reqs[:n] * max(1, server.workers), 2 * server.workers)
    if counts.errors:
        raise RuntimeError(f"{server.name}: warm-up failed: {counts.errors}\n{server.stderr_tail()}")


def idle_cpu(server: Server, seconds: float) -> float:
    """CPU ms per second of the server doing nothing (its loops and polls)."""
    c0, t0 = server.cpu_total(), time.perf_counter()
    time.sleep(seconds)
    return 1000 * (server.cpu_total() - c0) / (time.perf_counter() - t0)


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="spam/ and ham/ dirs, a TREC index, mbox or Maildir")
    ap.add_argument("--format", default="auto")
    ap.add_argument("--model", default=str(DEFAULT_BUNDLE), help="model bundle (default: the shipped one)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the overhead measurement")
    ap.add_argument("--scale-rounds", type=int, default=5, help="interleaved rounds of 1 and 2 workers")
    ap.add_argument("--inflight", type=int, default=8, help="requests outstanding in the scale measurement")
    ap.add_argument("--load-client", default="futures", choices=sorted(LOAD_CLIENTS))
    ap.add_argument("--latency-seconds", type=float, default=15.0)
    ap.add_argument("--latency-fraction", type=float, default=0.5, help="open-loop rate / 2-worker throughput")
    ap.add_argument("--limit", type=int, default=0, help="only the first N test messages (0: all)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 200 messages, 2 rounds, 3 s of latency")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "grpc.json"))
    a = ap.parse_args(argv)
    if a.quick:
        a.limit = a.limit or 200
        a.rounds, a.scale_rounds, a.latency_seconds = min(a.rounds, 2), 1, min(a.latency_seconds, 3.0)

    _, test = batch_split(read_corpus(a.corpus, a.format))
    raws = [m.read() for m in (test[:a.limit] if a.limit else test)]
    reqs = [pb.ScoreRequest(message=r, request_id=f"bench-{i}") for i, r in enumerate(raws)]
    n = len(raws)
    n_warm = min(100, n)
    print(f"{n} messages (batch test part of {a.corpus}), model {a.model}", flush=True)

    scorer = Scorer.load(a.model)
    for r in raws[:n_warm]:
        scorer.score(r)

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mailsift-grpc-bench-"))
    servers: list[Server] = []
    out: dict = {
        "corpus": a.corpus, "model": a.model, "model_version": scorer.version, "messages": n,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "grpc": grpc.__version__,
                    "loadavg_at_start": os.getloadavg()},
    }

    def started(*args) -> Server:
        s = Server(a.model, *args, tmp=tmp, name=f"{args[1].lower()}-{args[0]}w-{len(servers)}")
        servers.append(s)
        return s.start()

    try:
        # ---- 1. overhead: one worker, sequential, WARNING and INFO logging, vs in process
        warn1 = started(1, "WARNING")
        info1 = started(1, "INFO")
        for s in (warn1, info1):
            warm_up(s, reqs, n_warm)
        idle = {"warning_1w": idle_cpu(warn1, 3.0 if not a.quick else 1.0)}
        print(f"servers up; idle server CPU {idle['warning_1w']:.1f} ms/s; overhead rounds:", flush=True)
        samples: dict[str, list[float]] = {"in_process": [], "server_warning": [], "server_info": [],
                                           "health_check_floor": []}
        by_role: dict[str, float] = {}
        client_cpu: list[float] = []
        errors: dict[str, dict] = {}
        agree = None
        lines0 = info1.score_log_lines()
        others_rounds: list[float] = []
        for rnd in range(a.rounds):
            m_r, c_r, t_r = machine_busy(), time.process_time(), time.perf_counter()
            srv_r = warn1.cpu_total() + info1.cpu_total()
            c0 = time.process_time()
            ref = [scorer.score(r).score for r in raws]
            samples["in_process"].append((time.process_time() - c0) / n)
            for key, s in (("server_warning", warn1), ("server_info", info1)):
                stub = s.stubs()[0]
                s0, c0 = s.cpu(), time.process_time()
                got, counts = sequential(stub, reqs)
                s1 = s.cpu()
                samples[key].append(sum(s1[p] - s0[p] for p in s0) / n)
                if key == "server_warning":
                    for p in s0:
                        by_role[s.role(p)] = by_role.get(s.role(p), 0.0) + (s1[p] - s0[p]) / (n * a.rounds)
                if key == "server_warning":
                    client_cpu.append((time.process_time() - c0) / n)
                if counts.errors:
                    errors.setdefault(key, {}).update(counts.errors)
                if rnd == 0 and key == "server_warning":
                    agree = max(abs(x - y) for x, y in zip(ref, got))
            samples["health_check_floor"].append(health_calls(warn1, min(n, 1000)))
            others_rounds.append(max(0.0, (machine_busy() - m_r - (time.process_time() - c_r)
                                           - (warn1.cpu_total() + info1.cpu_total() - srv_r))
                                     / (time.perf_counter() - t_r)))
            print(f"  round {rnd + 1}: in-process {1000 * samples['in_process'][-1]:.3f},"
                  f" server WARNING {1000 * samples['server_warning'][-1]:.3f},"
                  f" INFO {1000 * samples['server_info'][-1]:.3f} CPU ms/msg;"
                  f" Health/Check {1000 * samples['health_check_floor'][-1]:.3f} CPU ms/call;"
                  f" others used {others_rounds[-1]:.2f} cores", flush=True)
        info_lines = info1.score_log_lines() - lines0
        med = {k: statistics.median(v) for k, v in samples.items()}
        per_round = {k: [x / y for x, y in zip(samples[k], samples["in_process"])]
                     for k in ("server_warning", "server_info")}
        info1.stop()
        out["overhead"] = {
            "workers": 1, "rounds": a.rounds, "client": "one thread, blocking Score calls to the worker's own port",
            "cpu_ms_per_msg": {k: 1000 * v for k, v in med.items()},
            "cpu_ms_per_msg_rounds": {k: [1000 * x for x in v] for k, v in samples.items()},
            "ratio_warning": med["server_warning"] / med["in_process"],
            "ratio_info": med["server_info"] / med["in_process"],
            "ratio_per_round": per_round,
            "ratio_warning_median_of_rounds": statistics.median(per_round["server_warning"]),
            "ratio_info_median_of_rounds": statistics.median(per_round["server_info"]),
            "client_cpu_ms_per_msg": 1000 * statistics.median(client_cpu),
            "server_warning_cpu_ms_per_msg_by_process": {k: 1000 * v for k, v in by_role.items()},
            "server_idle_cpu_ms_per_s": idle["warning_1w"],
            "info_score_log_lines": info_lines, "info_score_log_lines_expected": a.rounds * n,
            "max_abs_score_diff_server_vs_in_process": agree,
            "others_cpu_cores_per_round": others_rounds,
            "errors": errors, "target_ratio_max": 1.25,
        }

        # ---- 2. scale: 1 vs 2 workers, 8 in flight
        warn2 = started(2, "WARNING")
        warm_up(warn2, reqs, n_warm)
        runs: dict[str, list[dict]] = {"1": [], "2": []}
        print(f"scale rounds ({a.load_client} load client, {a.inflight} in flight):", flush=True)
        for rnd in range(a.scale_rounds):
            for w, s in (("1", warn1), ("2", warn2)):
                r = measure_load(s, reqs, a.inflight, a.load_client)
                runs[w].append(r)
                print(f"  round {rnd + 1}, {w} worker(s): {r['msgs_per_s']:.0f} msg/s, server"
                      f" {r['server_cpu_ms_per_msg']:.3f} CPU ms/msg, client {r['client_cpu_ms_per_msg']:.3f}"
                      f" CPU ms/msg ({r['client_cpu_cores']:.2f} cores); others used {r['others_cpu_cores']:.2f} cores"
                      + (f", errors {r['errors']}" if r["errors"] else ""), flush=True)
        other = "threads" if a.load_client == "futures" else "futures"
        alt = measure_load(warn2, reqs, a.inflight, other)
        print(f"  other load client ({other}), 2 workers: {alt['msgs_per_s']:.0f} msg/s, client"
              f" {alt['client_cpu_ms_per_msg']:.3f} CPU ms/msg", flush=True)
        warn1.stop()

        def summary(rs: list[dict]) -> dict:
            return {k: statistics.median(r[k] for r in rs) for k in
                    ("msgs_per_s", "server_cpu_ms_per_msg", "client_cpu_ms_per_msg", "client_cpu_cores",
                     "server_cpu_cores", "others_cpu_cores")}

        s1, s2 = summary(runs["1"]), summary(runs["2"])
        out["scale"] = {
            "inflight": a.inflight, "load_client": a.load_client, "rounds": a.scale_rounds,
            "messages_per_round": n, "workers_1": s1, "workers_2": s2,
            "ratio": s2["msgs_per_s"] / s1["msgs_per_s"], "target_ratio_min": 1.6,
            "ratio_median_of_rounds": statistics.median(
                r2["msgs_per_s"] / r1["msgs_per_s"] for r1, r2 in zip(runs["1"], runs["2"])),
            # the server's CPU per message when busy (no idle gaps between requests), 1 worker
            "server_cpu_ratio_to_in_process_1w_loaded":
                s1["server_cpu_ms_per_msg"] / out["overhead"]["cpu_ms_per_msg"]["in_process"],
            "runs": runs, "other_load_client": {"name": other, "workers": 2, **alt},
        }

        # ---- 3. latency at half the 2-worker throughput, open loop
        rate = a.latency_fraction * s2["msgs_per_s"]
        print(f"open loop at {rate:.0f} msg/s for {a.latency_seconds:g} s on 2 workers ...", flush=True)
        lat = open_loop(warn2, reqs, rate, a.latency_seconds)
        warn2.stop()
        out["latency"] = {"workers": 2, "fraction_of_throughput": a.latency_fraction, **lat,
                          "target_p99_ms_max": 50.0}
    except BaseException:
        for s in servers:
            if s.proc is not None:
                print(f"--- {s.name} stderr (tail):\n{s.stderr_tail()}", file=sys.stderr)
        raise
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    o, sc, lt = out["overhead"], out["scale"], out["latency"]
    out["machine"]["loadavg_at_end"] = os.getloadavg()
    # CPU that other processes took while we measured: the noise in these numbers
    out["machine"]["others_cpu_cores_mean"] = busy = statistics.fmean(
        o["others_cpu_cores_per_round"] + [r["others_cpu_cores"] for rs in sc["runs"].values() for r in rs]
        + [lt["others_cpu_cores"]])
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(out, indent=1))

    c = o["cpu_ms_per_msg"]
    print()
    print(f"overhead: 1 worker, one client thread, {n} messages, median of {a.rounds} interleaved rounds")
    print(f"  {'in process (Scorer.score)':30s} {c['in_process']:7.3f} CPU ms/msg")
    print(f"  {'server, --log-level WARNING':30s} {c['server_warning']:7.3f} CPU ms/msg  x{o['ratio_warning']:.2f}"
          f"  (target <= 1.25; median of per-round ratios x{o['ratio_warning_median_of_rounds']:.2f})")
    print(f"  {'server, --log-level INFO':30s} {c['server_info']:7.3f} CPU ms/msg  x{o['ratio_info']:.2f}")
    print(f"  {'gRPC floor: server per Health/Check':30s} {c['health_check_floor']:7.3f} CPU ms/call")
    print(f"  server idle: {o['server_idle_cpu_ms_per_s']:.1f} CPU ms/s; client {o['client_cpu_ms_per_msg']:.3f}"
          f" CPU ms/msg; max |score diff| vs in process {o['max_abs_score_diff_server_vs_in_process']:.2g}")
    print(f"scale: {sc['inflight']} in flight, {sc['load_client']} load client, median of {sc['rounds']} rounds")
    for w in ("1", "2"):
        r = sc[f"workers_{w}"]
        print(f"  {w} worker{'s' if w == '2' else ' '} {r['msgs_per_s']:7.0f} msg/s"
              f"   server {r['server_cpu_ms_per_msg']:.3f} CPU ms/msg ({r['server_cpu_cores']:.2f} cores)"
              f"   load client {r['client_cpu_ms_per_msg']:.3f} CPU ms/msg ({r['client_cpu_cores']:.2f} cores)"
              f"   others {r['others_cpu_cores']:.2f} cores")
    print(f"  2 / 1 workers: x{sc['ratio']:.2f}  (target >= 1.6; median of per-round ratios"
          f" x{sc['ratio_median_of_rounds']:.2f}); 1 worker busy: server CPU/msg"
          f" x{sc['server_cpu_ratio_to_in_process_1w_loaded']:.2f} in-process")
    print(f"latency: open loop at {lt['rate_target']:.0f} msg/s ({a.latency_fraction:g} x 2-worker throughput),"
          f" {lt['requests']} requests over {a.latency_seconds:g} s")
    print(f"  p50 {lt['latency_ms_p50']:.2f} ms, p90 {lt['latency_ms_p90']:.2f} ms, p99 {lt['latency_ms_p99']:.2f} ms"
          f" (target < 50), max {lt['latency_ms_max']:.1f} ms; send lag p99 {lt['send_lag_ms_p99']:.2f} ms")
    print(f"  server {lt['server_cpu_cores']:.2f} cores, load client {lt['client_cpu_cores']:.2f},"
          f" others on the machine {lt['others_cpu_cores']:.2f}")
    if busy > 0.2:
        print(f"NOTE: other processes used {busy:.2f} of the {os.cpu_count()} cores on average meanwhile;"
              " the numbers are noisy, rerun on a quieter machine")
    errs = {k: v for k, v in (("overhead", o["errors"]), ("latency", lt["errors"])) if v}
    errs.update({f"scale {w}w": r["errors"] for w, rs in sc["runs"].items() for r in rs if r["errors"]})
    if errs:
        print(f"RPC errors: {errs}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
