"""mailsift as one more peer of the shared benchmark harness (../shared/bench/run.py).

    python3 ../shared/bench/run.py --corpus spamassassin \\
        --peer 'module:bench.peer:Mailsift'           (run from the repository root)

The harness duck-types peers (``peers/base.py``): ``start``, ``learn``, ``learn_many``,
``classify``, ``pids``, ``info``, ``name``, ``threshold``, ``views``. This class needs
none of the harness' code, so it also works as a library for bench/ scripts.

- batch (``learn_many``): the recipe is fitted like ``mailsift train`` does it
  (features extracted on both cores, out-of-fold stacking, solo thresholds).
- online (``learn``): a model that starts empty learns one message at a time, the
  combiner included.
- ``classify``: the verdict at the product's threshold (0.9), with each classifier's
  probability as a view. The harness scores in a forked child of its own process, so
  our in-process model runs as it would in the scorer, on one core.
"""
from __future__ import annotations

import gc
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # the harness puts only its own folder on sys.path
    sys.path.insert(0, _ROOT)

from classifier.bundle import ModelBundle  # noqa: E402
from classifier.features import extract  # noqa: E402
from classifier.scorer import Scorer  # noqa: E402
from training.recipe import DEFAULT_RECIPE, build_model, load_recipe  # noqa: E402
from training.train import library_versions, solo_thresholds  # noqa: E402


class _PathMessage:
    """What training.train.extract_all reads: an object with ``read()``."""

    def __init__(self, path):
        self.path = path

    def read(self) -> bytes:
        with open(self.path, "rb") as fh:
            return fh.read()


class Mailsift:
    name = "mailsift"
    daemon = False

    def __init__(self, recipe: str | None = None):
        self.recipe = load_recipe(recipe or os.environ.get("MAILSIFT_RECIPE") or DEFAULT_RECIPE)
        self.threshold = self.recipe.threshold
        ids = [c["id"] for c in self.recipe.classifiers if c.get("role", "corpus") == "corpus"]
        self.views = {n: 0.5 for n in ids}
        self.scorer = None

    def _fresh(self) -> None:
        model = build_model(self.recipe)
        model._ensure_ready()
        self.scorer = Scorer(ModelBundle(model=model, version="bench", threshold=self.recipe.threshold,
                                         specificity=self.recipe.specificity))

    def start(self, workdir):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self._fresh()

    def stop(self):
        pass

    def learn_many(self, items):
        from training.train import extract_all

        feats = extract_all([_PathMessage(p) for p, _ in items])
        model = build_model(self.recipe, n_jobs=0)
        model.fit(feats, [1 if lab == "spam" else 0 for _, lab in items])
        self.scorer = Scorer(ModelBundle(
            model=model, version="bench", threshold=self.recipe.threshold,
            solo_thresholds=solo_thresholds(model, self.recipe.solo_grid, self.recipe.solo_margin),
            specificity=self.recipe.specificity))
        # as the scoring service does once its model is loaded: long-lived objects out of
        # the cyclic GC's way
        del feats
        gc.collect()
        gc.freeze()

    def learn(self, path, label):
        self.scorer.learn(_PathMessage(path).read(), label)

    def classify(self, path):
        v = self.scorer.score(extract(_PathMessage(path).read()), evidence=0)
        out = {"score": v.score, "spam": v.verdict == "quarantine"}
        for c in v.classifiers:
            if c.id in self.views:
                out[c.id] = c.p_spam
        return out

    def score(self, path):
        return self.classify(path)["score"]

    def pids(self):
        return []

    def info(self):
        return {"recipe": self.recipe.source, "threshold": self.threshold, **library_versions()}
