"""Model recipes: the TOML that says which classifiers a bundle holds and how they are set.

``load_recipe`` validates the file and names the bad key in its errors; ``build_model``
turns a recipe into an unfitted ``CombinedClassifier``.
"""
from __future__ import annotations

import pathlib
import tomllib
from dataclasses import dataclass, field

from classifier.bundle import ESTIMATORS
from classifier.estimators.combined import CombinedClassifier
from classifier.facts import FACT_FEATURES

DEFAULT_RECIPE = pathlib.Path(__file__).resolve().parent / "default_model.toml"


class RecipeError(ValueError):
    pass


@dataclass
class Recipe:
    classifiers: list[dict]
    combined: dict
    threshold: float = 0.9
    tolerant_threshold: float = 0.91
    specificity: list[str] = field(default_factory=list)
    solo_grid: list[float] = field(default_factory=list)
    solo_margin: float = 1.0
    source: str = ""
    text: str = ""


def load_recipe(path: str | pathlib.Path = DEFAULT_RECIPE) -> Recipe:
    path = pathlib.Path(path)
    text = path.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: {exc}") from None

    def bad(key: str, why: str):
        raise RecipeError(f"{path}: {key}: {why}")

    known_top = {"threshold", "tolerant_threshold", "specificity", "solo_grid", "solo_margin", "combined",
                 "classifiers"}
    for key in doc:
        if key not in known_top:
            bad(key, "unknown key")
    for key in ("threshold", "tolerant_threshold"):
        v = doc.get(key, 0.9)
        if not isinstance(v, int | float) or not 0.0 < v < 1.0:
            bad(key, f"must be a number between 0 and 1, not {v!r}")
    classifiers = doc.get("classifiers")
    if not classifiers:
        bad("classifiers", "at least one [[classifiers]] table is needed")
    ids = set()
    for i, c in enumerate(classifiers):
        where = f"classifiers[{i}]"
        for key in c:
            if key not in ("id", "estimator", "role", "params"):
                bad(f"{where}.{key}", "unknown key")
        cid = c.get("id")
        if not isinstance(cid, str) or not cid:
            bad(f"{where}.id", "missing")
        if cid in ids:
            bad(f"{where}.id", f"{cid!r} appears twice")
        ids.add(cid)
        if c.get("estimator") not in ESTIMATORS:
            bad(f"{where}.estimator", f"must be one of {sorted(ESTIMATORS)}, not {c.get('estimator')!r}")
        if c.get("role", "corpus") not in ("corpus", "feedback"):
            bad(f"{where}.role", "must be 'corpus' or 'feedback'")
        params = c.get("params", {})
        valid = ESTIMATORS[c["estimator"]]().get_params()
        for p in params:
            if p not in valid:
                bad(f"{where}.params.{p}", f"not a parameter of {c['estimator']} (valid: {sorted(valid)})")
    combined = dict(doc.get("combined", {}))
    valid_comb = set(CombinedClassifier().get_params()) - {"estimators", "feedback_estimators", "progress", "n_jobs"}
    for key in combined:
        if key not in valid_comb:
            bad(f"combined.{key}", f"unknown (valid: {sorted(valid_comb)})")
    for fact in combined.get("fact_weights", {}):
        if fact not in FACT_FEATURES:
            bad(f"combined.fact_weights.{fact}", f"unknown fact (known: {', '.join(FACT_FEATURES)})")
    for n, target in combined.get("tie_weights", {}).items():
        if n not in ids or target not in ids:
            bad(f"combined.tie_weights.{n}", "both sides must be classifier ids of this recipe")
    spec = doc.get("specificity", [])
    reputation_ids = {"pyzor", "ucepp", "urlbl", "phishing", "safebrowsing", "external_pattern",
                      "signature_match", "content_spam", "considered_spam"}   # what classifier/reputation decides
    for n in spec:
        if n not in ids and n not in reputation_ids:
            bad("specificity", f"{n!r} is neither a classifier id of this recipe nor a reputation check's")
    grid = doc.get("solo_grid", [])
    if any(not (0.5 < g <= 1.0) for g in grid) or grid != sorted(grid):
        bad("solo_grid", "must be increasing probabilities above 0.5")
    margin = doc.get("solo_margin", 1.0)
    if not isinstance(margin, int | float) or margin < 0:
        bad("solo_margin", f"must be a non-negative number of log-odds, not {margin!r}")
    return Recipe(classifiers=classifiers, combined=combined, threshold=float(doc.get("threshold", 0.9)),
                  tolerant_threshold=float(doc.get("tolerant_threshold", 0.91)), specificity=spec,
                  solo_grid=grid, solo_margin=float(margin), source=str(path), text=text)


def build_model(recipe: Recipe, progress=None, n_jobs=None) -> CombinedClassifier:
    """An unfitted combined model; ``n_jobs`` processes fit its classifiers (0: all cores)."""
    corpus, feedback = [], []
    for c in recipe.classifiers:
        est = ESTIMATORS[c["estimator"]](**c.get("params", {}))
        (feedback if c.get("role", "corpus") == "feedback" else corpus).append((c["id"], est))
    return CombinedClassifier(estimators=corpus, feedback_estimators=feedback, progress=progress,
                              n_jobs=n_jobs, **recipe.combined)
