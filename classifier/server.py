"""One scorer worker process: the gRPC servicer over a loaded model bundle.

``mailsift scorer serve`` (classifier/serve.py) runs one worker per core. Each worker
listens on the shared port (SO_REUSEPORT) and on a port of its own. Clients spread
their requests over the workers' own ports; grpcurl and load balancers can use the
shared one.

- Deadlines: a request whose deadline has passed when a worker gets to it is answered
  DEADLINE_EXCEEDED and not scored.
- Load: at most ``max_queue`` requests are in a worker at once; beyond that gRPC
  answers RESOURCE_EXHAUSTED instead of queueing without bound. Messages larger than
  the configured limit get RESOURCE_EXHAUSTED from gRPC itself.
- Learning goes through the learn log (classifier/learnlog.py), so every worker
  learns everything, in the same order.
- Reload (SIGHUP or the Reload RPC) loads the bundle in the background and replays
  the learn log on it. Until it swaps the model in, the old one keeps answering.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

import grpc

from . import wire
from .bundle import load_bundle
from .features import extract, message_digest
from .learnlog import NOOP, RELEARNED, LearnLog
from .logs import log_event
from .proto import scorer_pb2 as pb
from .proto import scorer_pb2_grpc as pb_grpc
from .scorer import Scorer

log = logging.getLogger("mailsift.scorer")

# Which classifiers a learn teaches when the request names none: feedback teaches this
# installation's own model at once, and the global model waits for the next retrain
# (issue: release/report feed cluster_tokens; training data teaches them all).
DEFAULT_TARGETS = {"release": ["cluster_tokens"], "report": ["cluster_tokens"],
                   "trap": ["cluster_tokens"], "training": []}


@dataclass
class WorkerConfig:
    model: str
    learnlog: str
    bind: str = "127.0.0.1:50051"           # the shared port
    own_port: int = 0                       # this worker's own port (0: none)
    max_queue: int = 64
    max_message_bytes: int = 25 * 1024 * 1024
    evidence: int = 5
    manifest_sha256: str | None = None
    worker: int = 0
    poll_seconds: float = 0.2               # how often idle workers pick up others' learns
    reputation: str | None = None           # the reputation checks' TOML (None: defaults)
    state_dir: str | None = None            # where their stores live (default: beside the learn log)


class Metrics:
    """Prometheus metrics, shared by the worker processes (multiprocess mode)."""

    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("mailsift_scorer_requests", "Scorer RPCs", ["method", "code"])
        self.latency = Histogram("mailsift_scorer_request_seconds", "Time spent in a scorer RPC", ["method"],
                                 buckets=(.001, .002, .003, .005, .0075, .01, .02, .05, .1, .25, .5, 1, 2.5))
        self.classifications = Counter("mailsift_scorer_classifications", "Verdicts by classification",
                                       ["classification"])
        self.learns = Counter("mailsift_scorer_learns", "Learn requests by outcome", ["outcome"])
        self.model = Gauge("mailsift_scorer_model_info", "Model version being served (1)", ["version"],
                           multiprocess_mode="max")


class ScorerService(pb_grpc.ScorerServicer):
    def __init__(self, cfg: WorkerConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics
        self._lock = threading.Lock()          # the model: scoring and learning take turns
        self._log = LearnLog(cfg.learnlog)
        from .reputation.suite import Reputation, load_config

        self._reputation = Reputation(load_config(cfg.reputation),
                                      cfg.state_dir or os.path.dirname(os.path.abspath(cfg.learnlog)))
        self._scorer, self._applied, self._receipts = self._load()
        self._reloads = threading.Condition()
        self._generation = 0                   # counts reloads attempted (done or failed)
        self._last_reload_error: str | None = None
        self._set_model_metric(None)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="learnlog-poll", daemon=True)
        self._poller.start()

    # ---- model state
    def _load(self):
        """A bundle with the learn log replayed on it: (scorer, last applied id, receipts)."""
        # a models directory's ``current`` is a symlink the retraining job switches:
        # resolved once, so a reload reads one bundle's manifest and files, never a mix
        scorer = Scorer(load_bundle(os.path.realpath(self.cfg.model), self.cfg.manifest_sha256))
        # a retrained bundle has the feedback up to ``learnlog_upto`` folded in, and the
        # receipts of those learns (training/retrain.py): a change of mind about one of
        # them, logged later, undoes the folded label as if this process had learned it
        receipts: dict[str, dict] = dict(scorer.bundle.training.get("folded_receipts") or {})
        applied = int(scorer.bundle.training.get("learnlog_upto", 0))
        for entry in self._log.since(applied):
            self._apply(scorer, receipts, entry)
            applied = entry.id
        return scorer, applied, receipts

    @staticmethod
    def _apply(scorer: Scorer, receipts: dict, entry) -> None:
        if entry.outcome == NOOP:
            return
        f = extract(entry.message)
        if entry.outcome == RELEARNED and entry.digest in receipts:
            scorer.unlearn(f, receipts.pop(entry.digest))
        receipts[entry.digest] = scorer.learn(f, entry.label, entry.classifiers or None)

    def catch_up(self, upto: int | None = None) -> None:
        with self._lock:
            for entry in self._log.since(self._applied, upto):
                self._apply(self._scorer, self._receipts, entry)
                self._applied = entry.id

    def _poll(self) -> None:
        while not self._stop.wait(self.cfg.poll_seconds):
            try:
                if self._log.last_id() > self._applied:
                    self.catch_up()
            except Exception:  # keep serving; the next poll or learn retries
                log.exception("learn log poll failed")

    def reload(self) -> tuple[str, bool]:
        """Load the bundle again and swap it in; the old model answers meanwhile."""
        old = self._scorer.version
        try:
            scorer, applied, receipts = self._load()
        except Exception as exc:  # whatever went wrong, the old model keeps serving
            log_event(log, "reload_failed", logging.ERROR, worker=self.cfg.worker,
                      error=f"{type(exc).__name__}: {exc}", serving=old)
            self._reloaded(f"{type(exc).__name__}: {exc}")
            raise
        with self._lock:
            # learns that arrived while loading are applied before the swap
            for entry in self._log.since(applied):
                self._apply(scorer, receipts, entry)
                applied = entry.id
            self._scorer, self._applied, self._receipts = scorer, applied, receipts
        self._set_model_metric(old)
        log_event(log, "reloaded", worker=self.cfg.worker, model=scorer.version, previous=old)
        self._reloaded(None)
        return scorer.version, scorer.version != old

    def _reloaded(self, error: str | None) -> None:
        with self._reloads:
            self._generation += 1
            self._last_reload_error = error
            self._reloads.notify_all()

    def _set_model_metric(self, previous: str | None) -> None:
        if self.metrics:
            if previous is not None:
                self.metrics.model.labels(previous).set(0)
            self.metrics.model.labels(self._scorer.version).set(1)

    def close(self) -> None:
        self._stop.set()
        self._log.close()
        self._reputation.close()

    # ---- RPCs
    async def _begin(self, context, method: str) -> float:
        remaining = context.time_remaining()
        if (remaining is not None and remaining <= 0) or context.cancelled():
            self._count(method, "DEADLINE_EXCEEDED")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the scorer got to it")
        return time.perf_counter()

    def _count(self, method: str, code: str, t0: float | None = None) -> None:
        if self.metrics:
            self.metrics.requests.labels(method, code).inc()
            if t0 is not None:
                self.metrics.latency.labels(method).observe(time.perf_counter() - t0)

    async def _invalid(self, context, method: str, why: str):
        self._count(method, "INVALID_ARGUMENT")
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)

    async def _score(self, request: pb.ScoreRequest, context) -> pb.ScoreReply:
        t0 = await self._begin(context, "Score")
        if not request.message:
            await self._invalid(context, "Score", "message is empty")
        if request.HasField("threshold") and not 0.0 < request.threshold <= 1.0:
            await self._invalid(context, "Score", f"threshold {request.threshold} is not in (0, 1]")
        facts = wire.facts_from_proto(request.facts, request.envelope.authenticated)
        f = extract(request.message)            # outside the lock: it touches no model state
        findings, _ = await self._reputation.evaluate(request.message, f, list(request.envelope.rcpt_to))
        with self._lock:
            v = self._scorer.score(f, facts=facts, threshold=request.threshold if request.HasField("threshold") else None,
                                   evidence=request.evidence or self.cfg.evidence, findings=findings)
        reply = wire.verdict_to_proto(v, request.request_id)
        reply.elapsed_ms = (time.perf_counter() - t0) * 1000.0  # parsing included
        self._count("Score", "OK", t0)
        if self.metrics:
            self.metrics.classifications.labels(v.classification).inc()
        if log.isEnabledFor(logging.INFO):
            self._log_score(request, v, reply)
        return reply

    def _log_score(self, request, v, reply) -> None:
        top = v.strongest()
        log_event(log, "score", worker=self.cfg.worker, request_id=request.request_id, digest=v.digest,
                  settings_id=request.settings_id, client_ip=request.envelope.client_ip,
                  classification=v.classification, verdict=v.verdict, score=round(v.score, 6),
                  threshold=v.threshold, model=v.model_version, elapsed_ms=round(reply.elapsed_ms, 3),
                  evidence=(f"{top.id}={top.p_spam:.4f} " + ", ".join(str(c) for c in top.evidence[:3])) if top else "",
                  gave_up=v.gaveup or None)

    # The handlers are coroutines of a grpc.aio server, and they score right on its event
    # loop thread: a thread pool's hand-off per request cost 0.15-0.3 ms of CPU and a
    # dozen context switches (bench/grpc_bench.py), and scoring holds the GIL anyway.
    async def Score(self, request, context):
        return await self._score(request, context)

    async def ScoreStream(self, request_iterator, context):
        async for request in request_iterator:
            yield await self._score(request, context)

    async def Learn(self, request, context):
        """Record a labelled message in the learn log, apply it to this worker's model and,
        for feedback (release, report, trap), teach the reputation stores. ``trusted``
        (the feedback store vouches for the reporter) lets the ``reported`` and ``neardup``
        checks decide on one vote; a ``trap`` Learn is trusted whatever the request says:
        a spam trap catches spam by nature."""
        t0 = await self._begin(context, "Learn")
        if not request.message:
            await self._invalid(context, "Learn", "message is empty")
        label = wire.LABELS.get(request.label)
        source = wire.SOURCES.get(request.source)
        if label is None:
            await self._invalid(context, "Learn", "label must be LABEL_SPAM or LABEL_HAM")
        if source is None:
            await self._invalid(context, "Learn", "source must be one of release, report, training, trap")
        try:
            names = [wire.id_of(c) for c in request.classifiers] or DEFAULT_TARGETS[source]
        except ValueError as exc:
            await self._invalid(context, "Learn", str(exc))
        unknown = set(names) - set(self._scorer.bundle.model.names_)
        if unknown:
            await self._invalid(context, "Learn", f"the model has no classifiers {sorted(unknown)}")
        digest = message_digest(request.message)
        entry = self._log.record(digest, label, source, request.who or "unknown", names, request.message)
        self.catch_up(upto=entry.id)
        taught_reputation = None
        # a spam trap's address is published nowhere a person would write to: what it
        # catches is spam by nature, as trusted as an admin's report
        trusted = request.trusted or source == "trap"
        if source in ("release", "report", "trap"):
            # the stores are shared files: taught once, here, not by every worker's replay.
            # The digest stores count a message once (noop: learned before); the reported
            # check counts reporters, so a later reporter of the same bytes still votes
            taught_reputation = self._reputation.learn(
                request.message, label, who=request.who or "unknown", trusted=trusted,
                only=("reported",) if entry.outcome == NOOP else None)
        self._count("Learn", "OK", t0)
        if self.metrics:
            self.metrics.learns.labels(entry.outcome).inc()
        log_event(log, "learn", worker=self.cfg.worker, audit_id=entry.id, digest=digest, label=label,
                  outcome=entry.outcome, previous_label=entry.previous_label, source=source, who=entry.who,
                  classifiers=names or "all", reputation=taught_reputation, trusted=trusted)
        taught = names or list(self._scorer.bundle.model.names_)
        return pb.LearnReply(outcome=wire.OUTCOMES[entry.outcome], digest=digest, audit_id=entry.id,
                             classifiers=[wire.enum_of(n) for n in taught])

    async def Explain(self, request, context):
        t0 = await self._begin(context, "Explain")
        if not request.message:
            await self._invalid(context, "Explain", "message is empty")
        n = request.per_classifier or 10
        f = extract(request.message)
        findings, _ = await self._reputation.evaluate(request.message, f)
        with self._lock:
            # ask for more clues than needed: the strongest ones may all point one way
            v = self._scorer.score(f, facts=wire.facts_from_proto(request.facts), evidence=4 * n,
                                   findings=findings)
        out = []
        for c in v.classifiers:
            out.append(pb.ClassifierExplanation(
                classification=wire.enum_of(c.id), p_spam=c.p_spam, abstained=c.abstained, reason=c.reason,
                for_spam=[pb.Clue(feature=e.feature, weight=e.weight) for e in c.evidence if e.weight > 0][:n],
                for_ham=[pb.Clue(feature=e.feature, weight=e.weight) for e in c.evidence if e.weight < 0][:n]))
        self._count("Explain", "OK", t0)
        return pb.ExplainReply(score=v.score, classifiers=out, model_version=v.model_version, digest=v.digest)

    async def Reload(self, request, context):
        t0 = await self._begin(context, "Reload")
        old = self._scorer.version
        supervisor = os.environ.get("MAILSIFT_SUPERVISOR_PID")
        if supervisor:
            # every worker must reload, this one included: the supervisor passes SIGHUP
            # on to all of them, and this call waits for this worker's own reload
            with self._reloads:
                start = self._generation
            os.kill(int(supervisor), signal.SIGHUP)
            done, error = await asyncio.to_thread(self._wait_reload, start, context.time_remaining() or 300.0)
            if not done:
                self._count("Reload", "DEADLINE_EXCEEDED")
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "reload still running; it will finish")
        else:
            try:
                await asyncio.to_thread(self.reload)
                error = None
            except Exception as exc:  # logged by reload()
                error = f"{type(exc).__name__}: {exc}"
        if error:
            self._count("Reload", "FAILED_PRECONDITION")
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"bundle not reloaded, still serving {old}: {error}")
        self._count("Reload", "OK", t0)
        version = self._scorer.version
        return pb.ReloadReply(model_version=version, changed=version != old)

    def _wait_reload(self, start: int, timeout: float) -> tuple[bool, str | None]:
        with self._reloads:
            done = self._reloads.wait_for(lambda: self._generation > start, timeout=timeout)
            return done, self._last_reload_error


async def build_server(cfg: WorkerConfig, service: ScorerService) -> tuple[grpc.aio.Server, list[int]]:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    options = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", cfg.max_message_bytes + 64 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    server = grpc.aio.server(maximum_concurrent_rpcs=cfg.max_queue, options=options)
    pb_grpc.add_ScorerServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    name = pb.DESCRIPTOR.services_by_name["Scorer"].full_name
    reflection.enable_server_reflection((name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    ports = [server.add_insecure_port(cfg.bind)]
    if cfg.own_port:
        host = cfg.bind.rsplit(":", 1)[0]
        ports.append(server.add_insecure_port(f"{host}:{cfg.own_port}"))
    for service_name in ("", name):
        await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    return server, ports


def worker_main(cfg: WorkerConfig, log_level: str = "INFO", ready=None) -> None:
    """Entry point of a worker process (spawned by the supervisor); ``ready`` (an Event)
    is set once the model is loaded and the server listens."""
    from . import logs

    logs.setup(log_level)
    asyncio.run(_worker(cfg, ready))


async def _worker(cfg: WorkerConfig, ready) -> None:
    metrics = Metrics() if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else None
    service = ScorerService(cfg, metrics)
    server, ports = await build_server(cfg, service)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, lambda: threading.Thread(
        target=_safe_reload, args=(service,), name="reload", daemon=True).start())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    log_event(log, "worker_started", worker=cfg.worker, pid=os.getpid(), ports=ports,
              reputation=service._reputation.status(),
              model=service._scorer.version, learnlog_applied=service._applied)
    if ready is not None:
        ready.set()
    await stopping.wait()
    # finish what is in flight, refuse new work
    await server.stop(grace=5.0)
    service.close()
    log_event(log, "worker_stopped", worker=cfg.worker, pid=os.getpid())


def _safe_reload(service: ScorerService) -> None:
    try:
        service.reload()
    except Exception:  # reload() logged it and keeps serving the old model
        pass
