"""Release and report end to end: the scorer's verdict on a near-identical message
changes after the feedback.

The real ``mailsift scorer serve`` (two worker processes, on a bundle fitted on the
synthetic corpus) answers over gRPC on loopback; the feedback goes through
``training.feedback.Feedback`` and a real ``RemoteScorer``, as the quarantine's release
and report do. The copies differ from the original in To, Message-ID and Date, as the
same campaign does from one recipient to the next; both workers are asked, so the
verdict does not depend on which one received the Learn.
"""
from __future__ import annotations

import email
import email.policy
import random
import sqlite3

import pytest

import mailgen
from classifier.client import RemoteScorer
from mailgen import simple_message
from smtpgate.config import FeedbackConfig
from test_scorer_service import dead_address, running
from training.feedback import Feedback

PITCH = ("Good afternoon. Our partners at the foundation have set aside a sum for a small number of "
         "households in your area. To receive your share, reply with your full name, your home address "
         "and the account where the transfer should arrive, before the end of the week. Kind regards, "
         "the grants office.")
# another campaign, unrelated to PITCH (the tests share one scorer and its stores)
NOTICE = ("Hello, a parcel addressed to you is waiting at our depot because the delivery fee was not "
          "paid. Please settle the outstanding charge of two pounds forty through the page we send on "
          "request, otherwise the item returns to the sender on Friday. Customer service team.")


TRUSTED = "postmaster@home.test"


def copy_of(raw: bytes, to: str, n: int) -> bytes:
    m = email.message_from_bytes(raw, policy=email.policy.default)
    for name, value in (("To", to), ("Message-ID", f"<copy{n}@bulk.test>"),
                        ("Date", f"Mon, 0{n} Feb 2026 08:0{n}:00 +0000")):
        del m[name]
        m[name] = value
    return m.as_bytes()


@pytest.fixture(scope="module")
def service(request, fitted_bundle, tmp_path_factory):
    with running(request, tmp_path_factory.mktemp("scorer"), fitted_bundle, workers=2) as srv:
        yield srv


@pytest.fixture
def scorers(service):
    """One client per worker, so each verdict is asked of both."""
    clients = [RemoteScorer([a], deadline=10.0) for a in service.addresses]
    yield clients
    for c in clients:
        c.close()


@pytest.fixture
def feedback(tmp_path, scorers):
    fb = Feedback(tmp_path / "feedback.db", FeedbackConfig(trusted=(TRUSTED,)), scorers[0])
    yield fb
    fb.close()


def verdicts(scorers, raw):
    return [(v.verdict, v.classification) for v in (s.score(raw) for s in scorers)]


def test_a_reported_message_quarantines_its_copies_as_considered_spam(scorers, feedback, service):
    original = simple_message(PITCH, frm="grants@foundation.test", to="alice@home.test", subject="Your share")
    before = scorers[0].score(original)
    assert (before.verdict, before.classification) == ("accept", "not_spam"), before.summary()
    copy = copy_of(original, "bob@home.test", 1)
    assert verdicts(scorers, copy) == [("accept", "not_spam")] * 2

    r = feedback.submit(message=original, label="spam", source="report", who="alice@home.test",
                        why="asks for my bank account", score=before.score, classification=before.classification)
    assert (r.status, r.outcome) == ("learned", "learned") and r.audit_id
    # one user's report pulls, but does not decide for everyone
    found = [next(x for x in s.score(copy).reputation if x.check == "reported") for s in scorers]
    assert [f.decides_alone for f in found] == [False, False]
    # a second user reports the very same bytes (one queue entry to two recipients): a
    # learn-log noop, and still a second reporter
    second = feedback.submit(message=original, label="spam", source="report", who="Bob@home.test",
                             score=before.score, classification=before.classification)
    assert (second.status, second.outcome) == ("noop", "noop")

    after = [s.score(copy) for s in scorers]
    assert [(v.verdict, v.classification) for v in after] == [("quarantine", "considered_spam")] * 2
    assert after[0].reply() == "550 5.7.1 Message considered spam"
    found = next(x for x in after[1].reputation if x.check == "reported")
    assert found.evidence[0].startswith("reported as spam by 2 reporters, last ")
    assert "alice" not in after[0].reply() + " ".join(found.evidence)
    # the learn log has it, with the reporter
    with sqlite3.connect(f"file:{service.learnlog}?mode=ro", uri=True) as db:
        assert db.execute("SELECT label, source, who FROM learn WHERE id = ?", (r.audit_id,)).fetchone() == (
            "spam", "report", "alice@home.test")


def generated_spam(scorers, quarantined_above: float, below: float = 1.01):
    """Generated spam the model quarantines with a score in [quarantined_above, below)."""
    for i in range(200):
        raw = mailgen.make_message("spam", random.Random(9100 + i), i)
        v = scorers[0].score(raw)
        if v.verdict == "quarantine" and quarantined_above <= v.score < below:
            return raw, v
    raise AssertionError(f"no generated spam scored in [{quarantined_above}, {below})")


def test_a_released_message_lets_its_copies_through(scorers, feedback):
    original, before = generated_spam(scorers, 0.0, below=FeedbackConfig().review_release_above)
    copy = copy_of(original, "bob@home.test", 2)
    assert [v[0] for v in verdicts(scorers, copy)] == ["quarantine"] * 2
    r = feedback.submit(message=original, label="ham", source="release", who=TRUSTED,
                        why="the customer expects it", score=before.score, classification=before.classification)
    assert (r.status, r.outcome) == ("learned", "learned")
    assert verdicts(scorers, copy) == [("accept", "not_spam")] * 2


def test_releasing_what_the_model_was_sure_of_waits_for_an_admin(scorers, feedback):
    original, before = generated_spam(scorers, FeedbackConfig().review_release_above)
    copy = copy_of(original, "bob@home.test", 4)
    r = feedback.submit(message=original, label="ham", source="release", who="helpdesk@home.test",
                        score=before.score, classification=before.classification)
    assert (r.status, r.reasons) == ("review", ["overwhelming_verdict"])
    assert [v[0] for v in verdicts(scorers, copy)] == ["quarantine"] * 2      # nothing learned meanwhile
    done = feedback.approve(r.id, TRUSTED)      # a trusted admin's approval vouches for it
    assert (done.status, done.outcome) == ("approved", "learned")
    assert verdicts(scorers, copy) == [("accept", "not_spam")] * 2


def test_feedback_given_while_the_scorer_is_down_is_learned_once_it_is_back(tmp_path, scorers):
    original = simple_message(NOTICE, to="carol@home.test", subject="Parcel")
    copy = copy_of(original, "dave@home.test", 3)
    assert verdicts(scorers, copy) == [("accept", "not_spam")] * 2
    with RemoteScorer([dead_address()], deadline=2.0) as down:
        fb = Feedback(tmp_path / "feedback.db", FeedbackConfig(trusted=(TRUSTED,)), down)
        r = fb.submit(message=original, label="spam", source="report", who=TRUSTED)
        assert (r.status, r.reasons) == ("pending", ["scorer_unavailable"])
        fb.close()
    assert verdicts(scorers, copy) == [("accept", "not_spam")] * 2
    fb = Feedback(tmp_path / "feedback.db", FeedbackConfig(trusted=(TRUSTED,)), scorers[1])
    [sent] = fb.retry_pending()        # the trust is sent with the retried learn
    assert (sent.id, sent.status) == (r.id, "learned")
    assert verdicts(scorers, copy) == [("quarantine", "considered_spam")] * 2
    fb.close()
