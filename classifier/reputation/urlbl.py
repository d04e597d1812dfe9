"""``urlbl``: the message's URL hosts and registered domains looked up on DNS URL
blocklists (SURBL, URIBL, Spamhaus DBL and lists in their style).

A name is listed when ``<name>.<zone>`` has an A record that the zone counts as a
listing; a URL whose host is an IPv4 address is looked up by reversed octets, as on a
DNSBL (``7.100.51.198.<zone>``; IPv6 hosts are not looked up: no URL list serves them).

What the zones return, and how a ``UrlblZone`` reads it:
- ``codes``: the answer addresses that are listings (Spamhaus DBL: 127.0.1.2-127.0.1.106;
  its 127.0.1.255 "IP queries prohibited" is then not one);
- ``bitmask``: the answer is 127.0.0.x and x's bits are lists (SURBL multi: 8 PH,
  16 MW, 64 ABUSE, 128 CR; URIBL: 2 black, 4 grey, 8 red); a listing needs a bit of the
  mask. Bit 1 is left out by the usual masks: URIBL answers 127.0.0.1 to refused queries;
- neither: any 127.0.0.0/8 answer.
Whatever the zone, 127.255.255.0/24 are the lists' error codes (query refused, rate
limited) and never listings, nor is anything outside 127/8 (a wildcarding resolver).
``hostnames``: the zone also lists host names below registered domains (DBL does), so
the full host is looked up as well as the registered domain; a zone of registered
domains only (URIBL) is asked about registered domains only.

What is looked up. Each URL of ``MessageFeatures.urls`` (HTML links and links written
out in the text) gives a host: scheme ``http``/``https``/``ftp`` or a bare ``www.`` link;
no userinfo, no port, percent-escapes decoded, lower case, dots trimmed and collapsed,
IDN as punycode (``idna``, UTS 46, what browsers resolve), any IPv4 spelling as a dotted
quad. Its registered domain comes from the Public Suffix List shipped with
``publicsuffixlist`` (``smtpgate/psl.py``), nothing downloaded at run time.

At most ``max_domains`` (default 20, SpamAssassin's ``uridnsbl_max_domains``) distinct
registered domains or IP addresses are looked up per message, plus at most as many
full host names for the zones that list hosts. When a message has more, the domains of
HTML links come first, then the domains linked most often, then the order of first
appearance: padding a message with 20 innocent domains in front of the bad one does
not push it out when the bad one is the link that matters.

All lookups run concurrently; what has not answered ``timeout`` seconds (default 1.0)
after the start counts as not listed and is cancelled, so a slow list costs scoring at
most that long, and the evidence says which lists did not answer. Answers are cached by
the resolver for their TTL, so a campaign's domains are asked once. A lookup that ends
in DNS trouble (timeout, SERVFAIL) is also "not listed": a broken list must not
decide.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import idna

from smtpgate.dns import BaseResolver
from smtpgate.psl import registered_domain

from .base import Signal
from .safebrowsing import parse_ipv4

__all__ = ["UrlblZone", "UrlListing", "Listings", "lookup", "lookup_names", "url_host",
           "urlbl", "MAX_DOMAINS", "TIMEOUT", "MIN_LISTS"]

log = logging.getLogger("mailsift.reputation.urlbl")

CHECK = "urlbl"

# SpamAssassin's uridnsbl_max_domains: enough for every domain of nearly all mail.
MAX_DOMAINS = 20
# The whole lookup's budget. URL lists answer in tens of milliseconds from a nearby
# resolver; one second is ten times that and still small beside the scorer's budget.
TIMEOUT = 1.0
# "Several blacklists": as the contract table's DNSBL "multiple", at least 2 lists.
MIN_LISTS = 2

WEB_SCHEMES = frozenset(("http", "https", "ftp"))

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_BITMASK_NET = ipaddress.ip_network("127.0.0.0/24")
_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_HOST_END = re.compile(r"[/?#\\]")
_DOTS = re.compile(r"\.{2,}")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


@dataclass(frozen=True, slots=True)
class UrlblZone:
    """A URL blocklist zone and how to read its answers (see the module docstring)."""

    name: str
    codes: frozenset[str] | None = None
    bitmask: int | None = None
    hostnames: bool = True

    def __post_init__(self):
        object.__setattr__(self, "name", self.name.strip().strip(".").lower())
        if not self.name:
            raise ValueError("a URL blocklist zone needs a name")
        if self.codes is not None and self.bitmask is not None:
            raise ValueError(f"{self.name}: give codes or a bitmask, not both")
        if self.codes is not None:
            codes = frozenset(str(ipaddress.IPv4Address(c)) for c in self.codes)
            object.__setattr__(self, "codes", codes)
        if self.bitmask is not None and not 0 < self.bitmask < 256:
            raise ValueError(f"{self.name}: a bitmask is 1..255 (the last octet of 127.0.0.x)")

    def listing_codes(self, records: Iterable[str]) -> tuple[str, ...]:
        """The answers among ``records`` that are listings on this zone."""
        codes = []
        for record in records:
            try:
                addr = ipaddress.IPv4Address(record)
            except ValueError:
                continue
            if addr not in _LOOPBACK or addr in _ERROR_CODES:
                continue
            if self.codes is not None:
                if record not in self.codes:
                    continue
            elif self.bitmask is not None:
                if addr not in _BITMASK_NET or not int(addr) & self.bitmask:
                    continue
            codes.append(str(addr))
        return tuple(sorted(set(codes), key=ipaddress.IPv4Address))


@dataclass(frozen=True, slots=True)
class UrlListing:
    """``domain`` (a registered domain, host or IPv4 address of a URL in the message) is
    listed on ``zone`` with these answers."""

    domain: str
    zone: str
    codes: tuple[str, ...]


class Listings(list):
    """The listings found (a ``list`` of ``UrlListing``), plus the lookups that had no
    answer: ``unanswered`` holds (zone, status) pairs, status "deadline" for those cut by
    the overall timeout, else the resolver's "timeout"/"servfail"."""

    def __init__(self, listings=(), unanswered=(), timeout: float = TIMEOUT):
        super().__init__(listings)
        self.unanswered: tuple[tuple[str, str], ...] = tuple(unanswered)
        self.timeout = timeout


# ---------------------------------------------------------------- hosts of URLs

def url_host(url: str) -> str | None:
    """The host of a web URL as DNS knows it (see the module docstring), or None for
    anything else (``mailto:``, relative links, a host that is not a valid name)."""
    u = url.strip()
    m = _SCHEME.match(u)
    if m and not u[m.end():m.end() + 1].isdigit():       # "www.x.test:80/" is not a scheme
        if m.group(1).lower() not in WEB_SCHEMES:
            return None
        rest = u[m.end():].lstrip("/\\")
    elif u[:4].lower() == "www.":
        rest = u
    else:
        return None
    hostish = _HOST_END.split(rest, 1)[0].rpartition("@")[2]
    if "%" in hostish:
        hostish = urllib.parse.unquote(hostish, errors="replace")
    if hostish.startswith("["):
        inner = hostish[1:].partition("]")[0]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            return None
    host = hostish.rpartition(":")[0] if ":" in hostish else hostish
    host = _DOTS.sub(".", host).strip(".")
    if not host or len(host) > 253:
        return None
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (UnicodeError, ValueError):
            return None
    host = host.lower()
    ip = parse_ipv4(host)
    if ip is not None:
        return ip
    if not all(_LABEL.fullmatch(label) for label in host.split(".")):
        return None
    return host


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def lookup_names(features, *, max_domains: int = MAX_DOMAINS,
                 skip_private: bool = True) -> tuple[list[str], list[str]]:
    """(registered domains and IPv4 addresses, full host names) to look up, each at most
    ``max_domains``, in priority order (see the module docstring)."""
    anchors = {target for _text, target in getattr(features, "link_pairs", ())}
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    linked: set[str] = set()
    hosts: dict[str, dict[str, None]] = {}
    for i, url in enumerate(features.urls):
        host = url_host(url)
        if host is None or ":" in host:                   # IPv6: no URL list serves it
            continue
        if _is_ipv4(host):
            if skip_private and not ipaddress.IPv4Address(host).is_global:
                continue
            domain = host
        else:
            domain = registered_domain(host)
            if domain is None:
                continue
        counts[domain] += 1
        first.setdefault(domain, i)
        if url in anchors:
            linked.add(domain)
        if host != domain:
            hosts.setdefault(domain, {})[host] = None
    ranked = sorted(counts, key=lambda d: (d not in linked, -counts[d], first[d]))[:max_domains]
    full = [h for d in ranked for h in hosts.get(d, ())][:max_domains]
    return ranked, full


def _query_name(name: str, zone: str) -> str:
    if _is_ipv4(name):
        return ".".join(reversed(name.split("."))) + "." + zone
    return f"{name}.{zone}"


# ---------------------------------------------------------------- lookups

async def lookup(resolver: BaseResolver, features, zones: Sequence[UrlblZone], *,
                 max_domains: int = MAX_DOMAINS, timeout: float = TIMEOUT,
                 skip_private: bool = True) -> Listings:
    """Every (name, zone) listing of the message's URLs, in zone order then priority
    order; lookups unanswered after ``timeout`` seconds count as not listed.

    IPv4 hosts outside the global range (10/8, 127/8, ...) are not looked up when
    ``skip_private`` (the default): no list knows them and asking leaks internal
    addresses. Tests turn it off.
    """
    domains, hosts = lookup_names(features, max_domains=max_domains, skip_private=skip_private)
    jobs: list[tuple[str, UrlblZone, str]] = []
    for zone in zones:
        names = domains + hosts if zone.hostnames else domains
        jobs.extend((name, zone, _query_name(name, zone.name)) for name in names)
    if not jobs:
        return Listings(timeout=timeout)
    tasks = [asyncio.ensure_future(resolver.a(qname)) for _name, _zone, qname in jobs]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    listings: list[UrlListing] = []
    unanswered: list[tuple[str, str]] = []
    for (name, zone, qname), task in zip(jobs, tasks):
        if task not in done:
            unanswered.append((zone.name, "deadline"))
            continue
        answer = task.result()        # the resolver never raises; a test fake may, loudly
        if answer.temporary:
            unanswered.append((zone.name, answer.status))
        if not answer.ok:
            continue
        codes = zone.listing_codes(answer.records)
        if codes:
            listings.append(UrlListing(name, zone.name, codes))
    if unanswered:
        counts = Counter(unanswered)
        log.info("URL blocklist lookups unanswered, counted as not listed: %s",
                 ", ".join(f"{z} {s} x{n}" for (z, s), n in counts.items()))
    return Listings(listings, unanswered, timeout)


# ---------------------------------------------------------------- the check

MAX_EVIDENCE = 10


def urlbl(listings: Sequence[UrlListing], *, min_lists: int = MIN_LISTS) -> Signal | None:
    """The ``urlbl`` Signal: strength is the number of distinct lists that list any URL
    of the message, and it decides when that is at least ``min_lists``. None when no
    list lists anything."""
    if not listings:
        return None
    zones = list(dict.fromkeys(l.zone for l in listings))
    by_domain: dict[str, list[UrlListing]] = {}
    for l in listings:
        by_domain.setdefault(l.domain, []).append(l)
    evidence = []
    for domain, found in list(by_domain.items())[:MAX_EVIDENCE]:
        on = ", ".join(f"{l.zone} ({' '.join(l.codes)})" for l in found)
        evidence.append(f"url {'ip' if _is_ipv4(domain) else 'domain'} {domain} on {on}")
    if len(by_domain) > MAX_EVIDENCE:
        evidence.append(f"and {len(by_domain) - MAX_EVIDENCE} more listed names")
    unanswered = getattr(listings, "unanswered", ())
    if unanswered:
        timeout = getattr(listings, "timeout", TIMEOUT)
        late = sorted({z for z, s in unanswered if s == "deadline"})
        trouble = sorted({z for z, s in unanswered if s != "deadline"})
        if late:
            evidence.append(f"no answer within {timeout:g} s from {', '.join(late)} "
                            "(counted as not listed)")
        if trouble:
            evidence.append(f"DNS trouble on {', '.join(trouble)} (counted as not listed)")
    return Signal(CHECK, float(len(zones)), len(zones) >= min_lists, tuple(evidence),
                  {"lists": ", ".join(zones)})
