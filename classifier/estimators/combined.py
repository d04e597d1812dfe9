"""The combined score: a stacking model over the classifiers' log-odds and the gate facts.

``fit`` trains the base classifiers in ``cv`` folds and collects their out-of-fold
log-odds, scores they gave to messages they had not learned. A logistic regression on
those log-odds is the combiner. Fitting it on in-sample scores would teach it to trust
each classifier's memory of its own training data (Wolpert's stacked generalisation).
Then the base classifiers are refitted on everything.

What the corpus cannot teach comes in as priors, data in the model bundle and not
constants in code:
- ``fact_weights``: log-odds weights of the gate facts (SPF, DKIM, DMARC, DNSBL hits,
  HELO/PTR sanity). Public corpora carry none of them.
- ``tie_weights``: ``cluster_tokens`` learns only this installation's feedback and
  starts empty. It borrows the fitted weight of ``global_tokens``, the same estimator
  on the same scale.

Each base classifier is also calibrated alone (one-feature logistic regression on its
out-of-fold log-odds), so every classifier reports a comparable probability, and
each can be given a threshold at which it decides alone.

Online (``learn_one``): the base classifiers learn the message, and the combiner takes
one AdaGrad step on the log-loss of the score it gave *before* they learned. That is
out-of-sample by construction, and it is how the TREC immediate-feedback protocol
trains a stacker. The receipt keeps every part's undo information.
"""
from __future__ import annotations


import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from ..facts import FACT_FEATURES, NO_FACTS
from ..features import MessageFeatures, as_features
from .base import SPAM, ClassifierScore, Clue, TokenClassifier, sigmoid, to_label


_FIT_CONTEXT: dict = {}


def _fit_task(task):
    """One fit, in this process or a forked worker that inherited _FIT_CONTEXT."""
    c = _FIT_CONTEXT
    k, j = task
    name, est = c["estimators"][j]
    feats, y = c["feats"], c["y"]
    if k is None:
        fitted = clone(est).fit(feats, y)
        if c["forked"]:  # send back plain state, not the estimator: arrays pickle cheaply
            scalars, arrays = fitted.get_state()
            return k, j, (type(fitted), fitted.get_params(), scalars, arrays)
        return k, j, fitted
    train, test = c["folds"][k]
    e = clone(est).fit([feats[i] for i in train], y[train])
    return k, j, np.array([e.score_one(feats[i]).logodds for i in test])


def _run_fits(estimators, feats, y, folds, tasks, n_jobs):
    """Yield (fold or None, estimator index, out-of-fold scores or fitted estimator).

    With n_jobs > 1 the fits run in forked workers, which inherit the features instead
    of receiving them pickled; only scores and learned state come back.
    """
    import multiprocessing as mp
    import os

    jobs = (os.cpu_count() or 1) if n_jobs in (-1, 0) else (n_jobs or 1)
    _FIT_CONTEXT.update(estimators=estimators, feats=feats, y=y, folds=folds, forked=jobs > 1)
    try:
        if jobs <= 1:
            for t in tasks:
                yield _fit_task(t)
            return
        with mp.get_context("fork").Pool(min(jobs, len(tasks))) as pool:
            # the final fits are the longest (all the data): start them first
            order = sorted(tasks, key=lambda t: t[0] is not None)
            for k, j, result in pool.imap_unordered(_fit_task, order):
                if k is None:
                    cls, params, scalars, arrays = result
                    result = cls.from_state(params, scalars, arrays)
                yield k, j, result
    finally:
        _FIT_CONTEXT.clear()


def fit_all(estimators, feats, y, n_jobs=None) -> list[tuple[str, TokenClassifier]]:
    """Fit every (name, estimator) on all of (feats, y), in ``n_jobs`` processes."""
    y = np.asarray(y)
    tasks = [(None, j) for j in range(len(estimators))]
    fitted = {j: e for _, j, e in _run_fits(list(estimators), feats, y, [], tasks, n_jobs)}
    return [(n, fitted[j]) for j, (n, _) in enumerate(estimators)]


class Contributions(dict):
    """Feature name -> pull on the combined log-odds, with the weights in ``coef``."""

    coef: dict


class CombinedClassifier(TokenClassifier):
    kind = "combined_score"

    def __init__(self, estimators=(), feedback_estimators=(), cv: int = 5, C: float = 1.0,
                 clip: float = 60.0, fact_weights=None, tie_weights=None,
                 online_rate: float = 0.05, random_state: int = 0, progress=None, n_jobs=None):
        self.estimators = estimators
        self.feedback_estimators = feedback_estimators
        self.cv = cv
        self.C = C
        self.clip = clip
        self.fact_weights = fact_weights
        self.tie_weights = tie_weights
        self.online_rate = online_rate
        self.random_state = random_state
        self.progress = progress
        self.n_jobs = n_jobs

    # ---- structure
    @property
    def names_(self) -> list[str]:
        return [n for n, _ in self.estimators_] + [n for n, _ in self.feedback_estimators_]

    def all_estimators(self) -> list[tuple[str, TokenClassifier]]:
        self._ensure_ready()
        return self._members()

    def feature_names(self) -> list[str]:
        return self.names_ + list(FACT_FEATURES)

    def _reset(self) -> None:
        self.estimators_ = [(n, clone(e)) for n, e in self.estimators]
        self.feedback_estimators_ = [(n, clone(e)) for n, e in self.feedback_estimators]
        for _, e in self._members():
            e._ensure_ready()
        k = len(self.estimators_) + len(self.feedback_estimators_)
        # an unfitted combiner trusts each classifier's log-odds as they are, scaled to
        # about one unit per clip/6 (so that a saturated classifier gives about 6)
        self.scales_ = np.full(k, self.clip / 6.0)
        self.coef_ = np.concatenate([np.ones(k), self._prior_facts()])
        self.intercept_ = 0.0
        self.calibration_ = {n: (1.0, 0.0) for n in self.names_}
        self.adagrad_ = np.full(len(self.coef_) + 1, 1e-6)
        self.nspam_ = 0
        self.nham_ = 0

    def _members(self):
        """The fitted base estimators, without the readiness check (used by _reset)."""
        return list(self.estimators_) + list(self.feedback_estimators_)

    def _prior_facts(self) -> np.ndarray:
        fw = self.fact_weights or {}
        unknown = set(fw) - set(FACT_FEATURES)
        if unknown:
            raise ValueError(f"fact_weights names unknown facts: {sorted(unknown)}")
        return np.array([float(fw.get(n, 0.0)) for n in FACT_FEATURES])

    def n_learned(self) -> tuple[int, int]:
        return self.nspam_, self.nham_

    # ---- meta features
    def _base_scores(self, f: MessageFeatures, evidence: int = 0) -> list[ClassifierScore]:
        return [e.score_one(f, evidence) for _, e in self._members()]

    def _meta_vector(self, scores: list[ClassifierScore], facts) -> np.ndarray:
        lo = np.array([0.0 if s.abstained else s.logodds for s in scores])
        x = np.clip(lo, -self.clip, self.clip) / self.scales_
        return np.concatenate([x, np.array((facts or NO_FACTS).vector())])

    # ---- batch fit
    def _fit_batch(self, feats, labels) -> None:
        y = np.asarray(labels)
        n_spam, n_ham = int((y == SPAM).sum()), int((y != SPAM).sum())
        if min(n_spam, n_ham) < self.cv:
            raise ValueError(f"the combined model needs at least {self.cv} spam and {self.cv} ham"
                             f" to fit (cv={self.cv}); got {n_spam} spam and {n_ham} ham")
        names = [n for n, _ in self.estimators]
        folds = list(StratifiedKFold(n_splits=self.cv, shuffle=True, random_state=self.random_state)
                     .split(np.zeros(len(y)), y))
        # every fit is independent: (fold, estimator) pairs for the out-of-fold scores,
        # then (None, estimator) for the final fits on everything
        tasks = [(k, j) for k in range(self.cv) for j in range(len(names))] + \
                [(None, j) for j in range(len(names))]
        oof = np.zeros((len(feats), len(names)))
        final: dict[int, TokenClassifier] = {}
        done = 0
        for k, j, result in _run_fits(self.estimators, feats, y, folds, tasks, self.n_jobs):
            if k is None:
                final[j] = result
            else:
                oof[folds[k][1], j] = result
            done += 1
            self._tick(f"{names[j]} " + ("final" if k is None else f"fold {k + 1}/{self.cv}"), done, len(tasks))
        self.oof_ = oof
        self.oof_labels_ = y

        clipped = np.clip(oof, -self.clip, self.clip)
        scales = clipped.std(axis=0)
        scales[scales == 0] = 1.0
        tie = self.tie_weights or {}
        fb_names = [n for n, _ in self.feedback_estimators]
        fb_scales = np.array([scales[names.index(tie[n])] if tie.get(n) in names else self.clip / 6.0
                              for n in fb_names])
        self.scales_ = np.concatenate([scales, fb_scales])

        meta = LogisticRegression(C=self.C, max_iter=1000)
        meta.fit(clipped / scales, y)
        coef = meta.coef_[0]
        fb_coef = np.array([coef[names.index(tie[n])] if tie.get(n) in names else 0.0 for n in fb_names])
        self.coef_ = np.concatenate([coef, fb_coef, self._prior_facts()])
        self.intercept_ = float(meta.intercept_[0])
        self.adagrad_ = np.full(len(self.coef_) + 1, 1e-6)

        self.calibration_ = {}
        for j, n in enumerate(names):
            lr = LogisticRegression(C=self.C, max_iter=1000).fit(clipped[:, j:j + 1] / scales[j], y)
            self.calibration_[n] = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))
        for n in fb_names:
            self.calibration_[n] = self.calibration_.get(tie.get(n), (1.0, 0.0))

        self.estimators_ = [(n, final[j]) for j, n in enumerate(names)]
        self.feedback_estimators_ = [(n, clone(e)) for n, e in self.feedback_estimators]
        for _, e in self.feedback_estimators_:
            e._ensure_ready()
        self.nspam_ = int((y == SPAM).sum())
        self.nham_ = len(y) - self.nspam_

    def _tick(self, what: str, k: int, n: int) -> None:
        if self.progress is not None:
            self.progress(what, k, n)

    # ---- online learning
    def _learn(self, f: MessageFeatures, label: int) -> dict:
        scores = self._base_scores(f)
        x = self._meta_vector(scores, getattr(f, "facts", None))
        y = 1.0 if label == SPAM else 0.0
        g = y - sigmoid(self._z(x))
        grad = np.concatenate([x, [1.0]]) * g
        self.adagrad_ += grad * grad
        delta = self.online_rate * grad / np.sqrt(self.adagrad_)
        self.coef_ += delta[:-1]
        self.intercept_ += float(delta[-1])
        receipts = {n: e.learn_one(f, label) for n, e in self._members()}
        if label == SPAM:
            self.nspam_ += 1
        else:
            self.nham_ += 1
        return {"label": label, "delta": delta.tolist(), "estimators": receipts}

    def _unlearn(self, f: MessageFeatures, receipt: dict) -> None:
        for n, e in self._members():
            if n in receipt["estimators"]:
                e.unlearn_one(f, receipt["estimators"][n])
        delta = np.asarray(receipt["delta"])
        self.coef_ -= delta[:-1]
        self.intercept_ -= float(delta[-1])
        if receipt["label"] == SPAM:
            self.nspam_ = max(0, self.nspam_ - 1)
        else:
            self.nham_ = max(0, self.nham_ - 1)

    def learn_to(self, x, label, names) -> dict:
        """Learn one message in the named base classifiers only (e.g. feedback that
        goes to ``cluster_tokens`` at once while the global model waits for a retrain)."""
        self._ensure_ready()
        f = as_features(x)
        lab = to_label(label)
        return {"label": lab, "delta": [0.0] * (len(self.coef_) + 1),
                "estimators": {n: e.learn_one(f, lab) for n, e in self._members() if n in names}}

    # ---- scoring
    def _z(self, x: np.ndarray) -> float:
        return float(self.intercept_ + self.coef_ @ x)

    def calibrated(self, j: int, name: str, score: ClassifierScore) -> float:
        """Base classifier j's own calibrated probability of spam."""
        if score.abstained:
            return 0.5
        a, b = self.calibration_.get(name, (1.0, 0.0))
        x = max(-self.clip, min(self.clip, score.logodds)) / self.scales_[j]
        return sigmoid(a * x + b)

    def score_detailed(self, x, facts=None, evidence: int = 0):
        """(combined score, per-classifier scores with calibrated p, contributions).

        The contributions are a dict of feature name -> pull on the combined log-odds;
        its ``coef`` attribute holds the weights they were computed with."""
        self._ensure_ready()
        f = as_features(x)
        scores = self._base_scores(f, evidence)
        v = self._meta_vector(scores, facts if facts is not None else getattr(f, "facts", None))
        z = self._z(v)
        names = self.names_
        for j, (name, s) in enumerate(zip(names, scores)):
            s.p_spam = self.calibrated(j, name, s)
        feature_names = names + list(FACT_FEATURES)
        named = Contributions(zip(feature_names, (self.coef_ * v).tolist()))
        named.coef = dict(zip(feature_names, self.coef_.tolist()))
        return ClassifierScore(sigmoid(z), z, [Clue(n, c) for n, c in named.items() if c]), \
            dict(zip(names, scores)), named

    def _score(self, f: MessageFeatures, evidence: int) -> ClassifierScore:
        combined, _, _ = self.score_detailed(f, evidence=evidence)
        combined.evidence.sort(key=lambda c: -abs(c.weight))
        return combined

    @classmethod
    def assemble(cls, estimators, feedback_estimators, params: dict, scalars: dict):
        """A fitted combiner from already-loaded base estimators (used by bundles)."""
        model = cls(estimators=list(estimators), feedback_estimators=list(feedback_estimators), **params)
        model.estimators_ = list(estimators)
        model.feedback_estimators_ = list(feedback_estimators)
        model._set_state(scalars, {})
        model._ready_ = True
        return model

    # ---- state (the base estimators are stored by the bundle, one file each)
    def get_state(self):
        scalars = {
            "names": self.names_, "coef": self.coef_.tolist(), "intercept": self.intercept_,
            "scales": self.scales_.tolist(), "feature_names": self.feature_names(),
            "calibration": {n: list(v) for n, v in self.calibration_.items()},
            "nspam": self.nspam_, "nham": self.nham_,
        }
        return scalars, {}

    def _set_state(self, scalars, arrays) -> None:
        stored, now = list(scalars["feature_names"]), self.feature_names()
        coef = np.asarray(scalars["coef"], dtype=float)
        if stored != now[:len(stored)]:
            raise ValueError(f"combiner features {stored} do not match the configured {now}")
        if len(stored) < len(now):
            # A bundle made before newer facts existed: they start at their priors.
            coef = np.concatenate([coef, self._prior_facts()[len(stored) - len(now):]])
        self.coef_ = coef
        self.intercept_ = float(scalars["intercept"])
        self.scales_ = np.asarray(scalars["scales"], dtype=float)
        self.calibration_ = {n: tuple(v) for n, v in scalars["calibration"].items()}
        self.nspam_, self.nham_ = int(scalars["nspam"]), int(scalars["nham"])
        self.adagrad_ = np.full(len(self.coef_) + 1, 1e-6)


