"""One generic test of the estimator contract, run over every classifier (scikit-learn's
habit: the contract is checked once, for all of them)."""
import json

import numpy as np
import pytest
from sklearn.base import clone

from classifier.estimators.base import ClassifierScore, Clue, to_label
from classifier.estimators.bayes import BayesClassifier, log_chi2q
from classifier.estimators.combined import CombinedClassifier
from classifier.estimators.logistic import HashedLogistic
from classifier.estimators.osb import OSBClassifier
from classifier.facts import GateFacts
from classifier.features import extract


def _combined():
    return CombinedClassifier(
        estimators=[("global_tokens", BayesClassifier()), ("crm114", OSBClassifier(bits=16)),
                    ("content_spam", HashedLogistic(bits=16))],
        feedback_estimators=[("cluster_tokens", BayesClassifier(min_learns=5))],
        tie_weights={"cluster_tokens": "global_tokens"}, cv=3,
        fact_weights={"spf=fail": 1.5})


ESTIMATORS = {
    "bayes": lambda: BayesClassifier(),
    "osb": lambda: OSBClassifier(bits=16),
    "logistic": lambda: HashedLogistic(bits=16),
    "logistic+tokens": lambda: HashedLogistic(bits=16, tokens=True),
    "combined": _combined,
}


@pytest.fixture(params=sorted(ESTIMATORS))
def make(request):
    return ESTIMATORS[request.param]


def _split(small_features):
    feats, y = small_features
    return feats[:100], y[:100], feats[100:], np.array(y[100:])


def _state(est):
    """Everything learned (the ``*_`` attributes), comparable with allclose."""
    if isinstance(est, CombinedClassifier):
        parts = {n: _state(e) for n, e in est.all_estimators()}
        parts["_meta"] = {"coef": est.coef_.copy(), "intercept": np.array([est.intercept_])}
        return parts
    out = {}
    if isinstance(est, BayesClassifier):  # rows are an internal detail: compare counts
        out["counts"] = {t: np.array(est.counts(t)) for t in est.index_}
        out["n"] = np.array(est.n_learned())
        return out
    for k, v in vars(est).items():
        if k.endswith("_") and k != "_ready_":
            if isinstance(v, np.ndarray):
                out[k] = v.copy()
            elif isinstance(v, int | float):
                out[k] = np.array([v], dtype=float)
    return out


def _assert_same_state(a, b, path=""):
    assert a.keys() == b.keys(), path
    for k in a:
        if isinstance(a[k], dict):
            _assert_same_state(a[k], b[k], f"{path}.{k}")
        else:
            # float32 weights (logistic) come back to float32 rounding, not bit for bit
            np.testing.assert_allclose(np.asarray(a[k], dtype=float), np.asarray(b[k], dtype=float),
                                       rtol=1e-6, atol=1e-7, err_msg=f"{path}.{k}")


def test_init_stores_params_only_and_clones(make):
    est = make()
    assert not [a for a in vars(est) if a.endswith("_")], "learned state before fit"
    params = est.get_params(deep=False)
    twin = clone(est)
    assert twin.get_params(deep=False).keys() == params.keys()


def test_fit_returns_self_and_learns_state(make, small_features):
    Xtr, ytr, Xte, yte = _split(small_features)
    est = make()
    assert est.fit(Xtr, ytr) is est
    assert any(a.endswith("_") for a in vars(est))
    proba = est.predict_proba(Xte)
    assert proba.shape == (len(Xte), 2)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(est.classes_) == [0, 1]
    # separates the synthetic classes: every spam above every ham, by a wide margin
    s = est.decision_function(Xte)
    assert s[yte == 1].min() > s[yte == 0].max()
    assert (est.predict(Xte) == yte).mean() >= 0.95


def test_fit_resets(make, small_features):
    Xtr, ytr, Xte, yte = _split(small_features)
    once = make().fit(Xtr, ytr)
    twice = make().fit(Xte, 1 - yte).fit(Xtr, ytr)  # the first, mislabelled fit leaves no trace
    np.testing.assert_allclose(once.decision_function(Xte), twice.decision_function(Xte))


def test_partial_fit_streams_and_accepts_raw_bytes(make, small_corpus):
    msgs, y = small_corpus
    est = make().partial_fit(msgs[:60], ["spam" if v else "ham" for v in y[:60]])
    est.partial_fit(msgs[60:100], y[60:100])
    s = est.decision_function(msgs[100:])
    yte = np.array(y[100:])
    assert s[yte == 1].mean() > s[yte == 0].mean()
    assert est.n_learned() == (sum(y[:100]), 100 - sum(y[:100]))


def test_score_one_gives_readable_evidence(make, small_features):
    Xtr, ytr, Xte, yte = _split(small_features)
    est = make().fit(Xtr, ytr)
    spam = Xte[int(np.argmax(yte))]
    sc = est.score_one(spam, evidence=5)
    assert isinstance(sc, ClassifierScore)
    assert 0 < len(sc.evidence) <= 5 or isinstance(est, CombinedClassifier)
    assert all(isinstance(c, Clue) and c.feature and isinstance(c.feature, str) for c in sc.evidence)
    # the strongest clue of a spam points to spam
    assert sc.evidence[0].weight > 0
    assert sc.logodds > 0 and sc.p_spam > 0.5


def test_learn_unlearn_symmetry(make, small_features):
    """Learning a message and unlearning it with its receipt restores the state, even
    with other messages learned in between."""
    Xtr, ytr, Xte, yte = _split(small_features)
    est = make().fit(Xtr, ytr)
    before = _state(est)
    probe = est.decision_function(Xte[:10])
    receipts = [(x, est.learn_one(x, "spam")) for x in Xte[:5]]   # mislabelled on purpose
    r_mid = est.learn_one(Xte[5], "ham")
    assert not np.allclose(est.decision_function(Xte[:10]), probe)
    for x, r in reversed(receipts):
        json.dumps(r)  # receipts are stored by the scoring service: JSON-able
        est.unlearn_one(x, r)
    est.unlearn_one(Xte[5], r_mid)
    _assert_same_state(before, _state(est))
    np.testing.assert_allclose(est.decision_function(Xte[:10]), probe, rtol=1e-6, atol=1e-6)


def test_unlearn_out_of_order(make, small_features):
    """Receipts commute: undo the first learn while the second stays learned."""
    Xtr, ytr, Xte, _ = _split(small_features)
    a, b = make().fit(Xtr, ytr), make().fit(Xtr, ytr)
    ra = a.learn_one(Xte[0], "spam")
    a.learn_one(Xte[1], "spam")
    a.unlearn_one(Xte[0], ra)
    b.learn_one(Xte[1], "spam")
    if isinstance(a, (OSBClassifier, HashedLogistic, CombinedClassifier)):
        # these learn by a step that depends on the state; after undoing x0 the state
        # differs from never having learned x0 only by that dependence
        np.testing.assert_allclose(a.decision_function(Xte[2:8]), b.decision_function(Xte[2:8]), rtol=0.2, atol=0.5)
    else:
        _assert_same_state(_state(a), _state(b))


def test_state_round_trip(make, small_features):
    Xtr, ytr, Xte, _ = _split(small_features)
    est = make().fit(Xtr, ytr)
    if isinstance(est, CombinedClassifier):
        scalars, _ = est.get_state()
        twin = CombinedClassifier.assemble(est.estimators_, est.feedback_estimators_,
                                           {k: v for k, v in est.get_params(deep=False).items()
                                            if k not in ("estimators", "feedback_estimators")},
                                           json.loads(json.dumps(scalars)))
    else:
        scalars, arrays = est.get_state()
        twin = type(est).from_state(est.get_params(), json.loads(json.dumps(scalars)), arrays)
    np.testing.assert_allclose(twin.decision_function(Xte), est.decision_function(Xte))


def test_labels():
    assert to_label("spam") == to_label(1) == to_label(True) == to_label(np.int64(1)) == 1
    assert to_label("HAM") == to_label(0) == 0
    with pytest.raises(ValueError):
        to_label("maybe")
    with pytest.raises(ValueError):
        to_label(2)


def test_log_chi2q_matches_direct_sum_and_never_overflows():
    import math

    def direct(x2, v):
        m = x2 / 2
        term = s = math.exp(-m)
        for i in range(1, v // 2):
            term *= m / i
            s += term
        return min(s, 1.0)

    for x2, v in [(1.0, 2), (10.0, 20), (50.0, 30), (3.0, 100)]:
        assert log_chi2q(x2, v) == pytest.approx(math.log(direct(x2, v)), rel=1e-9, abs=1e-12)
    assert log_chi2q(1e6, 300) < -4e5  # exp() of this underflows; the log does not


def test_cluster_tokens_abstain_until_enough_feedback(small_features):
    feats, y = small_features
    cluster = BayesClassifier(min_learns=5)
    sc = cluster.score_one(feats[0])
    assert sc.abstained and "needs 5" in sc.reason
    for f, label in zip(feats[:40], y[:40]):
        cluster.learn_one(f, label)
    assert not cluster.score_one(feats[50]).abstained


def test_combined_uses_priors_for_facts_and_ties(small_features):
    Xtr, ytr, Xte, _ = _split(small_features)
    model = _combined().fit(Xtr, ytr)
    names = model.feature_names()
    coef = dict(zip(names, model.coef_))
    assert coef["cluster_tokens"] == coef["global_tokens"]
    assert coef["spf=fail"] == 1.5 and coef["dkim=pass"] == 0.0
    plain = model.score_detailed(Xte[0])[0].logodds
    failing = model.score_detailed(Xte[0], facts=GateFacts(spf="fail"))[0].logodds
    assert failing == pytest.approx(plain + 1.5)


def test_combined_needs_both_classes(small_features):
    feats, _ = small_features
    with pytest.raises(ValueError, match="needs at least 3 spam and 3 ham"):
        _combined().fit(feats[:20], [0] * 20)


def test_combined_rejects_unknown_fact_weights():
    with pytest.raises(ValueError, match="unknown facts"):
        CombinedClassifier(estimators=[("b", BayesClassifier())], fact_weights={"spf=maybe": 1.0}).partial_fit(
            [extract(b"Subject: x\n\nhello")], [0])


def test_combined_fits_the_same_in_parallel(small_features):
    Xtr, ytr, Xte, _ = _split(small_features)
    one = _combined().fit(Xtr, ytr)
    two = _combined().set_params(n_jobs=2).fit(Xtr, ytr)
    np.testing.assert_allclose(one.decision_function(Xte), two.decision_function(Xte))
    np.testing.assert_allclose(one.oof_, two.oof_)


def test_osb_counters_widen_before_they_overflow(small_features):
    feats, y = small_features
    osb = OSBClassifier(bits=12, thick_threshold=1e9).fit(feats[:20], y[:20])
    assert osb.spam_hits_.dtype == np.uint16
    osb.spam_hits_[:] = 65534  # as if 65,534 spam had taught every feature
    osb.learn_one(feats[0], "spam")
    assert osb.spam_hits_.dtype == osb.ham_hits_.dtype == np.uint32
    assert osb.spam_hits_.max() == 65535
    scalars, arrays = osb.get_state()
    twin = OSBClassifier.from_state(osb.get_params(), scalars, arrays)
    assert twin.spam_hits_.dtype == np.uint32 and twin.spam_hits_.max() == 65535
