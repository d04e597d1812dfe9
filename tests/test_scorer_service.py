"""The scoring service end to end: the real ``mailsift scorer serve`` (the supervisor and
its worker processes) driven over real gRPC channels on loopback.

Every server here is a subprocess started from this checkout (``python -m classifier.cli``
with the repository root as its working directory), on ports picked free at run time,
with its JSON log captured to a file under tmp_path. A server is ready when every
worker's own port answers the standard health check with SERVING. Teardown sends
SIGTERM (the supervisor stops its workers, each finishing its requests in flight) and
kills the server's whole session only if it does not stop. When a test fails, the
server's log is printed.

- ``server``: 2 workers, metrics on; most tests.
- ``tiny_server``: 1 worker, 1 RPC thread, at most 2 requests at once, on a copy of the
  bundle; deadlines, overload, a killed worker, a failed reload.
- servers of their own for the reload test and the startup tests.

Tests headed by a "Regression" comment pin bugs this file found in the service.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import mailgen
from classifier import classifications
from classifier.proto import scorer_pb2 as pb
from classifier.proto import scorer_pb2_grpc as pb_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
SERVICE = "mailsift.v1.Scorer"
SERVING = health_pb2.HealthCheckResponse.SERVING
# a client channel that may send the messages the server must refuse
BIG_CHANNEL = (("grpc.max_send_message_length", 64 * 1024 * 1024),
               ("grpc.max_receive_message_length", 64 * 1024 * 1024))


# ---------------------------------------------------------------- ports

def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_base_port(workers: int) -> int:
    """A free port whose next ``workers`` ports (the workers' own) are free too."""
    for _ in range(200):
        base = free_port()
        if base + workers < 65536 and all(_bindable(base + 1 + i) for i in range(workers)):
            return base
    raise RuntimeError(f"no free run of {workers + 1} ports on 127.0.0.1")


def dead_address() -> str:
    """An address where nothing listens."""
    return f"127.0.0.1:{free_port()}"


# ---------------------------------------------------------------- the server process

class ScorerProcess:
    """``mailsift scorer serve`` as a subprocess, in a session of its own."""

    def __init__(self, tmp: pathlib.Path, model, workers: int = 2, max_queue: int = 64,
                 max_message_mb: float | None = None, metrics: bool = False):
        tmp.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.model = pathlib.Path(model)
        base = free_base_port(workers)
        self.shared = f"127.0.0.1:{base}"
        self.addresses = [f"127.0.0.1:{base + 1 + i}" for i in range(workers)]
        self.metrics_port = free_port() if metrics else 0
        self.state = tmp / "state"
        self.learnlog = self.state / "learnlog.sqlite"
        self.log_path = tmp / "server.log"
        self.ready_file = tmp / "ready"
        cmd = [sys.executable, "-m", "classifier.cli", "scorer", "serve",
               "--model", str(model), "--state", str(self.state), "--bind", self.shared,
               "--workers", str(workers), "--max-queue", str(max_queue),
               "--metrics-port", str(self.metrics_port), "--log-level", "INFO",
               "--ready-file", str(self.ready_file)]
        if max_message_mb is not None:
            cmd += ["--max-message-mb", str(max_message_mb)]
        env = {k: v for k, v in os.environ.items()
               if k not in ("PROMETHEUS_MULTIPROC_DIR", "MAILSIFT_SUPERVISOR_PID")}
        self._logfh = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._logfh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._channels: dict[tuple, grpc.Channel] = {}
        self.returncode: int | None = None

    # ---- lifecycle
    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        end = time.monotonic() + timeout
        # a probe channel that retries connecting quickly (the default backoff starts at 1 s)
        opts = (("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                ("grpc.max_reconnect_backoff_ms", 200))
        for addr in self.addresses:
            with grpc.insecure_channel(addr, options=opts) as ch:
                health = health_pb2_grpc.HealthStub(ch)
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"scorer exited with status {self.proc.returncode} before it was"
                                           f" ready:\n{self.log()}")
                    if time.monotonic() > end:
                        raise RuntimeError(f"worker {addr} not SERVING within {timeout:.0f} s:\n{self.log()}")
                    try:
                        if health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status == SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; kill the whole session if it does not stop. Idempotent."""
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            self.returncode = self.proc.returncode
            # a worker left behind (the supervisor died first) is in the same session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._logfh.close()
        return self.returncode

    # ---- clients
    def channel(self, addr: str, options: tuple = ()) -> grpc.Channel:
        key = (addr, options)
        if key not in self._channels:
            self._channels[key] = grpc.insecure_channel(addr, options=list(options))
        return self._channels[key]

    def stub(self, addr: str | None = None, options: tuple = ()) -> pb_grpc.ScorerStub:
        return pb_grpc.ScorerStub(self.channel(addr or self.addresses[0], options))

    def health(self, addr: str, service: str = "") -> int:
        return health_pb2_grpc.HealthStub(self.channel(addr)).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5).status

    # ---- what it said
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def events(self, event: str | None = None) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and (event is None or d.get("event") == event):
                out.append(d)
        return out

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}


@contextlib.contextmanager
def running(request, tmp: pathlib.Path, model, **kw):
    """A ready server for the duration; its log is printed if a test failed meanwhile."""
    srv = ScorerProcess(tmp, model, **kw)
    failed_before = request.session.testsfailed
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        if request.session.testsfailed > failed_before:
            text = f"\n----- log of mailsift scorer serve ({srv.log_path}) -----\n{srv.log()[-30000:]}"
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(text)
            else:
                sys.stderr.write(text + "\n")


@pytest.fixture(scope="module")
def server(request, fitted_bundle, tmp_path_factory):
    with running(request, tmp_path_factory.mktemp("scorer"), fitted_bundle, workers=2,
                 metrics=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_server(request, fitted_bundle, tmp_path_factory):
    """One worker with one RPC thread that holds at most two requests, serving a copy of
    the bundle (a test swaps files in it)."""
    tmp = tmp_path_factory.mktemp("tiny")
    model = tmp / "model"
    shutil.copytree(fitted_bundle, model)
    with running(request, tmp, model, workers=1, max_queue=2, metrics=True) as srv:
        yield srv


# ---------------------------------------------------------------- helpers

def message(kind: str, i: int, seed: int = 5000) -> bytes:
    return mailgen.make_message(kind, random.Random(seed + i), i)


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def classification_of(number: int) -> classifications.Classification:
    return classifications.BY_NUMBER[number]


def cluster(reply) -> pb.ClassifierScore:
    """cluster_tokens' part of a ScoreReply."""
    n = classifications.get("cluster_tokens").number
    return next(c for c in reply.classifiers if c.classification == n)


def poll(fn, timeout: float, interval: float = 0.05):
    """Call fn until it returns something truthy; that value, or the last one at timeout."""
    end = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


class HeldWorker:
    """Hold one of a worker's RPC slots (--max-queue): a ScoreStream whose request
    iterator blocks after its first request, until ``release``."""

    def __init__(self, stub: pb_grpc.ScorerStub, raw: bytes, request_id: str):
        self._go = threading.Event()

        def requests():
            yield pb.ScoreRequest(message=raw, request_id=request_id)
            self._go.wait(30)

        self.call = stub.ScoreStream(requests(), timeout=60)
        self.first = next(self.call)

    def release(self) -> list:
        self._go.set()
        return list(self.call)


class Backlog:
    """Fill one worker with real work: ``n`` concurrent Score calls of a 2 MB message.
    A worker scores one request at a time on its event loop, so a request sent behind
    them waits at least their scoring time."""

    def __init__(self, stub: pb_grpc.ScorerStub, raw: bytes, n: int, prefix: str):
        big = raw.replace(b"\n\n", b"\n\n" + b"lorem ipsum dolor sit amet free offer now\n" * 50_000, 1)
        self.calls = [stub.Score.future(pb.ScoreRequest(message=big, request_id=f"{prefix}-{i}"), timeout=60)
                      for i in range(n)]

    def wait(self) -> list:
        return [c.result() for c in self.calls]


# ---------------------------------------------------------------- 1. Score

def test_score_spam_and_ham_with_contract_replies_evidence_and_identity(server, fitted_bundle):
    from classifier.bundle import load_bundle

    names = set(load_bundle(fitted_bundle).model.names_)
    stub = server.stub()
    spam, ham = message("spam", 1), message("ham", 2)

    s = stub.Score(pb.ScoreRequest(message=spam, evidence=3, request_id="req-spam-1"), timeout=10)
    c = classification_of(s.classification)
    assert s.verdict == pb.VERDICT_QUARANTINE and s.score >= s.threshold == pytest.approx(0.9)
    assert c.action == "quarantine"
    assert s.reply == c.reply() and s.reply.startswith("550 ")
    assert s.request_id == "req-spam-1"
    assert s.digest == sha256(spam)
    assert s.model_version == "test-1" and s.elapsed_ms > 0

    # every classifier of the bundle reports, with its weight and (unless it abstains) evidence
    assert {classification_of(x.classification).id for x in s.classifiers} == names
    for x in s.classifiers:
        assert x.weight != 0 and 0.0 <= x.p_spam <= 1.0
        if x.abstained:
            assert x.reason and x.contribution == 0 and not x.evidence
        else:
            assert 0 < len(x.evidence) <= 3
            assert all(e.feature for e in x.evidence)
    assert sum(not x.abstained for x in s.classifiers) >= 3

    h = stub.Score(pb.ScoreRequest(message=ham, request_id="req-ham-1"), timeout=10)
    assert h.verdict == pb.VERDICT_ACCEPT and h.score < 0.5
    assert classification_of(h.classification).id == "not_spam"
    assert h.reply.startswith("250 2.0.0 ")
    assert h.digest == sha256(ham) and h.request_id == "req-ham-1"

    # the recipient's threshold, when given, replaces the model's
    low = h.score / 2
    t = stub.Score(pb.ScoreRequest(message=ham, threshold=low), timeout=10)
    assert t.threshold == pytest.approx(low) and t.score == pytest.approx(h.score)
    assert t.verdict == pb.VERDICT_QUARANTINE
    assert classification_of(t.classification).id == "combined_score" and t.reply.startswith("550 ")
    t1 = stub.Score(pb.ScoreRequest(message=ham, threshold=1.0), timeout=10)
    assert t1.threshold == 1.0 and t1.verdict == pb.VERDICT_ACCEPT

    # gate facts are features of the combined score, and are reported as evidence
    bad = stub.Score(pb.ScoreRequest(message=ham, facts=pb.GateFacts(spf="fail", dnsbl=["zen.example",
                                                                                        "bl.example"])),
                     timeout=10)
    assert bad.score > h.score
    assert {f.feature for f in bad.facts} == {"spf=fail", "dnsbl_hits"}
    assert all(f.weight > 0 for f in bad.facts)
    assert not h.facts
    # an authenticated client (submission) is a fact too, taken from the envelope
    auth = stub.Score(pb.ScoreRequest(message=ham, envelope=pb.Envelope(authenticated=True, client_ip="192.0.2.1",
                                                                        mail_from="a@example.org")), timeout=10)
    assert auth.score < h.score
    assert [(f.feature, f.weight < 0) for f in auth.facts] == [("authenticated", True)]


# ---------------------------------------------------------------- 2. ScoreStream

def test_score_stream_answers_every_request_in_order(server):
    msgs = [message("spam" if i % 3 == 0 else "ham", i, seed=7000) for i in range(12)]
    reqs = [pb.ScoreRequest(message=m, request_id=f"stream-{i}") for i, m in enumerate(msgs)]
    replies = list(server.stub(server.addresses[1]).ScoreStream(iter(reqs), timeout=30))
    assert [r.digest for r in replies] == [sha256(m) for m in msgs]
    assert [r.request_id for r in replies] == [f"stream-{i}" for i in range(12)]
    assert [r.verdict for r in replies] == [pb.VERDICT_QUARANTINE if i % 3 == 0 else pb.VERDICT_ACCEPT
                                           for i in range(12)]


# ---------------------------------------------------------------- 3, 4. Learn

def test_learn_is_idempotent_across_workers_and_audited(server):
    raw = message("ham", 1, seed=8000)
    w0, w1 = (server.stub(a) for a in server.addresses)
    learn = lambda stub, label: stub.Learn(pb.LearnRequest(  # noqa: E731
        message=raw, label=label, source=pb.LEARN_SOURCE_RELEASE, who="test-admin"), timeout=10)

    first = learn(w0, pb.LABEL_HAM)
    again = learn(w1, pb.LABEL_HAM)      # the other worker knows: the log is shared
    other = learn(w0, pb.LABEL_SPAM)
    assert [first.outcome, again.outcome, other.outcome] == [
        pb.LEARN_OUTCOME_LEARNED, pb.LEARN_OUTCOME_NOOP, pb.LEARN_OUTCOME_RELEARNED]
    assert first.digest == again.digest == other.digest == sha256(raw)
    assert 0 < first.audit_id < again.audit_id < other.audit_id
    # release feedback teaches this installation's classifier only
    assert list(first.classifiers) == [classifications.get("cluster_tokens").number]

    with contextlib.closing(sqlite3.connect(f"file:{server.learnlog}?mode=ro", uri=True, timeout=10)) as db:
        rows = db.execute("SELECT id, outcome, label, previous_label, source, who, classifiers FROM learn"
                          " WHERE digest = ? ORDER BY id", (sha256(raw),)).fetchall()
        current = db.execute("SELECT label, log_id FROM current WHERE digest = ?", (sha256(raw),)).fetchone()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (first.audit_id, "learned", "ham"), (again.audit_id, "noop", "ham"), (other.audit_id, "relearned", "spam")]
    assert rows[0][3] is None and rows[2][3] == "ham"
    assert {(r[4], r[5], r[6]) for r in rows} == {("release", "test-admin", '["cluster_tokens"]')}
    assert current == ("spam", other.audit_id)
    m = server.metrics()
    for outcome in ("learned", "noop", "relearned"):
        assert m.get(("mailsift_scorer_learns_total", frozenset({("outcome", outcome)})), 0) >= 1, outcome


@pytest.fixture(scope="module")
def cluster_trained(server):
    """50 spam reported and 50 ham released, spread over both workers: enough for
    cluster_tokens to stop abstaining. Feedback teaches cluster_tokens only."""
    probe = message("spam", 3, seed=9100)
    before = {a: cluster(server.stub(a).Score(pb.ScoreRequest(message=probe), timeout=10))
              for a in server.addresses}
    msgs, labels = mailgen.corpus(50, 50, seed=4242)
    outcomes = collections.Counter()
    for i, (raw, y) in enumerate(zip(msgs, labels)):
        r = server.stub(server.addresses[i % 2]).Learn(pb.LearnRequest(
            message=raw, label=pb.LABEL_SPAM if y else pb.LABEL_HAM,
            source=pb.LEARN_SOURCE_REPORT if y else pb.LEARN_SOURCE_RELEASE, who="test-feedback"), timeout=10)
        outcomes[pb.LearnOutcome.Name(r.outcome)] += 1
    return SimpleNamespace(probe=probe, before=before, outcomes=outcomes, done=time.monotonic())


def test_feedback_reaches_every_worker(server, cluster_trained):
    assert cluster_trained.outcomes == {"LEARN_OUTCOME_LEARNED": 100}
    for addr, c in cluster_trained.before.items():
        assert c.abstained and "needs 50" in c.reason, addr

    spam, ham = cluster_trained.probe, message("ham", 3, seed=9100)

    def cluster_scores():
        out = {}
        for addr in server.addresses:
            stub = server.stub(addr)
            out[addr] = (cluster(stub.Score(pb.ScoreRequest(message=spam), timeout=10)),
                         cluster(stub.Score(pb.ScoreRequest(message=ham), timeout=10)))
        return out

    def converged():
        s = cluster_scores()
        ok = all(not cs.abstained and not ch.abstained for cs, ch in s.values())
        first = next(iter(s.values()))
        same = all(v[0].p_spam == pytest.approx(first[0].p_spam, abs=1e-12)
                   and v[1].p_spam == pytest.approx(first[1].p_spam, abs=1e-12) for v in s.values())
        return s if ok and same else None

    scores = poll(converged, timeout=10.0)
    took = time.monotonic() - cluster_trained.done
    assert scores, f"workers did not converge on the learn log: {cluster_scores()}"
    assert took < 5.0, f"the other worker took {took:.1f} s to pick up the learns"
    for addr, (cs, ch) in scores.items():
        # it learned something: a spam probe scores above a ham one, with evidence
        assert cs.p_spam > 0.5 > ch.p_spam, addr
        assert cs.evidence and cs.weight > 0 and cs.contribution > 0, addr


def test_relearn_moves_cluster_tokens_towards_the_new_label(server, cluster_trained):
    raw = message("ham", 4, seed=9200)
    a, b = server.addresses
    wa = server.stub(a)
    score = lambda stub: stub.Score(pb.ScoreRequest(message=raw), timeout=10)  # noqa: E731

    poll(lambda: not cluster(score(wa)).abstained, timeout=10.0)
    start = score(wa)
    learned = wa.Learn(pb.LearnRequest(message=raw, label=pb.LABEL_HAM, source=pb.LEARN_SOURCE_RELEASE),
                       timeout=10)
    assert learned.outcome == pb.LEARN_OUTCOME_LEARNED
    as_ham = score(wa)                      # the learning worker applied it before replying
    relearned = wa.Learn(pb.LearnRequest(message=raw, label=pb.LABEL_SPAM, source=pb.LEARN_SOURCE_REPORT),
                         timeout=10)
    assert relearned.outcome == pb.LEARN_OUTCOME_RELEARNED and relearned.audit_id > learned.audit_id
    as_spam = score(wa)

    assert not cluster(as_ham).abstained
    assert cluster(as_ham).p_spam <= cluster(start).p_spam
    assert cluster(as_spam).p_spam > cluster(as_ham).p_spam
    assert cluster(as_spam).logodds > cluster(as_ham).logodds
    assert as_spam.score > as_ham.score
    # the other worker ends in the same state (the ham learn undone, the spam one applied)
    wb = server.stub(b)
    same = poll(lambda: cluster(score(wb)).p_spam == pytest.approx(cluster(as_spam).p_spam, abs=1e-12),
                timeout=5.0)
    assert same, (cluster(score(wb)).p_spam, cluster(as_spam).p_spam)


# ---------------------------------------------------------------- 5. Explain

def test_explain_gives_evidence_for_and_against_per_classifier(server):
    raw = message("spam", 5)
    stub = server.stub()
    r = stub.Explain(pb.ExplainRequest(message=raw, per_classifier=4), timeout=10)
    s = stub.Score(pb.ScoreRequest(message=raw), timeout=10)
    assert r.digest == sha256(raw) and r.model_version == "test-1"
    assert r.score == pytest.approx(s.score)
    assert [c.classification for c in r.classifiers] == [c.classification for c in s.classifiers]
    spoken = [c for c in r.classifiers if not c.abstained]
    assert len(spoken) >= 3
    for c in r.classifiers:
        name = classification_of(c.classification).id
        assert len(c.for_spam) <= 4 and len(c.for_ham) <= 4, name
        assert all(e.weight > 0 and e.feature for e in c.for_spam), name
        assert all(e.weight < 0 and e.feature for e in c.for_ham), name
        # strongest first
        assert [abs(e.weight) for e in c.for_spam] == sorted((abs(e.weight) for e in c.for_spam), reverse=True)
        assert [abs(e.weight) for e in c.for_ham] == sorted((abs(e.weight) for e in c.for_ham), reverse=True)
        if c.abstained:
            assert c.reason and not c.for_spam and not c.for_ham
    # a spam message: the evidence for spam outweighs the evidence against
    assert sum(e.weight for c in spoken for e in c.for_spam) > -sum(e.weight for c in spoken for e in c.for_ham)
    assert all(c.for_spam for c in spoken)
    # the default is 10 per side
    d = stub.Explain(pb.ExplainRequest(message=raw), timeout=10)
    assert max(len(c.for_spam) for c in d.classifiers) > 4
    assert all(len(c.for_spam) <= 10 and len(c.for_ham) <= 10 for c in d.classifiers)


# ---------------------------------------------------------------- 6. health, reflection

def test_health_and_reflection(server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    for addr in [server.shared, *server.addresses]:
        assert server.health(addr, "") == SERVING, addr
        assert server.health(addr, SERVICE) == SERVING, addr
        with pytest.raises(grpc.RpcError) as e:
            server.health(addr, "no.such.Service")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

    # the shared port (SO_REUSEPORT) scores too
    r = server.stub(server.shared).Score(pb.ScoreRequest(message=message("ham", 6)), timeout=10)
    assert r.verdict == pb.VERDICT_ACCEPT

    # --ready-file names the workers' own addresses
    assert server.ready_file.read_text().strip() == ",".join(server.addresses)

    db = ProtoReflectionDescriptorDatabase(server.channel(server.addresses[0]))
    services = set(db.get_services())
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    # grpcurl works without stubs: the whole contract comes through reflection
    svc = DescriptorPool(db).FindServiceByName(SERVICE)
    assert {m.name for m in svc.methods} == {"Score", "ScoreStream", "Learn", "Explain", "Reload"}
    reply = svc.methods_by_name["Score"].output_type
    assert reply.fields_by_name["classification"].enum_type.full_name == "mailsift.v1.Classification"


# ---------------------------------------------------------------- 7. deadlines

def test_deadline_passed_in_the_queue_is_not_scored(server):
    srv = server
    stub = srv.stub(srv.addresses[0])          # one worker: its own port
    raw = message("spam", 7)
    # A deadline that passes while the request waits behind a backlog: the client gets
    # DEADLINE_EXCEEDED, and the worker does not score it when its turn comes.
    backlog = Backlog(stub, raw, 20, "hold")
    time.sleep(0.05)                           # the backlog is sent first
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        stub.Score(pb.ScoreRequest(message=raw, request_id="late-b"), timeout=0.3)
    waited = time.monotonic() - t0
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and waited >= 0.29
    # a deadline too short to reach the worker alive at all
    with pytest.raises(grpc.RpcError) as e:
        stub.Score(pb.ScoreRequest(message=raw, request_id="late-a"), timeout=0.0001)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    replies = backlog.wait()
    assert len(replies) == 20 and all(r.verdict for r in replies)
    # drained: the worker answers again
    assert stub.Score(pb.ScoreRequest(message=raw, request_id="after"), timeout=10).request_id == "after"

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "after" not in {ev.get("request_id") for ev in srv.events("score")}:
        time.sleep(0.05)
    scored = [ev.get("request_id") for ev in srv.events("score")]
    assert {"hold-0", "hold-19", "after"} <= set(scored)   # the log is being read right
    assert "late-a" not in scored and "late-b" not in scored


# ---------------------------------------------------------------- 8. overload

def test_overload_is_refused_with_resource_exhausted(tiny_server):
    srv = tiny_server
    stub = srv.stub()
    spam = message("spam", 8)
    big = spam.replace(b"\n\n", b"\n\n" + b"lorem ipsum dolor sit amet free offer now\n" * 50_000, 1)
    assert len(big) > 2_000_000
    n = 20

    def burst() -> collections.Counter:
        barrier = threading.Barrier(n)
        codes: list = [None] * n

        # a connection per caller: on one connection HTTP/2 flow control can feed the
        # server one upload at a time, which is no burst at all
        stubs = [srv.stub(options=(("burst", i),)) for i in range(n)]

        def call(i):
            barrier.wait()
            try:
                r = stubs[i].Score(pb.ScoreRequest(message=big, request_id=f"burst-{i}"), timeout=30)
                codes[i] = "OK" if r.digest == sha256(big) else "WRONG"
            except grpc.RpcError as exc:
                codes[i] = exc.code().name

        threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return collections.Counter(codes)

    # Whether 20 uploads overlap at the server depends on the machine's scheduling: a
    # burst that happened to arrive one by one is not an overload. Up to three bursts.
    count = collections.Counter()
    for _ in range(3):
        count += burst()
        assert set(count) <= {"OK", "RESOURCE_EXHAUSTED"}, count
        if count["RESOURCE_EXHAUSTED"]:
            break
    assert count["RESOURCE_EXHAUSTED"] >= 1 and count["OK"] >= 1, count
    # still healthy, and scoring
    assert srv.health(srv.addresses[0], SERVICE) == SERVING
    assert stub.Score(pb.ScoreRequest(message=spam), timeout=10).verdict == pb.VERDICT_QUARANTINE
    assert srv.proc.poll() is None


def test_killed_worker_is_restarted_and_replays_the_learn_log(tiny_server):
    srv = tiny_server
    stub = srv.stub()
    raw = message("ham", 14)
    before = stub.Score(pb.ScoreRequest(message=raw), timeout=10)
    # training data teaches every classifier, so the combined score moves at once
    learned = stub.Learn(pb.LearnRequest(message=raw, label=pb.LABEL_SPAM, source=pb.LEARN_SOURCE_TRAINING,
                                         who="test-restart"), timeout=10)
    assert learned.outcome == pb.LEARN_OUTCOME_LEARNED
    assert len(learned.classifiers) == len(before.classifiers)
    after = stub.Score(pb.ScoreRequest(message=raw), timeout=10)
    assert after.score > before.score

    old_pid = srv.events("worker_started")[-1]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    started = poll(lambda: [e for e in srv.events("worker_started") if e["pid"] != old_pid], timeout=20.0)
    assert started, srv.log()[-3000:]
    assert started[-1]["worker"] == 0 and started[-1]["learnlog_applied"] >= learned.audit_id
    died = srv.events("worker_died")
    assert died and died[-1]["worker"] == 0 and died[-1]["exitcode"] == -signal.SIGKILL
    srv.wait_ready()
    again = stub.Score(pb.ScoreRequest(message=raw), timeout=10, wait_for_ready=True)
    # the new process replayed the learn log onto its bundle: the same state as before the crash
    assert again.score == pytest.approx(after.score, abs=1e-12)
    assert [c.p_spam for c in again.classifiers] == pytest.approx([c.p_spam for c in after.classifiers], abs=1e-12)
    again_learn = stub.Learn(pb.LearnRequest(message=raw, label=pb.LABEL_SPAM, source=pb.LEARN_SOURCE_TRAINING),
                             timeout=10)
    assert again_learn.outcome == pb.LEARN_OUTCOME_NOOP


# ---------------------------------------------------------------- 9. reload

def _install_bundle(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Swap a bundle's files into a served directory, each atomically, the manifest last."""
    names = sorted(p.name for p in src.iterdir() if p.name != "manifest.json") + ["manifest.json"]
    for name in names:
        tmp = dst / f".{name}.new"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, dst / name)


def _rebundle(src, dst: pathlib.Path, version: str) -> pathlib.Path:
    from classifier.bundle import load_bundle, save_bundle

    b = load_bundle(src)
    b.version = version
    save_bundle(b, dst, model_card=f"# {version}\n")
    return dst


def test_reload_under_load_drops_nothing_and_reaches_every_worker(request, fitted_bundle, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(fitted_bundle, model)
    v2 = _rebundle(fitted_bundle, tmp_path / "v2", "test-2")
    v3 = _rebundle(fitted_bundle, tmp_path / "v3", "test-3")
    msgs = [message("spam" if i % 2 else "ham", i, seed=9500) for i in range(8)]

    with running(request, tmp_path / "srv", model, workers=2) as srv:
        stop = threading.Event()
        seen: dict[str, list[str]] = {a: [] for a in srv.addresses}
        failures: list = []

        def load(k):
            i = 0
            while not stop.is_set():
                addr = srv.addresses[i % 2]
                raw = msgs[(i + k) % len(msgs)]
                try:
                    r = srv.stub(addr).Score(pb.ScoreRequest(message=raw), timeout=10)
                    assert r.digest == sha256(raw)
                    seen[addr].append(r.model_version)
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    failures.append((addr, repr(exc)))
                i += 1

        threads = [threading.Thread(target=load, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.7)
            _install_bundle(v2, model)
            r = srv.stub(srv.addresses[0]).Reload(pb.ReloadRequest(), timeout=60)
            assert r.model_version == "test-2" and r.changed
            # the supervisor passes the reload on to every worker
            versions = lambda: {a: srv.stub(a).Score(pb.ScoreRequest(message=msgs[0]),  # noqa: E731
                                                      timeout=10).model_version for a in srv.addresses}
            assert poll(lambda: set(versions().values()) == {"test-2"}, timeout=10.0), versions()
            time.sleep(0.5)

            # SIGHUP to the supervisor does the same
            _install_bundle(v3, model)
            srv.proc.send_signal(signal.SIGHUP)
            assert poll(lambda: set(versions().values()) == {"test-3"}, timeout=10.0), versions()
            time.sleep(0.5)

            # a bundle that fails verification is refused; every worker keeps serving test-3
            tampered = tmp_path / "tampered"
            shutil.copytree(v2, tampered)
            npz = next(tampered.glob("*.npz"))
            npz.write_bytes(npz.read_bytes()[:-1] + bytes([npz.read_bytes()[-1] ^ 1]))
            _install_bundle(tampered, model)
            with pytest.raises(grpc.RpcError) as e:
                srv.stub(srv.addresses[1]).Reload(pb.ReloadRequest(), timeout=60)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "SHA-256" in e.value.details()
            assert poll(lambda: {ev["worker"] for ev in srv.events("reload_failed")} == {0, 1}, timeout=10.0)
            assert set(versions().values()) == {"test-3"}
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)

        assert not failures, failures[:5]
        order = {"test-1": 1, "test-2": 2, "test-3": 3}
        for addr, vs in seen.items():
            assert len(vs) > 20, (addr, len(vs))
            # each worker swaps once per reload and never goes back
            assert [order[v] for v in vs] == sorted(order[v] for v in vs), addr
            assert vs[0] == "test-1" and vs[-1] == "test-3", addr
        reloaded = {(e["worker"], e["model"]) for e in srv.events("reloaded")}
        assert {(0, "test-2"), (1, "test-2"), (0, "test-3"), (1, "test-3")} <= reloaded

        # SIGTERM: a clean stop
        assert srv.stop() == 0
        assert {e["worker"] for e in srv.events("worker_stopped")} == {0, 1}
        assert srv.events("supervisor_stopped")


# Regression (found by this file, fixed): a bundle whose load raises anything but
# BundleError/OSError/ValueError (here KeyError) kills the reload thread silently
# (_safe_reload swallows it, nothing is logged), so the Reload RPC waits out its whole
# deadline
def test_reload_of_a_malformed_bundle_fails_fast_and_keeps_serving(tiny_server, tmp_path):
    srv = tiny_server
    saved = tmp_path / "saved"
    shutil.copytree(srv.model, saved)
    bad = tmp_path / "bad"
    shutil.copytree(srv.model, bad)
    # well-formed JSON vouched for by its manifest, but without a field the loader needs
    doc = json.loads((bad / "bundle.json").read_bytes())
    del doc["specificity"]
    raw = json.dumps(doc).encode()
    (bad / "bundle.json").write_bytes(raw)
    manifest = json.loads((bad / "manifest.json").read_bytes())
    manifest["files"]["bundle.json"] = {"sha256": sha256(raw), "bytes": len(raw)}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    stub = srv.stub()
    try:
        _install_bundle(bad, srv.model)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.Reload(pb.ReloadRequest(), timeout=4)
        took = time.monotonic() - t0
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (e.value.code(), e.value.details(), took)
        assert srv.events("reload_failed")
    finally:
        _install_bundle(saved, srv.model)
        assert stub.Score(pb.ScoreRequest(message=message("ham", 16)), timeout=10).model_version == "test-1"


# ---------------------------------------------------------------- 10. malformed requests

def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_malformed_requests_are_refused_with_reasons(server):
    stub = server.stub()
    raw = message("spam", 10)

    code, details = _code(lambda: stub.Score(pb.ScoreRequest(message=b""), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in details
    for bad in (1.5, 0.0, -0.1):
        code, details = _code(lambda: stub.Score(pb.ScoreRequest(message=raw, threshold=bad), timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "threshold" in details, bad
    code, details = _code(lambda: stub.Explain(pb.ExplainRequest(message=b""), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in details

    code, details = _code(lambda: stub.Learn(pb.LearnRequest(message=raw, source=pb.LEARN_SOURCE_RELEASE),
                                             timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "label" in details
    code, details = _code(lambda: stub.Learn(pb.LearnRequest(message=raw, label=pb.LABEL_SPAM), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "source" in details
    code, details = _code(lambda: stub.Learn(pb.LearnRequest(message=b"", label=pb.LABEL_SPAM,
                                                             source=pb.LEARN_SOURCE_REPORT), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in details
    code, details = _code(lambda: stub.Learn(pb.LearnRequest(
        message=raw, label=pb.LABEL_SPAM, source=pb.LEARN_SOURCE_REPORT, classifiers=[9999]), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "9999" in details
    code, details = _code(lambda: stub.Learn(pb.LearnRequest(
        message=raw, label=pb.LABEL_SPAM, source=pb.LEARN_SOURCE_REPORT,
        classifiers=[classifications.get("not_spam").number]), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not_spam" in details
    # nothing refused reached the learn log
    with contextlib.closing(sqlite3.connect(f"file:{server.learnlog}?mode=ro", uri=True, timeout=10)) as db:
        assert db.execute("SELECT COUNT(*) FROM learn WHERE digest = ?", (sha256(raw),)).fetchone()[0] == 0

    m = server.metrics()
    invalid = lambda method: m.get(("mailsift_scorer_requests_total",  # noqa: E731
                                    frozenset({("method", method), ("code", "INVALID_ARGUMENT")})), 0)
    assert invalid("Score") >= 4 and invalid("Learn") >= 5 and invalid("Explain") >= 1

    # size: the limit is 25 MB; gRPC itself refuses more
    big_stub = server.stub(server.addresses[1], BIG_CHANNEL)
    huge = b"Subject: huge\r\n\r\n" + b"A" * (50 * 1024 * 1024)  # the issue: a 50 MB body beyond the configured limit
    code, details = _code(lambda: big_stub.Score(pb.ScoreRequest(message=huge), timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    under = b"Subject: large\r\n\r\n" + b"word " * (24 * 1024 * 1024 // 5)
    r = big_stub.Score(pb.ScoreRequest(message=under), timeout=30)
    assert r.digest == sha256(under) and r.gave_up       # scored, the parser capped its work
    # and the worker is fine afterwards
    assert big_stub.Score(pb.ScoreRequest(message=raw), timeout=10).verdict == pb.VERDICT_QUARANTINE


# ---------------------------------------------------------------- 11. the CLI

def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "classifier.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_score_remote_prints_json_per_file(server, tmp_path):
    spam, ham = message("spam", 11), message("ham", 11)
    (tmp_path / "spam.eml").write_bytes(spam)
    (tmp_path / "ham.eml").write_bytes(ham)
    files = [str(tmp_path / "spam.eml"), str(tmp_path / "ham.eml")]
    p = _cli("score", "--remote", ",".join(server.addresses), "--json", *files)
    assert p.returncode == 0, p.stderr
    out = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    assert [o["file"] for o in out] == files
    expected = [server.stub().Score(pb.ScoreRequest(message=m), timeout=10) for m in (spam, ham)]
    for o, e, raw in zip(out, expected, (spam, ham)):
        assert o["reply"] == e.reply and o["digest"] == sha256(raw)
        assert o["verdict"] == ("quarantine" if e.verdict == pb.VERDICT_QUARANTINE else "accept")
        assert o["model_version"] == "test-1" and o["score"] == pytest.approx(e.score)
    assert out[0]["reply"].startswith("550 ") and out[1]["reply"].startswith("250 2.0.0 ")


# Regression (found by this file, fixed): the client retries a message too large to
# send (RESOURCE_EXHAUSTED from gRPC's size limit) as if the worker were full and
# raises ScorerUnavailable, so `score --remote` stops with status 2 at that file
def test_cli_score_remote_refuses_an_oversized_file_and_goes_on(server, tmp_path):
    huge, ham = tmp_path / "huge.eml", tmp_path / "ham.eml"
    huge.write_bytes(b"Subject: huge\r\n\r\n" + b"A" * (30 * 1024 * 1024))
    ham.write_bytes(message("ham", 17))
    p = _cli("score", "--remote", server.addresses[0], "--json", str(huge), str(ham))
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert [json.loads(line)["file"] for line in p.stdout.splitlines() if line.strip()] == [str(ham)]
    assert str(huge) in p.stderr


def test_cli_score_remote_dead_address_exits_2(tmp_path):
    f = tmp_path / "m.eml"
    f.write_bytes(message("ham", 12))
    dead = dead_address()
    p = _cli("score", "--remote", dead, "--deadline", "5", "--json", str(f))
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    assert dead in p.stderr and "UNAVAILABLE" in p.stderr


# ---------------------------------------------------------------- 12. the client

def test_remote_scorer_skips_a_dead_address(server):
    from classifier.client import RemoteScorer, ScorerUnavailable

    dead = dead_address()
    raw = message("spam", 13)
    with RemoteScorer([dead, server.addresses[0]], deadline=10) as remote:
        for _ in range(4):            # round-robin: every other call starts at the dead one
            v = remote.score(raw)
            assert v.verdict == "quarantine" and v.digest == sha256(raw) and v.model_version == "test-1"
        e = remote.explain(raw, per_classifier=2)
        assert e.digest == sha256(raw)

    with RemoteScorer([dead, dead_address()], deadline=10) as remote:
        t0 = time.monotonic()
        with pytest.raises(ScorerUnavailable) as exc:
            remote.score(raw)
        assert exc.value.code == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < 9     # refused at once, not at the deadline


def test_remote_scorer_moves_on_from_a_full_worker_but_not_past_its_deadline(server, tiny_server):
    from classifier.client import RemoteScorer

    raw = message("spam", 15)
    # the deadline is the caller's whole budget: spent waiting in the first worker (behind
    # a backlog), it is not retried on the second
    with RemoteScorer(server.addresses, deadline=10) as remote:
        backlog = Backlog(server.stub(server.addresses[0]), raw, 20, "busy")
        time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as e:
            remote.score(raw, request_id="client-late", deadline=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        backlog.wait()

    # a full worker (both RPC slots taken) answers RESOURCE_EXHAUSTED; the next one is asked
    tiny = tiny_server.stub()
    with RemoteScorer([tiny_server.addresses[0], server.addresses[0]], deadline=10) as remote:
        held = [HeldWorker(tiny, raw, "hold-c"), HeldWorker(tiny, raw, "hold-d")]
        try:
            with pytest.raises(grpc.RpcError) as e:
                tiny.Score(pb.ScoreRequest(message=raw), timeout=5)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            v = remote.score(raw, request_id="client-retried")
            assert v.verdict == "quarantine" and v.digest == sha256(raw)
        finally:
            for h in held:
                h.release()
        assert tiny.Score(pb.ScoreRequest(message=raw), timeout=10).digest == sha256(raw)   # slots free again

    time.sleep(0.3)  # the log lines are flushed
    assert "client-late" not in {e.get("request_id") for e in server.events("score")}
    assert "client-retried" not in {e.get("request_id") for e in tiny_server.events("score")}
    assert "client-retried" in {e.get("request_id") for e in server.events("score")}


# ---------------------------------------------------------------- startup

# Regression (found by this file, fixed): serve.py writes --ready-file right after
# spawning the workers, before any of them has loaded the model and listens
def test_ready_file_appears_once_the_workers_serve(fitted_bundle, tmp_path):
    srv = ScorerProcess(tmp_path, fitted_bundle, workers=1)
    try:
        assert poll(srv.ready_file.exists, timeout=START_TIMEOUT, interval=0.005), srv.log()
        assert srv.ready_file.read_text().strip() == ",".join(srv.addresses)
        with grpc.insecure_channel(srv.addresses[0]) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        assert status.status == SERVING
    finally:
        srv.stop()


# Regression (found by this file, fixed): serve.py keeps restarting workers that
# cannot load the bundle instead of exiting non-zero, and writes --ready-file anyway
def test_serve_with_an_unloadable_bundle_exits_with_an_error(tmp_path):
    missing = tmp_path / "no-such-bundle"
    srv = ScorerProcess(tmp_path / "srv", missing, workers=1)
    try:
        try:
            srv.proc.wait(6)
        except subprocess.TimeoutExpired:
            pass
        assert srv.proc.poll() not in (None, 0), "still running (or exited 0) with a bundle it cannot load"
        assert str(missing) in srv.log()
        assert not srv.ready_file.exists()
    finally:
        srv.stop()


def test_report_and_release_change_the_verdict_on_a_near_copy(server):
    """Learn(report) teaches the reputation stores once, whichever worker answers; a near
    copy of a message an ordinary user reported is a near-duplicate finding that does not
    decide; one an admin (trusted) reported is quarantined by the near-duplicate check on
    every worker; Learn(release) of that copy makes the index forget it."""
    text = ("Minutes of the allotment society: the water trough by plot twelve leaks again, the "
            "shed key now hangs in the usual place, seed potatoes arrive on Thursday and the "
            "autumn show will have a new category for the heaviest marrow grown this year. "
            "Volunteers for the hedge cutting rota please write your names on the board.")
    reported = mailgen.simple_message(text, subject="Allotment minutes")
    near = mailgen.simple_message(text.replace("Thursday", "Friday"), subject="Allotment minutes (2)")
    before = [server.stub(a).Score(pb.ScoreRequest(message=near), timeout=10) for a in server.addresses]
    assert all(not any(f.decided_alone for f in r.reputation) for r in before)
    server.stub(server.addresses[0]).Learn(pb.LearnRequest(
        message=reported, label=pb.LABEL_SPAM, source=pb.LEARN_SOURCE_REPORT, who="admin", trusted=True),
        timeout=10)
    for addr in server.addresses:
        r = server.stub(addr).Score(pb.ScoreRequest(message=near), timeout=10)
        near_dup = [f for f in r.reputation if f.check == "neardup"]
        assert r.verdict == pb.VERDICT_QUARANTINE and near_dup and near_dup[0].decided_alone, addr
        assert r.reply == "550 5.7.1 The content of this message looked like spam"
    server.stub(server.addresses[1]).Learn(pb.LearnRequest(
        message=near, label=pb.LABEL_HAM, source=pb.LEARN_SOURCE_RELEASE, who="admin"), timeout=10)
    r = server.stub(server.addresses[0]).Score(pb.ScoreRequest(message=near), timeout=10)
    assert not any(f.check == "neardup" and f.decided_alone for f in r.reputation)
    # an ordinary user's report of another copy: a finding as close, which does not decide
    by_user = mailgen.simple_message(text, subject="Allotment minutes (user)")
    server.stub(server.addresses[0]).Learn(pb.LearnRequest(
        message=by_user, label=pb.LABEL_SPAM, source=pb.LEARN_SOURCE_REPORT, who="someone"), timeout=10)
    r = server.stub(server.addresses[1]).Score(pb.ScoreRequest(message=near), timeout=10)
    near_dup = [f for f in r.reputation if f.check == "neardup"]
    assert near_dup and 0 < near_dup[0].strength <= 0.25 and not near_dup[0].decided_alone
    assert "1 reporter" in near_dup[0].evidence[0]


def test_every_reporter_of_the_same_bytes_votes_and_trust_travels_with_the_learn(server):
    """The reported check counts reporters: the second report of the very same bytes is a
    learn-log noop, yet its vote counts (two untrusted reporters decide, one does not);
    an admin's release (trusted) then overrules any number of ordinary reports."""
    text = ("Parish newsletter: the bell ringers practise on Wednesday evenings, the jumble sale "
            "raised enough for new hymn books, and the car park will be resurfaced in March so "
            "please park on the green until the work is done. Tea and cake after the service.")
    raw = mailgen.simple_message(text, subject="Parish newsletter", to="list@home.test")
    copy = mailgen.simple_message(text, subject="Parish newsletter", to="other@home.test")

    def reported_finding(addr):
        r = server.stub(addr).Score(pb.ScoreRequest(message=copy), timeout=10)
        return r, next((f for f in r.reputation if f.check == "reported"), None)

    def learn(label, source, who, trusted=False):
        return server.stub(server.addresses[0]).Learn(pb.LearnRequest(
            message=raw, label=label, source=source, who=who, trusted=trusted), timeout=10)

    assert learn(pb.LABEL_SPAM, pb.LEARN_SOURCE_REPORT, "u1").outcome == pb.LEARN_OUTCOME_LEARNED
    _, f = reported_finding(server.addresses[1])
    assert f is not None and not f.decided_alone                  # one user: a pull, not a ruling
    assert learn(pb.LABEL_SPAM, pb.LEARN_SOURCE_REPORT, "u2").outcome == pb.LEARN_OUTCOME_NOOP
    r, f = reported_finding(server.addresses[1])
    assert f.decided_alone and r.verdict == pb.VERDICT_QUARANTINE
    assert classification_of(r.classification).id == "considered_spam"
    assert learn(pb.LABEL_SPAM, pb.LEARN_SOURCE_REPORT, "U2 ").outcome == pb.LEARN_OUTCOME_NOOP
    assert "2 reporters" in reported_finding(server.addresses[0])[1].evidence[0]   # one spelling
    learn(pb.LABEL_HAM, pb.LEARN_SOURCE_RELEASE, "postmaster", trusted=True)
    learn(pb.LABEL_SPAM, pb.LEARN_SOURCE_REPORT, "u3")
    _, f = reported_finding(server.addresses[1])
    assert f.classification == classifications.get("not_spam").number and f.decided_alone
    assert f.evidence[0].endswith("an admin's decision")


def test_a_spam_trap_learn_is_trusted_by_nature(server):
    """A trap's Learn decides alone in neardup and reported without ``trusted`` set: what
    a spam trap catches is spam by nature, unlike one ordinary user's report."""
    text = ("Village hall bookings: the yoga class moves to Tuesday mornings, the film club shows "
            "a western on the last Friday of the month, the kitchen needs new kettles and the "
            "committee asks every hirer to stack the chairs and sweep the floor before leaving.")
    caught = mailgen.simple_message(text, subject="Hall bookings", to="trap@home.test")
    near = mailgen.simple_message(text.replace("western", "comedy"), subject="Hall bookings!")
    same = mailgen.simple_message(text, subject="Hall bookings", to="someone@home.test")
    server.stub(server.addresses[0]).Learn(pb.LearnRequest(
        message=caught, label=pb.LABEL_SPAM, source=pb.LEARN_SOURCE_TRAP, who="trap@home.test"), timeout=10)
    r = server.stub(server.addresses[1]).Score(pb.ScoreRequest(message=near), timeout=10)
    near_dup = [f for f in r.reputation if f.check == "neardup"]
    assert near_dup and near_dup[0].decided_alone and near_dup[0].evidence[0].endswith("a trusted report")
    assert r.verdict == pb.VERDICT_QUARANTINE
    r = server.stub(server.addresses[1]).Score(pb.ScoreRequest(message=same), timeout=10)
    voted = next(f for f in r.reputation if f.check == "reported")
    assert voted.decided_alone and voted.evidence[0].endswith("an admin's decision")
