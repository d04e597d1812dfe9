#!/usr/bin/env python3
"""Messages per second through the SMTP gate with the scorer, against the same clients
talking straight to the sink in the same run; and the time from end of DATA to reply.

    python bench/gate_bench.py [--clients 16] [--messages 400] [--workers 1] [--rounds 3]
                               [--out bench/out/gate.json]
    python bench/gate_bench.py --stateful [same options]    # -> bench/out/gate_stateful.json

Peers, all on 127.0.0.1, all started here and stopped here (even on Ctrl-C or error):

- DNS: dnsmasq through ``tests/dnsserver.py`` (the gate tests' real DNS peer). Sender
  domain ``bench.test``: MX and A, ``v=spf1 ip4:127.0.0.0/8 -all`` (SPF pass),
  ``_dmarc.bench.test`` p=none (DMARC is evaluated, never decides); the client
  127.0.0.10 has PTR mail.bench.test with A 127.0.0.10 (forward-confirmed). No DNSBL
  or DNSWL zones by default: every client comes from one address, so a real resolver
  would answer a listing lookup from its negative cache after the first connection,
  while dnsmasq's negative answers carry no SOA and the gate's cache would never keep
  them; a lookup per connection would be paid here and nowhere in production.
  ``--dnsbl-zone`` adds one zone that lists nothing, for the cost of that lookup.
  dnsmasq logs its queries, so each round reports the DNS queries it took.
- The sink: an aiosmtpd server in its own process (``multiprocessing``, spawn), so the
  load generator, the sink and the gate never share a GIL. It answers 250 to every
  message and counts them in shared memory: all, and those carrying the gate's
  ``X-Mailsift-Classification`` header.
- The scorer: ``python -m classifier.cli scorer serve`` (what ``mailsift scorer serve``
  runs) with the shipped model and ``--workers``. The gate is given the workers' own
  addresses from the ready file, as classifier/serve.py tells clients to: one gRPC
  channel to the shared SO_REUSEPORT port is one connection, which reaches one worker.
- The gate: ``python -m classifier.cli gate serve --config <generated TOML>``, one
  inbound listener, ``[scorer] spawn = false``, resolver at the DNS server, recipient
  domain ``example.test`` routed to the sink, state in a temporary directory.

Both servers log at ``--log-level`` (INFO, the production default: one JSON line per
decision on stderr, here to files in the temporary directory). The scorer's INFO lines
carry its own time per message (``elapsed_ms``, parsing included, from when its handler
starts), matched to the gate's decision log by queue id = request id.

Load: ``--clients`` asyncio clients in this process, each in a loop over a shared
counter until ``--messages`` are sent: connect from 127.0.0.10, EHLO mail.bench.test,
MAIL FROM:<u@bench.test>, RCPT TO:<rcpt@example.test>, DATA, a ~2 KB message, QUIT; a
new connection per message, as MTAs on the internet mostly do. The client is raw
asyncio streams, so "end of DATA to reply" runs from the write of the message with its
final ".\\r\\n" (one write; 2 KB fits the socket buffer, so the write returns at once)
to the reply line read. Messages come from six templates (four ham-like, two
spam-like: a third of them spam) whose sentences are drawn with a seed per message
index, so both modes get the same texts; Date and Message-ID are made fresh each round
(the gate quarantines far-off dates). The scorer quarantines what looks like spam
(550 plus a copy in the quarantine), so the gate rounds relay fewer messages than the
baseline rounds: the reply counts show the mix.

Rounds: a warm-up round of each mode (not counted: the scorer's and gRPC's first
calls, the DNS cache), then ``--rounds`` pairs, the order alternating (baseline, gate;
gate, baseline; ...) so neither mode always runs second on this shared, noisy 2-core
machine. Per mode: msgs/s (median over rounds), end-of-DATA-to-reply p50 and p99 (all
rounds' messages pooled, and each round's p99), replies by class. Throughput ratio:
median gate over median baseline. Each round also records CPU seconds per message of
every process (gate, scorer, sink, load generator, dnsmasq; /proc utime + stime) and
what the machine's other processes took meanwhile, and where the gate's event loop
(its main thread: /proc schedstat) spent the round: on a core, runnable but waiting for
one, or asleep, to tell a gate that is the bottleneck from a busy machine. The check
that matters for correctness: in every gate round the sink received exactly as many
messages as the gate answered 250, each with the gate's headers (the exit status is 1
otherwise).

The load is closed-loop: each client sends its next message when the last is answered,
so at 16 clients the gate is saturated and the p99 includes waiting behind the other
clients' messages. That is the throughput the issue asks for; it is not an idle
server's latency.

``--stateful`` (issue 6: the cost of the stateful checks per connection with each
backend): no baseline rounds; instead three gates, one process each, against the same
scorer, sink, DNS and clients: ``off`` (every ``[limits]`` 0, ip_concurrency and
auth_failures included, ``[greylist] enabled = false``; the SQLite store is opened but
unused), ``sqlite`` and ``redis`` (a redis-server from ``tests/redisserver.py``): the
checks on with limits no bench client reaches (ip_concurrency 1000, ip_rate and
sender_rate 1 000 000, invalid_rcpt 1000) and greylisting in its learning window, so
everything is counted and recorded and nothing is refused or delayed. A warm-up round
each, then ``--rounds`` rounds of each, the order rotating. The checks run at connect,
MAIL and RCPT, so besides end of DATA to reply the client times connect to greeting and
the whole session (connect to the QUIT reply). Reported per configuration and as added
latency and gate CPU versus ``off``; redis-server's own CPU is counted as well.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import email.utils
import json
import multiprocessing as mp
import os
import pathlib
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent

SENDER_DOMAIN = "bench.test"
RCPT_DOMAIN = "example.test"
CLIENT_IP = "127.0.0.10"
CLIENT_NAME = "mail.bench.test"
MAIL_FROM = f"u@{SENDER_DOMAIN}"
RCPT_TO = f"rcpt@{RCPT_DOMAIN}"
GATE_HOSTNAME = "mx.example.test"
CLIENT_TIMEOUT = 60.0      # one message, connect to QUIT; far above anything seen
START_TIMEOUT = 180.0      # the scorer loads its model in each worker


# ------------------------------------------------------------------ the sink (own process)
def sink_main(port: int, counts, ready) -> None:
    """An aiosmtpd server on 127.0.0.1:port answering 250 to everything; ``counts`` is a
    shared array: [messages, messages bearing the gate's headers]."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent stops us; Ctrl-C hits the group
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            counts[0] += 1
            head = envelope.original_content[:4096]
            if b"\nX-Mailsift-Classification:" in head:
                counts[1] += 1
            return "250 2.0.0 Queued"

    async def run() -> None:
        handler = Handler()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink.example.test", decode_data=False, enable_SMTPUTF8=True),
            "127.0.0.1", port, reuse_address=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        ready.set()
        await stop.wait()
        server.close()

    asyncio.run(run())


class SinkProcess:
    def __init__(self, port: int):
        self.port = port
        ctx = mp.get_context("spawn")
        self.counts = ctx.RawArray("q", 2)
        self._ready = ctx.Event()
        self.proc = ctx.Process(target=sink_main, args=(port, self.counts, self._ready), name="gate-bench-sink")

    def start(self, timeout: float = 30.0) -> "SinkProcess":
        self.proc.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the sink did not listen within {timeout:.0f} s (exit code {self.proc.exitcode})")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def snapshot(self) -> tuple[int, int]:
        if not self.proc.is_alive():
            raise RuntimeError(f"the sink died (exit code {self.proc.exitcode})")
        return int(self.counts[0]), int(self.counts[1])

    def stop(self) -> None:
        if self.proc.pid is None:
            return
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# ------------------------------------------------------------------ messages
HAM = [
    ("Minutes of the {day} planning meeting", [
        "Thanks everyone for joining the planning meeting on {day}.",
        "We agreed to move the release of version {n}.{m} to the week after next.",
        "Anna will review the open pull requests for the parser before Friday.",
        "The test suite takes {n} minutes on the build machine; Tom will look at the slow cases.",
        "Please add your notes to the shared document before the next meeting.",
        "We still need a volunteer to update the installation guide for the new configuration format.",
        "The customer reported that the export fails on files larger than {n} megabytes.",
        "Next meeting is on {day} at ten, same room as usual.",
        "If I missed anything, reply to this mail and I will correct the minutes.",
    ]),
    ("Re: dinner on {day}?", [
        "Sounds good to me, we can meet at the restaurant near the station around seven.",
        "My sister is visiting that weekend, so I might bring her along if that is fine.",
        "Could you book a table for {n}? Last time it was full when we arrived.",
        "I finished the book you lent me, I will bring it back on {day}.",
        "The kids have their school concert in the afternoon, so I cannot come earlier.",
        "Let me know if the plan changes, my phone has been acting up lately.",
        "We should also plan the trip to the lake before the summer gets busy.",
        "Say hello to your parents from me.",
    ]),
    ("Code review: fix off-by-one in the tokenizer (#{n})", [
        "I looked at the patch and the change to the loop bound looks right to me.",
        "The new test covers the empty input, but not a token that ends exactly at the buffer edge.",
        "Could you rename the helper to something that says it counts bytes, not characters?",
        "The benchmark numbers in the description are from the old machine; please rerun them.",
        "Otherwise this is good to merge once the build passes on all platforms.",
        "We should backport this to the {n}.{m} branch, the bug was reported there first.",
        "The documentation of the option still mentions the old default of {n}.",
        "Thanks for tracking this down, it has been bothering us for a while.",
    ]),
    ("Invoice {n}-{m} for the office supplies", [
        "Please find below the summary of the order delivered on {day}.",
        "The invoice total is {n}.{m} EUR, payable within thirty days by bank transfer.",
        "Two boxes of printer paper were back-ordered and will ship next week.",
        "If you need a copy of the delivery note for your records, let me know.",
        "Our office will be closed on {day} for the public holiday.",
        "The reference number to use for the transfer is the invoice number above.",
        "Thank you for your order and kind regards from the accounts team.",
    ]),
]
SPAM = [
    ("You have WON {n},000,000 USD!!! Claim your prize now", [
        "CONGRATULATIONS!!! Your email address has been selected as the WINNER of our international lottery.",
        "To claim your prize of {n},000,000 USD send your full name, address and bank account details.",
        "This is 100% FREE and RISK FREE, act now before the offer expires!!!",
        "Click here http://claim-prize-now.example.biz/win?id={n} to receive your money TODAY.",
        "Do not tell anyone about this winning until your claim has been processed.",
        "Contact our agent Mr. Johnson immediately, the processing fee is only {n}0 USD.",
        "Remember: you MUST reply within 24 hours or the money will be returned to the treasury.",
    ]),
    ("Cheap meds online - 80% OFF viagra cialis no prescription", [
        "Buy cheap viagra and cialis online without prescription, lowest prices guaranteed!!!",
        "Order now and get {n} FREE pills with every purchase, discreet worldwide shipping.",
        "Click here: http://cheap-pharma.example.ru/buy?ref={n} best online pharmacy.",
        "Lose weight fast, enlarge your results, 100% satisfaction or money back!!!",
        "Special offer ONLY TODAY: {n}0% discount on all products, limited time offer.",
        "No doctor visit needed, order in confidence, unsubscribe here if you do not want our offers.",
        "Act now, this amazing deal will not last, millions of satisfied customers!!!",
    ]),
]
TEMPLATES = [("ham", t) for t in HAM] + [("spam", t) for t in SPAM]
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
BODY_BYTES = 1700   # plus ~300 bytes of headers: ~2 KB messages


def make_message(index: int, seed: int) -> tuple[str, bytes]:
    """(kind, the DATA payload with the final ".\\r\\n", dot-stuffed): the text is fixed by
    (seed, index); Date and Message-ID are the current ones."""
    rng = random.Random(seed * 1_000_003 + index)
    kind, (subject, sentences) = TEMPLATES[index % len(TEMPLATES)]

    def fill(s: str) -> str:
        return s.format(day=rng.choice(DAYS), n=rng.randint(2, 99), m=rng.randint(0, 9))

    paragraphs, size = [], 0
    while size < BODY_BYTES:
        para = " ".join(fill(s) for s in rng.sample(sentences, k=min(3, len(sentences))))
        lines, line = [], ""
        for word in para.split():   # wrapped at 72, as mail clients do
            if line and len(line) + 1 + len(word) > 72:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        paragraphs.append("\r\n".join(lines))
        size += len(paragraphs[-1]) + 4
    names = ("Anna Berg", "Tom Weller", "Sales Team", "Maria Costa", "Prize Department")
    headers = [
        f"From: {rng.choice(names)} <{MAIL_FROM}>",
        f"To: <{RCPT_TO}>",
        f"Subject: {fill(subject)}",
        f"Date: {email.utils.format_datetime(datetime.datetime.now(datetime.timezone.utc))}",
        f"Message-ID: <{uuid.uuid4().hex}@{SENDER_DOMAIN}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    text = "\r\n".join(headers) + "\r\n\r\n" + "\r\n\r\n".join(paragraphs) + "\r\n"
    stuffed = "\r\n".join("." + x if x.startswith(".") else x for x in text.split("\r\n"))
    return kind, stuffed.encode("utf-8") + b".\r\n"


# ------------------------------------------------------------------ the load generator
class SmtpError(Exception):
    def __init__(self, stage: str, code: int, line: bytes):
        super().__init__(f"{stage}: {line!r}")
        self.stage, self.code = stage, code


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    while True:
        line = await reader.readuntil(b"\r\n")
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), line


async def _expect(reader, stage: str, want: int) -> None:
    code, line = await _reply(reader)
    if code != want:
        raise SmtpError(stage, code, line)


async def send_one(port: int, payload: bytes) -> dict:
    """One message on a new connection: {code: the final reply code, latency: end of DATA
    to reply seconds (None when refused before DATA), stage: "eod" or where it was
    refused, greeting: connect (before the TCP handshake) to the 220 line read, session:
    connect to the QUIT reply read (the whole transaction; None when refused)}."""
    t_start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(CLIENT_IP, 0))
    greeting = None
    try:
        try:
            await _expect(reader, "greeting", 220)
            greeting = time.perf_counter() - t_start
            writer.write(f"EHLO {CLIENT_NAME}\r\n".encode())
            await _expect(reader, "ehlo", 250)
            writer.write(f"MAIL FROM:<{MAIL_FROM}>\r\n".encode())
            await _expect(reader, "mail", 250)
            writer.write(f"RCPT TO:<{RCPT_TO}>\r\n".encode())
            await _expect(reader, "rcpt", 250)
            writer.write(b"DATA\r\n")
            await _expect(reader, "data", 354)
        except SmtpError as e:
            writer.write(b"QUIT\r\n")
            return {"code": e.code, "latency": None, "stage": e.stage, "greeting": greeting, "session": None}
        t0 = time.perf_counter()
        writer.write(payload)
        code, _ = await _reply(reader)
        latency = time.perf_counter() - t0
        writer.write(b"QUIT\r\n")
        await _reply(reader)
        session = time.perf_counter() - t_start
        return {"code": code, "latency": latency, "stage": "eod", "greeting": greeting, "session": session}
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await writer.wait_closed()


async def load(port: int, payloads: list[bytes], clients: int) -> tuple[float, list[dict]]:
    """Send every payload with ``clients`` concurrent clients; (wall seconds, results)."""
    nxt = iter(range(len(payloads)))
    results: list[dict | None] = [None] * len(payloads)

    async def client() -> None:
        for i in nxt:
            try:
                results[i] = await asyncio.wait_for(send_one(port, payloads[i]), CLIENT_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                results[i] = {"code": 0, "latency": None, "stage": f"error: {type(e).__name__}: {e}",
                              "greeting": None, "session": None}

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - t0, results


# ------------------------------------------------------------------ processes and /proc
def start_process(cmd: list[str], log_path: pathlib.Path) -> subprocess.Popen:
    """In its own session: Ctrl-C reaches only us, and we stop it (and its children) by
    its process group."""
    fh = open(log_path, "wb")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                                start_new_session=True)
    finally:
        fh.close()


def stop_process(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)   # what is left of its group (scorer workers)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_ready(proc: subprocess.Popen, ready: pathlib.Path, name: str, log_path: pathlib.Path,
               check=lambda text: bool(text)) -> str:
    end = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before serving:\n{tail(log_path)}")
        if ready.exists():
            text = ready.read_text()
            if check(text):
                return text
        if time.monotonic() > end:
            raise RuntimeError(f"{name}: no ready file after {START_TIMEOUT:.0f} s:\n{tail(log_path)}")
        time.sleep(0.05)


def tail(path: pathlib.Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def gate_toml(tmp: pathlib.Path, gate_port: int, dns_port: int, scorer: list[str], sink_port: int,
              dnsbl_zone: str | None, extra: str = "", state_dir: str = "gate") -> str:
    zones = f'zones = ["{dnsbl_zone}"]\ncheck_private = true' if dnsbl_zone else "zones = []"
    return f"""\
# Generated by bench/gate_bench.py.
[gate]
hostname = "{GATE_HOSTNAME}"
state_dir = "{tmp / state_dir}"

[listeners.inbound]
bind = "127.0.0.1:{gate_port}"

[resolver]
nameservers = ["127.0.0.1"]
port = {dns_port}
timeout = 2.0

[scorer]
addresses = {json.dumps(scorer)}
spawn = false

[dnsbl]
{zones}

[domains."{RCPT_DOMAIN}"]
route = "127.0.0.1:{sink_port}"
{extra}"""


# --stateful: the three gate configurations, one gate process each. In "off" the store
# is still opened (sqlite, the default backend) but nothing calls it. In "sqlite" and
# "redis" every per-connection check runs and counts, with limits far above what the
# bench sends so none refuses, and greylisting in its learning window (a fresh
# installation: it records every triplet and delays nothing).
STATEFUL_OFF = """
[limits]
ip_concurrency = 0
ip_rate = 0
sender_rate = 0
invalid_rcpt = 0
outgoing_per_hour = 0
outgoing_per_day = 0
auth_failures = 0

[greylist]
enabled = false
"""
STATEFUL_ON = """
[limits]
ip_concurrency = 1000
ip_rate = 1000000
sender_rate = 1000000
invalid_rcpt = 1000
outgoing_per_hour = 0
outgoing_per_day = 0
auth_failures = 5

[greylist]
enabled = true
learning_hours = 72
"""
STATEFUL_CONFIGS = ("off", "sqlite", "redis")


def stateful_extra(name: str, redis_url: str | None) -> str:
    if name == "off":
        return '\n[state]\nbackend = "sqlite"\n' + STATEFUL_OFF
    if name == "sqlite":
        return '\n[state]\nbackend = "sqlite"\n' + STATEFUL_ON
    return f'\n[state]\nbackend = "redis"\nredis_url = "{redis_url}"\nredis_prefix = "bench:"\n' + STATEFUL_ON


def zone_records() -> dict:
    return {
        SENDER_DOMAIN: {"MX": [(10, f"mx.{SENDER_DOMAIN}")], "A": ["192.0.2.25"],
                        "TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]},
        f"mx.{SENDER_DOMAIN}": {"A": ["192.0.2.25"]},
        f"_dmarc.{SENDER_DOMAIN}": {"TXT": ["v=DMARC1; p=none"]},
        CLIENT_IP: {"PTR": [CLIENT_NAME]},
        CLIENT_NAME: {"A": [CLIENT_IP]},
    }


class LogTail:
    """New lines of a growing file since the last call."""

    def __init__(self, path: pathlib.Path):
        self.path, self.offset = path, 0

    def skip(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        cut = data.rfind(b"\n") + 1      # a line being written stays for next time
        self.offset += cut
        return data[:cut].decode("utf-8", "replace").splitlines()


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1), nearest rank; None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 2)


# ------------------------------------------------------------------ one round
class Bench:
    def __init__(self, args, tmp: pathlib.Path, stack: contextlib.ExitStack):
        self.args, self.tmp, self.stack = args, tmp, stack

    def start(self) -> None:
        from dnsserver import DnsServer   # tests/: the gate tests' real DNS peer
        from gate_harness import free_port
        from grpc_bench import free_port_block

        a = self.args
        zone = a.dnsbl_zone
        self.dns = self.stack.enter_context(DnsServer(
            zone_records(), zones=["test", "arpa"] + ([zone] if zone else []), log_queries=True))
        self.sink = SinkProcess(free_port()).start()
        self.stack.callback(self.sink.stop)

        port = free_port_block(a.workers + 1)
        ready = self.tmp / "scorer.ready"
        self.scorer_log = self.tmp / "scorer.log"
        self.scorer = start_process(
            [sys.executable, "-m", "classifier.cli", "scorer", "serve", "--bind", f"127.0.0.1:{port}",
             "--workers", str(a.workers), "--ready-file", str(ready), "--metrics-port", "0",
             "--state", str(self.tmp / "scorer"), "--log-level", a.scorer_log_level]
            + (["--model", a.model] if a.model else []), self.scorer_log)
        self.stack.callback(stop_process, self.scorer)
        text = wait_ready(self.scorer, ready, "the scorer", self.scorer_log, lambda t: t.endswith("\n"))
        self.scorer_addresses = [x for x in text.strip().split(",") if x]

        self.redis = None
        self.gates: dict[str, dict] = {}
        if getattr(a, "stateful", False):
            from redisserver import RedisServer   # tests/: a real redis-server on loopback
            self.redis = self.stack.enter_context(RedisServer())
            for name in STATEFUL_CONFIGS:
                self.start_gate(name, stateful_extra(name, self.redis.url))
            self.use(STATEFUL_CONFIGS[0])
        else:
            self.start_gate("gate", "")
            self.use("gate")
        self.scores = LogTail(self.scorer_log)
        self.dns_log = 0

    def start_gate(self, name: str, extra: str) -> None:
        """One gate process (its own port, state directory, log and decision log)."""
        from gate_harness import free_port

        a = self.args
        state = "gate" if name == "gate" else f"gate-{name}"
        port = free_port()
        config = self.tmp / f"{state}.toml"
        config.write_text(gate_toml(self.tmp, port, self.dns.port, self.scorer_addresses,
                                    self.sink.port, a.dnsbl_zone, extra, state))
        ready = self.tmp / f"{state}.ready"
        log = self.tmp / f"{state}.log"
        proc = start_process(
            [sys.executable, "-m", "classifier.cli", "gate", "serve", "--config", str(config),
             "--ready-file", str(ready), "--log-level", a.log_level], log)
        self.stack.callback(stop_process, proc)
        wait_ready(proc, ready, f"the gate ({name})", log)
        self.gates[name] = {"proc": proc, "port": port, "log": log,
                            "decisions": LogTail(self.tmp / state / "decisions.jsonl")}

    def store_evidence(self) -> dict:
        """That the checks ran: rows in each gate's SQLite store, keys in Redis."""
        import socket
        import sqlite3

        out: dict = {}
        for name in self.gates:
            db = self.tmp / ("gate" if name == "gate" else f"gate-{name}") / "state.db"
            if not db.exists():
                continue
            with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
                tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                out[f"sqlite rows ({name})"] = {t: c.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        if self.redis is not None:
            with contextlib.suppress(OSError, ValueError), socket.create_connection(
                    (self.redis.address, self.redis.port), timeout=2) as sock:
                sock.sendall(b"DBSIZE\r\n")
                out["redis keys"] = int(sock.recv(64).strip().lstrip(b":"))
        return out

    def use(self, name: str) -> None:
        """Make the named gate the one ``run`` measures (CPU, event loop, logs)."""
        g = self.gates[name]
        self.gate, self.gate_port, self.gate_log, self.decisions = g["proc"], g["port"], g["log"], g["decisions"]

    def cpu(self) -> dict[str, float]:
        from grpc_bench import _stat, descendants, machine_busy

        def tree(pid: int) -> float:
            return sum((_stat(p) or (0, 0.0))[1] for p in descendants(pid))

        out = {"gate": tree(self.gate.pid), "scorer": tree(self.scorer.pid), "sink": tree(self.sink.pid),
               "dnsmasq": tree(self.dns._proc.pid), "load": _stat(os.getpid())[1]}
        if self.redis is not None:
            out["redis"] = tree(self.redis._proc.pid)
        out["machine"] = machine_busy()
        return out

    def gate_loop(self) -> tuple[float, float]:
        """(seconds on a CPU, seconds runnable but waiting for one) of the gate's main
        thread, its event loop: /proc/<pid>/schedstat is the thread group leader's."""
        run, wait = open(f"/proc/{self.gate.pid}/schedstat").read().split()[:2]
        return int(run) / 1e9, int(wait) / 1e9

    def dns_queries(self) -> int:
        text = self.dns.log_text()
        new = text[self.dns_log:]
        self.dns_log = len(text)
        return new.count("query[")

    def run(self, mode: str, n: int, label: str) -> dict:
        """One round; mode "baseline" (straight to the sink), "gate", or with --stateful
        the name of a gate configuration (STATEFUL_CONFIGS)."""
        a = self.args
        if mode in self.gates:
            self.use(mode)
        for name, g in self.gates.items():
            if g["proc"].poll() is not None:
                raise RuntimeError(f"the gate ({name}) exited with {g['proc'].returncode}:\n{tail(g['log'])}")
        for proc, name, log in ((self.scorer, "the scorer", self.scorer_log),):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        made = [make_message(i, a.seed) for i in range(n)]
        payloads = [p for _, p in made]
        port = self.sink.port if mode == "baseline" else self.gate_port
        self.decisions.skip()
        self.scores.skip()
        self.dns_queries()
        sink0 = self.sink.snapshot()
        cpu0, loop0 = self.cpu(), self.gate_loop()
        wall, results = asyncio.run(load(port, payloads, a.clients))
        cpu1, loop1 = self.cpu(), self.gate_loop()
        on_cpu, waiting = loop1[0] - loop0[0], loop1[1] - loop0[1]
        # No wait needed: the sink counts a message before it answers, the gate answers
        # after the sink did and after its decision line, the scorer logs before it replies.
        sink1 = self.sink.snapshot()
        delivered, via_gate = sink1[0] - sink0[0], sink1[1] - sink0[1]

        codes: dict[str, int] = {}
        by_kind: dict[str, dict[str, int]] = {}
        errors: dict[str, int] = {}
        for (kind, _), r in zip(made, results):
            k = f"{r['code'] // 100}xx" if r["code"] else "error"
            codes[k] = codes.get(k, 0) + 1
            by_kind.setdefault(kind, {})
            by_kind[kind][str(r["code"])] = by_kind[kind].get(str(r["code"]), 0) + 1
            if r["stage"] != "eod":
                errors[r["stage"]] = errors.get(r["stage"], 0) + 1
        lat = [r["latency"] for r in results if r["latency"] is not None]
        greet = [r["greeting"] for r in results if r.get("greeting") is not None]
        sess = [r["session"] for r in results if r.get("session") is not None]
        n250 = sum(r["code"] == 250 for r in results)
        done = sum(r["code"] != 0 for r in results)
        used = {k: cpu1[k] - cpu0[k] for k in cpu0}
        ours = sum(v for k, v in used.items() if k != "machine")
        out = {
            "label": label, "mode": mode, "messages": n, "clients": a.clients,
            "wall_s": round(wall, 3), "msgs_per_s": round(done / wall, 2),
            "latency_ms": {"p50": ms(pct(lat, 0.50)), "p90": ms(pct(lat, 0.90)), "p99": ms(pct(lat, 0.99)),
                           "max": ms(max(lat) if lat else None), "mean": ms(statistics.fmean(lat) if lat else None)},
            "greeting_ms": {"p50": ms(pct(greet, 0.50)), "p99": ms(pct(greet, 0.99)),
                            "mean": ms(statistics.fmean(greet) if greet else None)},
            "session_ms": {"p50": ms(pct(sess, 0.50)), "p99": ms(pct(sess, 0.99)),
                           "mean": ms(statistics.fmean(sess) if sess else None)},
            "replies": codes, "replies_by_kind": by_kind, "not_at_eod": errors,
            "replied_250": n250, "sink_delivered": delivered, "sink_delivered_via_gate": via_gate,
            "delivered_matches_250": delivered == n250 and via_gate == (0 if mode == "baseline" else delivered),
            "cpu_ms_per_msg": {k: round(v * 1000 / n, 3) for k, v in used.items() if k != "machine"},
            "cpu_s": {k: round(v, 3) for k, v in used.items()},
            "others_cpu_s": round(max(0.0, used["machine"] - ours), 3),
            "others_cores": round(max(0.0, used["machine"] - ours) / wall, 2),
            # Where the gate's event loop spent the round: running, ready to run but
            # without a core (a busy machine), or asleep (idle in epoll, or blocked in a
            # syscall such as fsync). Near 1 - sleeping, the loop was the bottleneck.
            "gate_loop": {"on_cpu": round(on_cpu / wall, 3), "waiting_for_cpu": round(waiting / wall, 3),
                          "sleeping": round(max(0.0, 1 - (on_cpu + waiting) / wall), 3)},
            "dns_queries": self.dns_queries(),
            "_latencies": lat, "_greetings": greet, "_sessions": sess,
        }
        if mode != "baseline":
            out.update(self._gate_logs())
        return out

    def _gate_logs(self) -> dict:
        qids, classes = set(), {}
        for line in self.decisions.new_lines():
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if d.get("phase") == "data":
                    qids.add(d.get("queue_id"))
                classes[d["classification"]] = classes.get(d["classification"], 0) + 1
        elapsed = []
        for line in self.scores.new_lines():
            if '"event": "score"' not in line:
                continue
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if d.get("request_id") in qids and d.get("elapsed_ms") is not None:
                    elapsed.append(d["elapsed_ms"] / 1000.0)
        return {"decisions": classes, "scorer_elapsed_ms": {
            "n": len(elapsed), "p50": ms(pct(elapsed, 0.5)), "p99": ms(pct(elapsed, 0.99)),
            "mean": ms(statistics.fmean(elapsed) if elapsed else None)}}


# ------------------------------------------------------------------ summary and output
def summarise(rounds: list[dict]) -> dict:
    out = {}
    for mode in ("baseline", "gate"):
        rs = [r for r in rounds if r["mode"] == mode]
        lat = [x for r in rs for x in r["_latencies"]]
        codes: dict[str, int] = {}
        for r in rs:
            for k, v in r["replies"].items():
                codes[k] = codes.get(k, 0) + v
        cpu = {k: round(statistics.median(r["cpu_ms_per_msg"][k] for r in rs), 3) for k in rs[0]["cpu_ms_per_msg"]}
        # All our processes' CPU per message: unlike msgs/s it hardly moves when other
        # processes take cores away, so its ratio is the steadier cost of the gate.
        cpu_total = round(statistics.median(sum(r["cpu_ms_per_msg"].values()) for r in rs), 3)
        out[mode] = {
            "rounds": len(rs),
            "msgs_per_s_median": round(statistics.median(r["msgs_per_s"] for r in rs), 2),
            "msgs_per_s_rounds": [r["msgs_per_s"] for r in rs],
            "latency_ms_p50": ms(pct(lat, 0.50)), "latency_ms_p99": ms(pct(lat, 0.99)),
            "latency_ms_p99_rounds": [r["latency_ms"]["p99"] for r in rs],
            "replies": codes,
            "replied_250": sum(r["replied_250"] for r in rs),
            "sink_delivered": sum(r["sink_delivered"] for r in rs),
            "delivered_matches_250": all(r["delivered_matches_250"] for r in rs),
            "cpu_ms_per_msg_median": cpu,
            "cpu_ms_per_msg_all_median": cpu_total,
            "others_cores_median": round(statistics.median(r["others_cores"] for r in rs), 2),
            "gate_loop_median": {k: round(statistics.median(r["gate_loop"][k] for r in rs), 3)
                                 for k in rs[0]["gate_loop"]},
            "dns_queries_per_msg": round(sum(r["dns_queries"] for r in rs) / sum(r["messages"] for r in rs), 3),
        }
        if mode == "gate":
            el = [r["scorer_elapsed_ms"] for r in rs]
            for q in ("p50", "p99"):
                v = [e[q] for e in el]
                out[mode][f"scorer_elapsed_ms_{q}_median"] = round(statistics.median(v), 2) if all(v) else None
            out[mode]["scored"] = sum(e["n"] for e in el)
    b, g = out["baseline"]["msgs_per_s_median"], out["gate"]["msgs_per_s_median"]
    pairs = [gr["msgs_per_s"] / br["msgs_per_s"] for br, gr in zip(
        [r for r in rounds if r["mode"] == "baseline"], [r for r in rounds if r["mode"] == "gate"])]
    out["ratio_gate_over_baseline"] = round(g / b, 4)
    out["gate_costs_x"] = round(b / g, 2)
    out["ratio_per_round_pair"] = [round(x, 4) for x in pairs]
    out["cpu_per_msg_gate_over_baseline"] = round(
        out["gate"]["cpu_ms_per_msg_all_median"] / out["baseline"]["cpu_ms_per_msg_all_median"], 2)
    return out


def fmt(v, width: int = 9) -> str:
    return f"{'-' if v is None else v:>{width}}"


def print_rounds(rounds: list[dict]) -> None:
    print(f"{'round':<12}{'mode':<10}{'msgs/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'2xx':>6}{'4xx':>6}{'5xx':>6}"
          f"{'err':>5}{'sink':>6}{'gate ms/msg':>12}{'scorer':>8}{'sink':>7}{'load':>7}{'others':>8}{'dns q':>7}"
          f"{'loop run/wait/sleep':>21}")
    for r in rounds:
        c, cpu = r["replies"], r["cpu_ms_per_msg"]
        print(f"{r['label']:<12}{r['mode']:<10}{fmt(r['msgs_per_s'])}{fmt(r['latency_ms']['p50'])}"
              f"{fmt(r['latency_ms']['p99'])}{c.get('2xx', 0):>6}{c.get('4xx', 0):>6}{c.get('5xx', 0):>6}"
              f"{c.get('error', 0):>5}{r['sink_delivered']:>6}{cpu['gate']:>12.2f}{cpu['scorer']:>8.2f}"
              f"{cpu['sink']:>7.2f}{cpu['load']:>7.2f}{r['others_cores']:>8.2f}{r['dns_queries']:>7}"
              f"{'/'.join(f'{v:.2f}' for v in r['gate_loop'].values()):>21}")
    print("(gate ms/msg .. load: CPU ms per message of each process; others: cores busy with other processes;\n"
          " loop: share of the round the gate's event loop ran / waited for a core / slept)")


def markdown(res: dict) -> str:
    s, p, m = res["summary"], res["parameters"], res["machine"]
    b, g = s["baseline"], s["gate"]

    def codes(x):
        return ", ".join(f"{k} {v}" for k, v in sorted(x["replies"].items()))

    lines = [
        "### SMTP gate throughput (bench/gate_bench.py)",
        "",
        f"{p['clients']} concurrent clients, {p['messages']} messages of ~2 KB per round, new connection per "
        f"message, {p['rounds']} rounds per mode (alternating, after a warm-up), scorer with {p['workers']} "
        f"worker(s), shipped model; {m['cpu_count']} cores, {m['platform']}.",
        "",
        "| mode | msgs/s (median) | per round | EOD→reply p50 ms | p99 ms | replies |",
        "|---|---|---|---|---|---|",
        f"| clients → sink | {b['msgs_per_s_median']} | {', '.join(map(str, b['msgs_per_s_rounds']))} | "
        f"{b['latency_ms_p50']} | {b['latency_ms_p99']} | {codes(b)} |",
        f"| clients → gate → sink | {g['msgs_per_s_median']} | {', '.join(map(str, g['msgs_per_s_rounds']))} | "
        f"{g['latency_ms_p50']} | {g['latency_ms_p99']} | {codes(g)} |",
        "",
        f"Gate/baseline throughput: **{s['ratio_gate_over_baseline']}** (the gate costs ×{s['gate_costs_x']}); "
        f"per round pair {', '.join(map(str, s['ratio_per_round_pair']))}. CPU of all processes per message: "
        f"{b['cpu_ms_per_msg_all_median']:.1f} ms direct, {g['cpu_ms_per_msg_all_median']:.1f} ms through the gate "
        f"(×{s['cpu_per_msg_gate_over_baseline']}, steadier than msgs/s on a shared machine). "
        f"CPU per message through the gate: gate {g['cpu_ms_per_msg_median']['gate']:.1f} ms, "
        f"scorer {g['cpu_ms_per_msg_median']['scorer']:.1f} ms (its own time per message p50 "
        f"{g.get('scorer_elapsed_ms_p50_median')} ms, p99 {g.get('scorer_elapsed_ms_p99_median')} ms). "
        f"The gate's event loop ran {g['gate_loop_median']['on_cpu']:.0%} of the time, waited for a core "
        f"{g['gate_loop_median']['waiting_for_cpu']:.0%}, slept {g['gate_loop_median']['sleeping']:.0%}; other "
        f"processes kept {g['others_cores_median']} cores busy. "
        f"Every 250 from the gate reached the sink: {'yes' if g['delivered_matches_250'] else '**no**'} "
        f"({g['replied_250']} × 250, {g['sink_delivered']} delivered).",
    ]
    return "\n".join(lines)


def summarise_stateful(rounds: list[dict]) -> dict:
    """Per gate configuration (off, sqlite, redis): pooled percentiles of the three
    latencies, medians over rounds of msgs/s and CPU per message; then what sqlite and
    redis add over off (the same clients, rounds interleaved)."""
    out: dict = {}
    for name in STATEFUL_CONFIGS:
        rs = [r for r in rounds if r["mode"] == name]
        if not rs:
            continue
        codes: dict[str, int] = {}
        for r in rs:
            for k, v in r["replies"].items():
                codes[k] = codes.get(k, 0) + v
        pooled = {key: [x for r in rs for x in r[f"_{key}"]] for key in ("latencies", "greetings", "sessions")}
        cpu = {k: round(statistics.median(r["cpu_ms_per_msg"][k] for r in rs), 3) for k in rs[0]["cpu_ms_per_msg"]}
        gate_store = statistics.median(r["cpu_ms_per_msg"]["gate"] + r["cpu_ms_per_msg"].get("redis", 0.0)
                                       for r in rs)
        out[name] = {
            "rounds": len(rs),
            "msgs_per_s_median": round(statistics.median(r["msgs_per_s"] for r in rs), 2),
            "msgs_per_s_rounds": [r["msgs_per_s"] for r in rs],
            "eod_ms_p50": ms(pct(pooled["latencies"], 0.50)), "eod_ms_p99": ms(pct(pooled["latencies"], 0.99)),
            "greeting_ms_p50": ms(pct(pooled["greetings"], 0.50)),
            "greeting_ms_p99": ms(pct(pooled["greetings"], 0.99)),
            "greeting_ms_p50_rounds": [r["greeting_ms"]["p50"] for r in rs],
            "session_ms_p50": ms(pct(pooled["sessions"], 0.50)), "session_ms_p99": ms(pct(pooled["sessions"], 0.99)),
            "session_ms_p50_rounds": [r["session_ms"]["p50"] for r in rs],
            "replies": codes,
            "not_at_eod": {k: sum(r["not_at_eod"].get(k, 0) for r in rs)
                           for k in sorted({k for r in rs for k in r["not_at_eod"]})},
            "replied_250": sum(r["replied_250"] for r in rs),
            "sink_delivered": sum(r["sink_delivered"] for r in rs),
            "delivered_matches_250": all(r["delivered_matches_250"] for r in rs),
            "cpu_ms_per_msg_median": cpu,
            "gate_cpu_ms_per_msg_median": cpu["gate"],
            # redis-server's CPU belongs to the redis configuration's cost; in the other
            # rounds it is redis idling (its timers), near 0.
            "gate_plus_store_cpu_ms_per_msg_median": round(gate_store, 3),
            "cpu_ms_per_msg_all_median": round(statistics.median(sum(r["cpu_ms_per_msg"].values()) for r in rs), 3),
            "others_cores_median": round(statistics.median(r["others_cores"] for r in rs), 2),
            "gate_loop_median": {k: round(statistics.median(r["gate_loop"][k] for r in rs), 3)
                                 for k in rs[0]["gate_loop"]},
        }
    off = out.get("off")
    added = {}
    if off:
        def d(x, y):
            return None if x is None or y is None else round(x - y, 2)
        for name in ("sqlite", "redis"):
            x = out.get(name)
            if not x:
                continue
            added[name] = {
                "greeting_ms_p50": d(x["greeting_ms_p50"], off["greeting_ms_p50"]),
                "greeting_ms_p99": d(x["greeting_ms_p99"], off["greeting_ms_p99"]),
                "session_ms_p50": d(x["session_ms_p50"], off["session_ms_p50"]),
                "session_ms_p99": d(x["session_ms_p99"], off["session_ms_p99"]),
                "eod_ms_p50": d(x["eod_ms_p50"], off["eod_ms_p50"]),
                "eod_ms_p99": d(x["eod_ms_p99"], off["eod_ms_p99"]),
                "gate_cpu_ms_per_msg": d(x["gate_cpu_ms_per_msg_median"], off["gate_cpu_ms_per_msg_median"]),
                "gate_plus_store_cpu_ms_per_msg": d(x["gate_plus_store_cpu_ms_per_msg_median"],
                                                    off["gate_cpu_ms_per_msg_median"]),
                "msgs_per_s_ratio": round(x["msgs_per_s_median"] / off["msgs_per_s_median"], 4),
                # per round (same round, configurations back to back): noise estimate
                "session_ms_p50_per_round": [d(a_, b_) for a_, b_ in zip(x["session_ms_p50_rounds"],
                                                                         off["session_ms_p50_rounds"])],
                "greeting_ms_p50_per_round": [d(a_, b_) for a_, b_ in zip(x["greeting_ms_p50_rounds"],
                                                                          off["greeting_ms_p50_rounds"])],
            }
    out["added_vs_off"] = added
    return out


def print_stateful(s: dict) -> None:
    print(f"{'config':<8}{'msgs/s':>9}{'greet p50':>11}{'p99':>8}{'session p50':>13}{'p99':>8}"
          f"{'EOD p50':>9}{'p99':>8}{'gate ms/msg':>13}{'+redis':>8}  replies")
    for name in STATEFUL_CONFIGS:
        x = s.get(name)
        if x:
            print(f"{name:<8}{fmt(x['msgs_per_s_median'])}{fmt(x['greeting_ms_p50'], 11)}{fmt(x['greeting_ms_p99'], 8)}"
                  f"{fmt(x['session_ms_p50'], 13)}{fmt(x['session_ms_p99'], 8)}{fmt(x['eod_ms_p50'])}"
                  f"{fmt(x['eod_ms_p99'], 8)}{fmt(x['gate_cpu_ms_per_msg_median'], 13)}"
                  f"{fmt(x['gate_plus_store_cpu_ms_per_msg_median'], 8)}  {x['replies']}")
    for name, dd in s["added_vs_off"].items():
        print(f"{name} - off: greeting p50 {dd['greeting_ms_p50']:+} ms p99 {dd['greeting_ms_p99']:+} ms; "
              f"session p50 {dd['session_ms_p50']:+} ms p99 {dd['session_ms_p99']:+} ms "
              f"(p50 per round {dd['session_ms_p50_per_round']}); EOD p50 {dd['eod_ms_p50']:+} ms; "
              f"gate CPU {dd['gate_cpu_ms_per_msg']:+} ms/msg (with the store {dd['gate_plus_store_cpu_ms_per_msg']:+}); "
              f"msgs/s x{dd['msgs_per_s_ratio']}")


def markdown_stateful(res: dict) -> str:
    s, p, m = res["summary"], res["parameters"], res["machine"]
    names = {"off": "stateful checks off", "sqlite": "on, SQLite", "redis": "on, Redis"}
    lines = [
        "### Cost of the stateful checks per connection (bench/gate_bench.py --stateful)",
        "",
        f"{p['clients']} concurrent clients (closed loop: the gate is saturated), {p['messages']} messages of "
        f"~2 KB per round, a new connection per message, {p['rounds']} rounds per configuration interleaved "
        f"(rotating order, after a warm-up each), one gate process per configuration, the same scorer "
        f"({p['workers']} worker(s)), sink and DNS; {m['cpu_count']} cores, {m['platform']}. "
        "Off: every `[limits]` 0 (ip_concurrency and auth_failures included), `[greylist] enabled = false`. "
        "On: ip_concurrency 1000, ip_rate and sender_rate 1 000 000, invalid_rcpt 1000, greylisting in its "
        "learning window (records every triplet, delays nothing); no check refuses anything.",
        "",
        "| configuration | msgs/s (median) | connect→greeting p50 / p99 ms | whole session p50 / p99 ms "
        "| EOD→reply p50 / p99 ms | gate CPU ms/msg (+ redis-server) | replies |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in STATEFUL_CONFIGS:
        x = s.get(name)
        if not x:
            continue
        cpu = f"{x['gate_cpu_ms_per_msg_median']:.2f}"
        if name == "redis":
            cpu += f" ({x['gate_plus_store_cpu_ms_per_msg_median']:.2f})"
        lines.append(
            f"| {names[name]} | {x['msgs_per_s_median']} | {x['greeting_ms_p50']} / {x['greeting_ms_p99']} | "
            f"{x['session_ms_p50']} / {x['session_ms_p99']} | {x['eod_ms_p50']} / {x['eod_ms_p99']} | {cpu} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(x['replies'].items()))} |")
    lines += ["", "| added vs off | greeting p50 / p99 ms | session p50 / p99 ms | session p50 per round ms "
              "| EOD→reply p50 / p99 ms | gate CPU ms/msg (+ store) | msgs/s ratio |",
              "|---|---|---|---|---|---|---|"]
    for name, dd in s["added_vs_off"].items():
        lines.append(
            f"| {names[name]} | {dd['greeting_ms_p50']:+} / {dd['greeting_ms_p99']:+} | "
            f"{dd['session_ms_p50']:+} / {dd['session_ms_p99']:+} | "
            f"{', '.join(f'{v:+}' for v in dd['session_ms_p50_per_round'])} | "
            f"{dd['eod_ms_p50']:+} / {dd['eod_ms_p99']:+} | {dd['gate_cpu_ms_per_msg']:+} "
            f"({dd['gate_plus_store_cpu_ms_per_msg']:+}) | {dd['msgs_per_s_ratio']} |")
    ok = all(s[n]["delivered_matches_250"] for n in STATEFUL_CONFIGS if n in s)
    lines += ["", f"Every 250 from each gate reached the sink: {'yes' if ok else '**no**'}. "
              f"The stores after the run (the checks ran): {s.get('store_evidence')}."]
    return "\n".join(lines)


def _interrupt(signum, frame):
    # As Ctrl-C: inside asyncio.run its SIGINT handler cancels the load cleanly, elsewhere
    # KeyboardInterrupt. Either way the ExitStack in main stops every peer.
    handler = signal.getsignal(signal.SIGINT)
    (handler if callable(handler) else signal.default_int_handler)(signum, frame)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16, help="concurrent SMTP clients")
    p.add_argument("--messages", type=int, default=400, help="messages per round")
    p.add_argument("--workers", type=int, default=1, help="scorer worker processes")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per mode")
    p.add_argument("--warmup", type=int, default=None, help="messages in each warm-up round (default: --messages / 2)")
    p.add_argument("--model", default=None, help="model bundle (default: the shipped models/default)")
    p.add_argument("--log-level", default="INFO", help="the gate's log level (INFO: the production default)")
    p.add_argument("--scorer-log-level", default="INFO",
                   help="the scorer's; its per-message time is read from its INFO lines")
    p.add_argument("--dnsbl-zone", default=None, help="one DNSBL zone that lists nothing (default: none)")
    p.add_argument("--seed", type=int, default=1, help="seed of the message texts")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, decision log)")
    p.add_argument("--stateful", action="store_true",
                   help="instead of baseline vs gate: three gates (stateful checks off, on with SQLite, on "
                        "with Redis), rounds interleaved; writes bench/out/gate_stateful.json by default")
    p.add_argument("--out", default=None, help="default bench/out/gate.json (gate_stateful.json with --stateful)")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = str(ROOT / "bench" / "out" / ("gate_stateful.json" if a.stateful else "gate.json"))
    if a.clients < 1 or a.messages < 1 or a.workers < 1 or a.rounds < 1:
        p.error("--clients, --messages, --workers and --rounds must be at least 1")

    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
    # SIGTERM stops the run as Ctrl-C does; a shell that starts us in the background
    # leaves SIGINT ignored, and a half-stopped bench leaves servers behind.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mailsift-gate-bench-"))
    t_start = time.monotonic()
    load_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        if a.keep:
            print(f"temporary directory (kept): {tmp}", file=sys.stderr)
        else:
            stack.callback(shutil.rmtree, tmp, True)
        bench = Bench(a, tmp, stack)
        print("starting dnsmasq, the sink, the scorer and the gate"
              + (" x3 (off, sqlite, redis) and redis-server" if a.stateful else "") + " ...", file=sys.stderr)
        bench.start()
        print(f"started in {time.monotonic() - t_start:.1f} s; scorer workers at "
              f"{', '.join(bench.scorer_addresses)}", file=sys.stderr)
        warm = a.warmup if a.warmup is not None else max(1, a.messages // 2)
        rounds: list[dict] = []
        if a.stateful:
            schedule = [("warmup", name, warm) for name in STATEFUL_CONFIGS]
            for i in range(a.rounds):   # rotate: each configuration runs first, second, third
                k = i % len(STATEFUL_CONFIGS)
                order = STATEFUL_CONFIGS[k:] + STATEFUL_CONFIGS[:k]
                schedule += [(f"round {i + 1}", mode, a.messages) for mode in order]
        else:
            schedule = [("warmup", "baseline", warm), ("warmup", "gate", warm)]
            for i in range(a.rounds):
                order = ("baseline", "gate") if i % 2 == 0 else ("gate", "baseline")
                schedule += [(f"round {i + 1}", mode, a.messages) for mode in order]
        for label, mode, n in schedule:
            r = bench.run(mode, n, label)
            print(f"  {label:<9} {mode:<9} {r['msgs_per_s']:>8.1f} msgs/s  p50 {r['latency_ms']['p50']} ms"
                  f"  p99 {r['latency_ms']['p99']} ms  greeting p50 {r['greeting_ms']['p50']} ms"
                  f"  session p50 {r['session_ms']['p50']} ms  replies {r['replies']}  sink +{r['sink_delivered']}",
                  file=sys.stderr)
            if label != "warmup":
                rounds.append(r)
            elif r["replies"].get("error") or r["replies"].get("4xx"):
                print(f"  warm-up had failures: {r['not_at_eod']}; gate log:\n{tail(bench.gate_log, 10)}",
                      file=sys.stderr)
        summary = summarise_stateful(rounds) if a.stateful else summarise(rounds)
        if a.stateful:
            summary["store_evidence"] = bench.store_evidence()

    res = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_at_start": load_start,
                    "loadavg_at_end": os.getloadavg()},
        "parameters": {"clients": a.clients, "messages": a.messages, "workers": a.workers, "rounds": a.rounds,
                       "warmup": warm, "log_level": a.log_level, "scorer_log_level": a.scorer_log_level,
                       "dnsbl_zone": a.dnsbl_zone, "seed": a.seed, "stateful": a.stateful,
                       "stateful_configs": ({n: stateful_extra(n, "redis://127.0.0.1:<port>/0").strip()
                                             for n in STATEFUL_CONFIGS} if a.stateful else None),
                       "model": a.model or "models/default (shipped)", "message_bytes_approx": 2000,
                       "templates": {"ham": len(HAM), "spam": len(SPAM)}},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "total_s": round(time.monotonic() - t_start, 1),
        "rounds": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rounds],
        "summary": summary,
    }
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")

    print()
    print_rounds(rounds)
    if a.stateful:
        print()
        print_stateful(summary)
        print(f"store after the run: {summary['store_evidence']}")
        print(f"wrote {out} ({res['total_s']} s in all)")
        print()
        print(markdown_stateful(res))
        return 0 if all(summary[n]["delivered_matches_250"] for n in STATEFUL_CONFIGS) else 1
    s = summary
    print()
    for mode in ("baseline", "gate"):
        x = s[mode]
        print(f"{mode:<9} {x['msgs_per_s_median']:>8} msgs/s (median of {x['msgs_per_s_rounds']}), "
              f"EOD->reply p50 {x['latency_ms_p50']} ms, p99 {x['latency_ms_p99']} ms, replies {x['replies']}")
    g = s["gate"]
    print(f"gate/baseline throughput {s['ratio_gate_over_baseline']} (the gate costs x{s['gate_costs_x']}), "
          f"per round pair {s['ratio_per_round_pair']}")
    print(f"CPU ms per message, all processes: baseline {s['baseline']['cpu_ms_per_msg_all_median']}, "
          f"gate {g['cpu_ms_per_msg_all_median']} (x{s['cpu_per_msg_gate_over_baseline']})")
    print(f"scorer's own time per message: p50 {g.get('scorer_elapsed_ms_p50_median')} ms, "
          f"p99 {g.get('scorer_elapsed_ms_p99_median')} ms ({g.get('scored')} matched)")
    print(f"every 250 from the gate reached the sink: {g['delivered_matches_250']} "
          f"({g['replied_250']} x 250, {g['sink_delivered']} delivered)")
    print(f"wrote {out} ({res['total_s']} s in all)")
    print()
    print(markdown(res))
    return 0 if g["delivered_matches_250"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every peer stopped, the temporary directory removed", file=sys.stderr)
        sys.exit(130)
