"""The Authentication-Results header field (RFC 8601) the gate adds to accepted mail.

One resinfo per method: iprev (if given), spf, one dkim per signature ("dkim=none"
when unsigned), dmarc (if evaluated). Values that are not RFC 2045 tokens are quoted,
domain names are written as A-labels, and control characters never reach the header,
since most of these values come from the sending side (HELO, MAIL FROM, d=).
"""
from __future__ import annotations

import re
from typing import Sequence

import dns.name

from smtpgate.checks.dkim import DkimResult
from smtpgate.checks.dmarc import DmarcOutcome
from smtpgate.checks.spf_fail import SpfOutcome

# RFC 2045 section 5.1: token characters (no tspecials, space or controls).
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
# RFC 8601 section 2.3 pvalue: "[local-part "@"] domain-name" may go unquoted.
_ADDRESS = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~/=?]*@[A-Za-z0-9.\-_]+$")

_IPREV = {"match": "pass", "mismatch": "fail", "missing": "fail", "unknown": "temperror"}

# RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters.
FOLD_AT = 78


def _clean(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def quote(value: str) -> str:
    """An RFC 2045 value: the token as is, otherwise a quoted-string."""
    value = _clean(value)
    if value and _TOKEN.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def domain_value(name: str | None) -> str:
    """A domain as an A-label token (quoted when it is no valid name)."""
    name = _clean(name or "").rstrip(".")
    try:
        ascii_name = dns.name.from_text(name).to_text(omit_final_dot=True) if name else ""
    except Exception:
        ascii_name = name
    return quote(ascii_name.lower())


def _pvalue_address(address: str) -> str:
    address = _clean(address)
    return address if _ADDRESS.match(address) else quote(address)


def _comment(text: str) -> str:
    text = _clean(text).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({text})" if text else ""


def authentication_results(authserv_id: str, spf: SpfOutcome | None = None,
                           dkim_results: Sequence[DkimResult] | None = None,
                           dmarc: DmarcOutcome | None = None,
                           iprev: tuple[str, str | None] | None = None,
                           client_ip: str | None = None, *,
                           linesep: str = "\r\n") -> str:
    """The header field's value (without "Authentication-Results: ").

    ``iprev`` is ``ptr.ptr_fact``'s (fact, name), shown with ``client_ip`` (default: the
    SPF outcome's). ``dkim_results`` None leaves DKIM out; [] says "dkim=none". The value
    is folded before a resinfo when a line would pass 78 characters, with ``linesep``
    plus a tab.
    """
    parts = [quote(authserv_id)]
    if iprev is not None:
        fact, name = iprev
        ip = client_ip or (spf.client_ip if spf else None)
        item = f"iprev={_IPREV.get(fact, 'permerror')}"
        if ip:
            item += f" policy.iprev={quote(ip)}"
        if name and fact == "match":
            item += f" {_comment(name)}"
        parts.append(item)
    if spf is not None:
        item = f"spf={spf.result}"
        if spf.identity == "helo":
            item += f" smtp.helo={domain_value(spf.helo)}"
        else:
            item += f" smtp.mailfrom={domain_value(spf.domain)}"
        parts.append(item)
    if dkim_results is not None:
        if not dkim_results:
            parts.append("dkim=none")
        for r in dkim_results:
            item = f"dkim={r.result}"
            if r.result != "pass" and r.reason:
                item += f" reason={quote(r.reason)}"
            if r.domain:
                item += f" header.d={domain_value(r.domain)}"
            if r.selector:
                item += f" header.s={quote(r.selector)}"
            if r.b:
                item += f" header.b={quote(r.b)}"
            parts.append(item)
    if dmarc is not None:
        item = f"dmarc={dmarc.result}"
        if dmarc.result in ("pass", "fail"):
            item += f" {_comment(f'p={dmarc.policy} dis={dmarc.disposition}')}"
        if dmarc.domain:
            item += f" header.from={domain_value(dmarc.domain)}"
        parts.append(item)
    if len(parts) == 1:
        parts.append("none")          # RFC 8601 section 2.2: no-result
    return _fold(parts, linesep)


def _fold(parts: list[str], linesep: str) -> str:
    # "Authentication-Results: " takes 24 characters of the first line.
    out, line = parts[0], 24 + len(parts[0])
    for part in parts[1:]:
        if line + 2 + len(part) > FOLD_AT:
            out += ";" + linesep + "\t" + part
            line = 8 + len(part)
        else:
            out += "; " + part
            line += 2 + len(part)
    return out
