"""``phishing``: the marks of a phishing message, weighed together.

Indicators, and the weight each adds to the Signal's strength (``DEFAULT_WEIGHTS``);
each kind counts once however often it occurs, and the evidence lists every
occurrence (up to ``MAX_EVIDENCE``):

``link_mismatch`` 1.0
    A link whose visible text shows a host name or URL (``www.bank.com``,
    ``https://bank.com/login``, ``bank.com`` when its top-level domain is a real one)
    while the link goes to another registered domain. Not counted when both share the
    registered domain (``bank.com`` -> ``secure.bank.com``), when both are domains of the
    same configured brand, or when the target is a known click-tracking or link-rewriting
    service (``DEFAULT_REDIRECTORS``: mail service providers' trackers, Safe Links,
    URL Defense): behind those, a URL carried in the link (``?url=https://...``) is the
    target compared, and a tracker that carries none is not judged.
``brand_link_mismatch`` 2.0 (instead of the above)
    The text shows a domain of a configured brand and the link goes elsewhere.
``credential_form`` 1.0
    A password input in the message's HTML. Legitimate mail asks for passwords on a web
    site, not in the message.
``offsite_credential_form`` 2.0 (instead of the above)
    ... in a form that posts to another registered domain than the From address's.
    Needs the form targets from the parser (``MessageFeatures.form_actions``); without
    them only ``credential_form`` is seen.
``lookalike_url`` 2.0 / ``lookalike_from`` 2.0
    A link host / the From domain imitating a configured brand domain without being one
    (see ``lookalike``): same confusable skeleton (homoglyphs, ``xn--`` punycode
    decoded, 0/o, 1/l/i, rn/m, vv/w), one edit away (names of 6+ letters), the brand's
    name as a ``-``-separated part of the name (``paypal-secure.test``), or a brand
    domain used as a subdomain (``paypal.com.login.test``). The same name under another
    public suffix (``paypal.de`` for ``paypal.com``) is not a lookalike: brands own many.
``brand_display_name`` 1.0
    The From display name names a configured brand and the address is not the brand's.
``display_name_spoof`` 1.0 / ``display_address_spoof`` 2.0
    The From display name contains a recipient domain (spoof) or an address at one
    (address spoof) while the From address is elsewhere: "ceo@example.com
    <x@mail.test>" sent to example.com.

The Signal decides when the strength reaches ``DEFAULT_THRESHOLD`` (3.0): two
independent strong marks (a lookalike brand link plus a password form, a lookalike From
plus the brand's name in the display name, a brand link to elsewhere plus a
password form, an address spoof plus a mismatched link), never one alone.

Where the defaults come from (SpamAssassin public corpus, 4150 ham and 1896 spam; a
12-brand list of the era's phishing targets -- PayPal, eBay, Amazon, Apple, Microsoft,
Google, Yahoo, Citibank, Chase, Bank of America, Wells Fargo, AOL; each message's
To/Cc domains as the recipient domains): 21 ham and 22 spam show an indicator, every
ham at strength 1.0 (19 link mismatches, mostly a publisher linking its own other
domain such as dilbert.com -> unitedmedia.com and 2002's click trackers; 2 "Lockergnome
Apple Core" newsletters naming Apple). Threshold 3.0 decides 0 ham and 0 spam;
2.0 would decide 0 ham and 4 spam (From hotmaill.com / hotmal.com / hottmail.com,
a link to paypal-profits.com). 3.0 keeps a whole indicator of margin over every ham;
the corpus predates credential phishing (no message has a password input), so it
cannot show what 3.0 catches -- the strength still feeds the combined score. With the
150 domains most linked from the ham as "brands", the skeleton and one-edit rules hit
no ham; the brand-name-in-the-domain rule hit 6 ham for brands that are common words
(linux-mag.com for linux.ie, perl-foundation.org for perl.org): brand names should be
distinctive. About 0.4 ms per message.
"""
from __future__ import annotations

import email.utils
import functools
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from smtpgate.psl import _list as _public_suffix_list
from smtpgate.psl import registered_domain

from .base import Signal
from .urlbl import url_host

__all__ = ["phishing", "lookalike", "skeleton", "DEFAULT_WEIGHTS", "DEFAULT_THRESHOLD",
           "DEFAULT_REDIRECTORS"]

CHECK = "phishing"

DEFAULT_WEIGHTS: Mapping[str, float] = {
    "link_mismatch": 1.0,
    "brand_link_mismatch": 2.0,
    "credential_form": 1.0,
    "offsite_credential_form": 2.0,
    "lookalike_url": 2.0,
    "lookalike_from": 2.0,
    "brand_display_name": 1.0,
    "display_name_spoof": 1.0,
    "display_address_spoof": 2.0,
}
# Indicators of one kind: only the heaviest present counts.
_GROUPS = (("link_mismatch", "brand_link_mismatch"),
           ("credential_form", "offsite_credential_form"),
           ("lookalike_url",), ("lookalike_from",), ("brand_display_name",),
           ("display_name_spoof", "display_address_spoof"))
DEFAULT_THRESHOLD = 3.0

# Registered domains whose links stand for another URL: mail service providers' click
# trackers and the link rewriters of mail security gateways.
DEFAULT_REDIRECTORS = frozenset({
    "list-manage.com", "mailchi.mp", "mcsv.net",                  # Mailchimp
    "sendgrid.net", "mandrillapp.com", "mailgun.org", "sparkpostmail.com",
    "rs6.net",                                                    # Constant Contact
    "exacttarget.com", "hubspotlinks.com", "createsend.com", "cmail19.com", "cmail20.com",
    "safelinks.protection.outlook.com", "outlook.com",            # Microsoft Safe Links
    "urldefense.com", "proofpoint.com",                           # Proofpoint
    "mimecast.com", "mimecastprotect.com",
})

MAX_EVIDENCE = 8
_MAX_LINKS = 200

# ---------------------------------------------------------------- confusables

# Lower-case letters that render like a Latin letter (after NFKD and case folding),
# from Unicode's confusables.txt for the scripts phishing uses: Cyrillic, Greek,
# Armenian and Latin look-alikes, plus the digit swaps of hand-made lookalikes.
_CONFUSABLE = {
    # Cyrillic
    "а": "a", "е": "e", "ё": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x",
    "і": "l", "ї": "l", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h",
    "ӏ": "l", "к": "k", "м": "m", "т": "t", "ո": "n", "ս": "u", "օ": "o",
    # Greek
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "τ": "t", "υ": "u", "ι": "l", "κ": "k",
    "χ": "x", "ω": "w", "γ": "y", "ϲ": "c", "ϳ": "j",
    # Latin look-alikes
    "ı": "l", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "l", "ℓ": "l", "ɪ": "l",
    # digits and the i/l/1 family (skeletons map all of them to 'l')
    "0": "o", "1": "l", "i": "l", "|": "l",
}
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLE)
_SEQUENCES = (("rn", "m"), ("vv", "w"))


def skeleton(text: str) -> str:
    """What ``text`` looks like: equal skeletons read alike (``pаypa1`` with a Cyrillic
    ``а`` and a digit ``1`` has the skeleton of ``paypal``)."""
    t = unicodedata.normalize("NFKD", text.casefold())
    t = "".join(c for c in t if not unicodedata.combining(c)).translate(_CONFUSABLE_TABLE)
    for seq, rep in _SEQUENCES:
        t = t.replace(seq, rep)
    return t


def _unicode_label(label: str) -> str:
    """An ``xn--`` label as the Unicode it shows; anything else unchanged."""
    if not label.startswith("xn--"):
        return label
    try:
        return label[4:].encode("ascii").decode("punycode")
    except (UnicodeError, ValueError):
        return label


def _one_edit(a: str, b: str) -> bool:
    """Exactly one insertion, deletion, substitution or adjacent swap apart."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:]


# ---------------------------------------------------------------- brands

@dataclass(frozen=True, slots=True)
class _Brand:
    name: str
    domains: tuple[str, ...]      # registered domains, the brand's own
    labels: tuple[tuple[str, str, str], ...]   # (domain, label, skeleton of label)


def _brands(brands: Mapping[str, Sequence[str]] | None) -> tuple[_Brand, ...]:
    """The brand table, built once per distinct configuration (it costs 3 ms)."""
    return _brand_table(tuple((name, tuple(domains)) for name, domains in (brands or {}).items()))


@functools.lru_cache(maxsize=16)
def _brand_table(brands: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[_Brand, ...]:
    out = []
    for name, domains in brands:
        regs = []
        for d in domains:
            reg = registered_domain(url_host("http://" + d.strip()) or "")
            if reg and reg not in regs:
                regs.append(reg)
        labels = tuple((reg, reg.partition(".")[0], skeleton(_unicode_label(reg.partition(".")[0])))
                       for reg in regs)
        out.append(_Brand(name, tuple(regs), labels))
    return tuple(out)


def lookalike(host: str, brands: Sequence[_Brand] | Mapping[str, Sequence[str]]
              ) -> tuple[str, str, str] | None:
    """(brand, brand domain, how) when ``host`` imitates a domain of a brand without
    being one of any brand's domains; else None."""
    if isinstance(brands, Mapping):
        brands = _brands(brands)
    reg = registered_domain(host)
    if reg is None or any(reg in b.domains for b in brands):
        return None
    label = reg.partition(".")[0]
    shown = _unicode_label(label)
    shape = skeleton(shown)
    parts = [skeleton(p) for p in re.split(r"[-_]+", shown) if p] if "-" in shown or "_" in shown else []
    below = host[: -len(reg) - 1] if host != reg else ""
    for brand in brands:
        for domain, blabel, bshape in brand.labels:
            # two- and three-letter names collide by chance ("u1" reads "ul"), so
            # plain-ASCII confusables need four letters; an IDN homoglyph is deliberate
            if label != blabel and shape == bshape and (len(bshape) >= 4 or shown != label):
                how = f"homoglyph, reads {shown}" if shown != label else "confusable"
                return brand.name, domain, how
            if len(blabel) >= 6 and _one_edit(label, blabel):
                return brand.name, domain, "one letter off"
            if len(bshape) >= 4 and bshape in parts:
                return brand.name, domain, "brand name in the domain"
            if below and (f".{below}.".find(f".{domain}.") != -1):
                return brand.name, domain, "brand domain as subdomain"
    return None


# ---------------------------------------------------------------- links

_SHOWN_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.I)
_SHOWN_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}", re.I)
_TRIM = " \t\r\n<>()[]{}'\".,:;!?*"
# Top-level domains that are also file extensions people write as link text.
_FILE_TLDS = frozenset({"zip", "mov", "exe", "doc", "pdf", "txt", "htm", "html", "php", "asp", "jpg",
                        "png", "gif", "sh", "py", "js", "pl", "md", "rs"})
_EMBEDDED = re.compile(r"(?:https?://|www\.)[^\s&\"'<>]+", re.I)


def _shown_host(text: str) -> str | None:
    """The host a link's visible text shows, if it shows one."""
    if "@" in text and not _SHOWN_URL.search(text):
        return None                                    # an address, not a link
    m = _SHOWN_URL.search(text)
    if m:
        url = m.group()
        host = url_host(url if "://" in url else "http://" + url)
        if host is None or _is_address(host):
            return host
    else:
        t = text.strip(_TRIM)
        if not _SHOWN_HOST.fullmatch(t) or t.rsplit(".", 1)[-1].lower() in _FILE_TLDS:
            return None
        host = url_host("http://" + t)
        if host is None:
            return None
    # "www.all-life" is no host a reader would trust: only names under a real suffix
    if _public_suffix_list().publicsuffix(host, accept_unknown=False) is None:
        return None
    return host


def _is_address(host: str) -> bool:
    return ":" in host or host.replace(".", "").isdigit()


def _domain(host: str | None) -> str | None:
    if host is None:
        return None
    if _is_address(host):
        return host                                     # an address is its own domain
    return registered_domain(host)


def _embedded_hosts(href: str) -> list[str]:
    """Hosts of the URLs a redirector link carries (``?url=https%3A%2F%2F...``)."""
    text = href
    for _ in range(3):
        decoded = urllib.parse.unquote(text)
        if decoded == text:
            break
        text = decoded
    start = text.find("//")
    hosts = []
    for m in _EMBEDDED.finditer(text, start + 2 if start != -1 else 0):
        url = m.group()
        host = url_host(url if "://" in url else "http://" + url)
        if host:
            hosts.append(host)
    return hosts


def _link_mismatches(features, brands: Sequence[_Brand], redirectors: frozenset[str]):
    """Yield (kind, evidence) for links showing one domain and going to another."""
    seen = set()
    for text, href in features.link_pairs[:_MAX_LINKS]:
        shown = _shown_host(text)
        if shown is None:
            continue
        target = url_host(href)
        shown_dom, target_dom = _domain(shown), _domain(target)
        if shown_dom is None or target_dom is None or shown_dom == target_dom:
            continue
        targets = [target]
        if target_dom in redirectors or (target and any(
                target == r or target.endswith("." + r) for r in redirectors)):
            targets = _embedded_hosts(href)
            if not targets:
                continue                               # an opaque tracker: no judgement
            if any(_domain(t) == shown_dom for t in targets):
                continue
        brand = next((b for b in brands if shown_dom in b.domains), None)
        if brand is not None and any(_domain(t) in brand.domains for t in targets):
            continue
        key = (shown_dom, targets[0])
        if key in seen:
            continue
        seen.add(key)
        kind = "brand_link_mismatch" if brand is not None else "link_mismatch"
        yield kind, f"link text {shown} -> target {targets[0]}"


# ---------------------------------------------------------------- From

def _from(features) -> tuple[str, str]:
    """(display name, address) of the first From header."""
    for name, value in features.headers:
        if name.lower() == "from":
            display, addr = email.utils.parseaddr(value)
            return display.strip(), addr.strip().lower()
    return "", ""


def _spoofs(display: str, addr_domain: str, recipient_domains: Iterable[str]):
    low = display.casefold()
    from_reg = registered_domain(addr_domain) if addr_domain else None
    for rd in recipient_domains:
        rd = rd.strip().strip(".").lower()
        if not rd or rd not in low:
            continue
        if addr_domain and (addr_domain == rd or addr_domain.endswith("." + rd)
                            or (from_reg is not None and from_reg == registered_domain(rd))):
            continue
        where = addr_domain or "no address"
        if re.search(rf"[\w.+'-]+@{re.escape(rd)}(?![\w.-]*\w)", low):
            yield "display_address_spoof", (f"From display name {display!r} is an address at recipient "
                                            f"domain {rd}; the address is at {where}")
        elif re.search(rf"(?<![\w-]){re.escape(rd)}(?![\w-])", low):
            yield "display_name_spoof", (f"From display name {display!r} names recipient domain {rd}; "
                                         f"the address is at {where}")


# ---------------------------------------------------------------- the check

def phishing(features, *, brands: Mapping[str, Sequence[str]] | None,
             recipient_domains: Sequence[str],
             weights: Mapping[str, float] = DEFAULT_WEIGHTS,
             threshold: float = DEFAULT_THRESHOLD,
             redirectors: Iterable[str] = DEFAULT_REDIRECTORS) -> Signal | None:
    """The ``phishing`` Signal of a message, None when no indicator is present.

    ``brands`` maps a brand name to its own domains (``{"PayPal": ["paypal.com",
    "paypal.me"]}``; None: no brand checks); ``recipient_domains`` are the domains the
    message is addressed to (the gate's local domains among the recipients).
    """
    table = _brands(brands)
    redirectors = frozenset(r.lower() for r in redirectors)
    found: dict[str, list[str]] = {}

    def add(kind: str, evidence: str) -> None:
        found.setdefault(kind, []).append(evidence)

    for kind, evidence in _link_mismatches(features, table, redirectors):
        add(kind, evidence)

    display, addr = _from(features)
    addr_domain = addr.rpartition("@")[2] if "@" in addr else ""
    from_reg = registered_domain(addr_domain) if addr_domain else None

    if features.password_inputs:
        actions = [u for u in getattr(features, "form_actions", ()) or ()]
        offsite = sorted({h for h in (url_host(u) for u in actions)
                          if h and _domain(h) not in (None, from_reg)})
        if offsite:
            for host in offsite:
                add("offsite_credential_form", f"password form posting to {host}"
                    + (f", not to the sender's {from_reg}" if from_reg else ""))
        else:
            add("credential_form", f"password input in the message ({features.password_inputs})")

    if table:
        hosts = dict.fromkeys(h for h in (url_host(u) for u in features.urls[:400]) if h)
        for host in hosts:
            hit = lookalike(host, table)
            if hit:
                add("lookalike_url", f"link host {host} looks like {hit[1]} ({hit[2]})")
        if addr_domain:
            hit = lookalike(addr_domain, table)
            if hit:
                add("lookalike_from", f"From domain {addr_domain} looks like {hit[1]} ({hit[2]})")
        if display:
            low = display.casefold()
            for brand in table:
                named = re.search(rf"(?<!\w){re.escape(brand.name.casefold())}(?!\w)", low)
                if named and from_reg not in brand.domains:
                    add("brand_display_name",
                        f"From display name {display!r} names brand {brand.name}; the address is at "
                        f"{addr_domain or 'no address'}")
                    break

    for kind, evidence in _spoofs(display, addr_domain, recipient_domains):
        add(kind, evidence)

    if not found:
        return None
    strength = 0.0
    evidence: list[str] = []
    for group in _GROUPS:
        present = [k for k in group if k in found]
        if present:
            strength += max(weights.get(k, 0.0) for k in present)
            for k in present:
                evidence.extend(found[k])
    if len(evidence) > MAX_EVIDENCE:
        evidence = evidence[:MAX_EVIDENCE] + [f"and {len(evidence) - MAX_EVIDENCE} more"]
    return Signal(CHECK, strength, strength >= threshold, tuple(evidence))
