"""Real peers for the gate's SMTP tests, all on loopback:

- ``Sink``: an SMTP server (aiosmtpd) standing for a domain's mail server. It records
  what it was given; recipients starting with ``tempfail`` get 451, ``reject`` 550,
  ``flaky<N>`` 451 for their first N RCPTs and then 250. Each message records whether
  its sender confirmed having read the 250 (its next command on the session: QUIT,
  MAIL or RSET), which tells a duplicate the sender caused from RFC 1047's window.
- ``ScriptedScorer``: the real gRPC Scorer service (grpc server, generated stubs) whose
  verdict a test chooses by a header in the message, ``X-Test-Verdict: <classification>
  <score> [sleep=<seconds>]``, so each classification the scorer can answer is tested
  through SMTP without training a model for it. Requests are recorded (facts, settings).
- ``GateThread``: the gate (``smtpgate.serve.GateServer``) in its own thread and event
  loop, built from a config dict, with an injectable clock; ``settle()`` waits until
  its queue has delivered everything that is due.

The real scorer with a trained model is tested through the gate separately
(test_gate_e2e.py, ``mailsift gate serve`` as a subprocess).
"""
from __future__ import annotations

import asyncio
import collections
import json
import re
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from aiosmtpd.controller import Controller

from classifier import wire
from classifier.classifications import get
from classifier.proto import scorer_pb2 as pb
from classifier.proto import scorer_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------
_FLAKY = re.compile(r"flaky(\d+)")


class _SinkHandler:
    def __init__(self):
        self.messages: list[dict] = []
        self.lock = threading.Lock()
        self.rcpt_attempts: collections.Counter = collections.Counter()
        self.delay = 0.0            # seconds each DATA takes (a slow destination)
        self.active = 0             # DATA in progress now, and the most ever at once
        self.most_active = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        with self.lock:
            self.rcpt_attempts[address.lower()] += 1
            attempt = self.rcpt_attempts[address.lower()]
        flaky = _FLAKY.match(local)
        if local.startswith("tempfail") or (flaky and attempt <= int(flaky.group(1))):
            return "451 4.3.0 Try again later"
        if local.startswith("reject"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.active -= 1
        record = {"mail_from": envelope.mail_from, "rcpts": list(envelope.rcpt_tos),
                  "data": envelope.original_content, "confirmed": False, "at": time.monotonic()}
        with self.lock:
            self.messages.append(record)
        session.unconfirmed = record
        return "250 2.0.0 Queued"

    def _confirm(self, session) -> None:
        record = getattr(session, "unconfirmed", None)
        if record is not None:
            record["confirmed"] = True   # the client read our 250: it sent another command
            session.unconfirmed = None

    async def handle_QUIT(self, server, session, envelope):
        self._confirm(session)
        return "221 Bye"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self._confirm(session)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        self._confirm(session)
        return "250 OK"


class Sink:
    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        self.port = port or free_port()
        self.host = host
        self.handler = _SinkHandler()
        self.controller = Controller(self.handler, hostname=host, port=self.port,
                                     enable_SMTPUTF8=True, decode_data=False)

    @property
    def route(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def messages(self) -> list[dict]:
        with self.handler.lock:
            return list(self.handler.messages)

    def wait(self, n: int, timeout: float = 10.0) -> list[dict]:
        """The messages once at least ``n`` have arrived (AssertionError after ``timeout``)."""
        end = time.monotonic() + timeout
        while len(self.messages) < n:
            if time.monotonic() > end:
                raise AssertionError(f"the sink has {len(self.messages)} messages, not {n}, after {timeout} s")
            time.sleep(0.01)
        return self.messages

    def clear(self) -> None:
        with self.handler.lock:
            self.handler.messages.clear()
            self.handler.rcpt_attempts.clear()
            self.handler.most_active = 0

    def start(self) -> "Sink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


# --------------------------------------------------------------------------------------
class _Scripted(pb_grpc.ScorerServicer):
    def __init__(self, owner: "ScriptedScorer"):
        self.owner = owner

    def Score(self, request, context):
        self.owner.requests.append(request)
        cls, score, sleep = "not_spam", 0.01, 0.0
        for line in request.message.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            if line.lower().startswith(b"x-test-verdict:"):
                words = line.split(b":", 1)[1].decode().split()
                cls, score = words[0], float(words[1])
                for w in words[2:]:
                    if w.startswith("sleep="):
                        sleep = float(w[6:])
        if sleep:
            time.sleep(sleep)
        threshold = request.threshold if request.HasField("threshold") else 0.9
        spam = score >= threshold or cls not in ("not_spam", "combined_score")
        verdict = pb.VERDICT_QUARANTINE if spam else pb.VERDICT_ACCEPT
        classification = (cls if cls != "not_spam" else "combined_score") if spam else "not_spam"
        return pb.ScoreReply(
            score=score, verdict=verdict, classification=wire.enum_of(classification),
            reply=get(classification).reply(), threshold=threshold, model_version="scripted-1",
            classifiers=[pb.ClassifierScore(classification=wire.enum_of("global_tokens"), p_spam=score,
                                            evidence=[pb.Clue(feature="subject:test", weight=1.0)])],
            request_id=request.request_id)


class ScriptedScorer:
    def __init__(self):
        self.port = free_port()
        self.requests: list = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_ScorerServicer_to_server(_Scripted(self), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ScriptedScorer":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0)


# --------------------------------------------------------------------------------------
class GateThread:
    """The gate in a thread with its own event loop."""

    def __init__(self, config: dict, base_dir: Path, clock=None):
        from smtpgate.config import parse

        self._setup(parse(config, base_dir), clock)

    @classmethod
    def from_config(cls, cfg, clock=None) -> "GateThread":
        """A gate from an already loaded configuration (``smtpgate.config.load``)."""
        g = cls.__new__(cls)
        g._setup(cfg, clock)
        return g

    def _setup(self, cfg, clock) -> None:
        self.cfg = cfg
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.server = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> "GateThread":
        from smtpgate.serve import GateServer

        self.thread.start()
        self.server = GateServer(self.cfg)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        if self.clock is not None:
            self.server.gate.clock = self.clock
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(drain=2), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def loop_call(self, make_coro, timeout: float = 10.0):
        """Run a coroutine (made by ``make_coro``) on the gate's event loop; its result."""
        return asyncio.run_coroutine_threadsafe(make_coro(), self.loop).result(timeout)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the queue has nothing due and nothing in delivery."""
        self.loop_call(lambda: self.server.deliverer.settle(timeout), timeout + 1)

    @property
    def queue(self):
        return self.server.queue

    def port(self, kind: str = "inbound") -> int:
        return next(x.port for x in self.cfg.listeners if x.kind == kind)

    def decisions(self) -> list[dict]:
        p = self.cfg.decision_log_path
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    def quarantined(self) -> list[dict]:
        q = self.cfg.state_dir / "quarantine"
        return [json.loads(p.read_text()) for p in sorted(q.glob("*/*.json"))]


# --------------------------------------------------------------------------------------
class RawClient:
    """A line-level SMTP client for what smtplib hides: greetings other than 220,
    pipelining, garbage, disconnecting mid-DATA. ``reply()`` returns (code, text of the last line after the code)."""

    def __init__(self, port: int, source: str = "127.0.0.10", timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self._line()
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(lines[-1][:3]), lines[-1][4:]

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line + "\r\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, socket.timeout):
            return True

    def close(self) -> None:
        self.sock.close()


def gate_toml(*, listener: str, port: int, dns_port: int, hostname: str = "mx.gate.test") -> str:
    """The head of a gate's TOML file for a test that runs the gate from a file: our
    name, one listener, and the test DNS server; the test appends the rest."""
    import gate_zones

    return (f'[gate]\nhostname = "{hostname}"\nstate_dir = "state"\n\n'
            f'[listeners.{listener}]\nbind = "127.0.0.1:{port}"\n\n'
            f'[resolver]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\n'
            f'timeout = {gate_zones.TEST_TIMEOUT}\n')
