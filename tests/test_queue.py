"""The durable queue's own behaviour (smtpgate/queue.py), without SMTP: what an enqueue
leaves on disk, how workers claim and record attempts, what a crash leaves behind,
several processes at once, and the admin operations. Delivery through SMTP is
tests/test_gate_queue.py; the gate killed mid-flight is tests/test_gate_crash.py."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from smtpgate.queue import Enqueue, Outcome, Queue, QueueError

MSG = b"Received: by mx.gate.test\r\n" + b"Subject: hi\r\n\r\nbody\r\n"
OFFSET = len(b"Received: by mx.gate.test\r\n")


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def q(tmp_path, clock):
    queue = Queue(tmp_path / "queue", clock=clock)
    yield queue
    queue.close()


def put(q, rcpts=("a@x.test", "b@x.test"), **kw) -> str:
    return q.enqueue(mail_from="s@y.test", rcpts=list(rcpts), message=MSG, original_offset=OFFSET, **kw)


def test_an_enqueue_is_one_complete_file_and_its_index_rows(q, clock):
    qid = put(q, meta={"classification": "not_spam", "score": 0.01}, route=("127.0.0.1", 2526),
              smtputf8=True)
    e = q.get(qid)
    assert e.mail_from == "s@y.test" and e.rcpts == ["a@x.test", "b@x.test"]
    assert e.route == ("127.0.0.1", 2526) and e.smtputf8 and not e.body8bit
    assert e.meta == {"classification": "not_spam", "score": 0.01}
    assert e.arrival == clock.t and e.size == len(MSG) and e.status == "queued" and e.done is None
    assert [(r.status, r.attempts, r.next_attempt) for r in e.recipients] == [("queued", 0, clock.t)] * 2
    assert q.message(qid) == MSG
    assert q.original(qid) == b"Subject: hi\r\n\r\nbody\r\n"
    # nothing but the message itself is left in the spool: no temporary names
    assert [p.name for p in q.msg_dir.iterdir()] == [f"{qid}.eml"]


def test_the_bytes_as_received_are_kept_where_the_delivered_ones_differ(q):
    """The gate removes forged X-Mailsift-* fields before delivery; what it received
    (and its digest) stays available for report-as-spam."""
    received = b"X-Mailsift-Score: 0.0000\r\nSubject: hi\r\n\r\nbody\r\n"
    qid = put(q, original=received)
    assert q.message(qid) == MSG and q.original(qid) == received
    same = put(q, original=MSG[OFFSET:])          # nothing removed: no second file
    assert q.original(same) == MSG[OFFSET:] and not q.path(same).with_suffix(".orig").exists()


def test_a_queue_id_is_never_reused_and_the_first_message_is_kept(q):
    qid = put(q, queue_id="ABC123")
    with pytest.raises(QueueError, match="already in the queue"):
        q.enqueue(mail_from="other@y.test", rcpts=["c@x.test"], message=b"Subject: other\r\n\r\n",
                  queue_id="ABC123")
    assert q.message(qid) == MSG and q.get(qid).rcpts == ["a@x.test", "b@x.test"]


@pytest.mark.parametrize("kw,match", [({"rcpts": []}, "at least one recipient"),
                                      ({"origin": "carrier-pigeon"}, "origin"),
                                      ({"original_offset": 10_000}, "outside the message"),
                                      ({"queue_id": "../etc/passwd"}, "not a queue id")])
def test_bad_enqueues_are_refused_and_leave_nothing(q, kw, match):
    args = dict(mail_from="s@y.test", rcpts=["a@x.test"], message=MSG) | kw
    with pytest.raises((ValueError, QueueError), match=match):
        q.enqueue(**args)
    assert list(q.msg_dir.iterdir()) == [] and q.counts()["queued"] == 0


def test_a_failed_index_write_removes_the_file(q, monkeypatch):
    def broken(*a, **kw):
        raise OSError("disk full")
    monkeypatch.setattr(Queue, "_insert", staticmethod(broken))
    with pytest.raises(OSError):
        put(q)
    assert list(q.msg_dir.iterdir()) == []


def test_claims_are_exclusive_and_an_attempt_frees_them(q, clock):
    qid = put(q)
    w1, w2 = q.register_worker(), q.register_worker()
    assert [(d.queue_id, d.idx, d.rcpt) for d in q.due()] == [(qid, 0, "a@x.test"), (qid, 1, "b@x.test")]
    assert q.claim(w1, qid, [0, 1], until=clock.t + 60) == [0, 1]
    assert q.claim(w2, qid, [0, 1], until=clock.t + 60) == []
    assert q.due() == []
    # a delivered and a deferred recipient: only the deferred one comes back, at its time
    q.record(qid, [Outcome(0, "delivered", "250 2.0.0 Queued", "127.0.0.1:2526"),
                   Outcome(1, "deferred", "451 4.3.0 Try again later", "127.0.0.1:2526",
                           next_attempt=clock.t + 300)], owner=w1)
    e = q.get(qid)
    assert [(r.status, r.attempts, r.last_reply, r.lease_owner) for r in e.recipients] == [
        ("delivered", 1, "250 2.0.0 Queued", None), ("deferred", 1, "451 4.3.0 Try again later", None)]
    assert e.status == "deferred" and e.done is None
    assert q.due() == [] and q.next_due() == clock.t + 300
    clock.t += 300
    assert [d.idx for d in q.due()] == [1]
    q.claim(w2, qid, [1], until=clock.t + 60)
    q.record(qid, [Outcome(1, "delivered", "250 ok", "127.0.0.1:2526")], owner=w2)
    e = q.get(qid)
    assert e.status == "delivered" and e.done == clock.t and e.recipients[1].attempts == 2
    assert q.next_due() is None


def test_a_lapsed_lease_can_be_claimed_again(q, clock):
    qid = put(q, rcpts=["a@x.test"])
    w1, w2 = q.register_worker(), q.register_worker()
    q.claim(w1, qid, [0], until=clock.t + 60)
    clock.t += 61
    assert [d.idx for d in q.due()] == [0]
    assert q.claim(w2, qid, [0], until=clock.t + 60) == [0]
    # the first worker's late answer no longer counts: the claim is someone else's
    q.record(qid, [Outcome(0, "deferred", "451 late", next_attempt=clock.t + 5)], owner=w1)
    assert q.get(qid).recipients[0].lease_owner == w2


def test_a_bounce_is_enqueued_in_the_same_transaction_as_the_bounced_recipient(q, clock):
    qid = put(q, rcpts=["a@x.test"])
    w = q.register_worker()
    q.claim(w, qid, [0], until=clock.t + 60)
    dsn = Enqueue(mail_from="", rcpts=["s@y.test"], message=b"Subject: Undelivered\r\n\r\n", origin="bounce",
                  meta={"bounce_of": qid})
    bid = q.record(qid, [Outcome(0, "bounced", "550 5.1.1 No such user", "127.0.0.1:2526")], owner=w, bounce=dsn)
    assert q.get(qid).status == "bounced"
    b = q.get(bid)
    assert b.origin == "bounce" and b.mail_from == "" and b.rcpts == ["s@y.test"] and b.status == "queued"

    # a failing transaction leaves neither: the recipient stays pending, no DSN file
    qid2 = put(q, rcpts=["c@x.test"])
    q.claim(w, qid2, [0], until=clock.t + 60)
    with pytest.raises(ValueError):
        q.record(qid2, [Outcome(0, "bounced", "550"), Outcome(0, "exploded", "?")], owner=w, bounce=dsn)
    assert q.get(qid2).recipients[0].status == "queued"
    assert sorted(p.stem for p in q.msg_dir.iterdir()) == sorted([qid, bid, qid2])


def test_deleted_recipients_are_never_due_but_one_in_delivery_is_left_alone(q, clock):
    qid = put(q)
    w = q.register_worker()
    q.claim(w, qid, [1], until=clock.t + 60)
    deleted, busy = q.delete(qid)
    assert (deleted, busy) == (["a@x.test"], ["b@x.test"])
    assert q.due() == []                          # a deleted, b claimed
    assert [d.idx for d in q.due(clock.t + 120)] == [1]   # (b's lease would lapse; a stays deleted)
    # the delivery in flight finishes: it did happen, and the message is then done
    q.record(qid, [Outcome(1, "delivered", "250 ok")], owner=w)
    e = q.get(qid)
    assert [r.status for r in e.recipients] == ["deleted", "delivered"] and e.done is not None
    with pytest.raises(QueueError):
        q.delete("NOSUCHID")


def test_retry_makes_deferred_recipients_due_now(q, clock):
    a, b = put(q, rcpts=["a@x.test"]), put(q, rcpts=["b@x.test"])
    w = q.register_worker()
    for qid in (a, b):
        q.claim(w, qid, [0], until=clock.t + 60)
        q.record(qid, [Outcome(0, "deferred", "451", next_attempt=clock.t + 3600)], owner=w)
    assert q.due() == []
    assert q.retry(a) == 1 and [d.queue_id for d in q.due()] == [a]
    assert q.retry() == 2 and {d.queue_id for d in q.due()} == {a, b}


def test_list_filters(q, clock):
    a = put(q, rcpts=["alice@x.test"], route=("10.0.0.1", 25))
    clock.t += 1
    b = q.enqueue(mail_from="boss@z.test", rcpts=["bob@x.test"], message=MSG)
    w = q.register_worker()
    q.claim(w, b, [0], until=clock.t + 60)
    q.record(b, [Outcome(0, "deferred", "451", "127.0.0.1:2526", next_attempt=clock.t + 60)], owner=w)
    assert [e.queue_id for e in q.list()] == [a, b]
    assert [e.queue_id for e in q.list(status="deferred")] == [b]
    assert [e.queue_id for e in q.list(status="pending")] == [a, b]
    assert [e.queue_id for e in q.list(route="10.0.0.1:25")] == [a]
    assert [e.queue_id for e in q.list(route="127.0.0.1:2526")] == [b]
    assert [e.queue_id for e in q.list(sender="BOSS@")] == [b]
    assert [e.queue_id for e in q.list(recipient="alice")] == [a]
    assert q.list(status="delivered") == []
    with pytest.raises(ValueError):
        q.list(status="lost")


def test_purge_keeps_finished_mail_for_the_retention_then_removes_it(q, clock):
    done, pending = put(q, rcpts=["a@x.test"]), put(q, rcpts=["b@x.test"])
    w = q.register_worker()
    q.claim(w, done, [0], until=clock.t + 60)
    q.record(done, [Outcome(0, "delivered", "250 ok")], owner=w)
    assert q.purge(keep=86400) == 0
    clock.t += 86401
    assert q.purge(keep=86400) == 1
    assert q.get(done) is None and not q.path(done).exists()
    assert q.get(pending) is not None and q.path(pending).exists()


# --------------------------------------------------------------------------------------
# several processes, and crashes
# --------------------------------------------------------------------------------------
def _enqueue_many(directory, n, tag):
    q = Queue(directory)
    for i in range(n):
        q.enqueue(mail_from=f"{tag}@y.test", rcpts=[f"r{i}@x.test"], message=MSG)
    q.close()


def test_processes_enqueue_at_once_without_losing_or_mixing_anything(tmp_path):
    d = tmp_path / "queue"
    Queue(d).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_enqueue_many, args=(d, 40, f"p{k}")) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    q = Queue(d)
    entries = q.list()
    assert len(entries) == 120 and len({e.queue_id for e in entries}) == 120
    assert {e.mail_from for e in entries} == {"p0@y.test", "p1@y.test", "p2@y.test"}
    assert all(q.message(e.queue_id) == MSG for e in entries)
    q.close()


def _claim_then_hang(directory, ready):
    q = Queue(directory)
    w = q.register_worker()
    for d in q.due():
        q.claim(w, d.queue_id, [d.idx], until=time.time() + 3600)
    ready.set()
    time.sleep(60)


def test_a_killed_workers_claims_are_taken_back_at_once_a_live_ones_are_not(tmp_path):
    d = tmp_path / "queue"
    q = Queue(d)
    qid = put(q, rcpts=["a@x.test"])
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_claim_then_hang, args=(d, ready))
    p.start()
    assert ready.wait(30)
    assert q.due() == []
    assert q.recover()["released"] == 0          # alive: its claim stands
    assert q.due() == []
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert q.recover()["released"] == 1          # dead: no need to wait an hour for the lease
    assert [x.queue_id for x in q.due()] == [qid]
    assert list((d / "workers").iterdir()) == []
    q.close()


def test_a_worker_in_this_process_is_alive_to_another_queue_object(tmp_path, clock):
    a, b = Queue(tmp_path / "q", clock=clock), Queue(tmp_path / "q", clock=clock)
    qid = put(a, rcpts=["a@x.test"])
    w = a.register_worker()
    a.claim(w, qid, [0], until=clock.t + 60)
    assert b.recover()["released"] == 0
    a.close()                                     # a clean stop gives its claims back
    assert [x.queue_id for x in b.due()] == [qid]
    b.close()


def test_recover_removes_files_that_never_got_an_index_row(q):
    qid = put(q, rcpts=["a@x.test"])
    orphan = q.msg_dir / "DEADBEEF.eml"
    orphan.write_bytes(b"half an enqueue")
    stale_tmp = q.msg_dir / ".X.1234.tmp"
    stale_tmp.write_bytes(b"partial")
    fresh = q.msg_dir / "FRESH.eml"              # another process's enqueue, not committed yet
    fresh.write_bytes(b"in progress")
    old = time.time() - 7200
    for p in (orphan, stale_tmp, q.path(qid)):
        os.utime(p, (old, old))
    assert q.recover()["orphans"] == 2
    assert sorted(p.name for p in q.msg_dir.iterdir()) == sorted([f"{qid}.eml", "FRESH.eml"])
