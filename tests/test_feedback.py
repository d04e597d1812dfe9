"""The feedback store (training/feedback.py): every release and report stored with who,
when and why; taught to the scorer unless a poisoning guard holds it for review; kept
pending while the scorer is down; weighed by the reporter's agreement with the rest.

The scorer is an in-process fake that keeps a real learn log (classifier/learnlog.py),
so it answers learned / noop / relearned as the real one does, and fails on any call
a test did not expect. The end-to-end run with the real scorer is
tests/test_feedback_e2e.py.
"""
from __future__ import annotations

import dataclasses
import threading

import grpc
import pytest

from classifier import wire
from classifier.client import MessageTooLarge, ScorerUnavailable
from classifier.features import message_digest
from classifier.learnlog import LearnLog
from classifier.proto import scorer_pb2 as pb
from mailgen import simple_message
from smtpgate.config import FeedbackConfig
from training.feedback import (Feedback, FeedbackError, format_item, format_items, format_result,
                               format_stats)

HOUR = 3600.0


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeScorer:
    """RemoteScorer's ``learn`` over a real learn log; any other call fails the test.
    ``down`` makes it unreachable, ``forbid`` makes any learn a test failure."""

    deadline = 10.0

    def __init__(self, path):
        self.log = LearnLog(str(path))
        self.calls: list[tuple[str, str, str, str]] = []   # (digest, label, source, who)
        self.trusted: list[bool] = []                       # what each learn said of its reporter
        self.down = False
        self.forbid = False
        self.refuse: Exception | None = None

    def learn(self, message, label, source, who="", classifiers=None, deadline=None, trusted=False):
        if self.forbid:
            raise AssertionError(f"unexpected learn of {label} by {who}")
        if self.down:
            raise ScorerUnavailable(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
        if self.refuse is not None:
            raise self.refuse
        digest = message_digest(message)
        self.calls.append((digest, label, source, who))
        self.trusted.append(trusted)
        e = self.log.record(digest, label, source, who, classifiers or [], message)
        return pb.LearnReply(outcome=wire.OUTCOMES[e.outcome], digest=digest, audit_id=e.id)

    def __getattr__(self, name):
        raise AssertionError(f"unexpected scorer call: {name}")


class Refused(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self):
        return "the model has no classifiers ['nonesuch']"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def scorer(tmp_path):
    s = FakeScorer(tmp_path / "learnlog.sqlite")
    yield s
    s.log.close()


def make(tmp_path, scorer, clock, **cfg) -> Feedback:
    return Feedback(tmp_path / "state" / "feedback.db", FeedbackConfig(**cfg), scorer, clock=clock)


@pytest.fixture
def fb(tmp_path, scorer, clock):
    f = make(tmp_path, scorer, clock)
    yield f
    f.close()


BODIES = [f"Quarterly figures for region {i}: the warehouse in town number {i} shipped more crates "
          f"than planned, and the report on staffing follows next week as agreed." for i in range(40)]


def msg(i: int = 0, to: str = "b@rcpt.test") -> bytes:
    """Message ``i``; the same ``i`` to another recipient is another message (digest)
    with the same body (body digest)."""
    return simple_message(BODIES[i], to=to, subject=f"figures {i}")


def release(fb, m, who="admin@site.test", **kw):
    return fb.submit(message=m, label="ham", source="release", who=who, **kw)


def report(fb, m, who="user@site.test", **kw):
    return fb.submit(message=m, label="spam", source="report", who=who, **kw)


# ---------------------------------------------------------------- stored and learned

def test_a_release_is_learned_and_stored_with_who_when_why(fb, scorer, clock):
    m = msg(0)
    r = release(fb, m, why="a customer's invoice", score=0.93, classification="combined_score", queue_id="Q1")
    assert (r.status, r.reasons, r.outcome) == ("learned", [], "learned")
    assert r.digest == message_digest(m) and r.audit_id == 1
    assert scorer.calls == [(r.digest, "ham", "release", "admin@site.test")]
    item = fb.get(r.id)
    assert item.message == m
    assert (item.who, item.why, item.source, item.label, item.at) == (
        "admin@site.test", "a customer's invoice", "release", "ham", clock.t)
    assert (item.score, item.classification, item.queue_id, item.audit_id) == (0.93, "combined_score", "Q1", 1)
    assert item.body_digest.startswith("pyzor:")
    assert item.body_digest == fb.get(release(fb, msg(0, to="c@rcpt.test")).id).body_digest


def test_the_same_message_and_label_twice_is_a_noop_and_a_change_of_mind_relearns(fb, scorer):
    m = msg(1)
    first, again = report(fb, m), report(fb, m, who="other@site.test")
    assert (first.status, again.status) == ("learned", "noop")
    changed = release(fb, m)
    assert (changed.status, changed.outcome) == ("relearned", "relearned")
    assert changed.audit_id > again.audit_id > first.audit_id
    assert [c[1] for c in scorer.calls] == ["spam", "spam", "ham"]


def test_bad_input_is_refused_before_anything_is_stored(fb):
    with pytest.raises(FeedbackError, match="label"):
        fb.submit(message=msg(0), label="maybe", source="report", who="u")
    with pytest.raises(FeedbackError, match="source"):
        fb.submit(message=msg(0), label="spam", source="training", who="u")
    with pytest.raises(FeedbackError, match="empty"):
        fb.submit(message=b"", label="spam", source="report", who="u")
    assert fb.items() == []


# ---------------------------------------------------------------- guards

def test_past_the_hourly_limit_feedback_is_held_and_the_limit_slides(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock, per_reporter_hour=3, per_reporter_day=5, trusted=("admin@site.test",))
    assert [report(fb, msg(i)).status for i in range(3)] == ["learned"] * 3
    held = report(fb, msg(3))
    assert (held.status, held.reasons) == ("review", ["rate_limit"])
    assert "3 in the last hour (limit 3)" in held.detail
    assert len(scorer.calls) == 3
    assert report(fb, msg(4), who="someone-else@site.test").status == "learned"   # per reporter
    clock.advance(HOUR + 1)
    assert report(fb, msg(5)).status == "learned"
    day = report(fb, msg(6))        # 5 (4 sent + 1 held) in the last day
    assert (day.status, day.reasons) == ("review", ["rate_limit"]) and "last day (limit 5)" in day.detail
    # a trusted reporter skips review, but not the rate limit
    assert [release(fb, msg(10 + i)).status for i in range(4)] == ["learned"] * 3 + ["review"]


def test_concurrent_submissions_of_one_reporter_respect_the_limit(tmp_path, scorer, clock):
    """Two stores on one file (the gate and the CLI): the count and the insert are one
    transaction, so ten at once give exactly the limit."""
    a = make(tmp_path, scorer, clock, per_reporter_hour=4)
    b = make(tmp_path, scorer, clock, per_reporter_hour=4)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(report(a if i % 2 else b, msg(i))))
               for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in results) == ["learned"] * 4 + ["review"] * 6


@pytest.mark.parametrize("label,score,held", [
    ("ham", 0.999, True), ("ham", 0.99, True), ("ham", 0.989, False), ("ham", None, False),
    ("spam", 0.001, True), ("spam", 0.01, True), ("spam", 0.011, False), ("spam", None, False),
])
def test_a_learn_that_contradicts_an_overwhelming_verdict_is_held(fb, scorer, label, score, held):
    if held:
        scorer.forbid = True
    r = fb.submit(message=msg(0), label=label, source="release" if label == "ham" else "report",
                  who="u@site.test", score=score)
    if held:
        assert (r.status, r.reasons, r.audit_id) == ("review", ["overwhelming_verdict"], None)
        assert f"{score:.4f}" in r.detail
    else:
        assert r.status == "learned"


def test_a_trusted_reporter_skips_the_verdict_review(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock, trusted=("postmaster@site.test",))
    assert release(fb, msg(0), who="postmaster@site.test", score=0.9995).status == "learned"


def test_learn_false_records_only(tmp_path, scorer, clock):
    scorer.forbid = True
    fb = make(tmp_path, scorer, clock, learn=False)
    r = report(fb, msg(0), score=0.001)
    assert (r.status, r.reasons) == ("recorded", ["learn_disabled"])
    assert fb.get(r.id).message == msg(0)


# ---------------------------------------------------------------- agreement

def test_a_reporter_the_others_disagree_with_is_held_once_there_are_enough_samples(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock, min_agreement=0.5, agreement_min_samples=3)
    for i in range(4):   # two honest users report campaign i, each their own copy
        report(fb, msg(i, "alice@site.test"), who="alice@site.test")
        report(fb, msg(i, "bob@site.test"), who="bob@site.test")
    # mallory releases her copies of the same campaigns: two samples, each 0/2 agreeing
    assert [release(fb, msg(i, "mallory@site.test"), who="mallory@site.test").status for i in range(2)] \
        == ["learned", "learned"]
    assert fb.weight("mallory@site.test") == pytest.approx(1 / 4)
    assert release(fb, msg(2, "mallory@site.test"), who="mallory@site.test").status == "learned"  # 2 < 3 samples
    held = release(fb, msg(3, "mallory@site.test"), who="mallory@site.test")   # 3 samples, weight 1/5
    assert (held.status, held.reasons) == ("review", ["low_agreement"])
    assert "0.20" in held.detail
    # the honest ones: each agrees with the other and disagrees with mallory on 3 of 4
    assert fb.weight("alice@site.test") == pytest.approx((4 * 1 - 3 * 0.5 + 1) / (4 + 2))
    assert report(fb, msg(5), who="alice@site.test").status == "learned"


def test_admin_decisions_count_towards_a_reporters_agreement(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock, min_agreement=0.5, agreement_min_samples=2)
    a = report(fb, msg(0), who="eve@site.test", score=0.001)
    b = report(fb, msg(1), who="eve@site.test", score=0.002)
    assert fb.weight("eve@site.test") == 0.5                # held items are no sample yet
    fb.reject(a.id, "admin@site.test")
    fb.reject(b.id, "admin@site.test")
    assert fb.weight("eve@site.test") == pytest.approx(1 / 4)
    held = report(fb, msg(2), who="eve@site.test")
    assert held.reasons == ["low_agreement"]
    fb.approve(held.id, "admin@site.test")
    assert fb.weight("eve@site.test") == pytest.approx(2 / 5)


# ---------------------------------------------------------------- review

def test_approve_learns_a_held_item_and_reject_drops_it(fb, scorer):
    held = release(fb, msg(0), score=0.999)
    dropped = report(fb, msg(1), score=0.0001)
    assert [i.id for i in fb.review_queue()] == [held.id, dropped.id]
    assert scorer.calls == []
    ok = fb.approve(held.id, "boss@site.test")
    assert (ok.status, ok.outcome, ok.audit_id) == ("approved", "learned", 1)
    assert scorer.calls == [(held.digest, "ham", "release", "admin@site.test")]   # the reporter's learn
    no = fb.reject(dropped.id, "boss@site.test")
    assert no.status == "rejected" and len(scorer.calls) == 1
    item = fb.get(dropped.id)
    assert (item.review, item.reviewed_by) == ("rejected", "boss@site.test")
    assert fb.review_queue() == []
    with pytest.raises(FeedbackError, match="not held for review"):
        fb.approve(dropped.id, "boss@site.test")
    with pytest.raises(FeedbackError, match="no feedback 999"):
        fb.reject(999, "boss@site.test")


def test_resubmitting_a_held_or_rejected_item_adds_nothing(fb, scorer):
    held = report(fb, msg(0), score=0.0)
    assert report(fb, msg(0), score=0.0).id == held.id
    fb.reject(held.id, "boss@site.test")
    again = report(fb, msg(0), score=0.0)
    assert (again.id, again.status) == (held.id, "rejected")
    assert len(fb.items()) == 1 and scorer.calls == []


def test_a_reporter_is_one_spelling_for_every_guard(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock, per_reporter_hour=3, trusted=(" Postmaster@Site.test",))
    assert [report(fb, msg(i), who=w).status for i, w in enumerate(["bob", "Bob", " bob"])] == ["learned"] * 3
    held = report(fb, msg(3), who="BOB ")
    assert (held.status, held.reasons) == ("review", ["rate_limit"])
    assert {i.who for i in fb.items()} == {"bob"} and len(fb.reporter_stats()) == 1
    # the trusted list matches any spelling, and the scorer is told the reporter is trusted
    assert fb.trusted("<postmaster@site.test>") and fb.weight("POSTMASTER@site.test") == 1.0
    assert release(fb, msg(5), who="PostMaster@site.test", score=0.9995).status == "learned"
    assert scorer.calls[-1][3] == "postmaster@site.test" and scorer.trusted == [False] * 3 + [True]
    assert [i.who for i in fb.items(who="BOB")][:1] == ["bob"]


def test_reporters_stored_before_normalising_are_merged(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock)
    report(fb, msg(0), who="bob")
    fb._db.execute("UPDATE feedback SET who = ' Bob'")        # as an older version stored it
    fb.close()
    fb = make(tmp_path, scorer, clock)
    assert [i.who for i in fb.items()] == ["bob"]
    fb.close()


def test_nobody_but_a_trusted_admin_reviews_their_own_item(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock, trusted=("postmaster",))
    held = release(fb, msg(0), who="mallory", score=0.999)
    with pytest.raises(FeedbackError, match="own"):
        fb.approve(held.id, " Mallory")
    with pytest.raises(FeedbackError, match="own"):
        fb.reject(held.id, "mallory")
    assert scorer.calls == [] and fb.get(held.id).status == "review"
    own = release(fb, msg(1), who="postmaster", score=0.995, why="rate limited or not, mine")
    fb._db.execute("UPDATE feedback SET status = 'review' WHERE id = ?", (own.id,))
    assert fb.approve(own.id, "postmaster").status == "approved"     # trusted: may
    assert fb.approve(held.id, "boss").status == "approved"
    vouched = release(fb, msg(2), who="mallory", score=0.999)
    assert fb.approve(vouched.id, "Postmaster").status == "approved"
    # what the scorer is told: the trusted reporter's own, yes; boss's approval, no;
    # an approval by a trusted admin vouches for the item
    assert scorer.trusted == [True, True, False, True]


def test_a_rejected_report_does_not_come_back_as_a_copy_with_a_header_changed(fb, scorer):
    held = report(fb, msg(20), who="carol", score=0.001)
    fb.reject(held.id, "admin")
    variant = msg(20).replace(b"Subject: figures 20", b"Subject: figures 20 ")
    assert message_digest(variant) != held.digest
    again = report(fb, variant, who="carol")
    assert (again.id, again.status) == (held.id, "rejected")
    assert scorer.calls == [] and len(fb.items()) == 1
    # another reporter of the same body is their own opinion
    assert report(fb, variant, who="dave", score=0.5).status == "learned"


def test_a_release_is_held_when_one_classifier_alone_was_sure(fb, scorer):
    r = release(fb, msg(0), who="user", score=0.6, classifier_scores={"global_tokens": 0.9991, "crm114": 0.2})
    assert (r.status, r.reasons) == ("review", ["overwhelming_verdict"]) and "global_tokens" in r.detail
    assert release(fb, msg(1), who="user", score=0.6, classifier_scores={"global_tokens": 0.98}).status == "learned"


def test_a_report_whose_verdict_nobody_vouches_for_is_held(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock, trusted=("postmaster",))
    r = report(fb, msg(0), who="dave", require_verdict=True)
    assert (r.status, r.reasons) == ("review", ["no_verdict"]) and scorer.calls == []
    assert report(fb, msg(1), who="dave", score=0.5, require_verdict=True).status == "learned"
    assert report(fb, msg(2), who="postmaster", require_verdict=True).status == "learned"


# ---------------------------------------------------------------- the scorer down

def test_while_the_scorer_is_down_feedback_is_pending_and_sent_in_order_later(fb, scorer):
    scorer.down = True
    first = report(fb, msg(0))
    assert (first.status, first.reasons) == ("pending", ["scorer_unavailable"])
    assert "retry_pending()" in first.detail and "UNAVAILABLE" in first.detail
    second = release(fb, msg(0))          # a change of mind, also pending, behind the first
    assert second.status == "pending" and "behind earlier feedback" in fb.get(second.id).detail
    assert fb.retry_pending()[0].status == "pending"
    scorer.down = False
    third = report(fb, msg(1))            # sends what waited first, in order
    assert third.status == "learned"
    assert [(c[1], c[2]) for c in scorer.calls] == [("spam", "report"), ("ham", "release"), ("spam", "report")]
    assert [fb.get(i).status for i in (first.id, second.id)] == ["learned", "relearned"]
    assert fb.retry_pending() == []


def test_an_approval_while_the_scorer_is_down_is_learned_by_the_retry(fb, scorer):
    held = release(fb, msg(0), score=0.995)
    scorer.down = True
    r = fb.approve(held.id, "boss@site.test")
    assert (r.status, r.reasons) == ("pending", ["scorer_unavailable"])
    scorer.down = False
    [done] = fb.retry_pending()
    assert (done.id, done.status, done.outcome) == (held.id, "approved", "learned")


def test_without_a_scorer_everything_learnable_waits(tmp_path, clock):
    fb = Feedback(tmp_path / "feedback.db", FeedbackConfig(), None, clock=clock)
    r = report(fb, msg(0))
    assert (r.status, r.reasons) == ("pending", ["scorer_unavailable"]) and "no scorer" in r.detail


def test_a_learn_the_scorer_refuses_for_good_is_recorded_and_does_not_block_the_rest(fb, scorer):
    scorer.refuse = Refused()
    r = report(fb, msg(0))
    assert (r.status, r.reasons) == ("recorded", ["scorer_refused"]) and "INVALID_ARGUMENT" in r.detail
    scorer.refuse = MessageTooLarge("message of 30000000 bytes is over the scorer's limit")
    assert report(fb, msg(1)).reasons == ["message_too_large"]
    scorer.refuse = None
    assert report(fb, msg(2)).status == "learned"


@pytest.mark.parametrize("code", ["DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL", "UNKNOWN", "UNAVAILABLE"])
def test_a_scorer_that_fails_without_refusing_keeps_the_item_pending(fb, scorer, code):
    class Failed(grpc.RpcError):
        def code(self):
            return getattr(grpc.StatusCode, code)

        def details(self):
            return "Deadline Exceeded"

    scorer.refuse = Failed()
    r = report(fb, msg(0))
    assert (r.status, r.reasons) == ("pending", ["scorer_unavailable"]) and code in r.detail
    scorer.refuse = None
    [done] = fb.retry_pending()
    assert (done.id, done.status) == (r.id, "learned")


def test_failed_precondition_is_a_refusal_for_good(fb, scorer):
    class Precondition(Refused):
        def code(self):
            return grpc.StatusCode.FAILED_PRECONDITION

    scorer.refuse = Precondition()
    assert report(fb, msg(0)).status == "recorded"


def test_an_item_left_claimed_by_a_dead_process_is_taken_over(fb, scorer, clock):
    scorer.down = True
    r = report(fb, msg(0))
    fb._db.execute("UPDATE feedback SET claimed = ? WHERE id = ?", (clock.t, r.id))   # died while sending
    scorer.down = False
    assert fb.retry_pending() == []                 # someone else may still be sending it
    clock.advance(600)
    assert [x.status for x in fb.retry_pending()] == ["learned"]


# ---------------------------------------------------------------- reading

def test_labelled_gives_each_messages_latest_taught_label_with_the_reporters_weight(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock, trusted=("admin@site.test",))
    a = report(fb, msg(0), who="alice@site.test")
    clock.advance(10)
    release(fb, msg(0), who="admin@site.test")                  # the admin's change of mind wins
    report(fb, msg(1), who="alice@site.test", score=0.0)        # held: not training data
    report(fb, msg(2, "bob@site.test"), who="bob@site.test")
    report(fb, msg(2, "alice@site.test"), who="alice@site.test")
    got = list(fb.labelled())
    assert [(x.digest, x.label, x.who) for x in got] == [
        (a.digest, "ham", "admin@site.test"),
        (message_digest(msg(2, "bob@site.test")), "spam", "bob@site.test"),
        (message_digest(msg(2, "alice@site.test")), "spam", "alice@site.test")]
    assert got[0].message == msg(0) and got[0].weight == 1.0 and got[0].source == "release"
    # alice disagreed with the admin on body 0 and agreed with bob on body 2
    assert got[2].weight == pytest.approx((1 + 1) / (2 + 2))
    assert [x.label for x in fb.labelled(since=clock.t + 1)] == []


def test_labelled_can_include_what_was_recorded_without_learning(tmp_path, scorer, clock):
    fb = make(tmp_path, None, clock, learn=False)
    report(fb, msg(0))
    assert list(fb.labelled()) == []
    assert [x.label for x in fb.labelled(include_recorded=True)] == ["spam"]


def test_reporter_stats_and_the_cli_formats(tmp_path, scorer, clock):
    fb = make(tmp_path, scorer, clock, trusted=("admin@site.test",))
    report(fb, msg(0), who="alice@site.test")
    held = report(fb, msg(1), who="alice@site.test", score=0.0)
    release(fb, msg(2))
    stats = {s.who: s for s in fb.reporter_stats()}
    assert stats["alice@site.test"].by_status == {"learned": 1, "review": 1}
    assert stats["alice@site.test"].submitted == 2 and stats["alice@site.test"].weight == 0.5
    assert stats["admin@site.test"].trusted and stats["admin@site.test"].weight == 1.0
    table = format_stats(fb.reporter_stats())
    assert "alice@site.test" in table and "review=1" in table and "(trusted)" in table
    queue = format_items(fb.review_queue())
    assert f"{held.id:>6}" in queue and "overwhelming_verdict" in queue
    assert "overwhelming_verdict" in format_item(fb.get(held.id))
    assert format_result(fb.reject(held.id, "admin@site.test")) == f"feedback {held.id}: rejected" + (
        f" (overwhelming_verdict) - {fb.get(held.id).detail}")
    assert format_items([]) == "nothing held for review"


def test_open_feedback_uses_the_gate_config(tmp_path):
    from smtpgate.config import GateConfig
    from training.feedback import open_feedback

    cfg = dataclasses.replace(GateConfig(), state_dir=tmp_path, feedback=FeedbackConfig(per_reporter_hour=7))
    with open_feedback(cfg) as fb:
        assert fb.path == tmp_path / "feedback.db" and fb.cfg.per_reporter_hour == 7
        assert fb.scorer.addresses == list(cfg.scorer_addresses)
