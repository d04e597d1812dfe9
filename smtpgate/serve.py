"""Running the gate: listeners, the parts they share, and (optionally) the scorer.

``mailsift gate serve --config FILE`` builds everything from the configuration here,
in ``main``'s call, and nowhere else. With ``[scorer] spawn = true`` (the shipped
default config) the gate starts ``mailsift scorer serve`` as its child on the first
scorer address and waits until it serves, so one command runs the whole filter on
loopback; in production the scorer runs on its own and the gate only connects.

Accepted mail goes into the durable queue (``<state_dir>/queue``, ``smtpgate.queue``)
and the delivery workers (``smtpgate.deliverer``) started here take it from there; they
run even with ``[queue] enabled = false``, which only makes the gate relay while the
sender waits, because released quarantined mail and bounces still go through the
queue. A housekeeping task purges delivered mail after ``keep_delivered`` and the
quarantine after its retention, hourly.

Shutdown (SIGTERM/SIGINT): listeners stop accepting, sessions in progress get
``drain`` seconds to finish, deliveries in flight a few seconds more, then the scorer
child is stopped.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
import weakref
from pathlib import Path

from classifier.client import AsyncRemoteScorer

from .config import GateConfig
from .decisionlog import DecisionLog
from .deliverer import Deliverer
from .delivery import SmtpRelay
from .dns import Resolver
from .gate import Gate
from .quarantine import Quarantine
from .queue import Queue
from .smtp import GateSMTP
from .tlsutil import self_signed, server_context

log = logging.getLogger("mailsift.gate")

# aiosmtpd's per-session command budgets: floods of NOOP/VRFY/HELP from one session
# are a probe, not mail. Everything else is bounded by max_recipients and the timeouts.
CALL_LIMITS = {"NOOP": 20, "VRFY": 10, "EXPN": 10, "HELP": 10, "RSET": 100, "*": 10_000}

# How often delivered mail past keep_delivered and quarantined mail past its retention
# are purged: both keep for days, so an hour late is nothing.
PURGE_INTERVAL = 3600.0


def spawn_scorer(cfg: GateConfig, timeout: float = 120.0) -> tuple[subprocess.Popen, list[str]]:
    """Start ``mailsift scorer serve`` and wait until it serves; returns the process and
    its workers' own addresses (the client spreads calls over them; the shared port
    alone would keep one channel on one worker)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    ready = cfg.state_dir / "scorer.ready"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "classifier.cli", "scorer", "serve",
           "--bind", cfg.scorer_addresses[0], "--workers", str(cfg.scorer_workers),
           "--state", str(cfg.state_dir / "scorer"), "--ready-file", str(ready),
           "--max-message-mb", str(max(1, -(-cfg.max_message_size // (1024 * 1024)) + 1)),
           "--metrics-port", "0"]
    model = cfg.scorer_model
    if not model and (cfg.state_dir / "models" / "current").exists():
        # `mailsift retrain` keeps its promoted bundles there: serve the current one,
        # so that a promotion (and its Reload) reaches the gate's own scorer
        model = str(cfg.state_dir / "models" / "current")
    if model:
        cmd += ["--model", model]
    if cfg.scorer_reputation:
        cmd += ["--reputation", cfg.scorer_reputation]
    proc = subprocess.Popen(cmd)
    end = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the scorer exited with status {proc.returncode} before serving")
        if time.monotonic() > end:
            proc.terminate()
            raise RuntimeError(f"the scorer did not serve within {timeout:.0f} s")
        time.sleep(0.05)
    workers = [a.strip() for a in ready.read_text().split(",") if a.strip()]
    return proc, workers or list(cfg.scorer_addresses)


async def open_store(cfg: GateConfig, clock):
    """The stateful protections' store, as ``[state]`` says: SQLite in the state dir (one
    gate) or a Redis shared by several gate nodes."""
    s = cfg.state
    if s.backend == "redis":
        from .state import RedisStore

        store = RedisStore(s.redis_url, prefix=s.redis_prefix, timeout_s=s.timeout, clock=clock)
    else:
        from .state import SqliteStore

        store = SqliteStore(s.path or cfg.state_dir / "state.db", clock=clock)
    await store.open()
    await store.ping()
    return store


class GateServer:
    def __init__(self, cfg: GateConfig):
        self.cfg = cfg
        self.servers: list[asyncio.AbstractServer] = []
        self.gate: Gate | None = None
        self.scorer: AsyncRemoteScorer | None = None
        self.decisions: DecisionLog | None = None
        self.queue: Queue | None = None
        self.sessions: weakref.WeakSet[GateSMTP] = weakref.WeakSet()
        self.deliverer: Deliverer | None = None
        self._housekeeping: asyncio.Task | None = None

    def _tls(self):
        cert, key = self.cfg.tls_cert, self.cfg.tls_key
        if cert is None:
            cert, key = self_signed(self.cfg.state_dir, self.cfg.hostname)
        return server_context(cert, key)

    async def start(self) -> None:
        cfg = self.cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        resolver = Resolver(list(cfg.resolver_nameservers) or None, port=cfg.resolver_port,
                            timeout=cfg.resolver_timeout)
        self.scorer = AsyncRemoteScorer(list(cfg.scorer_addresses), deadline=cfg.scorer_deadline,
                                        max_message_bytes=cfg.max_message_size + 1024 * 1024)
        self.decisions = DecisionLog(cfg.decision_log_path)
        # the queue, its workers and the store read the gate's clock, so a test that
        # injects one moves them all
        clock = lambda: self.gate.clock() if self.gate is not None else time.time()   # noqa: E731
        self.queue = Queue(cfg.state_dir / "queue", clock=clock)
        relay = SmtpRelay(cfg.hostname, cfg.relay_timeout, cfg.queue.connect_timeout)
        self.deliverer = Deliverer(self.queue, cfg, resolver=resolver, decisions=self.decisions,
                                   relay=relay, clock=clock)
        self.gate = Gate(cfg, resolver=resolver, scorer=self.scorer, delivery=relay,
                         quarantine=Quarantine(cfg.state_dir / "quarantine", retention=cfg.quarantine.retention,
                                              clock=clock), decisions=self.decisions,
                         queue=self.queue, queued=self.deliverer.queued)
        self.gate.state = await open_store(cfg, clock=clock)
        await self.deliverer.start()
        self._housekeeping = asyncio.create_task(self._purge_forever(), name="purge")
        tls = self._tls()
        loop = asyncio.get_running_loop()
        for listener in cfg.listeners:
            def factory(kind=listener.kind):
                smtp = GateSMTP(
                    self.gate, max_message_size=cfg.max_message_size, hostname=cfg.hostname,
                    ident="mailsift ESMTP", timeout=cfg.command_timeout,
                    tls_context=None if kind == "submissions" else tls,
                    require_starttls=kind == "submission",
                    # Implicit TLS is TLS from the first byte; aiosmtpd only knows about
                    # STARTTLS, so it must not ask for it again before AUTH there.
                    auth_require_tls=kind != "submissions",
                    auth_exclude_mechanism=["LOGIN", "PLAIN"] if kind == "inbound" else None,
                    command_call_limit=CALL_LIMITS)
                smtp.listener = kind
                self.sessions.add(smtp)
                return smtp
            server = await loop.create_server(factory, listener.host, listener.port,
                                              ssl=tls if listener.kind == "submissions" else None,
                                              reuse_address=True)
            self.servers.append(server)
            log.info("listening", extra={"fields": {"event": "listening", "listener": listener.kind,
                                                    "bind": f"{listener.host}:{listener.port}"}})

    async def purge(self) -> dict[str, int]:
        """Remove delivered (bounced, deleted) mail past ``keep_delivered`` and
        quarantined mail past its retention."""
        out = {"queue": await asyncio.to_thread(self.queue.purge, self.cfg.queue.keep_delivered,
                                                self.gate.clock())}
        out["quarantine"] = await asyncio.to_thread(self._purge_quarantine)
        return out

    def _purge_quarantine(self) -> int:
        # a release cut short by a crash is settled (delivered and taught, or dropped)
        # before its message may go: the queue says which, the feedback store teaches
        from training.feedback import open_feedback

        feedback = open_feedback(self.cfg)
        try:
            return self.gate.quarantine.purge(queue=self.queue, feedback=feedback)
        finally:
            feedback.close()

    async def _purge_forever(self) -> None:
        while True:
            try:
                removed = await self.purge()
                if any(removed.values()):
                    log.info("purged", extra={"fields": {"event": "purge", **removed}})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("purge failed")
            await asyncio.sleep(PURGE_INTERVAL)

    async def stop(self, drain: float = 10.0) -> None:
        """Stop accepting, let the messages being decided get their reply (up to
        ``drain`` seconds), then close every session and stop the workers. A session
        cut between transactions or while sending its data loses nothing: it got no
        250, so its sender tries again."""
        for s in self.servers:
            s.close()
        end = time.monotonic() + drain
        while self.gate is not None and self.gate.busy and time.monotonic() < end:
            await asyncio.sleep(0.02)
        if self.gate is not None and self.gate.busy:
            log.warning("%d messages still being decided after %.0f s; closing", self.gate.busy, drain)
        # no await between the check above and these closes: no DATA can start meanwhile;
        # a reply already written is flushed before its connection closes
        for smtp in list(self.sessions):
            if smtp.transport is not None and not smtp.transport.is_closing():
                smtp.transport.close()
        for s in self.servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
        if self.deliverer is not None:
            await self.deliverer.stop(grace=min(drain, 5.0))
        if self.queue is not None:
            self.queue.close()
        if self.scorer is not None:
            await self.scorer.close()
        if self.gate is not None:
            self.gate.close()
            if self.gate.state is not None:
                await self.gate.state.close()
        if self.decisions is not None:
            self.decisions.close()


async def _serve(cfg: GateConfig, ready_file: Path | None) -> None:
    server = GateServer(cfg)
    await server.start()
    if ready_file is not None:
        ready_file.write_text(str(os.getpid()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def serve(cfg: GateConfig, ready_file: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT. Returns 0, or 1 when the gate cannot start (a port in
    use, a certificate that does not load, a scorer that does not come up), with the
    reason logged."""
    scorer = None
    try:
        if cfg.scorer_spawn:
            scorer, workers = spawn_scorer(cfg)
            cfg = dataclasses.replace(cfg, scorer_addresses=tuple(workers))
    except (RuntimeError, OSError) as exc:
        log.error("cannot start the scorer: %s", exc)
        return 1
    try:
        asyncio.run(_serve(cfg, ready_file))
    except (OSError, ValueError, ssl.SSLError) as exc:
        log.error("cannot start the gate: %s", exc)
        return 1
    finally:
        if scorer is not None:
            scorer.terminate()
            try:
                scorer.wait(30)
            except subprocess.TimeoutExpired:
                scorer.kill()
    return 0
