"""PNG plots of evaluation results.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``)
instead of through pyplot: that needs no display, leaves the process-wide backend of
an importing program (a notebook, say) alone, and keeps no figure registered after the
file is written. matplotlib is imported inside the functions so that importing this
module costs nothing for code that never plots.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

# Lowest FPR shown on the log axis: below one ham in ten thousand no test set of ours
# has the resolution, and FPR 0 cannot be drawn on a log scale at all.
MIN_FPR = 1e-4


def _figure(width: float = 7.0, height: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    fig.tight_layout()
    fig.savefig(path, format="png")
    fig.clear()
    return path


def roc_plot(curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike, title: str = "") -> str:
    """ROC curves of several named scorers, each given as ``(y, scores)``; FPR on a
    log axis from 1e-4 to 1, legend with each curve's 1-ROCA%. Returns the path."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _figure()
    for name, (y, s) in curves.items():
        y = np.asarray(y, dtype=int)
        s = np.asarray(s, dtype=float)
        fpr, tpr, _ = roc_curve(y, s)
        roca = 100 * (1 - roc_auc_score(y, s))
        ax.plot(np.clip(fpr, MIN_FPR, 1.0), tpr, drawstyle="steps-post",
                label=f"{name} (1-ROCA {roca:.3f}%)")
    ax.set_xscale("log")
    ax.set_xlim(MIN_FPR, 1.0)
    ax.set_ylim(0.0, 1.005)
    ax.set_xlabel("false positive rate (ham called spam)")
    ax.set_ylabel("true positive rate (spam caught)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def score_histogram(y, scores, path: str | os.PathLike, threshold: float | None = None,
                    title: str = "") -> str:
    """Score histograms of ham and spam on shared bins, log counts, with the
    threshold as a vertical line. Returns the path."""
    y = np.asarray(y, dtype=int)
    s = np.asarray(scores, dtype=float)
    fig, ax = _figure()
    bins = np.histogram_bin_edges(s, bins=50)
    for lab, name, color in ((0, "ham", "tab:blue"), (1, "spam", "tab:red")):
        part = s[y == lab]
        if part.size:
            ax.hist(part, bins=bins, alpha=0.55, color=color, label=f"{name} ({part.size})", log=True)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("score")
    ax.set_ylabel("messages (log)")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def threshold_tradeoff(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> str:
    """FPR% and FNR% against the threshold, from ``metrics.threshold_table`` rows.
    Returns the path."""
    t = [r["threshold"] for r in rows]
    # None (class absent) becomes NaN, which matplotlib leaves as a gap
    fpr = [np.nan if r["fpr_pct"] is None else r["fpr_pct"] for r in rows]
    fnr = [np.nan if r["fnr_pct"] is None else r["fnr_pct"] for r in rows]
    fig, ax = _figure()
    ax.plot(t, fpr, marker=".", label="FPR% (ham called spam)")
    ax.plot(t, fnr, marker=".", label="FNR% (spam missed)")
    # symlog: FPR lives around 0.1% while FNR is often tens of percent, and both can be 0
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("threshold (score >= t is spam)")
    ax.set_ylabel("percent")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)
