#!/usr/bin/env python3
"""In-process speed of the scoring core, as ratios against a baseline run in the same process.

    python3 bench/speed.py --corpus ../shared/corpora/spamassassin --out bench/out/speed.json

These machines are shared and noisy, so absolute times drift from run to run. Each
stage is timed in interleaved rounds, with CPU time per message taken as the median
over rounds. The rounds also time a baseline workload on the same messages: the
standard library parsing each message and decoding its text parts, which any Python
filter pays to read mail. Ratios to that baseline are what carry from one run to the
next.

Stages (the batch split's test messages, model fitted on its training part):
- baseline: email.message_from_bytes + get_payload(decode=True) of every text part
- extract: classifier.features.extract
- score: features -> verdict, with evidence (5 clues per classifier)
- full: raw bytes -> verdict; the scoring service's per-message work
Learning: extraction and one fit of every base classifier, on all cores (batch
learning, as a retrain of the base models does it) and in one process; each
classifier's fit alone (features already extracted, the analogue of Bogofilter's bulk
registration); and the stacked fit that ``mailsift train`` does.
"""
from __future__ import annotations

import argparse
import email
import email.policy
import gc
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sklearn.base import clone  # noqa: E402

from classifier.bundle import ModelBundle  # noqa: E402
from classifier.estimators.combined import fit_all  # noqa: E402
from classifier.features import extract  # noqa: E402
from classifier.scorer import Scorer  # noqa: E402
from training.corpus import batch_split, read_corpus  # noqa: E402
from training.recipe import DEFAULT_RECIPE, build_model, load_recipe  # noqa: E402
from training.train import extract_all, solo_thresholds  # noqa: E402


def baseline(raw: bytes) -> None:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            part.get_payload(decode=True)


def cpu_per_msg(fn, items) -> float:
    t = time.process_time()
    for x in items:
        fn(x)
    return (time.process_time() - t) / len(items)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "speed.json"))
    a = ap.parse_args(argv)

    recipe = load_recipe(a.recipe)
    train, test = batch_split(read_corpus(a.corpus))
    y_tr = [1 if m.label == "spam" else 0 for m in train]
    raws_tr = [m.read() for m in train]
    raws_te = [m.read() for m in test]

    # learning, measured first on a cold process
    t0 = time.perf_counter()
    feats = extract_all(train, 0, desc="features")
    t_extract_par = time.perf_counter() - t0
    model = build_model(recipe, n_jobs=0)
    t0 = time.perf_counter()
    fit_all(model.estimators, feats, y_tr, n_jobs=0)
    t_fit_par = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_classifier = {}
    for name, est in model.estimators:
        t1 = time.perf_counter()
        clone(est).fit(feats, y_tr)
        per_classifier[name] = len(feats) / (time.perf_counter() - t1)
    t_fit_once = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [extract(r) for r in raws_tr]
    t_extract_one = time.perf_counter() - t0
    del single
    t0 = time.perf_counter()
    model.fit(feats, y_tr)
    t_stacked = time.perf_counter() - t0
    scorer = Scorer(ModelBundle(model=model, version="speed", threshold=recipe.threshold,
                                solo_thresholds=solo_thresholds(model, recipe.solo_grid, recipe.solo_margin),
                                specificity=recipe.specificity))
    del feats
    gc.collect()
    gc.freeze()

    feats_te = [extract(r) for r in raws_te]
    for r in raws_te[:50]:
        scorer.score(r)
    stages = {
        "baseline": (baseline, raws_te),
        "extract": (extract, raws_te),
        "score": (scorer.score, feats_te),
        "full": (scorer.score, raws_te),
    }
    samples: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(a.rounds):
        for name, (fn, items) in stages.items():
            samples[name].append(cpu_per_msg(fn, items))
    med = {k: statistics.median(v) for k, v in samples.items()}
    n = len(train)
    out = {
        "corpus": a.corpus, "messages_scored": len(raws_te), "rounds": a.rounds, "cores": os.cpu_count(),
        "cpu_ms_per_msg": {k: 1000 * v for k, v in med.items()},
        "ratio_to_baseline": {k: v / med["baseline"] for k, v in med.items()},
        "score_msgs_per_s_one_core": 1.0 / med["full"],
        "learn": {
            "messages": n,
            "batch_learn_msgs_per_s_all_cores": n / (t_extract_par + t_fit_par),
            "batch_learn_msgs_per_s_one_process": n / (t_extract_one + t_fit_once),
            "fit_msgs_per_s_per_classifier": per_classifier,
            "fit_seconds_all_cores": t_fit_par,
            "extract_seconds_all_cores": t_extract_par, "extract_seconds_one_process": t_extract_one,
            "fit_once_seconds": t_fit_once, "stacked_fit_seconds": t_stacked,
            "train_msgs_per_s_stacked": n / (t_extract_par + t_stacked),
        },
    }
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(out, indent=1))
    c = out["cpu_ms_per_msg"]
    r = out["ratio_to_baseline"]
    print(f"CPU ms/message (median of {a.rounds} interleaved rounds; x = ratio to the stdlib-parse baseline):")
    for k in stages:
        print(f"  {k:9s} {c[k]:7.3f} ms  x{r[k]:.2f}")
    lr = out["learn"]
    print(f"scoring, raw bytes to verdict: {out['score_msgs_per_s_one_core']:.0f} msg/s on one core")
    print(f"batch learning: {lr['batch_learn_msgs_per_s_all_cores']:.0f} msg/s (on {os.cpu_count()} cores),"
          f" {lr['batch_learn_msgs_per_s_one_process']:.0f} msg/s in one process;"
          f" stacked train {lr['train_msgs_per_s_stacked']:.0f} msg/s; fit alone: "
          + ", ".join(f"{k} {v:.0f}/s" for k, v in lr["fit_msgs_per_s_per_classifier"].items()))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
