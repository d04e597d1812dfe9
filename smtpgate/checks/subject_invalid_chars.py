"""subject_invalid_chars: the Subject holds bytes a header may not hold.

RFC 5322 2.2 and 3.2.5: a header field body is US-ASCII; non-ASCII text goes in
RFC 2047 encoded-words (``=?UTF-8?B?...?=``, which are ASCII and valid here). RFC 6532
allows raw UTF-8 in header fields, but only in a message sent with SMTPUTF8 (RFC 6531),
and only as well-formed UTF-8. So a Subject is invalid when it has:

* a byte >= 0x80 while the client did not negotiate SMTPUTF8 (``ctx.smtputf8``);
* with SMTPUTF8, bytes that are not valid UTF-8 (stray bytes, overlong forms, encoded
  surrogates: Python's strict decoder);
* a control character: NUL, any other C0 control but TAB, or DEL. The obsolete syntax
  of RFC 5322 4.1 tolerated them in unstructured text; no mail client writes them, and
  a bare CR or a NUL in a Subject is a classic way to split or hide what filters see.

Every Subject field is looked at (a repeated Subject is also ``bad_header_count``).
The evidence is the contract's, "Badly formed Subject header"; ``details`` say where:
``offset`` is the byte offset in the unfolded, whitespace-trimmed Subject value.
"""
from __future__ import annotations

import re

from smtpgate.message import DataContext
from smtpgate.result import CheckResult

EVIDENCE = "Badly formed Subject header"

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


def _first_problem(value: bytes, smtputf8: bool) -> tuple[int, str] | None:
    problems = []
    m = _CONTROL.search(value)
    if m is not None:
        problems.append((m.start(), "control character"))
    m = _EIGHT_BIT.search(value)
    if m is not None:
        if not smtputf8:
            problems.append((m.start(), "8-bit byte without SMTPUTF8"))
        else:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append((e.start, "invalid UTF-8"))
    return min(problems) if problems else None


def subject_invalid_chars(ctx: DataContext) -> CheckResult | None:
    """A result when a Subject field holds a byte it may not hold (see the module)."""
    for number, value in enumerate(ctx.header("subject"), 1):
        problem = _first_problem(value, ctx.smtputf8)
        if problem is None:
            continue
        offset, reason = problem
        return CheckResult(
            classification="subject_invalid_chars", check="subject_invalid_chars",
            evidence=EVIDENCE,
            details={"reason": reason, "offset": offset, "byte": f"0x{value[offset]:02x}",
                     "field": number, "smtputf8": ctx.smtputf8})
    return None
