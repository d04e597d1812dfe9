"""The learn log's decisions: learned, no-op, relearned; the audit trail; the order."""
import sqlite3
import threading

import pytest

from classifier.learnlog import LEARNED, NOOP, RELEARNED, LearnLog


@pytest.fixture
def log(tmp_path):
    lg = LearnLog(str(tmp_path / "learn.sqlite"))
    yield lg
    lg.close()


def test_outcomes_and_audit(log):
    a = log.record("d1", "ham", "release", "alice", ["cluster_tokens"], b"message one")
    b = log.record("d1", "ham", "release", "bob", ["cluster_tokens"], b"message one")
    c = log.record("d1", "spam", "report", "carol", ["cluster_tokens"], b"message one")
    assert (a.outcome, b.outcome, c.outcome) == (LEARNED, NOOP, RELEARNED)
    assert a.id < b.id < c.id and c.previous_label == "ham"
    audit = log.audit("d1")
    assert [(e.outcome, e.who) for e in audit] == [(RELEARNED, "carol"), (NOOP, "bob"), (LEARNED, "alice")]


def test_other_classifiers_is_a_relearn(log):
    log.record("d1", "ham", "release", "a", ["cluster_tokens"], b"m")
    assert log.record("d1", "ham", "training", "a", [], b"m").outcome == RELEARNED


def test_since_replays_in_order_with_messages_but_not_noops(log):
    log.record("d1", "ham", "release", "a", [], b"one")
    log.record("d1", "ham", "release", "a", [], b"one")
    log.record("d2", "spam", "report", "a", [], b"two")
    entries = list(log.since(0))
    assert [e.outcome for e in entries] == [LEARNED, NOOP, LEARNED]
    assert entries[0].message == b"one" and entries[1].message is None and entries[2].message == b"two"
    assert [e.id for e in log.since(entries[0].id, upto=entries[1].id)] == [entries[1].id]
    assert log.last_id() == entries[-1].id


def test_bad_label_is_refused_and_nothing_written(log):
    with pytest.raises(ValueError):
        log.record("d1", "maybe", "release", "a", [], b"m")
    assert log.last_id() == 0


def test_concurrent_writers_serialise(tmp_path):
    """Several processes write one log; here threads with their own connections."""
    path = str(tmp_path / "learn.sqlite")
    LearnLog(path).close()
    outcomes = []

    def worker():
        lg = LearnLog(path)
        for i in range(20):
            outcomes.append(lg.record(f"d{i}", "spam", "report", "t", [], b"x").outcome)
        lg.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each digest learned exactly once, the other three writers saw a no-op
    assert outcomes.count(LEARNED) == 20 and outcomes.count(NOOP) == 60
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM current").fetchone()[0] == 20


def test_threads_sharing_one_log(log):
    """The RPC threads of one scorer process share one LearnLog."""
    errors = []

    def worker(n):
        try:
            for i in range(25):
                log.record(f"t{n}-{i}", "ham", "release", "t", [], b"x")
                log.last_id()
                list(log.since(0))
        except Exception as exc:  # a shared connection without the lock fails here
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and log.last_id() == 100
