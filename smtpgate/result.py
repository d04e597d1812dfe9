"""What a check returns: a classification from the contract table with its evidence.

A check never returns a bare bool. It returns ``None`` (nothing to say) or a
``CheckResult`` naming the contract row (``classification``), the check that decided,
a short readable evidence string (the list name, the offending header, the digest), a
score where the check has one, and ``details`` for the log. The SMTP reply comes from the
contract table (``classifier.classifications``), never from the check.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from classifier.classifications import Classification, get


@dataclass(frozen=True, slots=True)
class CheckResult:
    classification: str            # an id of the contract table
    check: str                     # the check (module) that decided
    evidence: str                  # short, readable: "listed on zen.test, bl.test"
    score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Values for the reply text's placeholders ({lists}, {list}, {signature}).
    reply_args: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        get(self.classification)   # an unknown id is a bug: fail where it is made

    @property
    def row(self) -> Classification:
        return get(self.classification)

    def reply(self) -> str:
        return self.row.reply(**self.reply_args)

    def to_log(self) -> dict[str, Any]:
        out: dict[str, Any] = {"classification": self.classification, "check": self.check,
                               "evidence": self.evidence}
        if self.score is not None:
            out["score"] = self.score
        if self.details:
            out["details"] = self.details
        return out
