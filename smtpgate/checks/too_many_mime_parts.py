"""too_many_mime_parts: the message has more MIME parts than the maximum.

Parts are counted as ``email.message.Message.walk()`` counts them: the message itself,
every multipart container and body part, and for an attached message both the
message/rfc822 part and the message inside it. The contract's default maximum is 100.

The walk in ``DataContext.mime`` stops counting past ``ctx.mime_part_cap`` (1000 by
default) and does not descend deeper than ``MIME_DEPTH_LIMIT`` levels, so that a MIME
bomb costs no more than a small message. A walk that stopped is judged as too many
parts whatever ``max_parts`` is: past the cap the count is no longer known, and such
nesting or such a number of parts is itself the bomb. Keep ``max_parts`` below the cap
(the gate's configuration should refuse a larger one).
"""
from __future__ import annotations

from smtpgate.message import MIME_DEPTH_LIMIT, DataContext
from smtpgate.result import CheckResult

# The contract's default.
DEFAULT_MAX_PARTS = 100


def too_many_mime_parts(ctx: DataContext, max_parts: int = DEFAULT_MAX_PARTS) -> CheckResult | None:
    """A result when the message has more than ``max_parts`` MIME parts."""
    mime = ctx.mime
    if mime.stopped == "depth":
        evidence = f"MIME parts nested more than {MIME_DEPTH_LIMIT} deep"
    elif mime.stopped == "parts":
        evidence = f"more than {ctx.mime_part_cap} MIME parts (maximum {max_parts})"
    elif mime.parts > max_parts:
        evidence = f"{mime.parts} MIME parts (maximum {max_parts})"
    else:
        return None
    return CheckResult(
        classification="too_many_mime_parts", check="too_many_mime_parts",
        evidence=evidence,
        details={"parts": mime.parts, "complete": mime.complete, "stopped": mime.stopped,
                 "max_depth": mime.max_depth, "max_parts": max_parts})
