"""Evaluation measures (training/metrics.py) against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.metrics import (
    DEFAULT_THRESHOLDS,
    catch_at_fpr,
    evaluate_scores,
    format_table,
    lam,
    rate,
    roc_auc,
    threshold_for_fpr,
    threshold_table,
)

# ham 0.1 0.3 0.4 / spam 0.35 0.4 0.8. Of the 9 spam-ham pairs the spam scores higher in
# 7, and 0.4 vs 0.4 is a tie worth half: AUC = 7.5 / 9.
TIE_Y = [0, 0, 1, 1, 0, 1]
TIE_S = [0.1, 0.4, 0.4, 0.8, 0.3, 0.35]

# 4 ham, 4 spam; the 0.9 ham outscores two spam
SMALL_Y = [0, 0, 0, 0, 1, 1, 1, 1]
SMALL_S = [0.1, 0.2, 0.3, 0.9, 0.5, 0.8, 0.95, 0.99]


def test_auc_with_ties():
    assert roc_auc(TIE_Y, TIE_S) == pytest.approx(7.5 / 9)
    r = evaluate_scores(TIE_Y, TIE_S, 0.5, boot=0)
    assert r["roca_pct"] == pytest.approx(100 * 1.5 / 9)


def test_rate_replaces_zero_and_one():
    assert rate(3, 10) == 0.3
    assert rate(0, 10) == pytest.approx(0.5 / 11)
    assert rate(10, 10) == pytest.approx(10.5 / 11)
    assert math.isnan(rate(0, 0))


def test_lam_by_hand():
    # hm = 2/100 and sm = 10/50: lam odds are the geometric mean of the two odds,
    # sqrt((2/98) * (10/40)) = 1/14, so lam = 1/15
    assert lam(2, 100, 10, 50) == pytest.approx(100 / 15)
    # zero errors on 9 + 9 messages: both rates become 0.5/10, so lam is 5%
    assert lam(0, 9, 0, 9) == pytest.approx(5.0)


def test_catch_at_fpr():
    assert catch_at_fpr(SMALL_Y, SMALL_S, 0.0) == 0.5
    assert catch_at_fpr(SMALL_Y, SMALL_S, 0.1) == 0.5
    assert catch_at_fpr(SMALL_Y, SMALL_S, 0.25) == 1.0


def test_catch_at_fpr_one_in_a_thousand_counts():
    y = np.r_[np.zeros(1000, int), np.ones(10, int)]
    s = np.r_[np.linspace(0, 0.5, 999), [0.99], np.full(10, 0.9)]
    # spam sits below one ham: catching any of it costs exactly 1/1000 FPR
    assert catch_at_fpr(y, s, 0.001) == 1.0
    assert catch_at_fpr(y, s, 0.0009) == 0.0


def test_threshold_for_fpr():
    assert threshold_for_fpr(SMALL_Y, SMALL_S, 0.0) == 0.95
    assert threshold_for_fpr(SMALL_Y, SMALL_S, 0.25) == 0.5
    assert threshold_for_fpr(SMALL_Y, SMALL_S, 1.0) == 0.1
    # the top score is ham: no observed score gives FPR 0
    assert threshold_for_fpr([0, 1, 0], [0.1, 0.5, 0.99], 0.0) == math.inf


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 8)), min_size=2, max_size=30),
       st.sampled_from([0.0, 0.1, 0.25, 0.5]))
def test_threshold_for_fpr_is_smallest_passing_score(pairs, target):
    y = np.array([int(b) for b, _ in pairs])
    s = np.array([v / 8 for _, v in pairs])
    if not (y == 0).any():
        return
    fpr = lambda t: ((s >= t) & (y == 0)).sum() / (y == 0).sum()  # noqa: E731
    t = threshold_for_fpr(y, s, target)
    passing = [v for v in np.unique(s) if fpr(v) <= target]
    assert t == (min(passing) if passing else math.inf)


def test_threshold_table_rows():
    rows = threshold_table(SMALL_Y, SMALL_S, [0.3, 0.5, 0.95])
    assert rows == [
        {"threshold": 0.3, "fp": 2, "fn": 0, "fpr_pct": 50.0, "fnr_pct": 0.0, "caught_pct": 100.0},
        # a score equal to the threshold is spam
        {"threshold": 0.5, "fp": 1, "fn": 0, "fpr_pct": 25.0, "fnr_pct": 0.0, "caught_pct": 100.0},
        {"threshold": 0.95, "fp": 0, "fn": 2, "fpr_pct": 0.0, "fnr_pct": 50.0, "caught_pct": 50.0},
    ]


def test_threshold_table_default_thresholds():
    rows = threshold_table(SMALL_Y, SMALL_S)
    ts = [r["threshold"] for r in rows]
    assert ts == list(DEFAULT_THRESHOLDS)
    assert ts[:3] == [0.5, 0.51, 0.52] and ts[-3:] == [0.99, 0.995, 0.999] and len(ts) == 52


def test_evaluate_scores_counts_and_keys():
    r = evaluate_scores(SMALL_Y, SMALL_S, 0.5, boot=0)
    assert (r["n"], r["n_spam"], r["n_ham"], r["fp"], r["fn"]) == (8, 4, 4, 1, 0)
    assert r["fpr_pct"] == 25.0 and r["fnr_pct"] == 0.0
    assert r["lam_pct"] == pytest.approx(lam(1, 4, 0, 4))
    assert r["catch_at_0.1pct_fpr_pct"] == 50.0 and r["catch_at_1pct_fpr_pct"] == 50.0
    assert r["threshold"] == 0.5 and r["distinct_scores"] == 8
    assert r["roca_pct_ci95"] is None
    assert set(r) == {"n", "n_spam", "n_ham", "auc", "roca_pct", "roca_pct_ci95", "threshold", "fp", "fn",
                      "fpr_pct", "fnr_pct", "lam_pct", "catch_at_0.1pct_fpr_pct", "catch_at_1pct_fpr_pct",
                      "brier", "distinct_scores"}


def test_verdict_overrides_threshold():
    verdict = [False] * 4 + [True, False, True, True]
    r = evaluate_scores(SMALL_Y, SMALL_S, 0.5, verdict=verdict, boot=0)
    assert (r["fp"], r["fn"]) == (0, 1)


def test_brier_clips_scores():
    # clipped scores 0, 1, 0.5, 1 against labels 0, 1, 1, 0: (0 + 0 + 0.25 + 1) / 4
    r = evaluate_scores([0, 1, 1, 0], [-3.0, 1.0, 0.5, 2.0], 0.5, boot=0)
    assert r["brier"] == pytest.approx(0.3125)


def test_bootstrap_ci_deterministic_and_contains_estimate():
    rng = np.random.RandomState(7)
    y = np.r_[np.zeros(120, int), np.ones(80, int)]
    s = rng.normal(size=200) + 1.5 * y
    a = evaluate_scores(y, s, 0.75, boot=50, seed=3)
    b = evaluate_scores(y, s, 0.75, boot=50, seed=3)
    assert a["roca_pct_ci95"] == b["roca_pct_ci95"]
    lo, hi = a["roca_pct_ci95"]
    assert lo < a["roca_pct"] < hi
    assert evaluate_scores(y, s, 0.75, boot=50, seed=4)["roca_pct_ci95"] != a["roca_pct_ci95"]


def test_bootstrap_stratified_draw():
    y = np.array([0, 1, 0, 1, 0, 1, 1])
    s = np.array([0.2, 0.6, 0.7, 0.9, 0.1, 0.3, 0.8])
    rng = np.random.RandomState(0)
    idx_ham, idx_spam = np.where(y == 0)[0], np.where(y == 1)[0]
    vals = []
    for _ in range(20):
        ii = np.concatenate([rng.choice(idx_ham, 3), rng.choice(idx_spam, 4)])
        vals.append(100 * (1 - roc_auc(y[ii], s[ii])))
    got = evaluate_scores(y, s, 0.5, boot=20, seed=0)["roca_pct_ci95"]
    assert got == pytest.approx([np.percentile(vals, 2.5), np.percentile(vals, 97.5)])


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1, 1]])
def test_missing_class_gives_counts_only(y):
    r = evaluate_scores(y, [0.2, 0.6, 0.9], 0.5)
    assert set(r) == {"n", "n_spam", "n_ham", "fp", "fn"}
    assert r["fp"] + r["fn"] == (2 if y[0] == 0 else 1)


def test_missing_class_in_threshold_table():
    rows = threshold_table([0, 0], [0.2, 0.7], [0.5])
    assert rows == [{"threshold": 0.5, "fp": 1, "fn": 0, "fpr_pct": 50.0, "fnr_pct": None, "caught_pct": None}]


def test_bad_input():
    with pytest.raises(ValueError, match="3 values but scores has 2"):
        roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="threshold or a verdict"):
        evaluate_scores([0, 1], [0.1, 0.2], None)


def test_format_table():
    text = format_table([{"name": "bayes", "fp": 3, "fpr_pct": 0.25},
                         {"name": "logistic", "fp": 12, "fpr_pct": None}],
                        ["name", "fp", "fpr_pct"])
    assert text.splitlines() == [
        "name      fp  fpr_pct",
        "--------  --  -------",
        "bayes      3    0.250",
        "logistic  12        -",
    ]
