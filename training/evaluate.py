"""``mailsift evaluate``: accuracy and speed of a recipe on a labelled corpus.

Two protocols, the same as the peer benchmark's (../shared/bench/PROTOCOL.md), so our
numbers sit beside Rspamd's, SpamAssassin's, Bogofilter's and CRM114's:

- batch: the corpus sorted by id, ``random.Random(seed).shuffle``, the first 70% to
  train and the rest to test. The recipe is fitted on the training part and every test
  message is scored once.
- online: TREC immediate feedback. Messages in the corpus' online order (its index),
  each scored by a model that starts empty, then learned with its true label.

Reported per scorer (the combined score and each classifier): ROC AUC, 1-ROCA% with a
bootstrap CI, lam%, FPR/FNR at the threshold, spam caught at 0.1% and 1% FPR, and the
Brier score. Speed is measured in the same run: in-process scoring from raw bytes on one
core, and batch learning (feature extraction plus one fit of every base classifier).
Writes JSON, a per-message score TSV, and ROC / histogram PNGs.
"""
from __future__ import annotations

import gc
import json
import pathlib
import time

import numpy as np
from sklearn.base import clone

from classifier.features import extract
from classifier.scorer import Scorer

from .corpus import batch_split, read_corpus
from .metrics import evaluate_scores
from .recipe import DEFAULT_RECIPE, build_model, load_recipe
from .train import extract_all, fit_bundle


def _cpu() -> float:
    return time.process_time()


def fit_scorer(recipe, feats, y, jobs: int | None, version: str) -> tuple[Scorer, float]:
    """The recipe fitted on ``feats``/``y`` as an in-memory bundle; (scorer, fit seconds)."""
    bundle, fit_s = fit_bundle(recipe, feats, y, version, jobs)
    return Scorer(bundle), fit_s


def evaluate_batch(corpus: str, recipe_path=DEFAULT_RECIPE, seed: int = 0, train_fraction: float = 0.7,
                   jobs: int = 0, fmt: str = "auto", boot: int = 200) -> dict:
    recipe = load_recipe(recipe_path)
    c = read_corpus(corpus, fmt)
    train, test = batch_split(c, train_fraction, seed)
    y_tr = [1 if m.label == "spam" else 0 for m in train]
    y_te = np.array([1 if m.label == "spam" else 0 for m in test])
    raws_te = [m.read() for m in test]

    feats_tr = extract_all(train, jobs, desc="features (train)")
    scorer, fit_s = fit_scorer(recipe, feats_tr, y_tr, jobs, "evaluate")
    bundle = scorer.bundle
    model = bundle.model

    # scoring speed: raw bytes in, verdict out, sequential, one process, warm model.
    # The training features are dropped and the model frozen out of the cyclic GC first,
    # as the scoring service does after loading: otherwise every full collection walks
    # millions of long-lived objects and scoring looks 1.5x slower than it is.
    del feats_tr
    gc.collect()
    gc.freeze()
    for raw in raws_te[:20]:
        scorer.score(raw)
    w0, c0 = time.perf_counter(), _cpu()
    verdicts = [scorer.score(raw) for raw in raws_te]
    score_wall, score_cpu = time.perf_counter() - w0, _cpu() - c0

    # batch learning speed: extraction plus one fit of each base classifier, one process
    raws_tr = [m.read() for m in train]
    w0, c0 = time.perf_counter(), _cpu()
    feats_once = [extract(r) for r in raws_tr]
    t_extract = time.perf_counter() - w0
    for _, est in model.estimators:
        clone(est).fit(feats_once, y_tr)
    learn_wall, learn_cpu = time.perf_counter() - w0, _cpu() - c0

    thr = recipe.threshold
    scores = {"combined_score": np.array([v.score for v in verdicts])}
    for name in model.names_:
        scores[name] = np.array([next(c.p_spam for c in v.classifiers if c.id == name) for v in verdicts])
    metrics = {n: evaluate_scores(y_te, s, thr if n == "combined_score" else 0.5, boot=boot)
               for n, s in scores.items() if not (n == "cluster_tokens" and np.all(s == 0.5))}
    quarantined = np.array([v.verdict == "quarantine" for v in verdicts])
    verdict = evaluate_scores(y_te, scores["combined_score"], thr, verdict=quarantined, boot=0)
    classes = {}
    for v in verdicts:
        classes[v.classification] = classes.get(v.classification, 0) + 1
    return {
        "protocol": "batch", "corpus": corpus, "seed": seed, "train_fraction": train_fraction,
        "n_train": len(train), "n_test": len(test), "threshold": thr,
        "metrics": metrics,
        "verdict": {"threshold": thr, "n_ham": int((y_te == 0).sum()), "n_spam": int((y_te == 1).sum()),
                    "fp": verdict["fp"], "fn": verdict["fn"], "fpr_pct": verdict["fpr_pct"],
                    "fnr_pct": verdict["fnr_pct"], "lam_pct": verdict["lam_pct"],
                    "classifications": classes},
        "solo_thresholds": bundle.solo_thresholds,
        "combiner": dict(zip(model.feature_names(), map(float, model.coef_))),
        "speed": {
            "score_msgs_per_s": len(test) / score_wall, "score_cpu_ms_per_msg": 1000 * score_cpu / len(test),
            "score_latency_ms_p50": float(np.percentile([v.elapsed_ms for v in verdicts], 50)),
            "score_latency_ms_p99": float(np.percentile([v.elapsed_ms for v in verdicts], 99)),
            "learn_msgs_per_s_one_process": len(train) / learn_wall, "learn_cpu_s": learn_cpu,
            "learn_extract_share": t_extract / learn_wall,
            "stacked_fit_seconds": fit_s,
        },
        "per_message": [{"id": m.id, "label": m.label, "score": v.score, "classification": v.classification,
                         **{n: float(scores[n][i]) for n in scores if n != "combined_score"}}
                        for i, (m, v) in enumerate(zip(test, verdicts))],
    }


def evaluate_online(corpus: str, recipe_path=DEFAULT_RECIPE, fmt: str = "auto", limit: int = 0,
                    boot: int = 200) -> dict:
    from tqdm import tqdm

    recipe = load_recipe(recipe_path)
    c = read_corpus(corpus, fmt)
    msgs = c.messages[:limit] if limit else c.messages
    model = build_model(recipe)
    model._ensure_ready()
    names = model.names_
    y = np.array([1 if m.label == "spam" else 0 for m in msgs])
    comb = np.zeros(len(msgs))
    per = {n: np.zeros(len(msgs)) for n in names}
    t0 = time.perf_counter()
    for i, m in enumerate(tqdm(msgs, desc="online", unit="msg", disable=None, leave=False)):
        f = extract(m.read())
        score, parts, _ = model.score_detailed(f)
        comb[i] = score.p_spam
        for n in names:
            per[n][i] = parts[n].logodds
        model.learn_one(f, int(y[i]))
    wall = time.perf_counter() - t0
    thr = recipe.threshold
    half = len(msgs) // 2
    out = {"protocol": "online", "corpus": corpus, "order": c.description, "n": len(msgs),
           "threshold": thr, "seconds": wall, "msgs_per_s": len(msgs) / wall, "metrics": {},
           "metrics_second_half": {}}
    # online there is no calibration yet: classifiers are judged on their raw log-odds,
    # with the verdict logodds > 0
    for n in ["combined_score", *names]:
        s, t = (comb, thr) if n == "combined_score" else (per[n], 0.0)
        out["metrics"][n] = evaluate_scores(y, s, t, boot=boot)
        out["metrics_second_half"][n] = evaluate_scores(y[half:], s[half:], t, boot=0)
    out["per_message"] = [{"id": m.id, "label": m.label, "score": float(comb[i]),
                           **{n: float(per[n][i]) for n in names}} for i, m in enumerate(msgs)]
    return out


def write_outputs(result: dict, out_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """JSON (without the per-message rows), a TSV of per-message scores, and plots."""
    from .plots import roc_plot, score_histogram

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"evaluate-{result['protocol']}"
    rows = result.get("per_message", [])
    summary = {k: v for k, v in result.items() if k != "per_message"}
    paths = [out / f"{stem}.json", out / f"{stem}.scores.tsv", out / f"{stem}.roc.png", out / f"{stem}.hist.png"]
    paths[0].write_text(json.dumps(summary, indent=1, default=float))
    if rows:
        cols = list(rows[0])
        with paths[1].open("w") as fh:
            fh.write("\t".join(cols) + "\n")
            for r in rows:
                fh.write("\t".join(str(r[c]) for c in cols) + "\n")
        y = np.array([1 if r["label"] == "spam" else 0 for r in rows])
        curves = {"combined_score": (y, np.array([r["score"] for r in rows]))}
        for n in cols:
            if n not in ("id", "label", "score", "classification") and len({r[n] for r in rows}) > 1:
                curves[n] = (y, np.array([r[n] for r in rows]))
        roc_plot(curves, paths[2], title=f"{result['protocol']} protocol: {result['corpus']}")
        score_histogram(y, curves["combined_score"][1], paths[3], threshold=result["threshold"],
                        title=f"combined score, {result['protocol']} protocol")
    return paths
