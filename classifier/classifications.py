"""The classification table, read from the proto enum (protos/mailsift/v1/classification.proto).

This module is the only view of the table in Python; it holds no second copy of it.
Every row comes from the options on the ``Classification`` enum values, so the scorer,
the gate, the logs and the tests all see the same ids, replies and actions.

    >>> from classifier.classifications import get
    >>> get("combined_score").reply()
    '550 5.7.1 High probability of spam'
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from .proto import classification_pb2 as _pb

_PHASES = {v.number: v.name.removeprefix("PHASE_").lower() for v in _pb.Phase.DESCRIPTOR.values}
_ACTIONS = {v.number: v.name.removeprefix("ACTION_").lower() for v in _pb.Action.DESCRIPTOR.values}
_RELEASES = {_pb.RELEASE_NOT_APPLICABLE: None, _pb.RELEASE_DELIVER: "deliver", _pb.RELEASE_LEARN: "learn"}
_WHITELIST = {_pb.WHITELIST_NOT_APPLICABLE: None, _pb.WHITELIST_BYPASSES: True,
              _pb.WHITELIST_DOES_NOT_BYPASS: False}


@dataclass(frozen=True)
class Classification:
    """One row of the contract table."""

    id: str
    name: str
    phase: str          # connect, helo, auth, mail, rcpt, data, delivery, any
    code: int           # basic SMTP reply code
    enhanced: str       # RFC 3463 enhanced status code
    text: str           # reply text; may hold {lists}/{list}/{signature} placeholders
    action: str         # tempfail, reject, quarantine, accept, discard, bounce
    release: str | None  # deliver, learn, or None where nothing is quarantined
    whitelist: bool | None  # True: a sender whitelist entry bypasses it
    number: int         # the proto enum number (wire value)

    def reply(self, **evidence: str) -> str:
        """The full SMTP reply line, placeholders filled from ``evidence``.

        A placeholder with no evidence is filled with the classification name rather
        than left as ``{lists}`` in front of a sending server.
        """
        text = self.text
        if "{" in text:
            fill = {k: evidence.get(k) or self.name for k in ("lists", "list", "signature")}
            text = text.format(**fill)
        return f"{self.code} {self.enhanced} {text}"

    @property
    def learns_on_release(self) -> bool:
        return self.release == "learn"


def _load() -> dict[str, Classification]:
    table = {}
    for value in _pb.Classification.DESCRIPTOR.values:
        if value.number == 0:
            continue
        info = value.GetOptions().Extensions[_pb.info]
        c = Classification(
            id=info.id, name=info.name, phase=_PHASES[info.phase], code=info.code,
            enhanced=info.enhanced, text=info.text, action=_ACTIONS[info.action],
            release=_RELEASES[info.release], whitelist=_WHITELIST[info.whitelist],
            number=value.number)
        if c.id in table:
            raise RuntimeError(f"classification id {c.id!r} appears twice in the proto")
        table[c.id] = c
    return table


CLASSIFICATIONS: MappingProxyType[str, Classification] = MappingProxyType(_load())
BY_NUMBER: MappingProxyType[int, Classification] = MappingProxyType(
    {c.number: c for c in CLASSIFICATIONS.values()})


def get(classification_id: str) -> Classification:
    """The row for an id; KeyError names the unknown id."""
    try:
        return CLASSIFICATIONS[classification_id]
    except KeyError:
        raise KeyError(f"unknown classification id {classification_id!r}") from None
