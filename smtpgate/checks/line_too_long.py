"""line_too_long: a line of the message is longer than the maximum.

RFC 5322 2.1.1: "Each line of characters MUST be no more than 998 characters, ...
excluding the CRLF." The contract keeps 998 as the default (configurable per domain).
Lengths are octets, also for SMTPUTF8 messages (RFC 6532 3.4 keeps the limit in octets).

The gate must let such lines reach this check: aiosmtpd's own ``line_length_limit``
(1001 bytes with CRLF and the transparency dot) answers "500 Line too long" during DATA
and discards the message, which would bypass the contract's quarantine.
"""
from __future__ import annotations

from smtpgate.message import DataContext
from smtpgate.result import CheckResult

# RFC 5322 2.1.1; the contract's default.
DEFAULT_MAX_LENGTH = 998


def line_too_long(ctx: DataContext, max_length: int = DEFAULT_MAX_LENGTH) -> CheckResult | None:
    """A result when the longest line exceeds ``max_length`` bytes (CRLF excluded)."""
    if ctx.longest_line <= max_length:
        return None
    where = f"line {ctx.longest_line_number}" if ctx.longest_line_number else "a line"
    return CheckResult(
        classification="line_too_long", check="line_too_long",
        evidence=f"{where} is {ctx.longest_line} bytes (maximum {max_length})",
        details={"line": ctx.longest_line_number, "length": ctx.longest_line,
                 "max_length": max_length})
