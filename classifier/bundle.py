"""Model bundles: a versioned directory with the fitted classifiers, the combiner, the
thresholds, a manifest of SHA-256 hashes, and a model card.

    models/default/
        manifest.json        SHA-256 and size of every other file
        bundle.json          classifiers, their parameters and state scalars, the
                             combiner's weights, thresholds, training provenance
        <classifier>.npz     each classifier's learned arrays
        MODEL_CARD.md

Nothing in a bundle is code. Pickles are code, so the bundle holds none. Arrays are
``.npz`` files read with ``allow_pickle=False``, the rest is JSON. Loading still checks
every file against the manifest before parsing it, and reads each file once: the bytes
that were hashed are the bytes that get parsed, so nothing can swap a file between
the check and the load. A caller that pins the manifest's own hash
(``expected_manifest_sha256``) also gets a check that the manifest is the one it vouched for.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import pathlib
from dataclasses import dataclass, field

import numpy as np

from .estimators.base import TokenClassifier
from .estimators.bayes import BayesClassifier
from .estimators.combined import CombinedClassifier
from .estimators.logistic import HashedLogistic
from .estimators.osb import OSBClassifier
from .durable import replace_file
from .paths import DEFAULT_BUNDLE  # noqa: F401  (the shipped bundle; re-exported here)

FORMAT = 1
ESTIMATORS: dict[str, type[TokenClassifier]] = {
    "bayes": BayesClassifier,
    "osb": OSBClassifier,
    "logistic": HashedLogistic,
}
_NAME_OF = {cls: name for name, cls in ESTIMATORS.items()}


class BundleError(ValueError):
    """A bundle that must not be used: tampered, incomplete, or of another format."""


@dataclass
class ModelBundle:
    model: CombinedClassifier
    version: str
    threshold: float = 0.9              # the recommended quarantine threshold
    tolerant_threshold: float = 0.91    # the documented tolerant setting
    solo_thresholds: dict[str, float | None] = field(default_factory=dict)
    specificity: list[str] = field(default_factory=list)  # most specific first
    training: dict = field(default_factory=dict)
    path: pathlib.Path | None = None
    manifest_sha256: str = ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- save

def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def save_bundle(bundle: ModelBundle, directory: str | os.PathLike, model_card: str = "") -> dict:
    """Write ``bundle`` to ``directory`` (created if needed); returns the manifest."""
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model = bundle.model
    files: dict[str, bytes] = {}
    classifiers = []
    roles = {n: "corpus" for n, _ in model.estimators_}
    roles.update({n: "feedback" for n, _ in model.feedback_estimators_})
    for name, est in model.all_estimators():
        scalars, arrays = est.get_state()
        fname = f"{name}.npz"
        files[fname] = _npz_bytes(arrays)
        classifiers.append({
            "id": name, "estimator": _NAME_OF[type(est)], "params": est.get_params(),
            "role": roles[name], "file": fname, "state": scalars,
            "solo_threshold": bundle.solo_thresholds.get(name),
        })
    comb_params = {k: v for k, v in model.get_params(deep=False).items()
                   if k not in ("estimators", "feedback_estimators", "progress", "n_jobs")}
    meta_scalars, _ = model.get_state()
    doc = {
        "format": FORMAT, "version": bundle.version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threshold": bundle.threshold, "tolerant_threshold": bundle.tolerant_threshold,
        "specificity": bundle.specificity, "classifiers": classifiers,
        "combined": {"params": comb_params, "state": meta_scalars},
        "training": bundle.training,
    }
    files["bundle.json"] = json.dumps(doc, indent=1, sort_keys=True).encode()
    if model_card:
        files["MODEL_CARD.md"] = model_card.encode()
    manifest = {
        "format": FORMAT, "version": bundle.version,
        "files": {n: {"sha256": sha256_bytes(b), "bytes": len(b)} for n, b in sorted(files.items())},
    }
    for name, data in files.items():
        replace_file(out / name, data, 0o644)
    # the manifest goes last: a bundle interrupted mid-write fails verification
    replace_file(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode(), 0o644)
    return manifest


# ---------------------------------------------------------------- load

def _read_verified(directory: pathlib.Path, name: str, entry: dict) -> bytes:
    path = directory / name
    if pathlib.Path(name).name != name:
        raise BundleError(f"manifest names a file outside the bundle: {name!r}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from None
    digest = sha256_bytes(data)
    if digest != entry.get("sha256"):
        raise BundleError(f"{path}: SHA-256 {digest} does not match the manifest"
                          f" ({entry.get('sha256')}); refusing to load it")
    return data


def read_manifest(directory: pathlib.Path, expected_sha256: str | None = None) -> tuple[dict, str]:
    try:
        raw = (directory / "manifest.json").read_bytes()
    except OSError as exc:
        raise BundleError(f"{directory}: no readable manifest.json ({exc.strerror})") from None
    digest = sha256_bytes(raw)
    if expected_sha256 and digest != expected_sha256:
        raise BundleError(f"{directory}/manifest.json: SHA-256 {digest} is not the pinned {expected_sha256}")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"{directory}/manifest.json: not JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{directory}: bundle format {manifest.get('format')!r}, this mailsift reads {FORMAT}")
    return manifest, digest


def load_bundle(directory: str | os.PathLike = DEFAULT_BUNDLE, expected_manifest_sha256: str | None = None) -> ModelBundle:
    """Load a bundle after checking every file against its manifest."""
    directory = pathlib.Path(directory)
    manifest, mdigest = read_manifest(directory, expected_manifest_sha256)
    listed = manifest.get("files", {})
    if "bundle.json" not in listed:
        raise BundleError(f"{directory}: manifest does not vouch for bundle.json")
    try:
        doc = json.loads(_read_verified(directory, "bundle.json", listed["bundle.json"]))
        return _assemble(directory, doc, listed, mdigest)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{directory}: malformed bundle ({type(exc).__name__}: {exc})") from exc


def _predating(doc: dict) -> None:
    """Bring a bundle made before a reputation check existed up to date, in memory.

    Its combiner has no weight for the check's feature and its ``specificity`` does not
    rank the check's classification. The combiner would pad the weight with the
    bundle's own prior, which it does not have either (0: the check would count for
    nothing), and an unranked classification loses to any ranked one that decides too
    (``considered_spam`` to ``content_spam``, which the same report teaches). Both come
    from the default recipe (training/default_model.toml), as a bundle trained today
    would have them; an unreadable recipe leaves the bundle as it is.
    """
    from .facts import FACT_FEATURES

    combined = doc["combined"]
    stored = set(combined["state"]["feature_names"])
    missing = [n for n in FACT_FEATURES if n not in stored]
    if not missing:
        return
    import tomllib

    from training.recipe import DEFAULT_RECIPE   # here: training.recipe imports this module

    try:
        recipe = tomllib.loads(DEFAULT_RECIPE.read_text())
    except (OSError, ValueError):
        return
    priors = recipe.get("combined", {}).get("fact_weights", {})
    weights = dict(combined["params"].get("fact_weights") or {})
    for n in missing:
        if n not in weights and n in priors:
            weights[n] = priors[n]
    combined["params"]["fact_weights"] = weights
    ranked = list(doc["specificity"])
    wanted = list(recipe.get("specificity", []))
    for i, n in enumerate(wanted):
        if n not in ranked:
            after = next((ranked.index(m) for m in wanted[i + 1:] if m in ranked), len(ranked))
            ranked.insert(after, n)
    doc["specificity"] = ranked


def _assemble(directory: pathlib.Path, doc: dict, listed: dict, mdigest: str) -> ModelBundle:
    _predating(doc)
    ests: dict[str, TokenClassifier] = {}
    for spec in doc["classifiers"]:
        fname = spec["file"]
        if fname not in listed:
            raise BundleError(f"{directory}: manifest does not vouch for {fname}")
        cls = ESTIMATORS.get(spec["estimator"])
        if cls is None:
            raise BundleError(f"{directory}: unknown estimator {spec['estimator']!r} for {spec['id']}")
        data = _read_verified(directory, fname, listed[fname])
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        ests[spec["id"]] = cls.from_state(spec["params"], spec["state"], arrays)

    corpus = [(s["id"], ests[s["id"]]) for s in doc["classifiers"] if s["role"] == "corpus"]
    feedback = [(s["id"], ests[s["id"]]) for s in doc["classifiers"] if s["role"] == "feedback"]
    model = CombinedClassifier.assemble(corpus, feedback, doc["combined"]["params"], doc["combined"]["state"])
    return ModelBundle(
        model=model, version=doc["version"], threshold=float(doc["threshold"]),
        tolerant_threshold=float(doc["tolerant_threshold"]),
        solo_thresholds={s["id"]: s.get("solo_threshold") for s in doc["classifiers"]},
        specificity=list(doc["specificity"]), training=doc.get("training", {}),
        path=directory, manifest_sha256=mdigest)
