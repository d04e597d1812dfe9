"""Evaluation measures for spam scores, as the anchors benchmark computes them.

Everywhere ``y`` is 1 for spam and 0 for ham, and ``scores`` are floats where higher
means spammier. The definitions (AUC with ties counting half, lam%, caught at a fixed
FPR, the class-stratified bootstrap) follow shared/bench/PROTOCOL.md and its run.py,
so our numbers sit in the same tables as the peers'.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

# Tolerance when comparing an FPR with its limit: 1/1000 ham computed in floating point
# must still count as "<= 0.1%".
FPR_SLACK = 1e-12

# Probability thresholds worth reading off a table: every 0.01 from 0.50, plus the two
# high ones a cautious deployment uses.
DEFAULT_THRESHOLDS = tuple(round(0.50 + i / 100, 2) for i in range(50)) + (0.995, 0.999)


def _labels_scores(y, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y has {y.size} values but scores has {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must be 1 (spam) or 0 (ham)")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y, s


def roc_auc(y, scores) -> float:
    """Area under the ROC curve; tied scores count half (as TREC's ROCA)."""
    y, s = _labels_scores(y, scores)
    return float(roc_auc_score(y, s))


def rate(k: int, n: int) -> float:
    """Misclassification rate k/n; 0 and 1 become (k + 0.5) / (n + 1) so that its
    logit stays finite (TREC's convention). NaN when n is 0."""
    if n == 0:
        return float("nan")
    if k == 0 or k == n:
        return (k + 0.5) / (n + 1)
    return k / n


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def invlogit(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def lam(fp: int, n_ham: int, fn: int, n_spam: int) -> float:
    """TREC logistic average misclassification, in percent."""
    hm, sm = rate(fp, n_ham), rate(fn, n_spam)
    return 100 * invlogit((logit(hm) + logit(sm)) / 2)


def catch_at_fpr(y, scores, max_fpr: float) -> float:
    """Largest true-positive rate (0..1) over all thresholds whose FPR <= max_fpr."""
    y, s = _labels_scores(y, scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    ok = fpr <= max_fpr + FPR_SLACK
    return float(tpr[ok].max()) if ok.any() else 0.0


def threshold_for_fpr(y, scores, target_fpr: float) -> float:
    """Smallest observed score t for which the rule ``score >= t`` has FPR <= target_fpr;
    +inf when every observed score lets too much ham through."""
    y, s = _labels_scores(y, scores)
    ham = np.sort(s[y == 0])
    if ham.size == 0:
        raise ValueError("threshold_for_fpr needs ham scores")
    cand = np.unique(s)
    fpr = (ham.size - np.searchsorted(ham, cand, side="left")) / ham.size
    # FPR only falls as t rises, so the first candidate that passes is the smallest
    ok = np.nonzero(fpr <= target_fpr + FPR_SLACK)[0]
    return float(cand[ok[0]]) if ok.size else math.inf


def _bootstrap_roca(y: np.ndarray, s: np.ndarray, boot: int, seed: int) -> list[float]:
    rng = np.random.RandomState(seed)
    idx_ham, idx_spam = np.where(y == 0)[0], np.where(y == 1)[0]
    vals = []
    for _ in range(boot):
        # resample within each class so every replicate keeps the test set's class sizes
        ii = np.concatenate([rng.choice(idx_ham, idx_ham.size), rng.choice(idx_spam, idx_spam.size)])
        vals.append(100 * (1 - roc_auc_score(y[ii], s[ii])))
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def evaluate_scores(y, scores, threshold: float | None, verdict=None, boot: int = 200,
                    seed: int = 0) -> dict[str, Any]:
    """All measures of one scorer on one test set.

    The verdict is ``verdict`` (bool per message) if given, else ``scores >= threshold``.
    Without both classes only the counts (n, n_spam, n_ham, fp, fn) are returned.
    ``boot`` bootstrap resamples give ``roca_pct_ci95``; 0 skips it (None).
    ``brier`` treats scores as probabilities (clipped to [0, 1]); it is meaningless
    for other scales.
    """
    y, s = _labels_scores(y, scores)
    if verdict is None:
        if threshold is None:
            raise ValueError("give a threshold or a verdict")
        v = s >= threshold
    else:
        v = np.asarray(verdict, dtype=bool).ravel()
        if v.shape != y.shape:
            raise ValueError(f"verdict has {v.size} values but y has {y.size}")
    n_ham, n_spam = int((y == 0).sum()), int((y == 1).sum())
    fp, fn = int(((y == 0) & v).sum()), int(((y == 1) & ~v).sum())
    out: dict[str, Any] = {"n": int(y.size), "n_spam": n_spam, "n_ham": n_ham, "fp": fp, "fn": fn}
    if n_ham == 0 or n_spam == 0:
        return out
    auc = float(roc_auc_score(y, s))
    out.update({
        "auc": auc,
        "roca_pct": 100 * (1 - auc),
        "roca_pct_ci95": _bootstrap_roca(y, s, boot, seed) if boot > 0 else None,
        "threshold": None if threshold is None else float(threshold),
        "fpr_pct": 100 * fp / n_ham,
        "fnr_pct": 100 * fn / n_spam,
        "lam_pct": lam(fp, n_ham, fn, n_spam),
        "catch_at_0.1pct_fpr_pct": 100 * catch_at_fpr(y, s, 0.001),
        "catch_at_1pct_fpr_pct": 100 * catch_at_fpr(y, s, 0.01),
        "brier": float(np.mean((np.clip(s, 0.0, 1.0) - y) ** 2)),
        "distinct_scores": int(np.unique(s).size),
    })
    return out


def threshold_table(y, scores, thresholds: Iterable[float] | None = None) -> list[dict[str, Any]]:
    """Errors of the rule ``score >= t`` per threshold t (default DEFAULT_THRESHOLDS).
    Percentages are None when their class is absent."""
    y, s = _labels_scores(y, scores)
    ham, spam = np.sort(s[y == 0]), np.sort(s[y == 1])
    rows = []
    for t in (DEFAULT_THRESHOLDS if thresholds is None else thresholds):
        fp = int(ham.size - np.searchsorted(ham, t, side="left"))
        caught = int(spam.size - np.searchsorted(spam, t, side="left"))
        fn = int(spam.size) - caught
        rows.append({
            "threshold": float(t),
            "fp": fp,
            "fn": fn,
            "fpr_pct": 100 * fp / ham.size if ham.size else None,
            "fnr_pct": 100 * fn / spam.size if spam.size else None,
            "caught_pct": 100 * caught / spam.size if spam.size else None,
        })
    return rows


def _cell(v: Any, floatfmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_cell(x, floatfmt) for x in v) + "]"
    return str(v)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """Plain-text table, one column per key in ``columns`` (the key is the header);
    numbers right-aligned, text left-aligned, missing values as '-'."""
    cells = [[_cell(r.get(c), floatfmt) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float, np.number)) or r.get(c) is None for r in rows)
               for c in columns]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()

    out = [line(list(columns)), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)
