"""``mailsift retrain``: fold this installation's feedback into a new model bundle, and put
it in service only if it is not worse than the bundle serving now.

Releases and reports teach ``cluster_tokens`` at once (classifier/server.py); the global
classifiers and the combiner learn them only here, in a batch fit, where a bad batch of
feedback can be caught before it reaches the mail.

The data
--------
- The base corpus (``--corpus``, any format ``training.corpus.read_corpus`` reads).
- The feedback: the scorer's learn log (classifier/learnlog.py), every source (release,
  report, trap, training), with the *current* label of each message: a change of mind
  counts once, with its last label. The learn log holds only what the scorer learned;
  feedback the poisoning guards held for review never reached it.
- Reporters the others disagree with: the feedback store (training/feedback.py) weighs
  each reporter by their agreement with the rest. The classifiers' batch fits take no
  sample weights, so the weight is a cut: the feedback of a reporter whose weight has
  fallen below ``[feedback] min_agreement`` (over at least ``agreement_min_samples``,
  not a trusted one: the judgement the feedback guards apply to new reports) is left
  out of the candidate, the reports they made before they fell below included. The
  report names them.
- Held out: the newest ``holdout`` fraction (by learn log id, which is time order) of
  the feedback the current bundle has not folded in yet. Feedback the current bundle
  was trained on is always folded in again: holding it out would test the current
  bundle on its own training data.
- The validation set: the base-corpus messages whose SHA-256 falls in a fixed slice
  (``int(sha256[:8], 16) % 10 == 0``, about a tenth). No bundle made here trains on
  them, and every bundle made here records the slice in ``training["validation_slice"]``.
  The comparison is fair only when the current bundle was not trained on them either
  (``mailsift train --validation-slice`` leaves them out and records it); a bundle that
  does not record the slice may have been, which favours it, so the report says so
  (``validation_fair``). Such a bundle errs on the safe side: it makes promotion harder,
  not easier. On the SpamAssassin corpus a candidate never beats a current bundle
  trained on the whole corpus there: that bundle has learned every validation message.

The decision
------------
Both bundles are scored plainly (their own state, no learn log replayed, no reputation
checks) on each evaluation set, at the configured quarantine threshold (the gate's
``[filtering] threshold``), with the verdict rule the scorer uses (the threshold or a
classifier deciding alone). The candidate is promoted only if, on every set, it is not
worse, judged in this order:

1. FPR at the threshold (ham quarantined): at most the current's;
2. 1-ROCA%: at most the current's times (1 + tolerance);
3. FNR at the threshold (spam let through): at most the current's times (1 + tolerance).

A set without ham has no FPR to compare, a set without both classes no 1-ROCA%. The
third check is ours: 1-ROCA% does not see the threshold, and feedback that poisons can
keep the ranking while it drags every spam score under the threshold (in the test
corpus, 60 spam released as ham: the validation spam let through went from 0% to 100%
while 1-ROCA% stayed 0). Such feedback looks *good* on the held-out feedback, which
carries the same wrong labels; the validation set, whose labels it cannot touch, is
where it shows. With the default tolerance of 0 a candidate must be no worse at all;
on a small validation set one message more is a step, and ``--tolerance`` loosens
checks 2 and 3 (never the FPR).

The models directory
--------------------
::

    <models>/versions/<version>/     one bundle per version, never changed once there
    <models>/current -> versions/<v> the bundle in service (a relative symlink)
    <models>/history.jsonl           every seed, promotion and rollback
    <models>/reports/<run>/          report.json, summary.txt, roc.png of each run
    <models>/.lock                   one retrain, rollback or seed at a time

``current`` is switched atomically: a new symlink is made beside it and renamed over it,
so a scorer (re)loading at any moment finds the old bundle or the new one, never a
half. On first use the directory is seeded with a copy of the bundle the scorer runs now, or
(``mailsift retrain init --corpus``) with a base bundle trained without the validation
slice.
The ``keep`` versions most recently current are kept for ``mailsift retrain rollback``,
and always the current one and its rollback target. The order comes from the history of
switches, not from when a version was made: a rollback goes to the version that was
current before the current one last became current (passing over versions an earlier
rollback left), so after v1, v2, v3, a rollback to v2 and a promotion of v4, v4 rolls
back to v2, and pruning keeps v2 rather than the rolled-back v3.

Hot reload
----------
After a promotion or rollback the scorer's Reload RPC is called on the configured
addresses; the scorer must be started with ``--model <models>/current`` (the gate's
``[scorer] model``) for the reload to find the new bundle. It loads the bundle and
replays the learn log after ``training["learnlog_upto"]``: the highest learn log id
folded into the bundle, so the held-out feedback, which is newer, is learned online
again after the reload and nothing is learned twice. A change of mind after that id
about a folded message (reported, folded, then released) must undo the folded label:
the bundle keeps the receipt of each folded learn (``training["folded_receipts"]``, by
digest), and the scorer starts its replay with them, as if it had learned them itself.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from classifier.bundle import DEFAULT_BUNDLE, BundleError, ModelBundle, load_bundle, read_manifest
from classifier.durable import fsync_dir
from classifier.learnlog import NOOP, LearnLog
from classifier.scorer import QUARANTINE, Scorer

from .corpus import Message, read_corpus
from .metrics import FPR_SLACK, evaluate_scores, format_table
from .recipe import DEFAULT_RECIPE, load_recipe
from .train import (DEFAULT_SLICE, ValidationSlice, extract_all, fit_bundle, library_versions, oof_report,
                    train, write_bundle)

HOLDOUT = 0.2          # the newest fifth of new feedback tests the candidate
KEEP = 5               # versions kept for rollback
TOLERANCE = 0.0        # 1-ROCA% may not be worse at all
# 1-ROCA% computed from the same labels can differ in the last bits between two equal
# rankings; below this a difference is not one
ROCA_SLACK = 1e-9
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RetrainError(Exception):
    """The retrain cannot run as asked (no corpus, a models directory in a bad state)."""


# ---------------------------------------------------------------- feedback

@dataclass(frozen=True)
class LearnedMessage:
    """One message of the learn log with its current label."""

    digest: str
    label: str               # spam | ham
    log_id: int              # the entry that set the label
    at: float
    source: str              # release | report | trap | training
    who: str
    classifiers: list[str]   # [] = all (training data)
    message: bytes


def read_learnlog(path: str | os.PathLike) -> tuple[list[LearnedMessage], int]:
    """Every message of the learn log with its current label, oldest label first, and
    the log's last id. A missing log has none (it is not created)."""
    if not os.path.exists(path):
        return [], 0
    log = LearnLog(os.fspath(path))
    try:
        last = {}
        for e in log.since(0):
            if e.outcome != NOOP:   # a no-op repeats the current label, and has no message
                last[e.digest] = e
        upto = log.last_id()
    finally:
        log.close()
    items = [LearnedMessage(e.digest, e.label, e.id, e.at, e.source, e.who, list(e.classifiers), e.message)
             for e in sorted(last.values(), key=lambda e: e.id)]
    return items, upto


def split_feedback(items: list[LearnedMessage], current_upto: int, holdout: float) -> tuple[list[LearnedMessage], list[LearnedMessage]]:
    """(folded into the candidate, held out to test it): all that the current bundle
    folded in already, plus the older part of the rest; the newest ``holdout`` fraction
    of the rest is held out."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), not {holdout}")
    old = [i for i in items if i.log_id <= current_upto]
    new = [i for i in items if i.log_id > current_upto]
    n_hold = int(holdout * len(new) + 0.5)   # half up: Python's round() would hold out none of one at 0.5
    return old + new[:len(new) - n_hold], new[len(new) - n_hold:]


def distrusted_reporters(feedback_db: str | os.PathLike, cfg) -> dict[str, float]:
    """Reporter -> weight, for the reporters whose feedback a retrain leaves out: not
    trusted, at least ``cfg.agreement_min_samples`` samples, weight under
    ``cfg.min_agreement`` (``cfg``: smtpgate.config.FeedbackConfig)."""
    if not os.path.exists(feedback_db):
        return {}
    from .feedback import Feedback

    with Feedback(pathlib.Path(feedback_db), cfg, None) as fb:
        stats = fb.reporter_stats()
    return {s.who: s.weight for s in stats
            if not s.trusted and s.samples >= cfg.agreement_min_samples and s.weight < cfg.min_agreement}


def _counts(items) -> dict:
    out = {"n": len(items), "spam": 0, "ham": 0, "by_source": {}}
    for i in items:
        out[i.label] += 1
        out["by_source"][i.source] = out["by_source"].get(i.source, 0) + 1
    return out


# ---------------------------------------------------------------- the models directory

@dataclass
class VersionInfo:
    version: str
    path: pathlib.Path
    current: bool
    added: str | None            # when it entered the directory (history), ISO time
    action: str | None           # seed | promote
    learnlog_upto: int | None
    trained: str | None          # training date
    n: int | None                # messages trained on


class ModelStore:
    """The models directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)
        self.versions_dir = self.root / "versions"
        self.current_link = self.root / "current"
        self.history_path = self.root / "history.jsonl"
        self.reports_dir = self.root / "reports"

    @contextlib.contextmanager
    def lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RetrainError(f"{self.root}: another retrain, rollback or seed is running") from None
            yield

    # ---- reading
    def current_version(self) -> str | None:
        if not self.current_link.is_symlink():
            if self.current_link.exists():
                raise RetrainError(f"{self.current_link} is not a symlink; move it away (the directory"
                                   " manages it)")
            return None
        return pathlib.Path(os.readlink(self.current_link)).name

    def path_of(self, version: str) -> pathlib.Path:
        return self.versions_dir / version

    def history(self) -> list[dict]:
        try:
            lines = self.history_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(x) for x in lines if x.strip()]

    def version_names(self) -> list[str]:
        """Versions present, in the order they entered the directory (oldest first)."""
        present = self._present()
        order = []
        for h in self.history():
            if h["action"] in ("seed", "promote") and h["version"] in present and h["version"] not in order:
                order.append(h["version"])
        # a version copied in by hand has no history: by its directory's time
        rest = sorted(present - set(order), key=lambda v: self.path_of(v).stat().st_mtime)
        return rest + order

    def versions(self) -> list[VersionInfo]:
        cur = self.current_version()
        added = {}
        for h in self.history():
            if h["action"] in ("seed", "promote"):
                added.setdefault(h["version"], (h["at"], h["action"]))
        out = []
        for v in self.version_names():
            try:
                doc = json.loads((self.path_of(v) / "bundle.json").read_text())
                t = doc.get("training", {})
            except (OSError, ValueError):
                t = {}
            at, action = added.get(v, (None, None))
            out.append(VersionInfo(v, self.path_of(v), v == cur, at, action, t.get("learnlog_upto"),
                                   t.get("date"), t.get("n")))
        return out

    # ---- writing (the caller holds the lock)
    def _log(self, action: str, version: str, previous: str | None, **extra) -> None:
        rec = {"at": _now().isoformat(timespec="seconds"), "action": action, "version": version,
               "previous": previous, **extra}
        with open(self.history_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def free_name(self, version: str) -> str:
        if not _VERSION.match(version):
            raise RetrainError(f"version {version!r}: use letters, digits, '.', '_' and '-' only")
        name, k = version, 1
        while self.path_of(name).exists():
            k += 1
            name = f"{version}-{k}"
        return name

    def add(self, write, version: str) -> pathlib.Path:
        """A new version directory: ``write(tmpdir)`` fills a temporary directory beside
        it, the bundle is verified (every file against its manifest), then renamed in."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
        try:
            write(tmp)
            os.chmod(tmp, 0o755)   # mkdtemp makes 0700; the scorer may run as another user
            load_bundle(tmp)
            dst = self.path_of(version)
            os.rename(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.versions_dir)
        return dst

    def switch(self, version: str, action: str, **extra) -> str | None:
        """Point ``current`` at ``version`` atomically; returns the previous version."""
        if not self.path_of(version).is_dir():
            raise RetrainError(f"no version {version!r} in {self.versions_dir}")
        previous = self.current_version()
        tmp = self.root / f".current.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.path.join("versions", version), tmp)
        os.replace(tmp, self.current_link)
        fsync_dir(self.root)
        self._log(action, version, previous, **extra)
        return previous

    def seed(self, source: str | os.PathLike) -> str:
        """Copy the bundle at ``source`` in (verified) and make it current."""
        src = pathlib.Path(source)
        bundle = load_bundle(src)   # refuses a bundle that fails its manifest
        manifest, _ = read_manifest(src)
        name = self.free_name(bundle.version)

        def copy(tmp):
            for fname in [*manifest["files"], "manifest.json"]:
                shutil.copyfile(src / fname, tmp / fname)

        self.add(copy, name)
        self.switch(name, "seed", source=str(src.resolve()))
        return name

    def seed_trained(self, corpus: str, recipe=DEFAULT_RECIPE, fmt: str = "auto", jobs: int = 0,
                     argv: list[str] | None = None) -> str:
        """Train a base bundle on ``corpus`` without the validation slice and make it
        current: the fair start for a comparison (the shipped model saw the whole corpus)."""
        version = self.free_name(f"{_now():%Y.%m.%d}-{pathlib.Path(corpus).resolve().name}-base")
        self.add(lambda tmp: train(corpus, tmp, recipe, version, jobs=jobs, fmt=fmt, argv=argv,
                                   validation_slice=DEFAULT_SLICE), version)
        self.switch(version, "seed", source=f"trained on {corpus} without the validation slice")
        return version

    def switches(self) -> list[dict]:
        """Every switch of ``current`` (seed, promote, rollback), oldest first: the
        history's records."""
        return [h for h in self.history() if h.get("action") in ("seed", "promote", "rollback")]

    def _present(self) -> set[str]:
        if not self.versions_dir.is_dir():
            return set()
        return {p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}

    def previous_of(self, version: str) -> str | None:
        """Where ``rollback`` goes from ``version``: the version that was current before
        ``version`` last became current, still kept. A version a rollback to the default
        target left is passed over (it was judged bad), so a second rollback goes further
        back instead of returning to it; a version a rollback to a named version left was
        not judged, and is not. None: nothing kept served before it."""
        seq = self.switches()
        last = max((i for i, h in enumerate(seq) if h["version"] == version), default=None)
        if last is None:   # never switched to (history lost, copied in by hand): by entry order
            names = self.version_names()
            i = names.index(version) if version in names else 0
            return names[i - 1] if i > 0 else None
        present = self._present()
        abandoned: set[str] = set()
        for i in range(1, len(seq)):
            left = seq[i - 1]["version"]
            if left == seq[i]["version"]:
                continue
            if seq[i]["action"] == "rollback" and not seq[i].get("named"):
                abandoned.add(left)
            else:
                abandoned.discard(left)
        for h in reversed(seq[:last]):
            v = h["version"]
            if v != version and v in present and v not in abandoned:
                return v
        return None

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` versions most recently current; never the current
        one nor its rollback target (``previous_of``), whatever ``keep`` says. A version
        never current (copied in by hand) ranks below every one that was."""
        cur = self.current_version()
        present = self._present()
        last_current = {h["version"]: i for i, h in enumerate(self.switches())}
        never = sorted(present - set(last_current), key=lambda v: self.path_of(v).stat().st_mtime, reverse=True)
        ranked = sorted((v for v in present if v in last_current), key=lambda v: -last_current[v]) + never
        protected = {cur, self.previous_of(cur) if cur else None}
        kept = set(ranked[:max(0, keep)]) | protected
        drop = [v for v in reversed(ranked) if v not in kept]   # oldest first
        for v in drop:
            shutil.rmtree(self.path_of(v))
        return drop


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# ---------------------------------------------------------------- evaluation

def score_plainly(scorer: Scorer, feats, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(combined scores, quarantined?) of a bundle on its own: no learn log, no reputation."""
    vs = [scorer.score(f, threshold=threshold, evidence=0) for f in feats]
    return np.array([v.score for v in vs]), np.array([v.verdict == QUARANTINE for v in vs])


def evaluate_set(feats, y, current: Scorer, candidate: Scorer, threshold: float) -> dict:
    """Both bundles' measures on one evaluation set, with their scores (for the ROC)."""
    y = np.asarray(y, dtype=int)
    out = {"n": int(y.size), "n_spam": int(y.sum()), "n_ham": int((y == 0).sum()), "y": y, "scores": {}}
    for name, scorer in (("current", current), ("candidate", candidate)):
        s, q = score_plainly(scorer, feats, threshold)
        out[name] = evaluate_scores(y, s, threshold, verdict=q, boot=0) if y.size else {"n": 0}
        out["scores"][name] = s
    return out


def decide(sets: dict[str, dict], tolerance: float) -> tuple[bool, list[str]]:
    """Promote? and why. On every set, in this order: the FPR at the threshold not above
    the current's; 1-ROCA% not above the current's times (1 + tolerance); the FNR at
    the threshold not above the current's times (1 + tolerance)."""
    if not any(s["n"] for s in sets.values()):
        return False, ["refused: nothing to evaluate on (no validation messages, no held-out feedback)"]
    failed: list[str] = []
    why: list[str] = []

    def check(what: str, name: str, cand: float, cur: float, limit: float, detail: str = "") -> None:
        ok = cand <= limit
        if not ok and what not in failed:
            failed.append(what)
        why.append(f"{name}: {what} {cand:.4f}{detail} {'<=' if ok else '>'} current {cur:.4f}"
                   + (f" (limit {limit:.4f})" if limit > cur + ROCA_SLACK else ""))

    for name, s in sets.items():   # FPR first
        if s["n_ham"]:
            c, k = (100 * s[m]["fp"] / s["n_ham"] for m in ("candidate", "current"))
            check("FPR%", name, c, k, k + 100 * FPR_SLACK, f" ({s['candidate']['fp']} of {s['n_ham']} ham)")
        elif s["n"]:
            why.append(f"{name}: no ham, FPR not compared")
    for name, s in sets.items():
        if s["n_ham"] and s["n_spam"]:
            c, k = s["candidate"]["roca_pct"], s["current"]["roca_pct"]
            check("1-ROCA%", name, c, k, k * (1 + tolerance) + ROCA_SLACK)
        elif s["n"]:
            why.append(f"{name}: one class only, 1-ROCA% not compared")
    for name, s in sets.items():
        if s["n_spam"]:
            c, k = (100 * s[m]["fn"] / s["n_spam"] for m in ("candidate", "current"))
            check("FNR%", name, c, k, k * (1 + tolerance) + 100 * FPR_SLACK,
                  f" ({s['candidate']['fn']} of {s['n_spam']} spam)")
    if failed:
        head = {"FPR%": "refused: the candidate quarantines more ham (FPR is compared first)",
                "1-ROCA%": "refused: the candidate ranks spam and ham worse (1-ROCA%)",
                "FNR%": "refused: the candidate lets more spam through at the threshold (FNR)"}[failed[0]]
        return False, [head, *why]
    return True, ["promoted: not worse on FPR, 1-ROCA% and FNR on every evaluation set", *why]


# ---------------------------------------------------------------- the run

@dataclass
class RetrainResult:
    report: dict
    report_dir: pathlib.Path
    promoted: bool
    version: str | None          # the candidate's version (promoted or not)
    summary: str = ""


@dataclass
class Retrain:
    """One retrain run; ``run()`` does it. Paths as the CLI resolves them from the gate
    config: ``learnlog`` <state_dir>/scorer/learnlog.sqlite, ``models`` <state_dir>/models."""

    corpus: str
    models: pathlib.Path
    learnlog: pathlib.Path | None = None
    fmt: str = "auto"
    recipe: str | os.PathLike = DEFAULT_RECIPE
    holdout: float = HOLDOUT
    tolerance: float = TOLERANCE
    threshold: float | None = None        # None: the current bundle's
    keep: int = KEEP
    dry_run: bool = False
    scorers: list[str] = field(default_factory=list)
    reload_deadline: float = 120.0
    version: str | None = None
    report_dir: pathlib.Path | None = None
    seed_from: pathlib.Path = DEFAULT_BUNDLE
    distrusted: dict[str, float] = field(default_factory=dict)   # reporter -> weight: left out
    validation_slice: ValidationSlice = DEFAULT_SLICE
    jobs: int = 0
    progress: bool = False
    argv: list[str] | None = None      # the command line, for the report and the model card

    def run(self) -> RetrainResult:
        if self.keep < 2:
            raise RetrainError("--keep must be at least 2: the current version and one to roll back to")
        store = ModelStore(self.models)
        with store.lock():
            if store.current_version() is None:
                store.seed(self.seed_from)
            return self._run(store)

    def _run(self, store: ModelStore) -> RetrainResult:
        t_start = time.perf_counter()
        seconds = {}
        current_version = store.current_version()
        current = Scorer(load_bundle(store.path_of(current_version)))
        cur_t = current.bundle.training
        current_upto = int(cur_t.get("learnlog_upto", 0))
        threshold = current.bundle.threshold if self.threshold is None else self.threshold
        recipe = load_recipe(self.recipe)
        now = _now()
        version = store.free_name(self.version or f"{now:%Y.%m.%d-%H%M%S}-retrain")
        report_dir = pathlib.Path(self.report_dir or store.reports_dir / version)
        report_dir.mkdir(parents=True, exist_ok=True)
        vslice = self.validation_slice

        # ---- data
        t0 = time.perf_counter()
        corpus = read_corpus(self.corpus, self.fmt)
        msgs = corpus.canonical()
        everything, log_last = read_learnlog(self.learnlog) if self.learnlog else ([], 0)
        items = [i for i in everything if i.who not in self.distrusted]
        left_out = _counts([i for i in everything if i.who in self.distrusted])
        folded, held = split_feedback(items, current_upto, self.holdout)
        fb_msgs = [Message(f"learnlog#{i.log_id}", i.label, raw=i.message, id=f"learnlog#{i.log_id}")
                   for i in folded + held]
        feats = extract_all(msgs + fb_msgs, self.jobs, desc="features")
        seconds["extract"] = time.perf_counter() - t0
        c_feats, f_feats = feats[:len(msgs)], feats[len(msgs):]
        fb_digests = {i.digest for i in items}
        val_idx = [k for k, f in enumerate(c_feats) if f.digest in vslice]
        val_digests = {c_feats[k].digest for k in val_idx}
        # the installation's label of a message wins over the corpus'; a feedback copy of
        # a validation message stays out of training, so that the validation set stays clean
        tr_idx = [k for k, f in enumerate(c_feats) if f.digest not in vslice and f.digest not in fb_digests]
        fold_feats = [(i, f) for i, f in zip(folded, f_feats) if i.digest not in val_digests]
        held_feats = f_feats[len(folded):]
        train_feats = [c_feats[k] for k in tr_idx] + [f for _, f in fold_feats]
        y = [int(msgs[k].is_spam) for k in tr_idx] + [int(i.label == "spam") for i, _ in fold_feats]
        learnlog_upto = max([current_upto] + [i.log_id for i in folded])

        # ---- the candidate
        t0 = time.perf_counter()
        bundle, fit_s = fit_bundle(recipe, train_feats, y, version, self.jobs, progress=self.progress, training={
            "date": now.date().isoformat(), "corpus": str(self.corpus), "corpus_order": corpus.description,
            "n": len(y), "n_spam": sum(y), "n_ham": len(y) - sum(y), "recipe": recipe.text,
            "libraries": library_versions(), "extract_seconds": seconds["extract"],
            "validation_slice": vslice.describe(), "learnlog_upto": learnlog_upto,
            "retrained_from": current_version,
            "feedback": {"learnlog": str(self.learnlog) if self.learnlog else None,
                         "folded": len(fold_feats), "held_out": len(held),
                         "folded_spam": sum(i.label == "spam" for i, _ in fold_feats)},
        })
        bundle.training.update(fit_seconds=fit_s, oof=oof_report(bundle.model))
        bundle.training["folded_receipts"] = _fold_into_feedback_classifiers(bundle, fold_feats)
        candidate = Scorer(bundle)
        seconds["fit"] = time.perf_counter() - t0

        # ---- evaluation
        t0 = time.perf_counter()
        sets = {
            "validation": evaluate_set([c_feats[k] for k in val_idx], [int(msgs[k].is_spam) for k in val_idx],
                                       current, candidate, threshold),
            "held_out_feedback": evaluate_set(held_feats, [int(i.label == "spam") for i in held],
                                              current, candidate, threshold),
        }
        promote, reasons = decide(sets, self.tolerance)
        seconds["evaluate"] = time.perf_counter() - t0
        fair = cur_t.get("validation_slice") == vslice.describe()
        warnings = []
        if not fair:
            warnings.append(f"the current bundle {current_version} does not record the validation slice"
                            f" ({vslice.describe()['rule']}): it may have been trained on the validation"
                            " messages, which favours it on that set (mailsift train --validation-slice"
                            " builds a base bundle without them)")
        if self.learnlog and not os.path.exists(self.learnlog):
            warnings.append(f"no learn log at {self.learnlog}: no feedback folded in")
        elif everything and log_last < current_upto:
            warnings.append(f"the learn log ends at id {log_last}, before the current bundle's learnlog_upto"
                            f" {current_upto}: is it another installation's, or was it replaced? The scorer"
                            " does not replay entries up to that id")

        report = {
            "run": version, "date": now.isoformat(timespec="seconds"), "dry_run": self.dry_run,
            "threshold": threshold, "tolerance": self.tolerance, "holdout": self.holdout,
            "command": ("mailsift " + " ".join(shlex.quote(a) for a in self.argv) if self.argv is not None
                        else "training.retrain.Retrain.run()"),
            "current": {"version": current_version, "path": str(store.path_of(current_version)),
                        "learnlog_upto": current_upto, "validation_slice": cur_t.get("validation_slice"),
                        "validation_fair": fair},
            "candidate": {"version": version, "learnlog_upto": learnlog_upto, "recipe": str(recipe.source)},
            "data": {
                "corpus": {"source": str(self.corpus), "n": len(msgs), "n_spam": sum(m.is_spam for m in msgs),
                           "training": len(tr_idx), "validation": len(val_idx),
                           "validation_slice": vslice.describe(),
                           "replaced_by_feedback": sum(1 for f in c_feats if f.digest in fb_digests
                                                       and f.digest not in vslice)},
                "feedback": {"learnlog": str(self.learnlog) if self.learnlog else None, "last_id": log_last,
                             "labelled": _counts(items), "already_in_current": sum(i.log_id <= current_upto
                                                                                  for i in items),
                             "left_out_distrusted": {**left_out, "reporters": self.distrusted},
                             "folded": _counts([i for i, _ in fold_feats]), "held_out": _counts(held),
                             "dropped_as_validation_copies": len(folded) - len(fold_feats)},
                "training": {"n": len(y), "n_spam": sum(y), "n_ham": len(y) - sum(y)},
            },
            "evaluation": {name: {k: v for k, v in s.items() if k not in ("y", "scores")}
                           for name, s in sets.items()},
            "decision": {"promote": promote, "promoted": False, "reasons": reasons},
            "warnings": warnings,
        }

        # ---- promotion
        if promote and not self.dry_run:
            t0 = time.perf_counter()
            notes = _card_notes(report)
            store.add(lambda tmp: write_bundle(bundle, tmp, recipe, {
                "source": self.corpus, "description": corpus.description, "n": len(y),
                "n_spam": sum(y), "n_ham": len(y) - sum(y)}, report["command"], None, notes), version)
            previous = store.switch(version, "promote", report=str(report_dir))
            report["decision"]["promoted"] = True
            report["promotion"] = {"path": str(store.path_of(version)), "previous": previous,
                                   "pruned": store.prune(self.keep),
                                   "reload": reload_scorers(self.scorers, version, self.reload_deadline)}
            seconds["promote"] = time.perf_counter() - t0
        seconds["total"] = time.perf_counter() - t_start
        report["seconds"] = seconds
        summary = write_report(report, sets, report_dir)
        return RetrainResult(report, report_dir, report["decision"]["promoted"], version, summary)


def _fold_into_feedback_classifiers(bundle: ModelBundle, fold_feats) -> dict[str, dict]:
    """Teach the folded feedback to the feedback classifiers (``cluster_tokens``), as the
    scorer's replay would have: the new bundle's ``learnlog_upto`` tells the scorer not
    to replay it again, so without this the installation's own model would forget it.

    Returns each folded message's receipt by digest, for ``training["folded_receipts"]``:
    a scorer that loads the bundle starts from them, so that a change of mind logged
    after ``learnlog_upto`` (a reported message released) undoes the folded label
    before it learns the new one, as it would have had it replayed the first learn
    itself. Only what was folded has one: a message whose last label was held out, left
    out with a distrusted reporter or dropped as a validation copy is not in the bundle,
    and a relearn of it has nothing to undo."""
    model = bundle.model
    names = [n for n, _ in model.feedback_estimators_]
    receipts = {}
    for item, f in fold_feats:
        targets = [n for n in names if not item.classifiers or n in item.classifiers]
        if targets:
            # through JSON now: the bundle stores it so, and a type it cannot store fails here
            receipts[item.digest] = json.loads(json.dumps(model.learn_to(f, item.label, targets)))
    return receipts


def _card_notes(report: dict) -> list[str]:
    d = report["data"]
    fb = d["feedback"]
    lines = ["## Retraining", "",
             f"Made by `mailsift retrain` from `{report['current']['version']}`: the corpus without its"
             f" validation slice ({d['corpus']['validation_slice']['rule']}, {d['corpus']['validation']}"
             f" messages), plus {fb['folded']['n']} messages of this installation's feedback"
             f" ({fb['folded']['spam']} spam, {fb['folded']['ham']} ham), learn log up to id"
             f" {report['candidate']['learnlog_upto']}; the {fb['held_out']['n']} newest held out.",
             "", f"Compared with `{report['current']['version']}` at threshold {report['threshold']}:", ""]
    lines += [f"- {r}" for r in report["decision"]["reasons"]]
    return lines


def reload_scorers(addresses: list[str], expect: str, deadline: float) -> list[dict]:
    """Call Reload on each scorer address; what each answered (or why it did not)."""
    import grpc

    from classifier.client import RemoteScorer, ScorerUnavailable

    out = []
    for addr in addresses:
        rec = {"address": addr}
        try:
            with RemoteScorer([addr], deadline=deadline) as r:
                reply = r.reload(deadline)
            rec.update(model_version=reply.model_version, changed=reply.changed)
            if reply.model_version != expect:
                rec["error"] = (f"serves {reply.model_version} after the reload, not {expect}: is it started"
                                " with --model <models>/current?")
        except ScorerUnavailable as exc:
            rec["error"] = f"unavailable: {exc}"
        except grpc.RpcError as exc:   # the scorer refused the bundle, and serves the one it had
            rec["error"] = f"{exc.code().name}: {exc.details()}"
            if "is not the pinned" in (exc.details() or ""):
                rec["error"] += (" (the scorer was started with --manifest-sha256, which pins one bundle:"
                                 " it refuses every other one, a promoted or rolled-back bundle included;"
                                 " restart it without the pin, or with the new bundle's manifest SHA-256)")
        out.append(rec)
    return out


def rollback(models: str | os.PathLike, version: str | None = None, scorers: list[str] = (),
             deadline: float = 120.0) -> dict:
    """Make ``version`` (default: ``ModelStore.previous_of`` the current one: the version
    that served before it) current again and reload the scorers. The learn log is replayed on it after its own ``learnlog_upto``,
    so no feedback is lost by going back."""
    store = ModelStore(models)
    with store.lock():
        cur = store.current_version()
        if cur is None:
            raise RetrainError(f"{store.root}: no current version to roll back from")
        target = version or store.previous_of(cur)
        if target is None:
            raise RetrainError(f"nothing to roll back to: no version kept served before {cur} (the oldest"
                               " version kept, or the ones before it were rolled back from; name one to"
                               " switch to it)")
        if target == cur:
            raise RetrainError(f"{cur} is already current")
        if not _VERSION.match(target):
            raise RetrainError(f"no version {target!r}")
        try:
            load_bundle(store.path_of(target))
        except BundleError as exc:
            raise RetrainError(f"cannot roll back to {target}: {exc}") from None
        previous = store.switch(target, "rollback", **({"named": True} if version else {}))
    return {"version": target, "previous": previous, "reload": reload_scorers(list(scorers), target, deadline)}


# ---------------------------------------------------------------- the report

_COLUMNS = ["set", "model", "n", "n_ham", "n_spam", "fp", "fpr_pct", "fn", "fnr_pct", "roca_pct"]


def metrics_rows(evaluation: dict) -> list[dict]:
    rows = []
    for name, s in evaluation.items():
        if not s["n"]:
            continue
        for model in ("current", "candidate"):
            m = s[model]
            rows.append({"set": name, "model": model, "n": s["n"], "n_ham": s["n_ham"], "n_spam": s["n_spam"],
                         "fp": m.get("fp"), "fn": m.get("fn"),
                         "fpr_pct": 100 * m["fp"] / s["n_ham"] if s["n_ham"] else None,
                         "fnr_pct": 100 * m["fn"] / s["n_spam"] if s["n_spam"] else None,
                         "roca_pct": m.get("roca_pct")})
    return rows


def summary_text(report: dict) -> str:
    d, cur, cand = report["data"], report["current"], report["candidate"]
    dec = report["decision"]
    state = ("PROMOTED, now current" if dec["promoted"] else
             "would be promoted (dry run)" if dec["promote"] else "REFUSED, current unchanged")
    fb = d["feedback"]
    lines = [
        f"mailsift retrain {report['run']}: {state} (current was {cur['version']})",
        f"threshold {report['threshold']}, 1-ROCA% tolerance {report['tolerance']:g}",
        f"corpus {d['corpus']['source']}: {d['corpus']['n']} messages, {d['corpus']['training']} trained on,"
        f" {d['corpus']['validation']} in the validation slice ({d['corpus']['validation_slice']['rule']})",
        f"feedback {fb['learnlog']}: {fb['labelled']['n']} labelled messages ({fb['labelled']['spam']} spam,"
        f" {fb['labelled']['ham']} ham); {fb['folded']['n']} folded in (learn log up to id"
        f" {cand['learnlog_upto']}), {fb['held_out']['n']} newest held out",
        "",
        format_table(metrics_rows(report["evaluation"]), _COLUMNS, ".4f"),
        "",
        *dec["reasons"][:1], *(f"  {r}" for r in dec["reasons"][1:]),
    ]
    lo = fb["left_out_distrusted"]
    if lo["n"]:
        lines.append(f"left out: {lo['n']} messages of reporters the others disagree with: "
                     + ", ".join(f"{w} (weight {x:.2f})" for w, x in lo["reporters"].items()))
    lines += [f"warning: {w}" for w in report["warnings"]]
    promo = report.get("promotion")
    if promo:
        if promo["pruned"]:
            lines.append(f"removed old versions: {', '.join(promo['pruned'])}")
        for r in promo["reload"]:
            lines.append(f"reload {r['address']}: " + (f"FAILED: {r['error']}" if "error" in r
                                                       else f"serving {r['model_version']}"))
        if not promo["reload"]:
            lines.append("no scorer reloaded (none configured); it loads the new bundle at its next start")
    return "\n".join(lines) + "\n"


def write_report(report: dict, sets: dict, out: pathlib.Path) -> str:
    """report.json, summary.txt and roc.png (each model on each set with both classes)."""
    from .plots import roc_plot

    curves = {}
    for name, s in sets.items():
        if s["n_ham"] and s["n_spam"]:
            for model in ("current", "candidate"):
                curves[f"{model} {report[model]['version']}, {name}"] = (s["y"], s["scores"][model])
    if curves:
        roc_plot(curves, out / "roc.png", title=f"retrain {report['run']}: current vs candidate")
        report["roc"] = str(out / "roc.png")
    else:
        report["roc"] = None
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    text = summary_text(report)
    (out / "summary.txt").write_text(text)
    return text
