"""Conversions between the scorer's domain objects and the gRPC messages, in one place.

The server turns a ``Verdict`` into a ``ScoreReply``; the client (the gate, ``mailsift
score --remote``) turns it back, so that both sides print, log and decide with the
same code. Classification ids cross the wire as the proto enum of the contract table.
"""
from __future__ import annotations

from .classifications import BY_NUMBER, CLASSIFICATIONS
from .estimators.base import Clue
from .facts import GateFacts
from .proto import scorer_pb2 as pb
from .scorer import ClassifierResult, ReputationResult, Verdict

_VERDICTS = {"accept": pb.VERDICT_ACCEPT, "quarantine": pb.VERDICT_QUARANTINE}
_VERDICT_NAMES = {v: k for k, v in _VERDICTS.items()}
LABELS = {pb.LABEL_SPAM: "spam", pb.LABEL_HAM: "ham"}
SOURCES = {pb.LEARN_SOURCE_RELEASE: "release", pb.LEARN_SOURCE_REPORT: "report",
           pb.LEARN_SOURCE_TRAINING: "training", pb.LEARN_SOURCE_TRAP: "trap"}
LABEL_NUMBERS = {v: k for k, v in LABELS.items()}
SOURCE_NUMBERS = {v: k for k, v in SOURCES.items()}
OUTCOMES = {"learned": pb.LEARN_OUTCOME_LEARNED, "noop": pb.LEARN_OUTCOME_NOOP,
            "relearned": pb.LEARN_OUTCOME_RELEARNED}


def enum_of(classification_id: str) -> int:
    return CLASSIFICATIONS[classification_id].number


def id_of(number: int) -> str:
    try:
        return BY_NUMBER[number].id
    except KeyError:
        raise ValueError(f"unknown classification number {number}") from None


def facts_from_proto(facts: pb.GateFacts, authenticated: bool = False) -> GateFacts:
    return GateFacts(spf=facts.spf or "none", dkim=facts.dkim or "none", dmarc=facts.dmarc or "none",
                     dnsbl=list(facts.dnsbl), dnswl=list(facts.dnswl), helo_valid=not facts.helo_invalid,
                     ptr=facts.ptr or "unknown", authenticated=authenticated)


def facts_to_proto(facts: GateFacts | None) -> pb.GateFacts:
    if facts is None:
        return pb.GateFacts()
    return pb.GateFacts(spf=facts.spf, dkim=facts.dkim, dmarc=facts.dmarc, dnsbl=facts.dnsbl,
                        dnswl=facts.dnswl, helo_invalid=not facts.helo_valid, ptr=facts.ptr)


def _clues(clues) -> list[pb.Clue]:
    return [pb.Clue(feature=c.feature, weight=c.weight) for c in clues]


def verdict_to_proto(v: Verdict, request_id: str = "") -> pb.ScoreReply:
    return pb.ScoreReply(
        score=v.score, verdict=_VERDICTS[v.verdict], classification=enum_of(v.classification),
        reply=v.reply(), threshold=v.threshold,
        classifiers=[pb.ClassifierScore(
            classification=enum_of(c.id), p_spam=c.p_spam, logodds=c.logodds, weight=c.weight,
            contribution=c.contribution, evidence=_clues(c.evidence), abstained=c.abstained,
            reason=c.reason, decided_alone=c.decides_alone) for c in v.classifiers],
        facts=_clues(v.facts), model_version=v.model_version, elapsed_ms=v.elapsed_ms,
        digest=v.digest, gave_up=v.gaveup, request_id=request_id,
        reputation=[pb.ReputationFinding(
            check=r.check, classification=enum_of(r.classification), strength=r.strength,
            weight=r.weight, contribution=r.contribution, decided_alone=r.decides_alone,
            evidence=r.evidence) for r in v.reputation],
        reply_args=v.reply_args)


def verdict_from_proto(r: pb.ScoreReply) -> Verdict:
    return Verdict(
        score=r.score, verdict=_VERDICT_NAMES[r.verdict], classification=id_of(r.classification),
        threshold=r.threshold,
        classifiers=[ClassifierResult(
            id=id_of(c.classification), p_spam=c.p_spam, logodds=c.logodds, weight=c.weight,
            contribution=c.contribution, evidence=[Clue(e.feature, e.weight) for e in c.evidence],
            abstained=c.abstained, reason=c.reason, decides_alone=c.decided_alone) for c in r.classifiers],
        facts=[Clue(e.feature, e.weight) for e in r.facts], model_version=r.model_version,
        elapsed_ms=r.elapsed_ms, digest=r.digest, gaveup=list(r.gave_up),
        reputation=[ReputationResult(
            check=x.check, classification=id_of(x.classification), strength=x.strength, weight=x.weight,
            contribution=x.contribution, decides_alone=x.decided_alone, evidence=list(x.evidence))
            for x in r.reputation],
        reply_args=dict(r.reply_args))
