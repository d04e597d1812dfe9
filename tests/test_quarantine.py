"""The quarantine store, its index, retention and actions (smtpgate/quarantine.py), and
the ``mailsift quarantine`` commands that wrap them.

The queue and the feedback store are fakes that fail on any call a test did not expect
(STYLE 7); one test runs a release into the real queue (smtpgate/queue.py) to pin the
interface between the two. Time is an injected clock.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field

import pytest

from smtpgate import headers
from smtpgate.quarantine import (
    AlreadyReleased,
    Deleted,
    NotFound,
    Quarantine,
    find_queue_id,
    fired_classifiers,
    report_spam,
    strip_trace,
    subject_of,
)

DAY = 86400.0
T0 = 1_780_000_000.0          # 2026-05-28


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def message(subject: str = "Cheap offer", frm: str = "promo@spam.test", body: str = "buy now") -> bytes:
    return (f"From: {frm}\r\nTo: user@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash((subject, body)))}@spam.test>\r\n\r\n{body}\r\n").encode()


def record(classification: str = "combined_score", score: float = 0.95, mail_from: str = "promo@spam.test",
           rcpts=("user@example.test",), **kw) -> dict:
    return {"mail_from": mail_from, "rcpts": list(rcpts), "client_ip": "192.0.2.1", "helo": "spam.test",
            "classification": classification, "reply": "550 5.7.1 High probability of spam",
            "evidence": [{"classification": classification, "check": "scorer", "evidence": "score"}],
            "score": score, "scores": {"global_tokens": 0.97, "crm114": 0.2, "cluster_tokens": 0.6},
            "model_version": "test-1", "settings_id": "default", "message_id": "<m@spam.test>",
            "route": ["127.0.0.1", 2526], **kw}


@dataclass
class FakeEntry:
    queue_id: str
    meta: dict


class FakeQueue:
    """The queue's interface as the quarantine uses it; any other call fails the test."""

    def __init__(self, known: dict[str, tuple[bytes, int, dict]] | None = None, crash_after_enqueue=False):
        self.enqueued: list[dict] = []
        self.known = dict(known or {})
        self.crash_after_enqueue = crash_after_enqueue

    def enqueue(self, *, mail_from, rcpts, message, queue_id=None, origin="smtp", route=None,
                smtputf8=False, body8bit=False, original_offset=0, meta=None) -> str:
        call = dict(mail_from=mail_from, rcpts=rcpts, message=message, queue_id=queue_id, origin=origin,
                    route=route, smtputf8=smtputf8, body8bit=body8bit, original_offset=original_offset, meta=meta)
        self.enqueued.append(call)
        self.known[queue_id] = (message, original_offset, meta)
        if self.crash_after_enqueue:
            raise KeyboardInterrupt("the process died after the enqueue committed")
        return queue_id

    def get(self, queue_id):
        k = self.known.get(queue_id)
        return None if k is None else FakeEntry(queue_id, k[2])

    def original(self, queue_id) -> bytes:
        data, offset, _ = self.known[queue_id]
        return data[offset:]

    def __getattr__(self, name):
        raise AssertionError(f"unexpected queue call: {name}")


@dataclass(frozen=True)
class FakeResult:
    status: str
    reasons: list
    digest: str
    audit_id: int | None


@dataclass
class FakeFeedback:
    fail: Exception | None = None
    calls: list = field(default_factory=list)

    def submit(self, **kw):
        self.calls.append(kw)
        if self.fail is not None:
            raise self.fail
        return FakeResult("learned", [], "d" * 64, len(self.calls))

    def __getattr__(self, name):
        raise AssertionError(f"unexpected feedback call: {name}")


class NoFeedback:
    """A feedback store that must not be called."""

    def __getattr__(self, name):
        raise AssertionError(f"feedback must not be called here ({name})")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def q(tmp_path, clock):
    quarantine = Quarantine(tmp_path / "quarantine", clock=clock)
    yield quarantine
    quarantine.close()


def fill(q, clock) -> list[str]:
    """Five messages over five days to different people, oldest first."""
    rows = [("A1", "a@example.test", "x@spam.test", "combined_score"),
            ("B2", "b@example.test", "y@spam.test", "urlbl"),
            ("C3", "a@example.test", "z@other.test", "line_too_long"),
            ("D4", "c@corp.test", "x@spam.test", "combined_score"),
            ("E5", "a@example.test", "", "phishing")]
    for i, (qid, rcpt, sender, cls) in enumerate(rows):
        clock.t = T0 + i * DAY
        q.store(qid, message(subject=f"msg {qid}"), record(cls, mail_from=sender, rcpts=[rcpt]))
    return [r[0] for r in rows]


# --------------------------------------------------------------------------------------
# store, index, search
# --------------------------------------------------------------------------------------
def test_store_keeps_the_layout_and_indexes(q, clock):
    raw = message(subject="=?utf-8?q?Gro=C3=9Fe?= Angebote")
    path = q.store("Q1", raw, record(rcpts=["User@Example.test", "boss@corp.test"]))
    assert path == q.directory / "2026-05-28" / "Q1.eml" and path.read_bytes() == raw
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["id"] == "Q1" and meta["stored"] == T0 and meta["size"] == len(raw)
    assert meta["state"] == "held" and meta["actions"] == [] and meta["classification"] == "combined_score"
    [e] = q.search()
    assert e.id == "Q1" and e.subject == "Große Angebote" and e.sender == "promo@spam.test"
    assert e.rcpts == ("boss@corp.test", "user@example.test") and e.score == 0.95 and e.size == len(raw)
    assert not list(path.parent.glob(".*.tmp"))


def test_search_filters_and_orders_newest_first(q, clock):
    fill(q, clock)
    ids = lambda **kw: [e.id for e in q.search(**kw)]
    assert ids() == ["E5", "D4", "C3", "B2", "A1"]
    assert ids(recipient="A@example.test") == ["E5", "C3", "A1"]
    assert ids(recipient="@corp.test") == ["D4"]
    assert ids(domain="example.test") == ["E5", "C3", "B2", "A1"]
    assert ids(sender="x@spam.test") == ["D4", "A1"]
    assert ids(sender="@spam.test") == ["D4", "B2", "A1"]
    assert ids(sender="") == ["E5"]            # the null sender
    assert ids(classification="combined_score") == ["D4", "A1"]
    assert ids(since=T0 + DAY, until=T0 + 3 * DAY) == ["C3", "B2"]
    assert ids(recipient="a@example.test", classification="phishing") == ["E5"]
    assert ids(limit=2) == ["E5", "D4"] and ids(limit=2, offset=2) == ["C3", "B2"]
    assert ids(state="released") == []
    with pytest.raises(ValueError):
        q.search(state="gone")


def test_subject_decoded_and_truncated():
    assert subject_of(message(subject="x" * 500)) == "x" * 200
    assert subject_of(b"Subject: =?utf-8?b?w6l0w6k=?=\r\n  suite\r\n\r\nbody") == "été suite"
    assert subject_of(b"From: a@b\r\n\r\nSubject: in the body") is None
    # a broken encoded word still shows what was sent
    assert "broken" in subject_of(b"Subject: =?x-unknown?q?=ZZ?= broken\r\n\r\n")


def test_missing_index_is_rebuilt_from_the_files(q, clock, tmp_path):
    fill(q, clock)
    q.close()
    for p in q.directory.glob("index.db*"):
        p.unlink()
    again = Quarantine(q.directory, clock=clock)
    assert [e.id for e in again.search(recipient="a@example.test")] == ["E5", "C3", "A1"]
    assert again.search(sender="@spam.test")[0].subject == "msg D4"
    again.close()


def test_index_behind_the_files_catches_up(q, clock, monkeypatch):
    """A crash between the files and the index row (here: the index write fails) leaves
    a message the next user of the quarantine still finds."""
    fill(q, clock)

    def broken(*a, **kw):
        raise sqlite3.OperationalError("database is locked")
    monkeypatch.setattr(Quarantine, "_put", staticmethod(broken))
    clock.t = T0 + 5 * DAY
    q.store("F6", message(subject="late"), record())      # the store itself succeeds
    monkeypatch.undo()
    assert (q.directory / "2026-06-02" / "F6.json").exists()
    fresh = Quarantine(q.directory, clock=clock)
    assert [e.id for e in fresh.search(limit=1)] == ["F6"]
    fresh.close()


def test_a_corrupt_index_is_set_aside_and_rebuilt(q, clock):
    fill(q, clock)
    q.close()
    for p in q.directory.glob("index.db-*"):
        p.unlink()
    (q.directory / "index.db").write_bytes(b"this is not a database" * 100)
    fresh = Quarantine(q.directory, clock=clock)
    assert len(fresh.search(state=None)) == 5
    assert list(q.directory.glob("index.db.corrupt-*"))
    fresh.close()


def test_records_written_before_the_index_existed_are_indexed(tmp_path, clock):
    """The layout the gate wrote before this index: no subject, state or actions in the .json."""
    day = tmp_path / "q" / "2026-05-28"
    day.mkdir(parents=True)
    (day / "OLD1.eml").write_bytes(message(subject="old one"))
    (day / "OLD1.json").write_text(json.dumps({"id": "OLD1", "stored": T0, "size": 10, **record()}))
    q = Quarantine(tmp_path / "q", clock=clock)
    [e] = q.search()
    assert (e.id, e.subject, e.state) == ("OLD1", "old one", "held")
    raw, rec = q.get("OLD1")
    assert raw == message(subject="old one") and rec["state"] == "held" and rec["actions"] == []
    q.close()


def test_get(q, clock):
    q.store("Q1", message(), record())
    raw, rec = q.get("Q1")
    assert raw == message() and rec["evidence"][0]["check"] == "scorer" and rec["scores"]["global_tokens"] == 0.97
    assert q.get("NOPE") is None and q.get("../etc/passwd") is None


# --------------------------------------------------------------------------------------
# retention
# --------------------------------------------------------------------------------------
def test_purge_removes_what_is_past_retention(tmp_path, clock):
    q = Quarantine(tmp_path / "q", retention=3 * DAY, clock=clock)
    fill(q, clock)                          # A1..E5 stored on days 0..4
    (q.directory / "2026-05-28" / ".A1.eml.tmp").write_bytes(b"left by a crash")
    assert q.purge(now=T0 + 5 * DAY - 1) == 2              # A1 (day 0) and B2 (day 1)
    assert [e.id for e in q.search(state=None)] == ["E5", "D4", "C3"]
    assert not (q.directory / "2026-05-28").exists() and not (q.directory / "2026-05-29").exists()
    assert q.get("A1") is None
    assert q.purge(now=T0 + 5 * DAY - 1) == 0
    with sqlite3.connect(q.directory / "index.db") as db:
        assert db.execute("SELECT count(*) FROM rcpts WHERE id IN ('A1', 'B2')").fetchone() == (0,)
    q.close()


def test_purge_settles_a_release_left_pending_before_deleting(tmp_path, clock):
    q = Quarantine(tmp_path / "q", retention=DAY, clock=clock)
    q.store("P1", message(), record())
    queue = FakeQueue(crash_after_enqueue=True)
    with pytest.raises(KeyboardInterrupt):
        q.release("P1", queue=queue, feedback=NoFeedback(), who="admin")
    later = T0 + 2 * DAY
    assert q.purge(now=later) == 0                      # no queue to ask: kept, not lost
    assert q.get("P1")[1]["actions"][0]["status"] == "pending"
    queue.crash_after_enqueue = False
    fb = FakeFeedback()
    assert q.purge(now=later, queue=queue, feedback=fb) == 0   # settled and learned first
    act = q.get("P1")[1]["actions"][0]
    assert act["status"] == "done" and act["learn"]["status"] == "learned"
    assert [(c["label"], c["who"]) for c in fb.calls] == [("ham", "admin")]
    assert q.purge(now=later, queue=queue, feedback=NoFeedback()) == 1
    q.close()


def test_feedback_is_submitted_outside_the_actions_lock(q, clock):
    import fcntl

    q.store("Q1", message(), record())
    seen = []

    class Probe(FakeFeedback):
        def submit(self, **kw):
            fd = os.open(q.directory / ".actions.lock", os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # another process could act meanwhile
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
            finally:
                os.close(fd)
            return super().submit(**kw)

    r = q.release("Q1", queue=FakeQueue(), feedback=Probe(), who="admin")
    assert seen == ["free"] and r.feedback["status"] == "learned"
    assert q.get("Q1")[1]["actions"][0]["learn"]["status"] == "learned"


def test_purge_finds_messages_the_index_missed(tmp_path, clock, monkeypatch):
    q = Quarantine(tmp_path / "q", retention=DAY, clock=clock)
    monkeypatch.setattr(Quarantine, "_put", staticmethod(lambda *a: (_ for _ in ()).throw(sqlite3.Error("x"))))
    q.store("LOST", message(), record())
    monkeypatch.undo()
    assert q.purge(now=T0 + 2 * DAY) == 1
    assert not list(q.directory.glob("*/LOST.*"))
    q.close()


# --------------------------------------------------------------------------------------
# release
# --------------------------------------------------------------------------------------
def test_release_queues_the_original_and_learns_ham(q, clock):
    raw = message()
    q.store("Q1", raw, record(rcpts=["user@example.test"], deliver_to=["User@Example.test"]))
    queue, fb = FakeQueue(), FakeFeedback()
    clock.t += 3600
    r = q.release("Q1", queue=queue, feedback=fb, who="admin", why="a customer's order")
    [call] = queue.enqueue and queue.enqueued
    assert call["mail_from"] == "promo@spam.test" and call["rcpts"] == ["User@Example.test"]
    assert call["origin"] == "release" and call["queue_id"] == r.queue_id and call["route"] is None
    assert call["message"][call["original_offset"]:] == raw
    trace = call["message"][:call["original_offset"]]
    assert trace.startswith(b"X-Mailsift-Released: Q1; queue-id=" + r.queue_id.encode()) and trace.endswith(b"\r\n")
    assert call["meta"] == {"quarantine_id": "Q1", "classification": "combined_score", "score": 0.95,
                            "released_by": "admin", "message_id": "<m@spam.test>"}
    assert call["body8bit"] is False and call["smtputf8"] is False
    [sub] = fb.calls
    assert sub == dict(message=raw, label="ham", source="release", who="admin", why="a customer's order",
                       score=0.95, classification="combined_score", queue_id="Q1",
                       classifiers=["cluster_tokens", "global_tokens"],
                       classifier_scores={"global_tokens": 0.97, "crm114": 0.2, "cluster_tokens": 0.6})
    assert r.original_recipients and r.feedback["status"] == "learned" and r.not_learned is None
    _, rec = q.get("Q1")
    assert rec["state"] == "released"
    [act] = rec["actions"]
    assert act["action"] == "release" and act["status"] == "done" and act["who"] == "admin"
    assert act["at"] == T0 + 3600 and act["to"] == ["User@Example.test"] and act["learn"]["status"] == "learned"
    assert [e.id for e in q.search(state="released")] == ["Q1"] and q.search() == []
    with sqlite3.connect(q.directory / "index.db") as db:
        assert db.execute("SELECT who, action, why, targets FROM actions WHERE id = 'Q1'").fetchall() == [
            ("admin", "release", "a customer's order", '["User@Example.test"]')]


def test_release_twice_needs_force(q, clock):
    q.store("Q1", message(), record())
    queue, fb = FakeQueue(), FakeFeedback()
    q.release("Q1", queue=queue, feedback=fb, who="admin")
    with pytest.raises(AlreadyReleased, match="user@example.test"):
        q.release("Q1", queue=queue, feedback=fb, who="admin")
    assert len(queue.enqueued) == 1
    again = q.release("Q1", queue=queue, feedback=fb, who="admin", force=True)
    assert len(queue.enqueued) == 2 and again.queue_id != queue.enqueued[0]["queue_id"]
    assert len(q.get("Q1")[1]["actions"]) == 2


def test_a_deliver_row_only_delivers(q, clock):
    q.store("L1", message(), record("line_too_long", score=None))
    queue = FakeQueue()
    r = q.release("L1", queue=queue, feedback=NoFeedback(), who="admin")
    assert len(queue.enqueued) == 1 and r.feedback is None
    assert "line_too_long" in r.not_learned and "deliver" in r.not_learned


def test_release_to_another_address_learns_nothing_and_stays_held(q, clock):
    q.store("Q1", message(), record())
    queue = FakeQueue()
    r = q.release("Q1", queue=queue, feedback=NoFeedback(), who="admin", to=["admin@example.test"])
    assert queue.enqueued[0]["rcpts"] == ["admin@example.test"] and not r.original_recipients
    assert "other addresses" in r.not_learned
    assert q.get("Q1")[1]["state"] == "held"
    # the original recipients can still have it, and that one teaches
    fb = FakeFeedback()
    q.release("Q1", queue=queue, feedback=fb, who="admin")
    assert queue.enqueued[1]["rcpts"] == ["user@example.test"] and len(fb.calls) == 1
    with pytest.raises(AlreadyReleased):
        q.release("Q1", queue=queue, feedback=fb, who="admin", to=["ADMIN@example.test"])


def test_release_without_learning_when_asked(q, clock):
    q.store("Q1", message(), record())
    r = q.release("Q1", queue=FakeQueue(), feedback=NoFeedback(), who="admin", learn=False)
    assert r.not_learned == "released without learning, as asked"


def test_a_failed_feedback_does_not_undo_the_release(q, clock):
    q.store("Q1", message(), record())
    queue = FakeQueue()
    r = q.release("Q1", queue=queue, feedback=FakeFeedback(fail=ConnectionError("scorer down")), who="admin")
    assert len(queue.enqueued) == 1 and r.feedback_error == "ConnectionError: scorer down"
    _, rec = q.get("Q1")
    assert rec["state"] == "released" and rec["actions"][0]["learn"]["error"] == "ConnectionError: scorer down"


def test_a_release_cut_short_after_the_enqueue_is_not_sent_twice(q, clock):
    q.store("Q1", message(), record())
    queue = FakeQueue(crash_after_enqueue=True)
    with pytest.raises(KeyboardInterrupt):
        q.release("Q1", queue=queue, feedback=NoFeedback(), who="admin")
    assert q.get("Q1")[1]["actions"][0]["status"] == "pending"
    queue.crash_after_enqueue = False
    fb = FakeFeedback()
    with pytest.raises(AlreadyReleased):
        q.release("Q1", queue=queue, feedback=fb, who="root")
    assert len(queue.enqueued) == 1
    _, rec = q.get("Q1")
    assert rec["actions"][0]["status"] == "done" and rec["state"] == "released"
    # what the interrupted release should have taught is taught once, in its releaser's name
    assert [(c["label"], c["who"]) for c in fb.calls] == [("ham", "admin")]
    assert rec["actions"][0]["learn"]["status"] == "learned"


def test_a_release_cut_short_before_the_enqueue_is_done_again(q, clock):
    q.store("Q1", message(), record())

    class Dies(FakeQueue):
        def enqueue(self, **kw):
            raise KeyboardInterrupt("died before the enqueue committed")
    with pytest.raises(KeyboardInterrupt):
        q.release("Q1", queue=Dies(), feedback=NoFeedback(), who="admin")
    queue = FakeQueue()
    r = q.release("Q1", queue=queue, feedback=FakeFeedback(), who="admin")
    assert len(queue.enqueued) == 1
    statuses = [a["status"] for a in q.get("Q1")[1]["actions"]]
    assert statuses == ["abandoned", "done"] and r.queue_id == queue.enqueued[0]["queue_id"]


def test_fired_classifiers():
    assert fired_classifiers({"scores": {"global_tokens": 0.97, "crm114": 0.2}}) == ["cluster_tokens", "global_tokens"]
    # a reputation check decided alone: the scorer's default for a release
    assert fired_classifiers({"scores": {"global_tokens": 0.1}}) is None
    assert fired_classifiers({}) is None


# --------------------------------------------------------------------------------------
# delete
# --------------------------------------------------------------------------------------
def test_delete_removes_the_bytes_and_keeps_the_record(q, clock):
    q.store("Q1", message(), record())
    q.delete("Q1", who="admin", why="obvious spam")
    raw, rec = q.get("Q1")
    assert raw is None and rec["state"] == "deleted" and rec["actions"][0]["why"] == "obvious spam"
    assert not list(q.directory.glob("*/Q1.eml"))
    assert [e.id for e in q.search(state="deleted")] == ["Q1"]
    with pytest.raises(Deleted):
        q.release("Q1", queue=FakeQueue(), feedback=NoFeedback(), who="admin")
    with pytest.raises(Deleted):
        q.delete("Q1", who="admin")
    with pytest.raises(NotFound):
        q.delete("NOPE", who="admin")


def test_actions_survive_a_rebuilt_index(q, clock):
    q.store("Q1", message(), record())
    q.store("Q2", message(subject="other"), record())
    q.release("Q1", queue=FakeQueue(), feedback=FakeFeedback(), who="admin")
    q.delete("Q2", who="admin")
    assert q.reindex() == 2
    assert [e.id for e in q.search(state="released")] == ["Q1"]
    assert [e.id for e in q.search(state="deleted")] == ["Q2"]


# --------------------------------------------------------------------------------------
# report as spam
# --------------------------------------------------------------------------------------
ORIGINAL = message(subject="You won", body="claim your prize")


def delivered_copy(queue_id: str = "19A2B3C4D5EAB12C") -> bytes:
    """What a recipient holds: the gate's trace fields on top of the original, then the
    fields the mailbox server added above them."""
    ours = headers.prepend(ORIGINAL, [
        ("Received", headers.received(helo="spam.test", ptr_name=None, ip="192.0.2.1", by="mx.gate.test",
                                      with_="ESMTP", queue_id=queue_id, rcpt="user@example.test",
                                      date="Thu, 28 May 2026 10:00:00 +0000")),
        ("Authentication-Results", "mx.gate.test; spf=pass smtp.mailfrom=spam.test"),
        ("X-Mailsift-Classification", "not_spam; Message looked like non-spam"),
        ("X-Mailsift-Score", "0.4200; threshold=0.9; model=test-1")], strip_authserv_id="mx.gate.test")
    return (b"Received: from mx.gate.test by mailbox.example.test with LMTP id xyz; Thu, 28 May 2026\r\n"
            b"Authentication-Results: mailbox.example.test; dkim=none\r\n" + ours)


def test_find_queue_id_and_strip_trace():
    copy = delivered_copy()
    assert find_queue_id(copy, "mx.gate.test") == ("19A2B3C4D5EAB12C", 2)
    assert find_queue_id(copy, "other.host") is None
    assert strip_trace(copy, "mx.gate.test") == ORIGINAL
    assert strip_trace(copy) == ORIGINAL                         # the host taken from our Received
    assert strip_trace(copy.replace(b"\r\n", b"\n"), "mx.gate.test") == ORIGINAL   # saved with LF
    released = b"X-Mailsift-Released: Q1; queue-id=REL123; classification=urlbl; date\r\n" + ORIGINAL
    assert find_queue_id(released) == ("REL123", 0) and strip_trace(released) == ORIGINAL
    # the topmost of ours wins: a sender's forgery below a release's own field is not read
    forged = released.replace(b"From:", b"X-Mailsift-Released: Q9; queue-id=FORGED\r\nFrom:", 1)
    assert find_queue_id(forged) == ("REL123", 0)


def test_report_by_queue_id_uses_the_queue(clock):
    queue = FakeQueue({"QID1": (b"Received: ours\r\n" + ORIGINAL, 16, {"score": 0.42, "classification": "not_spam"})})
    fb = FakeFeedback()
    r = report_spam(queue, fb, queue_id="QID1", who="alice", why="phish")
    assert fb.calls == [dict(message=ORIGINAL, label="spam", source="report", who="alice", why="phish",
                             score=0.42, classification="not_spam", queue_id="QID1", require_verdict=True)]
    assert r.from_queue and r.queue_id == "QID1" and r.feedback["status"] == "learned"
    with pytest.raises(NotFound):
        report_spam(queue, FakeFeedback(), queue_id="GONE", who="alice")
    with pytest.raises(ValueError):
        report_spam(queue, fb, who="alice")


def test_report_from_the_users_copy(clock):
    qid = "19A2B3C4D5EAB12C"
    queue = FakeQueue({qid: (b"R: x\r\n" + ORIGINAL, 6, {"score": 0.42, "classification": "not_spam"})})
    fb = FakeFeedback()
    r = report_spam(queue, fb, message=delivered_copy(qid), who="alice", hostname="mx.gate.test")
    assert r.from_queue and fb.calls[0]["message"] == ORIGINAL and fb.calls[0]["queue_id"] == qid
    assert fb.calls[0]["score"] == 0.42                      # the entry's, not the copy's header
    # once the queue no longer has it, the user's copy without our fields is the original,
    # and its own X-Mailsift-Score is not believed: no score, so held unless trusted
    fb = FakeFeedback()
    r = report_spam(FakeQueue(), fb, message=delivered_copy(qid), who="alice", hostname="mx.gate.test")
    assert not r.from_queue and r.queue_id == qid
    assert fb.calls[0]["message"] == ORIGINAL
    assert (fb.calls[0]["score"], fb.calls[0]["classification"], fb.calls[0]["require_verdict"]) == (
        None, None, True)


def test_a_copy_cannot_point_a_report_at_another_users_message(clock):
    """Finding 1: forged trace fields on top of the reporter's own message name the
    victim's queue id; the body does not match, so nothing is reported."""
    from smtpgate.quarantine import Mismatch

    victim = message(subject="salary", body="Your salary statement for March is attached")
    queue = FakeQueue({"VICTIM": (b"R: x\r\n" + victim, 6, {"score": 0.2, "classification": "not_spam"})})
    mine = message(subject="ad", body="hello, buy things")
    for forged in (b"Received: from a by mx.gate.test (mailsift) with ESMTP id VICTIM; now\r\n" + mine,
                   b"X-Mailsift-Released: Q1; queue-id=VICTIM; classification=x; now\r\n" + mine):
        with pytest.raises(Mismatch, match="VICTIM"):
            report_spam(queue, NoFeedback(), message=forged, who="mallory", hostname="mx.gate.test")
    # the X-Mailsift-Queue-Id form is not ours at all: the copy is reported as it is, unverified
    fb = FakeFeedback()
    r = report_spam(queue, fb, message=b"X-Mailsift-Queue-Id: VICTIM\r\n" + mine, who="mallory",
                    hostname="mx.gate.test")
    assert r.queue_id is None and not r.from_queue and fb.calls[0]["message"] == mine
    assert fb.calls[0]["require_verdict"] and fb.calls[0]["score"] is None
    # another gate's Received is not ours
    assert find_queue_id(b"Received: from a by evil.test (mailsift) with ESMTP id VICTIM; now\r\n" + mine,
                         "mx.gate.test") is None


def test_a_copy_saved_with_other_line_ends_still_matches(clock):
    qid = "19A2B3C4D5EAB12C"
    queue = FakeQueue({qid: (ORIGINAL, 0, {"score": 0.42, "classification": "not_spam"})})
    fb = FakeFeedback()
    copy = delivered_copy(qid).replace(b"\r\n", b"\n").replace(b"claim your prize", b"claim your prize  ")
    r = report_spam(queue, fb, message=copy, who="alice", hostname="mx.gate.test")
    assert r.from_queue and fb.calls[0]["message"] == ORIGINAL


# --------------------------------------------------------------------------------------
# the real queue behind a release
# --------------------------------------------------------------------------------------
def test_release_into_the_real_queue(q, clock, tmp_path):
    from smtpgate.queue import Queue

    raw = message(body="caf\u00e9 au lait")
    q.store("Q1", raw, record(rcpts=["user@example.test"]))
    queue = Queue(tmp_path / "queue")
    try:
        r = q.release("Q1", queue=queue, feedback=FakeFeedback(), who="admin")
        entry = queue.get(r.queue_id)
        assert entry.origin == "release" and entry.rcpts == ["user@example.test"] and entry.route is None
        assert entry.meta["quarantine_id"] == "Q1" and entry.body8bit
        assert queue.original(r.queue_id) == raw
        assert queue.message(r.queue_id).startswith(b"X-Mailsift-Released: Q1;")
        # a report of the released copy finds the queue entry through our trace field
        fb = FakeFeedback()
        rep = report_spam(queue, fb, message=queue.message(r.queue_id), who="alice")
        assert rep.from_queue and rep.queue_id == r.queue_id and fb.calls[0]["message"] == raw
        assert fb.calls[0]["classification"] == "combined_score"
    finally:
        queue.close()


# --------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------
def gate_toml(tmp_path) -> str:
    path = tmp_path / "gate.toml"
    path.write_text('[gate]\nhostname = "mx.gate.test"\nstate_dir = "state"\n\n'
                    '[listeners.inbound]\nbind = "127.0.0.1:2525"\n\n'
                    '[domains."example.test"]\nroute = "127.0.0.1:2526"\n\n'
                    '[outgoing]\nrelay = "127.0.0.1:2526"\n\n[quarantine]\nretention_days = 2\n')
    return str(path)


def test_cli_list_show_delete_purge(tmp_path, capsys):
    from classifier.cli import main

    config = gate_toml(tmp_path)
    q = Quarantine(tmp_path / "state" / "quarantine")
    q.store("OLD1", message(subject="old"), record())
    for p in q.directory.glob("*/OLD1.json"):   # stored three days ago
        rec = json.loads(p.read_text())
        rec["stored"] -= 3 * DAY
        p.write_text(json.dumps(rec))
    q.reindex()
    q.store("NEW1", message(subject="new and shiny"), record("urlbl", rcpts=["boss@example.test"]))
    q.close()

    assert main(["quarantine", "list", "--config", config, "--recipient", "boss@example.test"]) == 0
    out = capsys.readouterr().out
    assert "NEW1" in out and "urlbl" in out and "new and shiny" in out and "OLD1" not in out
    assert main(["quarantine", "list", "--config", config, "--json", "--since", "1d"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == ["NEW1"]
    assert main(["quarantine", "show", "--config", config, "NEW1"]) == 0
    assert json.loads(capsys.readouterr().out)["classification"] == "urlbl"
    assert main(["quarantine", "show", "--config", config, "NEW1", "--raw"]) == 0
    assert capsys.readouterr().out.encode() == message(subject="new and shiny")
    assert main(["quarantine", "delete", "--config", config, "--who", "root", "--why", "junk", "NEW1"]) == 0
    assert main(["quarantine", "delete", "--config", config, "NEW1"]) == 1
    assert "already deleted" in capsys.readouterr().err
    assert main(["quarantine", "list", "--config", config, "--state", "deleted", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "deleted"
    assert main(["quarantine", "purge", "--config", config]) == 0
    assert "purged 1 message" in capsys.readouterr().out
    assert main(["quarantine", "show", "--config", config, "OLD1"]) == 1
    assert main(["quarantine", "list", "--config", config, "--since", "yesterday"]) == 2


def test_cli_release_to_another_address(tmp_path, capsys):
    """Released elsewhere, nothing is learned, so no feedback store is opened."""
    from classifier.cli import main
    from smtpgate.queue import Queue

    config = gate_toml(tmp_path)
    q = Quarantine(tmp_path / "state" / "quarantine")
    q.store("Q1", message(), record())
    q.close()
    assert main(["quarantine", "release", "--config", config, "--who", "root", "Q1",
                 "--to", "admin@example.test"]) == 0
    out = capsys.readouterr().out
    assert "released Q1 to admin@example.test" in out and "not learned" in out
    queue = Queue(tmp_path / "state" / "queue")
    try:
        qid = out.split("queue id ")[1].split()[0]
        assert queue.get(qid).rcpts == ["admin@example.test"] and queue.get(qid).meta["released_by"] == "root"
    finally:
        queue.close()
    assert main(["quarantine", "release", "--config", config, "Q1", "--to", "admin@example.test"]) == 1
    assert "already released" in capsys.readouterr().err


def test_parse_time():
    from smtpgate.quarantine_cli import parse_time

    assert parse_time("2026-05-28") == T0 - T0 % DAY
    assert parse_time("2026-05-28T01:00:00+01:00") == T0 - T0 % DAY
    assert parse_time("12h", now=T0) == T0 - 43200 and parse_time("2w", now=T0) == T0 - 14 * DAY
    with pytest.raises(ValueError):
        parse_time("last tuesday")
    assert parse_time(None) is None


def test_the_index_is_in_wal_mode(q, clock):
    q.store("Q1", message(), record())
    with sqlite3.connect(q.directory / "index.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert os.path.exists(q.directory / "index.db")
