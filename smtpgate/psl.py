"""Registered (organisational) domains, from the Public Suffix List shipped offline.

DMARC's relaxed alignment and its policy fallback (RFC 7489 section 3.2) need the
"Organizational Domain": the public suffix plus one label. The list comes with the
``publicsuffixlist`` package, so no lookup happens at run time and results do not
change between two releases of the package; it includes the list's private section
(blogspot.com, ...), whose subdomains belong to different owners, which is what
alignment must respect.

Names under a top-level domain the list does not know (such as the reserved ``.test``
of the test zones) follow the list's default rule "*": the TLD is the public suffix.
"""
from __future__ import annotations

import functools
import ipaddress

from publicsuffixlist import PublicSuffixList


@functools.cache
def _list() -> PublicSuffixList:
    # Parsing the list takes tens of milliseconds: once, on first use, not at import.
    return PublicSuffixList()


def load() -> None:
    """Parse the list now (about 50 ms), e.g. in the gate's main(), not on the first mail."""
    _list()


def _is_address(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def registered_domain(host: str) -> str | None:
    """The registered domain of ``host``, lower case ("a.b.example.co.uk" -> "example.co.uk").

    None when there is none: a public suffix itself ("co.uk"), an address or address
    literal, an empty or malformed name.
    """
    name = host.strip().rstrip(".").lower()
    if not name or _is_address(name) or ".." in name or name.startswith("."):
        return None
    return _list().privatesuffix(name)


# RFC 7489 calls it the Organizational Domain.
org_domain = registered_domain
