"""DNS block- and allow-lists of the client address (RFC 5782), all zones at once.

``lookup`` asks every zone concurrently and returns the zones that list the address;
``dnsbl_multiple`` turns blocklist listings into a verdict only when at least
``min_hits`` lists agree (one list alone is too often wrong to reject on, and it is
still a fact for the combined score); ``dnswl`` turns an allowlist listing into the
"dnswl" acceptance.

What counts as a listing (RFC 5782 section 2.3): an A answer inside 127.0.0.0/8. Answers
in 127.255.255.0/24 are the lists' error codes (Spamhaus: 127.255.255.254 "query via
public resolver", .255 "excessive queries") and never count, nor does anything outside
127/8 (a wildcarding resolver). A zone's ``codes`` narrows it further to the return
codes configured for it. A zone that times out or fails lists nothing: a broken list
must not block mail.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

from smtpgate.dns import BaseResolver
from smtpgate.result import CheckResult

log = logging.getLogger(__name__)

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")

# The contract table's default: "multiple" means listed on at least 2 lists.
DNSBL_MIN_HITS = 2


@dataclass(frozen=True, slots=True)
class Zone:
    """A DNSxL zone; ``codes`` (answer addresses) limits what counts as a listing."""

    name: str
    codes: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    """The address is listed on ``zone`` with these return codes and TXT reason."""

    zone: str
    codes: tuple[str, ...]
    txt: str | None = None


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address as the lists know it: an IPv4-mapped IPv6 client is its IPv4 address."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def query_name(ip: str, zone: str) -> str:
    """RFC 5782 section 2.1/2.4: reversed octets (IPv4) or nibbles (IPv6), then the zone."""
    reverse = client_address(ip).reverse_pointer
    stem = reverse.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{stem}.{zone.strip('.')}"


def _listing_codes(records: Iterable[str], zone: Zone) -> tuple[str, ...]:
    codes = []
    for record in records:
        try:
            addr = ipaddress.ip_address(record)
        except ValueError:
            continue
        if addr.version != 4 or addr not in _LOOPBACK or addr in _ERROR_CODES:
            continue
        if zone.codes is not None and record not in zone.codes:
            continue
        codes.append(record)
    return tuple(sorted(codes, key=ipaddress.ip_address))


async def _one(resolver: BaseResolver, ip: str, zone: Zone) -> Listing | None:
    name = query_name(ip, zone.name)
    answer = await resolver.a(name)
    if answer.temporary:
        log.info("DNSBL %s: %s for %s; counted as not listed", zone.name, answer.status, ip)
    if not answer.ok:
        return None
    codes = _listing_codes(answer.records, zone)
    if not codes:
        return None
    # The reason text is a courtesy for the log: best effort, never waited on twice.
    txt = await resolver.txt(name)
    return Listing(zone.name, codes, "; ".join(txt.records) if txt.ok else None)


async def lookup(resolver: BaseResolver, ip: str, zones: Sequence[Zone], *,
                 skip_private: bool = True) -> list[Listing]:
    """The zones that list ``ip``, in the order of ``zones``.

    Addresses that are not globally routable (loopback, private, link-local, ...) are
    not looked up when ``skip_private`` (the default): no public list knows them and
    asking leaks internal addresses. The gate's tests turn it off to use 127.0.0.x.
    """
    addr = client_address(ip)
    if skip_private and not addr.is_global:
        return []
    results = await asyncio.gather(*(_one(resolver, str(addr), zone) for zone in zones))
    return [listing for listing in results if listing is not None]


def _evidence(listings: Sequence[Listing]) -> tuple[str, dict]:
    names = ", ".join(listing.zone for listing in listings)
    details = {"codes": {l.zone: list(l.codes) for l in listings}}
    reasons = {l.zone: l.txt for l in listings if l.txt}
    if reasons:
        details["txt"] = reasons
    return f"listed on {names}", details


def dnsbl_multiple(listings: Sequence[Listing], min_hits: int = DNSBL_MIN_HITS) -> CheckResult | None:
    """Reject at connect when at least ``min_hits`` blocklists list the client."""
    if len(listings) < min_hits:
        return None
    evidence, details = _evidence(listings)
    return CheckResult("dnsbl_multiple", check="dnsbl_multiple", evidence=evidence,
                       details=details)


def dnswl(listings: Sequence[Listing], min_hits: int = 1) -> CheckResult | None:
    """Accept as "dnswl" when at least ``min_hits`` allowlists list the client."""
    if len(listings) < min_hits:
        return None
    evidence, details = _evidence(listings)
    return CheckResult("dnswl", check="dnswl", evidence=evidence, details=details)
