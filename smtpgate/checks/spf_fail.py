"""SPF (RFC 7208) of the MAIL FROM identity, through the gate's configured resolver.

``evaluate`` gives the full outcome (it feeds DMARC, Authentication-Results and the
scorer); ``spf_fail`` turns only a "fail" into a verdict. softfail, neutral and the
errors are facts for the combined score, not reasons to reject.

How pyspf is made to use our resolver: pyspf does every DNS lookup through the method
``spf.query.dns(name, qtype)``, which calls the module-level function ``spf.DNSLookup``
(dnspython with the system's /etc/resolv.conf). Replacing that module global would
change it for every thread at once, so instead ``_Query`` subclasses ``spf.query`` and
overrides ``dns``: each evaluation has its own query object bound to our resolver, and
nothing global changes. Our resolver already follows CNAME chains, so the override only
keeps pyspf's per-query cache and its void-lookup limit (RFC 7208 section 4.6.4).

pyspf is synchronous, so it runs in a worker thread (``run_in_executor``) and each of
its lookups is sent back to the event loop through ``Resolver.blocking()``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import time
from dataclasses import dataclass

import spf

from smtpgate.dns import BaseResolver, BlockingResolver, normalise
from smtpgate.result import CheckResult

log = logging.getLogger(__name__)

# RFC 7208 section 4.6.4: a verifier MAY bound the whole evaluation, at no less than
# 20 seconds.
MAX_SPF_TIME = 20.0

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """The SPF result and what Authentication-Results (RFC 8601 section 2.7.2) shows."""

    result: str                # one of RESULTS
    domain: str                # the domain checked: MAIL FROM's, or HELO's for <>
    identity: str              # "mailfrom" or "helo" (RFC 8601: smtp.mailfrom / smtp.helo)
    sender: str                # the address checked ("postmaster@<helo>" for <>)
    client_ip: str
    helo: str
    explanation: str = ""      # pyspf's, or the domain's own exp= text on fail
    comment: str = ""          # RFC 8601 comment: "domain of x designates y as permitted sender"
    mechanism: str | None = None  # the mechanism that matched, e.g. "-all"

    @property
    def authenticated_domain(self) -> str | None:
        """The domain SPF authenticated, for DMARC alignment (None unless "pass")."""
        return self.domain if self.result == "pass" else None


def envelope_address(mail_from: str) -> str:
    """The address inside MAIL FROM, without angle brackets; "" for the null sender."""
    address = mail_from.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address.strip()


def checkable_domain(domain: str) -> bool:
    """RFC 7208 section 4.3: a multi-label name of valid labels, or the result is "none"."""
    labels = domain.rstrip(".").split(".")
    return len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


class _Query(spf.query):
    """One pyspf evaluation whose DNS goes through our resolver (see the module doc)."""

    def __init__(self, i, s, h, *, blocking: BlockingResolver, deadline: float):
        super().__init__(i=i, s=s, h=h, receiver="unknown")
        self._blocking = blocking
        self._deadline = deadline

    def dns(self, name, qtype, cnames=None, ignore_void=False):
        if not name:
            raise spf.PermError("empty DNS name")
        name = normalise(str(name))
        if not all(0 < len(label) < 64 for label in name.split(".")):
            return []                      # pyspf's own rule: invalid names have no data
        cached = self.cache.get((name, qtype))
        if cached:
            return cached
        if time.monotonic() > self._deadline:
            raise spf.TempError(f"SPF evaluation exceeded {MAX_SPF_TIME:g}s before {name} {qtype}")
        answer = self._blocking.query(name, qtype)
        if answer.temporary:
            raise spf.TempError(f"DNS {answer.status} for {name} {qtype}")
        result = [_pyspf_value(qtype, record) for record in answer.records]
        if result:
            self.cache[(name, qtype)] = result
        elif not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


def _pyspf_value(qtype: str, record: str):
    """A record in the shape pyspf's own dnspython driver returns (``DNSLookup_dnspython``)."""
    if qtype in ("TXT", "SPF"):
        return [record.encode("utf-8")]    # a list of strings, which pyspf joins
    if qtype == "MX":
        pref, _, host = record.partition(" ")
        return (int(pref), host.rstrip("."))
    if qtype == "PTR":
        return record.rstrip(".")
    return record


def _clean(text: str, limit: int = 200) -> str:
    """Remote text (an exp= explanation) made safe for a log line: no controls, bounded."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def evaluate(resolver: BaseResolver, ip: str, helo: str, mail_from: str, *,
                   timeout: float = MAX_SPF_TIME,
                   executor: concurrent.futures.Executor | None = None) -> SpfOutcome:
    """SPF of ``mail_from`` (or of HELO for the null sender, RFC 7208 section 2.4).

    Never raises for DNS trouble (that is "temperror") nor for a malformed address,
    domain or record ("none" or "permerror"). ``executor`` runs pyspf (default: the
    loop's default executor); each evaluation holds one of its threads while it waits
    for DNS, so a busy gate should give SPF a pool sized to its connection limit.
    """
    sender = envelope_address(mail_from)
    helo = (helo or "").strip()
    if sender:
        identity = "mailfrom"
        domain = sender.rpartition("@")[2] if "@" in sender else sender
    else:
        identity, domain, sender = "helo", helo, f"postmaster@{helo}"
    domain = domain.rstrip(".").lower()
    base = dict(domain=domain, identity=identity, sender=sender, client_ip=ip, helo=helo)
    if not checkable_domain(domain):
        return SpfOutcome("none", explanation="not a multi-label domain name (RFC 7208 4.3)",
                          comment=f"{domain or 'empty domain'} is not checkable", **base)
    loop = asyncio.get_running_loop()
    try:
        query = _Query(ip, sender, helo, blocking=resolver.blocking(loop),
                       deadline=time.monotonic() + timeout)
    except spf.PermError as e:             # the client address does not parse
        return SpfOutcome("permerror", explanation=str(e), comment=str(e), **base)
    try:
        result, _code, explanation = await asyncio.wait_for(
            loop.run_in_executor(executor, query.check), timeout + BlockingResolver.GRACE)
    except TimeoutError:
        # The thread stops at its next lookup (the deadline above); its result is moot.
        return SpfOutcome("temperror", explanation=f"SPF evaluation exceeded {timeout:g}s",
                          comment="temporary error in processing", **base)
    except AssertionError:
        raise                              # a FakeResolver's unexpected lookup: a test bug
    except Exception as e:
        # pyspf choking on a hostile record must not tempfail the mail for ever: the
        # record cannot be interpreted, which is what permerror means (RFC 7208 2.6.7).
        log.exception("pyspf failed on %s for %s", domain, ip)
        return SpfOutcome("permerror", explanation=_clean(f"SPF evaluation error: {e}"),
                          comment="permanent error in processing", **base)
    try:
        comment = query.get_header_comment(result)
    except (ValueError, AttributeError):
        comment = ""
    return SpfOutcome(result, explanation=_clean(explanation or ""), comment=_clean(comment),
                      mechanism=getattr(query, "mechanism", None), **base)


def spf_fail(outcome: SpfOutcome) -> CheckResult | None:
    """A "fail" means the domain owner says this host may not send its mail: reject.

    Only "fail": softfail is by definition a weak statement (RFC 7208 section 8.5) and is
    left to the combined score.
    """
    if outcome.result != "fail":
        return None
    why = outcome.explanation or "not authorized"
    return CheckResult(
        "spf_fail", check="spf_fail",
        evidence=f"SPF fail for {outcome.domain} from {outcome.client_ip}: {why}",
        details={"identity": outcome.identity, "domain": outcome.domain,
                 "client_ip": outcome.client_ip, "mechanism": outcome.mechanism})
