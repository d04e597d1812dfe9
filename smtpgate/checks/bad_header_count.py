"""bad_header_count: a header field occurs more often than RFC 5322 allows.

RFC 5322 3.6 (the table in 3.6): these fields may occur at most once, and the contract
names them: Date, From, Sender, Reply-To, To, Cc, Bcc, Message-ID, In-Reply-To,
References, Subject. Names are compared case-insensitively ("Subject" and "SUBJECT" are
the same field). Resent-* and trace fields may repeat and are not counted.

The same table requires exactly one From and one Date (minimum 1). Of those:

* a missing From is judged here. Every mail client writes one, and a message without
  an author is what large receivers (Gmail among them) refuse as not RFC 5322
  compliant.
* a missing Date is not. Submission servers add it for clients that leave it out (RFC
  6409 section 8), and much legitimate internal and automated mail reaches the gate before
  any server has; the gate adds nothing, so it cannot count on one being there.

A header block with more fields than the gate keeps (``ctx.headers_truncated``, 1000 by
default) is judged too: that many fields is no legitimate message, and the fields past
the cap are not counted.
"""
from __future__ import annotations

from smtpgate.message import DataContext
from smtpgate.result import CheckResult

# RFC 5322 3.6, in the order of the contract's note; the spelling is used in evidence.
AT_MOST_ONCE = ("Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID",
                "In-Reply-To", "References", "Subject")
REQUIRED = ("From",)


def bad_header_count(ctx: DataContext) -> CheckResult | None:
    """A result when a field of ``AT_MOST_ONCE`` repeats, From is missing, or the header
    block has more fields than the gate keeps."""
    counts = {name: ctx.header_count(name) for name in AT_MOST_ONCE}
    bad = {name: n for name, n in counts.items()
           if n > 1 or (n == 0 and name in REQUIRED)}
    if not bad and not ctx.headers_truncated:
        return None
    clues = [f"{name} appears {n} time{'' if n == 1 else 's'}" for name, n in bad.items()]
    if ctx.headers_truncated:
        clues.append(f"more than {len(ctx.headers)} header fields")
    return CheckResult(
        classification="bad_header_count", check="bad_header_count",
        evidence=", ".join(clues),
        details={"counts": bad, "fields_truncated": ctx.headers_truncated})
