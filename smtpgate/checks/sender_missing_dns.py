"""The MAIL FROM domain must be able to receive mail: an MX, or else an A or AAAA.

Bounces and replies go to the envelope sender; a domain that cannot receive them is
either forged or broken (RFC 5321 section 5.1: with no MX, the A/AAAA record is the
implicit MX). A null MX (RFC 7505: a single MX whose exchange is ".") is the domain
saying it receives no mail, so it counts as missing too, whatever A record it has.

DNS trouble is never evidence: a timeout or SERVFAIL tempfails the transaction
("internal_error") so the sender retries, instead of a 5xx for a sender that may be fine.
Address syntax (no domain, address literals) is not judged here; like Postfix's
reject_unknown_sender_domain this check has nothing to say about such senders.
"""
from __future__ import annotations

import asyncio

from smtpgate.checks.spf_fail import envelope_address
from smtpgate.dns import BaseResolver
from smtpgate.result import CheckResult


def _missing(domain: str, what: str) -> CheckResult:
    return CheckResult("sender_missing_dns", check="sender_missing_dns",
                       evidence=f"sender domain {domain}: {what}", details={"domain": domain})


def _trouble(domain: str, status: str) -> CheckResult:
    return CheckResult("internal_error", check="sender_missing_dns",
                       evidence=f"DNS {status} looking up MX/A of {domain}",
                       details={"domain": domain, "status": status})


def _exchanges(records: tuple[str, ...]) -> list[str]:
    return [record.partition(" ")[2].strip() for record in records]


async def sender_missing_dns(resolver: BaseResolver, mail_from: str) -> CheckResult | None:
    """None when the sender's domain can receive mail (or the sender is <>)."""
    address = envelope_address(mail_from)
    if not address or "@" not in address:
        return None                         # null sender: nothing to bounce to
    domain = address.rpartition("@")[2].rstrip(".").lower()
    if not domain or domain.startswith("["):
        return None
    mx = await resolver.mx(domain)
    if mx.temporary:
        return _trouble(domain, mx.status)
    if mx.status == "nxdomain":
        return _missing(domain, "domain does not exist (NXDOMAIN)")
    if mx.ok:
        real = [host for host in _exchanges(mx.records) if host not in (".", "")]
        if real:
            return None
        return _missing(domain, "null MX (RFC 7505): the domain accepts no mail")
    # No MX at all: the implicit MX is the domain's own address (RFC 5321 section 5.1).
    a, aaaa = await asyncio.gather(resolver.a(domain), resolver.aaaa(domain))
    if a.ok or aaaa.ok:
        return None
    if a.temporary or aaaa.temporary:
        status = a.status if a.temporary else aaaa.status
        return _trouble(domain, status)
    return _missing(domain, "no MX, A or AAAA record")
