"""What a reputation check returns, and how a check that cannot run says so.

A ``Signal`` is one check's finding about one message: the contract classification it
serves (``pyzor``, ``urlbl``, ...), a ``strength`` the combined score weighs (1.0 for a
plain hit; a count or a similarity where the check has one), whether the finding is
strong enough to decide alone (``decides``: a Safe Browsing hit, a signature match, a
digest reported often enough), readable evidence, and the values for the reply text's
placeholders (``{lists}``, ``{list}``, ``{signature}``). A finding for ham has a
negative strength (the ``reported`` check's release of the same body, classification
``not_spam``); one that decides overrules the statistical classifiers
(classifier/scorer.py, rule 5).

A check that cannot run (a list that fails to load, a digest store that is down) does
not raise into the scorer: it is ``Disabled`` with a stated reason, which is logged
once and reported by the scorer's Explain, and the message is scored without it
(Rspamd's habit).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("mailsift.reputation")


@dataclass(frozen=True, slots=True)
class Signal:
    classification: str             # an id of the contract table
    strength: float                 # the feature value the combiner weighs (> 0 spam, < 0 ham)
    decides: bool                   # strong enough to quarantine on its own
    evidence: tuple[str, ...]       # short and readable: "url host evil.test on dbl.test"
    reply_args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finding:
    """A signal with the check that found it (``neardup`` serves ``content_spam``, so the
    classification alone does not say which check spoke)."""
    check: str                      # one of classifier.facts.REPUTATION_FEATURES
    signal: Signal


class Disabled(Exception):
    """Raised at load time by a check that cannot run; the reason is kept and logged."""


def disabled(check: str, reason: str) -> None:
    log.warning("check disabled", extra={"fields": {"event": "check_disabled", "check": check,
                                                    "reason": reason}})
