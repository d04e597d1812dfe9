"""``mailsift train``: build a model bundle from a labelled corpus.

    mailsift train --corpus ../shared/corpora/spamassassin --out models/default

Steps: read the corpus, extract features (in parallel), fit the recipe's combined
model (out-of-fold stacking), choose each classifier's solo threshold from its
out-of-fold probabilities, and write the bundle with its manifest and model card.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing as mp
import os
import pathlib
import platform
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np

from classifier.bundle import ModelBundle, load_bundle, save_bundle
from classifier.estimators.base import logit, sigmoid
from classifier.features import extract

from .corpus import read_corpus
from .recipe import DEFAULT_RECIPE, build_model, load_recipe


def extract_all(messages, jobs: int = 0, desc: str = "features"):
    """Features of every message, in order, with a progress bar; ``jobs`` processes
    (0: one per core). Extraction is the costly part of learning, and it is
    embarrassingly parallel."""
    from tqdm import tqdm

    jobs = jobs or os.cpu_count() or 1
    raws = (m.read() for m in messages)
    bar = tqdm(total=len(messages), desc=desc, unit="msg", disable=None, leave=False)
    out = []
    if jobs <= 1 or len(messages) < 200:
        for raw in raws:
            out.append(extract(raw))
            bar.update()
    else:
        with mp.get_context("fork").Pool(jobs) as pool:
            for f in pool.imap(extract, raws, chunksize=32):
                out.append(f)
                bar.update()
    bar.close()
    return out


def solo_thresholds(model, grid, margin: float = 1.0) -> dict[str, float | None]:
    """Per corpus classifier: the lowest grid value at least ``margin`` log-odds above
    the highest probability it gave any out-of-fold ham (None: never alone)."""
    out = {}
    y = model.oof_labels_
    names = [n for n, _ in model.estimators_]
    for j, name in enumerate(names):
        a, b = model.calibration_[name]
        x = np.clip(model.oof_[:, j], -model.clip, model.clip) / model.scales_[j]
        p = np.array([sigmoid(a * v + b) for v in x])
        max_ham = float(p[y == 0].max()) if (y == 0).any() else 0.0
        floor = logit(max_ham) + margin
        out[name] = next((g for g in grid if logit(g) >= floor), None)
    for name, _ in model.feedback_estimators_:
        tie = (model.tie_weights or {}).get(name)
        out[name] = out.get(tie)
    return out


def oof_report(model) -> dict:
    from sklearn.metrics import roc_auc_score

    y = model.oof_labels_
    rep = {}
    for j, (name, _) in enumerate(model.estimators_):
        rep[name] = {"oof_roca_pct": 100 * (1 - roc_auc_score(y, model.oof_[:, j]))}
    return rep


def _relative(path: str) -> str:
    try:
        return str(pathlib.Path(path).resolve().relative_to(pathlib.Path(__file__).resolve().parent.parent))
    except ValueError:
        return str(path)


def library_versions() -> dict:
    import numpy
    import sklearn

    return {"python": platform.python_version(), "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "platform": platform.platform()}


def model_card(bundle: ModelBundle, recipe, corpus_desc: dict, command: str, evaluation: dict | None,
               sizes: dict, load_seconds: float, notes: list[str] | None = None) -> str:
    """The bundle's MODEL_CARD.md; ``notes`` are lines of a section of their own (how a
    retrained bundle was made: the feedback it folded in, its evaluation)."""
    t = bundle.training
    lines = [
        f"# Model card: mailsift bundle `{bundle.version}`",
        "",
        "## What it is",
        "",
        "The default scoring model of mailsift. The classifiers, each serving a",
        "classification of the contract table, and a stacking combiner that turns their",
        "log-odds (and the SMTP gate's facts) into one calibrated P(spam), compared with",
        f"the quarantine threshold ({bundle.threshold}; {bundle.tolerant_threshold} is the tolerant setting).",
        "",
        "| classifier | estimator | role | combiner weight | solo threshold |",
        "|---|---|---|---|---|",
    ]
    coef = dict(zip(bundle.model.feature_names(), bundle.model.coef_))
    for c in recipe.classifiers:
        solo = bundle.solo_thresholds.get(c["id"])
        lines.append(f"| {c['id']} | {c['estimator']} {json.dumps(c.get('params', {}))} | {c.get('role', 'corpus')}"
                     f" | {coef[c['id']]:.3f} | {solo if solo is not None else 'never alone'} |")
    lines += [
        "",
        "Gate facts and reputation findings enter with prior weights (not fitted; the corpus has none of them):",
        "",
        ", ".join(f"`{k}` {v:+g}" for k, v in (recipe.combined.get("fact_weights") or {}).items()),
        "",
        "## Training data",
        "",
        f"- corpus: `{corpus_desc['source']}` ({corpus_desc['description']})",
        f"- messages: {corpus_desc['n']} ({corpus_desc['n_spam']} spam, {corpus_desc['n_ham']} ham)",
        "- The SpamAssassin public corpus (2002-2005). Its addresses were anonymised",
        "  upstream. It is old mail: the model knows 2002 spam, not today's. An",
        "  installation's own feedback (`cluster_tokens`, retraining) is what brings it up",
        "  to date. mbox `From ` separator lines are not used as features: SMTP never",
        "  carries them, and in this corpus their dates separate spam from ham by accident.",
        "",
        "## How it was made",
        "",
        f"- date: {t.get('date')}",
        f"- command: `{command}`",
        f"- recipe: `{_relative(recipe.source)}` (copied into bundle.json)",
        f"- library versions: {json.dumps(t.get('libraries', {}))}",
        f"- training time: {t.get('fit_seconds', 0):.1f} s fit + {t.get('extract_seconds', 0):.1f} s feature extraction",
        "",
        "Out-of-fold 1-ROCA% of each classifier on the training data: the scores the combiner",
        "was fitted on, pooled over the folds' five models (pooling ranks scores of different",
        "models together, so these read worse than any one model's):",
        "",
    ]
    for n, r in t.get("oof", {}).items():
        lines.append(f"- {n}: {r['oof_roca_pct']:.4f}")
    if notes:
        lines += ["", *notes]
    lines += ["", "## Measured quality", ""]
    if evaluation:
        b = evaluation if evaluation.get("protocol") == "batch" else evaluation.get("batch", {})
        lines += [
            "Batch protocol: the same recipe fitted on a seeded 70/30 split of the same corpus",
            f"(seed {b.get('seed')}, {b.get('n_train')} training / {b.get('n_test')} test messages),",
            "scored on the test part. From `mailsift evaluate` (bench/report.md has the",
            "side-by-side comparison with Rspamd, SpamAssassin, Bogofilter and CRM114):",
            "",
            "| scorer | 1-ROCA% [95% CI] | lam% | FPR% | FNR% | spam caught @0.1% FPR |",
            "|---|---|---|---|---|---|",
        ]
        for name, m in b.get("metrics", {}).items():
            ci = m.get("roca_pct_ci95") or [float("nan")] * 2
            lines.append(f"| {name} | {m['roca_pct']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] | {m['lam_pct']:.2f}"
                         f" | {m['fpr_pct']:.2f} ({m['fp']}) | {m['fnr_pct']:.2f} ({m['fn']})"
                         f" | {m['catch_at_0.1pct_fpr_pct']:.1f}% |")
        v = b.get("verdict", {})
        if v:
            lines += ["", f"Verdicts at threshold {v.get('threshold')} (combined score or a classifier deciding"
                          f" alone): FPR {v.get('fpr_pct', 0):.3f}% ({v.get('fp')} of {v.get('n_ham')} ham),"
                          f" spam caught {100 - v.get('fnr_pct', 0):.2f}% ({v.get('n_spam', 0) - v.get('fn', 0)}"
                          f" of {v.get('n_spam')})."]
    else:
        lines.append("Not evaluated in this build (run `mailsift evaluate` and pass --evaluation).")
    lines += [
        "",
        "## Size and loading",
        "",
        f"- files: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()),
        f"- total: {sum(sizes.values()) / 1e6:.2f} MB; load with manifest verification: {load_seconds:.2f} s",
        "",
        "## Limits",
        "",
        "- English-language mail from 2002; non-English and modern spam are learned from feedback.",
        "- The solo thresholds let one classifier quarantine alone. They sit a margin above",
        "  the highest probability any out-of-fold training ham got, which does not promise",
        "  that no ham ever will reach them.",
        "- Corpus artefacts are learned with the rest: the hosts the corpus was collected",
        "  through (e.g. `phobos.labs.spamassassin.taint.org`) carry weight as tokens, because",
        "  spam and ham passed through them in different proportions.",
        "- Gate-fact weights are priors until fitted on feedback.",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class ValidationSlice:
    """Messages whose SHA-256 (as hex) has ``int(sha256[:8], 16) % modulus == residue``:
    the fixed validation set ``mailsift retrain`` compares bundles on (training/retrain.py).

    A slice of the hash, not a random draw, so it is the same in every run and for every
    copy of the corpus, and a message is in it or not whatever else the corpus holds."""

    modulus: int = 10
    residue: int = 0

    def __contains__(self, digest: str) -> bool:
        return int(digest[:8], 16) % self.modulus == self.residue

    def describe(self) -> dict:
        return {"hash": "sha256", "rule": f"int(sha256[:8], 16) % {self.modulus} == {self.residue}",
                "modulus": self.modulus, "residue": self.residue}


DEFAULT_SLICE = ValidationSlice()


def fit_bundle(recipe, feats, y, version: str, jobs: int | None = 0, training: dict | None = None,
               progress: bool = False) -> tuple[ModelBundle, float]:
    """The recipe fitted on ``feats``/``y`` as an in-memory bundle; (bundle, fit seconds).
    ``progress`` shows a progress bar of the fits (on a terminal)."""
    bar = None
    callback = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="fit", unit="fit", disable=None, leave=False)

        def callback(what, k, n):
            bar.total = n
            bar.set_postfix_str(what)
            bar.update()

    model = build_model(recipe, progress=callback, n_jobs=jobs)
    t0 = time.perf_counter()
    model.fit(feats, y)
    fit_s = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    bundle = ModelBundle(model=model, version=version, threshold=recipe.threshold,
                         tolerant_threshold=recipe.tolerant_threshold,
                         solo_thresholds=solo_thresholds(model, recipe.solo_grid, recipe.solo_margin),
                         specificity=recipe.specificity, training=dict(training or {}))
    return bundle, fit_s


def write_bundle(bundle: ModelBundle, out, recipe, corpus_desc: dict, command: str,
                 evaluation: dict | None = None, notes: list[str] | None = None) -> None:
    """Save ``bundle`` to ``out`` with its model card (which reports the bundle's size
    and load time, so it is written twice)."""
    save_bundle(bundle, out)
    t0 = time.perf_counter()
    load_bundle(out)
    load_s = time.perf_counter() - t0
    sizes = {p.name: p.stat().st_size for p in sorted(pathlib.Path(out).iterdir()) if p.suffix in (".npz", ".json")}
    save_bundle(bundle, out, model_card(bundle, recipe, corpus_desc, command, evaluation, sizes, load_s, notes))


def train(corpus: str, out: str, recipe_path=DEFAULT_RECIPE, version: str | None = None,
          evaluation: str | None = None, jobs: int = 0, fmt: str = "auto", argv=None,
          validation_slice: ValidationSlice | None = None) -> ModelBundle:
    """``validation_slice``: leave those messages out and record the slice in the bundle,
    so that ``mailsift retrain`` can compare its candidates with this bundle fairly."""
    recipe = load_recipe(recipe_path)
    c = read_corpus(corpus, fmt)
    msgs = c.canonical()
    t0 = time.perf_counter()
    feats = extract_all(msgs, jobs)
    t_extract = time.perf_counter() - t0
    notes = None
    if validation_slice is not None:
        keep = [k for k, f in enumerate(feats) if f.digest not in validation_slice]
        notes = [f"Not trained on: the {len(msgs) - len(keep)} messages of the validation slice"
                 f" ({validation_slice.describe()['rule']}) that `mailsift retrain` compares bundles on."]
        msgs, feats = [msgs[k] for k in keep], [feats[k] for k in keep]
    y = [1 if m.label == "spam" else 0 for m in msgs]

    today = datetime.date.today()
    version = version or f"{today:%Y.%m.%d}-{pathlib.Path(corpus).resolve().name}"
    bundle, t_fit = fit_bundle(recipe, feats, y, version, jobs, progress=True, training={
        "date": today.isoformat(), "corpus": str(corpus), "corpus_order": c.description,
        "n": len(msgs), "n_spam": sum(y), "n_ham": len(y) - sum(y),
        "recipe": recipe.text, "libraries": library_versions(),
        "extract_seconds": t_extract})
    bundle.training.update(fit_seconds=t_fit, oof=oof_report(bundle.model))
    if validation_slice is not None:
        bundle.training["validation_slice"] = validation_slice.describe()
    command = "mailsift " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    ev = json.loads(pathlib.Path(evaluation).read_text()) if evaluation else None
    corpus_desc = {"source": corpus, "description": c.description, "n": len(msgs),
                   "n_spam": sum(y), "n_ham": len(y) - sum(y)}
    write_bundle(bundle, out, recipe, corpus_desc, command, ev, notes)
    return bundle
