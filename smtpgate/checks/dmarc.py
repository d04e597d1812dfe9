"""DMARC (RFC 7489): does the From domain's owner vouch for this message, and if not,
what does it ask receivers to do.

``evaluate`` finds the policy (section 6.6.3), checks SPF and DKIM alignment with the
From domain (section 3.1) and samples ``pct`` (section 6.6.4); ``dmarc`` turns a
failure under p=reject or p=quarantine into the matching verdict. A DNS failure
finding the policy is "temperror" and no verdict: DMARC never tempfails a message.
"""
from __future__ import annotations

import email.parser
import email.policy
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from smtpgate import psl
from smtpgate.checks.dkim import DkimResult
from smtpgate.checks.spf_fail import SpfOutcome, envelope_address
from smtpgate.dns import BaseResolver
from smtpgate.result import CheckResult

POLICIES = ("none", "quarantine", "reject")
# RFC 7489 section 6.6.4: a message the pct sample leaves out gets the next weaker
# policy, so a domain can phase in "reject" without relaxing its "quarantine".
_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed policy record; defaults from RFC 7489 section 6.3."""

    p: str
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    result: str                     # pass, fail, none, temperror, permerror
    policy: str = "none"            # the domain's requested policy (p=, or sp= for subdomains)
    disposition: str = "none"       # what to do: the policy, weakened if pct sampled it out
    domain: str | None = None       # the RFC5322.From domain
    org_domain: str | None = None
    pct: int = 100
    reason: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False


def parse_record(text: str) -> DmarcRecord | None:
    """The record, or None when it is not a usable DMARC record.

    It must start with v=DMARC1 (section 6.6.3 step 2). Unknown tags are ignored and a
    bad value of adkim/aspf/pct falls back to its default (section 6.3). A missing or
    bad p= (or a bad sp=) makes the record unusable unless it has a rua= URI, in which
    case it reads as p=none (section 6.6.3 step 6).
    """
    tags: dict[str, str] = {}
    for i, part in enumerate(text.split(";")):
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if i == 0:
            if not (name == "v" and eq and value == "DMARC1"):
                return None
            continue
        if name and eq and name not in tags:
            tags[name] = value
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower() or None
    if p not in POLICIES or (sp is not None and sp not in POLICIES):
        if "mailto:" not in tags.get("rua", "").lower():
            return None
        p, sp = "none", None
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcRecord(p=p, sp=sp, adkim=adkim if adkim in ("r", "s") else "r",
                       aspf=aspf if aspf in ("r", "s") else "r",
                       pct=pct if 0 <= pct <= 100 else 100)


def from_domain(message: bytes, from_fields: Sequence[bytes] | None = None) -> tuple[str | None, str]:
    """(domain, "") of the single From address, or (None, why) when there is not one.

    Section 6.6.1: a message with no From, several From fields or several addresses in
    it has no single author domain to evaluate. A caller that has already split the
    header block (the gate's ``DataContext``) passes the From fields' values, so only
    they are parsed, not the whole header.
    """
    if from_fields is not None:
        message = b"".join(b"From: " + v + b"\r\n" for v in from_fields) + b"\r\n"
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(message)
        fields = headers.get_all("From") or []
        if len(fields) != 1:
            return None, f"{len(fields)} From header fields"
        addresses = fields[0].addresses
    except Exception as e:     # the email package's parser can raise on hostile input
        return None, f"From header does not parse: {e}"
    if len(addresses) != 1:
        return None, f"{len(addresses)} addresses in From"
    domain = addresses[0].domain.strip().rstrip(".").lower()
    if not domain:
        return None, "From address has no domain"
    return domain, ""


def aligned(domain: str | None, author: str, mode: str) -> bool:
    """Section 3.1: strict is the same name; relaxed is the same organisational domain."""
    if not domain:
        return False
    domain = domain.rstrip(".").lower()
    if mode == "s":
        return domain == author
    org = psl.org_domain(domain)
    return org is not None and org == psl.org_domain(author)


async def _find_record(resolver: BaseResolver, domain: str) -> tuple[str, DmarcRecord | None, str]:
    """(status, record, why) for _dmarc.<domain>; status "ok", "absent", "temperror" or
    "ambiguous" (several records: section 6.6.3 step 5, no DMARC processing)."""
    answer = await resolver.txt(f"_dmarc.{domain}")
    if answer.temporary:
        return "temperror", None, f"DNS {answer.status} for _dmarc.{domain}"
    candidates = [r for r in answer.records if r.lstrip().lower().startswith("v=dmarc1")]
    if not candidates:
        return "absent", None, f"no DMARC record at _dmarc.{domain}"
    if len(candidates) > 1:
        return "ambiguous", None, f"{len(candidates)} DMARC records at _dmarc.{domain}"
    record = parse_record(candidates[0])
    if record is None:
        return "ambiguous", None, f"unusable DMARC record at _dmarc.{domain}"
    return "ok", record, ""


def _sampler(rng: random.Random | Callable[[], float] | None) -> Callable[[], float]:
    if rng is None:
        return random.random
    return rng.random if hasattr(rng, "random") else rng


async def evaluate(resolver: BaseResolver, message: bytes, spf: SpfOutcome,
                   dkim: Sequence[DkimResult], mail_from: str, helo: str, *,
                   rng: random.Random | Callable[[], float] | None = None,
                   from_fields: Sequence[bytes] | None = None) -> DmarcOutcome:
    """The DMARC outcome of a message (see the module docstring).

    ``rng`` draws the pct sample (a ``random.Random`` or a callable giving [0, 1));
    inject one to make sampling deterministic.
    """
    author, why = from_domain(message, from_fields)
    if author is None:
        return DmarcOutcome("permerror", reason=why)
    org = psl.org_domain(author)
    status, record, why = await _find_record(resolver, author)
    at_org = False
    if status == "absent" and org and org != author:
        status, record, why = await _find_record(resolver, org)
        at_org = True
    base = dict(domain=author, org_domain=org)
    if status == "temperror":
        return DmarcOutcome("temperror", reason=why, **base)
    if record is None:
        return DmarcOutcome("none", reason=why, **base)
    policy = (record.sp or record.p) if at_org else record.p

    # The domain SPF authenticated: MAIL FROM's, or HELO's for the null sender.
    address = envelope_address(mail_from)
    spf_domain = (address.rpartition("@")[2] if address else helo or "").rstrip(".").lower()
    spf_ok = spf.result == "pass" and aligned(spf_domain, author, record.aspf)
    dkim_ok = any(r.result == "pass" and aligned(r.domain, author, record.adkim) for r in dkim)
    base.update(policy=policy, pct=record.pct, spf_aligned=spf_ok, dkim_aligned=dkim_ok)
    if spf_ok or dkim_ok:
        via = " and ".join(x for x, ok in (("SPF", spf_ok), ("DKIM", dkim_ok)) if ok)
        return DmarcOutcome("pass", reason=f"{via} aligned", **base)

    disposition = policy
    sampled_out = record.pct < 100 and _sampler(rng)() * 100 >= record.pct
    if sampled_out:
        disposition = _WEAKER[policy]
    reason = _fail_reason(policy, record.pct, sampled_out, disposition, spf, spf_domain, dkim)
    return DmarcOutcome("fail", disposition=disposition, reason=reason, **base)


def _fail_reason(policy, pct, sampled_out, disposition, spf, spf_domain, dkim) -> str:
    head = f"p={policy}"
    if sampled_out:
        head += f", pct={pct} sampled out: {disposition}"
    spf_part = f"SPF not aligned: {spf.result}"
    if spf.result == "pass":
        spf_part += f" for {spf_domain}"
    if dkim:
        dkim_part = "DKIM not aligned: " + ", ".join(
            f"{r.result} for {r.domain or '?'}" for r in dkim)
    else:
        dkim_part = "DKIM: none"
    return f"{head}; {spf_part}; {dkim_part}"


def dmarc(outcome: DmarcOutcome) -> CheckResult | None:
    """A DMARC failure under p=reject or p=quarantine (after pct) is the domain's verdict."""
    if outcome.result != "fail" or outcome.disposition == "none":
        return None
    classification = "dmarc_reject" if outcome.disposition == "reject" else "dmarc_quarantine"
    return CheckResult(
        classification, check="dmarc",
        evidence=f"DMARC fail for {outcome.domain} ({outcome.reason})",
        details={"domain": outcome.domain, "org_domain": outcome.org_domain,
                 "policy": outcome.policy, "disposition": outcome.disposition,
                 "pct": outcome.pct})
