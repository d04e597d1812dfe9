"""The verdict rule: combined threshold, classifiers deciding alone, the most specific
responsible classification, replies from the contract table, evidence."""
import json
import random

import pytest

import mailgen
from classifier.bundle import load_bundle
from classifier.classifications import get
from classifier.facts import GateFacts
from classifier.scorer import Scorer


@pytest.fixture
def scorer(fitted_bundle):
    return Scorer(load_bundle(fitted_bundle))


def spam_and_ham():
    rng = random.Random(42)
    return mailgen.make_message("spam", rng, 1), mailgen.make_message("ham", rng, 2)


def test_spam_is_quarantined_and_ham_accepted(scorer):
    spam, ham = spam_and_ham()
    v = scorer.score(spam)
    assert v.verdict == "quarantine" and v.score >= 0.9
    assert get(v.classification).action == "quarantine"
    assert v.reply().startswith("550 5.7.1 ")
    h = scorer.score(ham)
    assert h.verdict == "accept" and h.classification == "not_spam"
    assert h.reply() == "250 2.0.0 Message accepted for delivery"


def test_every_classifier_reports_score_weight_and_evidence(scorer):
    spam, _ = spam_and_ham()
    v = scorer.score(spam, evidence=3)
    ids = [c.id for c in v.classifiers]
    assert ids == ["global_tokens", "crm114", "content_spam", "cluster_tokens"]
    for c in v.classifiers:
        if c.id == "cluster_tokens":
            assert c.abstained and c.reason and c.contribution == 0
            continue
        assert 0 <= c.p_spam <= 1 and c.weight > 0 and 0 < len(c.evidence) <= 3
    assert v.model_version == "test-1" and v.elapsed_ms > 0 and len(v.digest) == 64
    d = json.loads(json.dumps(v.to_dict(), default=float))
    assert d["reply"] == v.reply() and d["classifiers"][0]["evidence"][0]["feature"]
    assert "verdict=quarantine" in v.summary()


def test_recipient_threshold_overrides_the_bundle(scorer):
    _, ham = spam_and_ham()
    v = scorer.score(ham)
    tight = scorer.score(ham, threshold=v.score / 2)
    assert tight.threshold == v.score / 2
    if not any(c.decides_alone for c in tight.classifiers):
        assert tight.verdict == "quarantine" and tight.classification == "combined_score"


def test_solo_decision_names_the_most_specific_classifier(scorer):
    spam, _ = spam_and_ham()
    b = scorer.bundle
    b.solo_thresholds = {"global_tokens": 0.5, "crm114": 0.5, "content_spam": 0.5, "cluster_tokens": 0.5}
    v = scorer.score(spam, threshold=0.99999999)
    assert v.verdict == "quarantine"
    assert v.classification == "crm114"  # first in the specificity order among those that fired
    b.specificity = ["content_spam", "crm114", "global_tokens"]
    assert scorer.score(spam, threshold=0.99999999).classification == "content_spam"
    b.solo_thresholds = {n: None for n in b.solo_thresholds}
    v = scorer.score(spam, threshold=0.99999999)
    assert not any(c.decides_alone for c in v.classifiers)


def test_gate_facts_move_the_score_and_are_evidence(scorer):
    _, ham = spam_and_ham()
    plain = scorer.score(ham)
    bad = scorer.score(ham, facts=GateFacts(spf="fail", dnsbl=["zen.example", "bl.example"]))
    assert bad.score > plain.score
    assert {f.feature for f in bad.facts} == {"spf=fail", "dnsbl_hits"}
    good = scorer.score(ham, facts=GateFacts(spf="pass", dkim="pass", dmarc="pass"))
    assert good.score < plain.score


def test_learn_and_unlearn_through_the_scorer(scorer):
    spam, ham = spam_and_ham()
    before = scorer.score(ham).score
    receipt = scorer.learn(ham, "spam")
    assert scorer.score(ham).score > before
    scorer.unlearn(ham, receipt)
    assert scorer.score(ham).score == pytest.approx(before)


def test_feedback_can_target_cluster_tokens_only(scorer):
    msgs, labels = mailgen.corpus(60, 60, seed=7)
    for m, y in zip(msgs, labels):
        scorer.learn(m, y, classifiers=["cluster_tokens"])
    v = scorer.score(msgs[0])
    cluster = next(c for c in v.classifiers if c.id == "cluster_tokens")
    assert not cluster.abstained
    with pytest.raises(ValueError, match="no such classifiers"):
        scorer.learn(msgs[0], "spam", classifiers=["nope"])


def test_malformed_input_still_gets_a_verdict(scorer):
    for raw in (b"", b"\x00\xff" * 1000, b"Subject: =?x-unknown?q?=FF?=\n\n" + b"A" * 100_000):
        v = scorer.score(raw)
        assert v.verdict in ("accept", "quarantine")
