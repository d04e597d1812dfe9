"""Scoring a message with a model bundle: the verdict, its classification and its evidence.

The verdict rule, with the data it uses coming from the bundle:

1. Every classifier scores the message, and the combiner turns their log-odds and the
   gate facts into P(spam).
2. A classifier whose own calibrated probability reaches its ``solo_threshold``
   decides alone. Training sets those thresholds where no out-of-fold ham reached
   them.
3. A reputation check (``classifier/reputation``: Pyzor, near-duplicates, UCEPP,
   URLBL, phishing, Safe Browsing, patterns, signatures, this installation's reports)
   adds its strength as a feature of the combined score, and decides alone when its
   finding is conclusive (a Safe Browsing hit, a digest reported often enough, several
   URL blocklists).
4. The message is quarantined when P(spam) >= the recipient's threshold (0.9 by
   default) or a classifier or check decides alone. The responsible classification is
   the most specific one that decided alone, in the bundle's ``specificity`` order,
   else ``combined_score``. An accepted message is ``not_spam``.
5. A finding of negative strength that decides (the ``reported`` check: an admin
   released this very body) overrules the statistical part of 4: the threshold and
   the classifiers' solo decisions, which are what the release corrected. Another
   check that decides spam still quarantines.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field

from .bundle import DEFAULT_BUNDLE, ModelBundle, load_bundle
from .classifications import get as get_classification
from .estimators.base import Clue
from .facts import GateFacts
from .features import MessageFeatures, as_features
from .reputation.base import Finding

ACCEPT, QUARANTINE = "accept", "quarantine"


@dataclass(slots=True)
class ClassifierResult:
    id: str
    p_spam: float            # this classifier's calibrated probability of spam
    logodds: float           # its raw, unsaturated score
    weight: float            # the combiner's weight on it
    contribution: float      # its pull on the combined log-odds
    evidence: list[Clue]
    abstained: bool = False
    reason: str = ""
    solo_threshold: float | None = None
    decides_alone: bool = False


@dataclass(slots=True)
class ReputationResult:
    check: str               # pyzor, neardup, ucepp, urlbl, phishing, safebrowsing, ...
    classification: str      # the contract row it serves
    strength: float
    weight: float            # the combiner's weight on it
    contribution: float      # its pull on the combined log-odds
    decides_alone: bool
    evidence: list[str]


@dataclass(slots=True)
class Verdict:
    score: float
    verdict: str             # accept | quarantine
    classification: str      # an id of the contract table
    threshold: float
    classifiers: list[ClassifierResult]
    facts: list[Clue] = field(default_factory=list)  # gate facts that moved the score
    model_version: str = ""
    elapsed_ms: float = 0.0
    digest: str = ""
    gaveup: list[str] = field(default_factory=list)
    reputation: list[ReputationResult] = field(default_factory=list)
    reply_args: dict[str, str] = field(default_factory=dict)   # {lists}, {list}, {signature}

    def reply(self) -> str:
        """The SMTP reply the contract prescribes for this verdict."""
        return get_classification(self.classification).reply(**self.reply_args)

    def responsible(self) -> ClassifierResult | None:
        return next((c for c in self.classifiers if c.id == self.classification), None)

    def strongest(self) -> ClassifierResult | None:
        """The classifier that explains the verdict best: the responsible one, else the
        one that pulled hardest in the verdict's direction."""
        r = self.responsible()
        if r is not None:
            return r
        live = [c for c in self.classifiers if not c.abstained]
        sign = 1.0 if self.verdict == QUARANTINE else -1.0
        return max(live, key=lambda c: sign * c.contribution, default=None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reply"] = self.reply()
        return d

    def summary(self, evidence: int = 3) -> str:
        """One readable line: score, verdict, classification, each classifier, top clues."""
        parts = [f"score={self.score:.4f}", f"verdict={self.verdict}",
                 f"classification={self.classification}"]
        for c in self.classifiers:
            if c.abstained:
                parts.append(f"{c.id}=abstained")
                continue
            clues = ", ".join(str(e) for e in c.evidence[:evidence])
            parts.append(f"{c.id}={c.p_spam:.4f}" + (f" [{clues}]" if clues else ""))
        for r in self.reputation:
            parts.append(f"{r.check}={r.strength:g}{'!' if r.decides_alone else ''}"
                         f" [{'; '.join(r.evidence[:evidence])}]")
        if self.facts:
            parts.append("facts=" + ",".join(str(f) for f in self.facts))
        return "  ".join(parts)


class Scorer:
    """A loaded model bundle that scores messages. Thread-compatible, not thread-safe
    while learning: the scoring service serialises learns."""

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle

    @classmethod
    def load(cls, path=DEFAULT_BUNDLE, expected_manifest_sha256: str | None = None) -> "Scorer":
        return cls(load_bundle(path, expected_manifest_sha256))

    @property
    def version(self) -> str:
        return self.bundle.version

    def score(self, message, facts: GateFacts | None = None, threshold: float | None = None,
              evidence: int = 5, findings: list[Finding] | None = None) -> Verdict:
        t0 = time.perf_counter()
        f: MessageFeatures = as_features(message)
        b = self.bundle
        thr = b.threshold if threshold is None else threshold
        findings = findings or []
        if findings:
            strengths: dict[str, float] = {}
            for x in findings:   # the strongest finding per check, whichever way it points
                s = x.signal.strength
                if abs(s) > abs(strengths.get(x.check, 0.0)):
                    strengths[x.check] = s
            facts = dataclasses.replace(facts or GateFacts(), reputation=strengths)
        combined, per, contrib = b.model.score_detailed(f, facts=facts, evidence=evidence)
        coef = contrib.coef  # the weights the contributions were computed with
        results = []
        for name, s in per.items():
            solo = b.solo_thresholds.get(name)
            results.append(ClassifierResult(
                id=name, p_spam=s.p_spam, logodds=s.logodds, weight=float(coef[name]),
                contribution=float(contrib[name]), evidence=s.evidence, abstained=s.abstained,
                reason=s.reason, solo_threshold=solo,
                decides_alone=bool(solo is not None and not s.abstained and s.p_spam >= solo)))
        ham_decides = any(x.signal.decides and x.signal.strength < 0 for x in findings)
        alone = set() if ham_decides else {r.id for r in results if r.decides_alone}
        alone |= {x.signal.classification for x in findings if x.signal.decides and x.signal.strength > 0}
        responsible = next((n for n in b.specificity if n in alone), None)
        if responsible is None and alone:
            responsible = sorted(alone)[0]
        quarantine = (combined.p_spam >= thr and not ham_decides) or responsible is not None
        if quarantine:
            classification = responsible or "combined_score"
        else:
            classification = "not_spam"
        rep = [ReputationResult(
            check=x.check, classification=x.signal.classification, strength=x.signal.strength,
            weight=float(coef.get(x.check, 0.0)), contribution=float(contrib.get(x.check, 0.0)),
            decides_alone=x.signal.decides, evidence=list(x.signal.evidence)) for x in findings]
        reply_args = next((dict(x.signal.reply_args) for x in findings
                           if x.signal.decides and x.signal.classification == classification), {})
        fact_clues = [Clue(n, float(c)) for n, c in contrib.items() if c and n not in per]
        return Verdict(
            score=combined.p_spam, verdict=QUARANTINE if quarantine else ACCEPT,
            classification=classification, threshold=thr, classifiers=results, facts=fact_clues,
            model_version=b.version, elapsed_ms=(time.perf_counter() - t0) * 1000.0,
            digest=f.digest, gaveup=list(f.gaveup), reputation=rep, reply_args=reply_args)

    def learn(self, message, label, classifiers: list[str] | None = None) -> dict:
        """Learn one message; returns the receipt ``unlearn`` needs to undo it.

        ``classifiers`` limits the learn to those classifiers (feedback reaches
        ``cluster_tokens`` at once; the global model learns it at the next retrain).
        """
        model = self.bundle.model
        if classifiers is None:
            return model.learn_one(message, label)
        unknown = set(classifiers) - set(model.names_)
        if unknown:
            raise ValueError(f"no such classifiers in this bundle: {sorted(unknown)}")
        return model.learn_to(message, label, classifiers)

    def unlearn(self, message, receipt: dict) -> None:
        self.bundle.model.unlearn_one(message, receipt)
