"""message_partial: the message, or one of its parts, is message/partial (RFC 2046 5.2.2).

A message split into message/partial fragments can only be scanned once reassembled,
which happens after delivery, in the recipient's client: content checks (and virus
scanners) never see the whole. The contract rejects it outright (nothing quarantined).

Every entity the bounded MIME walk reaches is looked at: the top-level Content-Type,
every body part, and messages attached as message/rfc822. A message/partial beyond the
walk's part cap is not seen; such a message is already ``too_many_mime_parts``.
"""
from __future__ import annotations

from smtpgate.message import DataContext
from smtpgate.result import CheckResult


def message_partial(ctx: DataContext) -> CheckResult | None:
    """A result when any entity of the message has Content-Type message/partial."""
    where = ctx.mime.partial
    if where is None:
        return None
    return CheckResult(
        classification="message_partial", check="message_partial",
        evidence=f"message/partial at {where}" if where == "top level"
        else f"message/partial in {where}",
        details={"where": where})
