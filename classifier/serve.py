"""``mailsift scorer serve``: the supervisor of the scorer's worker processes.

Scoring is CPU-bound Python, so one process per core: each worker loads the model,
listens on the shared port with SO_REUSEPORT, and also on a port of its own (the shared
port + 1 + its index). Clients (classifier/client.py, the gate) spread requests over
the workers' own ports round-robin; a load balancer or grpcurl can use the shared
port. One process per core, rather than a process pool behind one async server,
because a pool pays an IPC round trip with a pickled message and reply per request,
which the 1.25x CPU budget over in-process scoring does not leave room for
(bench/grpc_bench.py measures the result).

The supervisor:
- starts the workers (spawned, so no gRPC state crosses a fork);
- passes SIGHUP (reload the bundle) on to every worker; the Reload RPC signals it too;
- restarts a worker that dies, with backoff;
- serves Prometheus metrics for all workers on --metrics-port (prometheus_client's
  multiprocess mode);
- on SIGTERM/SIGINT stops the workers, each finishing its requests in flight.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pathlib
import shutil
import signal
import tempfile
import time

from .logs import log_event
from .server import WorkerConfig, worker_main

log = logging.getLogger("mailsift.scorer.supervisor")


def own_port(bind: str, index: int) -> int:
    return int(bind.rsplit(":", 1)[1]) + 1 + index


def serve(base: WorkerConfig, workers: int, metrics_port: int = 0, log_level: str = "INFO",
          ready_file: str | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    from . import logs

    logs.setup(log_level)
    pathlib.Path(base.learnlog).parent.mkdir(parents=True, exist_ok=True)
    prom_dir = tempfile.mkdtemp(prefix="mailsift-prom-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
    os.environ["MAILSIFT_SUPERVISOR_PID"] = str(os.getpid())
    ctx = mp.get_context("spawn")

    def config(i: int) -> WorkerConfig:
        return WorkerConfig(**{**base.__dict__, "worker": i, "own_port": own_port(base.bind, i)})

    def start(i: int, ready=None):
        p = ctx.Process(target=worker_main, args=(config(i), log_level, ready), name=f"mailsift-scorer-{i}")
        p.start()
        return p

    ready = {i: ctx.Event() for i in range(workers)}
    procs = {i: start(i, ready[i]) for i in range(workers)}
    restarts = {i: 0 for i in range(workers)}
    stop = {"flag": False}

    def on_hup(signum, frame):
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGHUP)

    def on_term(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    if metrics_port:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(metrics_port, addr=base.bind.rsplit(":", 1)[0] or "127.0.0.1", registry=registry)
    ports = [base.bind] + [f"{base.bind.rsplit(':', 1)[0]}:{own_port(base.bind, i)}" for i in range(workers)]
    log_event(log, "supervisor_started", pid=os.getpid(), workers=workers, addresses=ports,
              metrics_port=metrics_port or None, model=base.model, learnlog=base.learnlog)

    try:
        # Startup: every worker must load its model and listen. A worker that dies first
        # (a bundle that cannot be loaded, a port in use) stops the whole server with an
        # error; restarting it would only fail again.
        while not all(e.is_set() for e in ready.values()):
            dead = [i for i, p in procs.items() if not p.is_alive() and not ready[i].is_set()]
            if dead or stop["flag"]:
                if dead:
                    log_event(log, "worker_failed_to_start", logging.ERROR, workers=dead,
                              exitcodes=[procs[i].exitcode for i in dead])
                return 1 if dead else 0
            time.sleep(0.05)
        log_event(log, "serving", addresses=ports)
        if ready_file:
            pathlib.Path(ready_file).write_text(",".join(ports[1:]) + "\n")
        while not stop["flag"]:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                if p.is_alive() or stop["flag"]:
                    continue
                restarts[i] += 1
                delay = min(30.0, 0.5 * 2 ** min(restarts[i], 6))
                log_event(log, "worker_died", logging.ERROR, worker=i, exitcode=p.exitcode,
                          restart_in_s=delay, restarts=restarts[i])
                end = time.monotonic() + delay
                while not stop["flag"] and time.monotonic() < end:  # a SIGTERM cuts the wait short
                    time.sleep(0.1)
                if not stop["flag"]:
                    procs[i] = start(i)
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker finishes its requests in flight
        for p in procs.values():
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        shutil.rmtree(prom_dir, ignore_errors=True)
        log_event(log, "supervisor_stopped", pid=os.getpid())
    return 0
