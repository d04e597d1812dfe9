"""date_skew: the Date header is far in the past or the future.

The contract's default is 7 days either way, measured against the time the gate
received the message (``ctx.now``), not the clock, so tests and re-scans agree.

Only what can be judged is judged:

* no Date: not a skew (``bad_header_count`` explains why a missing Date is tolerated).
* a Date that cannot be parsed: not judged here. Which dates are "unparseable" depends on
  the parser, and an unreadable Date says nothing about when the mail was sent; treating
  it as skewed would make this check a second, stricter syntax check.
* several Date fields: the first is judged (the repetition is ``bad_header_count``'s).

Parsing is lenient: RFC 5322 3.3 dates including the obsolete forms (two-digit years,
named zones) through ``email.utils``, then ISO 8601, which some bulk senders write. A
date without a zone (or with "-0000") is taken as UTC.
"""
from __future__ import annotations

import datetime as dt
import email.utils

from smtpgate.message import DataContext, shown
from smtpgate.result import CheckResult

# The contract's default.
DEFAULT_MAX_SKEW_DAYS = 7

# A Date value longer than this is no date; it is not handed to the parsers.
_MAX_DATE_LENGTH = 200


def parse_date(value: str) -> dt.datetime | None:
    """``value`` as an aware datetime, or None when it is not a date."""
    value = value.strip()
    if not value or len(value) > _MAX_DATE_LENGTH:
        return None
    when = None
    try:
        when = email.utils.parsedate_to_datetime(value)
    # email.utils has raised more than ValueError on odd input over the years
    # (IndexError, OverflowError for year 0 or 10000): none of it may escape a check.
    except (ValueError, TypeError, IndexError, OverflowError):
        try:
            when = dt.datetime.fromisoformat(value)
        except (ValueError, TypeError, OverflowError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when


def date_skew(ctx: DataContext, max_skew_days: float = DEFAULT_MAX_SKEW_DAYS) -> CheckResult | None:
    """A result when the first Date is more than ``max_skew_days`` from ``ctx.now``."""
    values = ctx.header("date")
    if not values:
        return None
    text = values[0].decode("utf-8", "replace")
    when = parse_date(text)
    if when is None:
        return None
    try:
        skew_days = (when.timestamp() - ctx.now) / 86400.0
    except (OverflowError, ValueError, OSError):  # a date the platform cannot represent
        return None
    if abs(skew_days) <= max_skew_days:
        return None
    direction = "future" if skew_days > 0 else "past"
    return CheckResult(
        classification="date_skew", check="date_skew",
        evidence=(f"Date '{shown(text, 60)}' is {abs(skew_days):.1f} days in the {direction}"
                  f" (maximum {max_skew_days})"),
        details={"date": when.isoformat(), "skew_days": round(skew_days, 3),
                 "max_skew_days": max_skew_days})
