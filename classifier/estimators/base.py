"""The estimator contract shared by every mailsift classifier.

Each classifier is a scikit-learn estimator (``__init__`` stores keyword parameters
only, learned state ends in ``_``, ``fit`` resets and returns ``self``,
``partial_fit`` streams). X is a sequence of messages (raw bytes or
``MessageFeatures``) and y holds 1/0 or "spam"/"ham". On top of that contract:

- ``score_one(x, evidence=k)`` returns a ``ClassifierScore``: the probability, an
  unsaturated log-odds-like score, and the k clues that moved it most, so every
  verdict can explain itself (SpamBayes' ``evidence=True``).
- ``learn_one(x, label)`` learns one message and returns a *receipt*, a small
  JSON-able dict. ``unlearn_one(x, receipt)`` undoes exactly that learn. This is how
  feedback is made idempotent and a change of mind is relearned.
- ``get_state()`` / ``from_state()`` turn the learned state into plain numpy arrays
  and JSON parameters. Model bundles hold no pickles: nothing in a bundle is code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ..features import MessageFeatures, as_features

SPAM, HAM = 1, 0


def to_label(y) -> int:
    """1 for spam, 0 for ham; accepts 1/0, True/False, 'spam'/'ham'."""
    if isinstance(y, str):
        y = y.strip().lower()
        if y == "spam":
            return SPAM
        if y == "ham":
            return HAM
    elif y in (0, 1):  # also matches True/False and numpy ints
        return int(y)
    raise ValueError(f"label must be spam/ham or 1/0, not {y!r}")


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logit(p: float, eps: float = 1e-12) -> float:
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


@dataclass(frozen=True, slots=True)
class Clue:
    """One piece of evidence: a readable feature and its pull in log-odds (> 0: spam)."""

    feature: str
    weight: float

    def __str__(self) -> str:
        return f"{self.feature!r}{self.weight:+.2f}"


@dataclass(slots=True)
class ClassifierScore:
    """What one classifier says about one message."""

    p_spam: float          # this classifier's own probability of spam
    logodds: float         # unsaturated score; 0.0 = no opinion
    evidence: list[Clue] = field(default_factory=list)
    abstained: bool = False
    reason: str = ""       # why it abstained, when it did


class TokenClassifier(ClassifierMixin, BaseEstimator):
    """Base class: shared prediction and streaming code, written once."""

    #: the classification id this estimator serves by default (overridable per bundle)
    kind: str = ""

    # ---- to implement
    def _reset(self) -> None:
        raise NotImplementedError

    def _score(self, f: MessageFeatures, evidence: int) -> ClassifierScore:
        raise NotImplementedError

    def _learn(self, f: MessageFeatures, label: int) -> dict:
        raise NotImplementedError

    def _unlearn(self, f: MessageFeatures, receipt: dict) -> None:
        raise NotImplementedError

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able scalars, numpy arrays) that rebuild the learned state."""
        raise NotImplementedError

    def _set_state(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def n_learned(self) -> tuple[int, int]:
        """(spam, ham) messages learned so far."""
        raise NotImplementedError

    # ---- the contract, written once
    @property
    def classes_(self) -> np.ndarray:
        return np.array([HAM, SPAM])

    def _is_ready(self) -> bool:
        return getattr(self, "_ready_", False)

    def _ensure_ready(self) -> None:
        if not self._is_ready():
            self._reset()
            self._ready_ = True

    def fit(self, X, y):
        """Forget everything, then learn X (batch)."""
        self._reset()
        self._ready_ = True
        self._fit_batch([as_features(x) for x in X], [to_label(v) for v in y])
        return self

    def _fit_batch(self, feats: list[MessageFeatures], labels: list[int]) -> None:
        """Batch learning; estimators with a better batch algorithm override this."""
        for f, label in zip(feats, labels):
            self._learn(f, label)

    def partial_fit(self, X, y, classes=None):
        """Learn more messages, one at a time, on top of what is known."""
        self._ensure_ready()
        for x, v in zip(X, y):
            self._learn(as_features(x), to_label(v))
        return self

    def learn_one(self, x, label) -> dict:
        """Learn one message; the receipt lets ``unlearn_one`` undo exactly this."""
        self._ensure_ready()
        return self._learn(as_features(x), to_label(label))

    def unlearn_one(self, x, receipt: dict) -> None:
        self._ensure_ready()
        self._unlearn(as_features(x), receipt)

    def score_one(self, x, evidence: int = 0) -> ClassifierScore:
        self._ensure_ready()
        return self._score(as_features(x), evidence)

    def decision_function(self, X) -> np.ndarray:
        return np.array([self.score_one(x).logodds for x in X], dtype=float)

    def predict_proba(self, X) -> np.ndarray:
        p = np.array([self.score_one(x).p_spam for x in X], dtype=float)
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] > 0.5).astype(int)

    @classmethod
    def from_state(cls, params: dict, scalars: dict, arrays: dict[str, np.ndarray]):
        est = cls(**params)
        est._reset()
        est._set_state(scalars, arrays)
        est._ready_ = True
        return est

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags
