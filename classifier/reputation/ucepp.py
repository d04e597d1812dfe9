"""UCEPP: concrete details of a message that were seen in recent spam.

A campaign can change its words with every message; what it cannot change cheaply is
where it sends its victims: the domain it registered, the server it rents, the phone
number that answers, the mailbox that collects replies, the wallet that collects the
money. This check extracts those details as readable, namespaced tokens

    domain:cheap-pills.test          registered domain of a link or of an e-mail address
    url:bit.ly/3xYzAbc               a link on a shared shortener (the domain is not the sender's)
    ip:203.0.113.7                   a public IP address written in the text or used as a link host
    phone:+18005551234               a phone number in E.164 form
    email:sales@cheap-pills.test     an e-mail address written in the text or in Reply-To
    btc:1BoatSLRHtKNngkdXEeobR76b53LETtpyT   a Bitcoin address (base58check or bech32, checksum valid)
    eth:0x52908400098527886e0f7030069857d2e4169ee7   an Ethereum address (EIP-55 checked when mixed case)
    xmr:4...                         a Monero address (its Keccak checksum valid)

and keeps, per token, how often it was reported in spam and in ham feedback, with
exponential decay. A token that recent spam carries often and ham never carries decides.

What is a token, and what is not (the principle: a token is a detail the sender had to
set up or pay for, so that seeing it again means seeing the same sender again):

- Registered domains, not host names: ``a.b.cheap.test`` and ``c.cheap.test`` are one
  owner (the Public Suffix List, shipped offline, draws the line; its private section
  keeps ``x.blogspot.com`` and ``y.blogspot.com`` apart, as they have different owners).
- Links on URL shorteners are tokens with their path (``url:bit.ly/abc``): the
  shortener's domain is shared by everyone, the short link is the sender's.
- Only public IP addresses: private, loopback and documentation ranges say nothing of
  the sender.
- Phone numbers only where they can be written in E.164 without guessing the country:
  international form (``+44 20 7946 0958``, ``0044 ...``) or the North American plan
  (``1-800-555-1234``, ``(800) 555-1234``). National numbers of other countries, dates,
  IP addresses and number tables are not phone numbers here.
- The recipient's own addresses (To, Cc, Delivered-To, X-Original-To, Envelope-To) and
  their registered domains are never tokens: spam quotes its victim ("this mail was
  sent to you@example.com"), and learning that would make the recipient's address a
  spam sign in their own mail.
- Details in text the author quotes (lines quoted with '>', quoted "From: x@y" header
  lines) or that a mailing list adds (its List-* fields, the footer after a ruler line
  at the end of the body) are not tokens unless the author's own text has them too:
  they are someone else's. Without this, spam relayed by a list teaches the list's own
  address and its footer's sponsor links, and the list's next ham is hit (on the
  SpamAssassin corpus: 4 ham decided without these two rules, none with them).
- Domains on ``BUILTIN_ALLOW`` (plus the store's configured ``allow_domains``) are never
  tokens: providers and platforms that spam and ham both link to (webmail providers,
  the big platforms, the W3C's DTDs, URL shorteners). Addresses *at* those domains
  (``someone@gmail.com``) are still tokens: the mailbox is the sender's.

Decay. Counts halve every ``half_life_days`` (7 by default). Campaign infrastructure is
short-lived (a domain or a number is burnt within days, after which a new one takes its
place), so a week keeps a campaign's details alive for its run while a one-off sighting
fades below the purge floor within about a month (log2(1/0.05) = 4.3 half-lives).
The choice was checked on the SpamAssassin corpus in receipt order (see ``DEFAULTS``).

Storage. SQLite in WAL mode (several scorer processes can read while one writes;
survives a restart). Counts are stored scaled to an epoch ``t0``: a report at time
``t`` adds ``2 ** ((t - t0) / half_life)``, and the count at ``now`` is the stored value
times ``2 ** (-(now - t0) / half_life)``. So an update is one UPSERT, and "decayed
count below the floor" is a plain comparison with an index (``weight``), with no
per-row arithmetic. The epoch moves forward (all rows rescaled once) before the
scale factor could overflow, and when the half-life is changed. The store is bounded:
rows whose decayed counts are all below ``floor`` are purged, and beyond ``max_rows``
the weakest rows are evicted.
"""
from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

from classifier.features import MessageFeatures, find_emails, find_ips, find_urls, parse_addresses
from classifier.logs import log_event
from smtpgate.psl import registered_domain as _psl_registered_domain

from .base import Disabled, Signal, disabled

__all__ = ["UceppStore", "ucepp", "ucepp_tokens", "DEFAULTS", "BUILTIN_ALLOW", "PATH_OWNED",
           "valid_btc", "valid_eth", "valid_xmr", "find_phones", "find_wallets"]

log = logging.getLogger("mailsift.reputation.ucepp")

CLASSIFICATION = "ucepp"
LABELS = ("spam", "ham")
DAY = 86400.0


@dataclass(frozen=True)
class Defaults:
    """The decision rule's defaults and where they come from.

    Chosen on the SpamAssassin public corpus (6046 messages: 1896 spam, 4150 ham), in
    its TREC index order (receipt time), online: each message is scored, then learned
    with its label, the clock being its receipt time (mbox From line, else Received).
    Target: no ham decided. Spam decided / ham decided:

        half-life   min_spam 2    min_spam 3    min_spam 5
        1 d         380 / 0       307 / 0       226 / 0
        3 d         507 / 0       398 / 0       275 / 0
        7 d         638 / 0       509 / 0       359 / 0
        14 d        705 / 2       593 / 1       445 / 0
        30 d        761 / 8       ...

    - ``half_life_days`` 7: the longest half-life with no ham decided at min_spam 3,
      with a factor two to the first that decided ham (14 d).
    - ``min_spam`` 3: 2 also decided no ham here, but "two spam carried it" is one
      campaign's pair of messages; 3 keeps a margin at the chosen half-life.
    - ``max_ham_ratio`` 0: 0.01 and 0.05 gave the same result, 0.1 decided 2 ham for 4
      more spam. Any ham report still above the purge floor vetoes the token.
    - ``weak_spam`` 1: below ``min_spam`` a token seen in spam only still gives the
      combined score a (non-deciding) signal.
    - ``floor`` 0.05: a single report is forgotten after log2(20) = 4.3 half-lives.
    """

    half_life_days: float = 7.0
    floor: float = 0.05
    min_spam: float = 3.0
    max_ham_ratio: float = 0.0
    weak_spam: float = 1.0
    max_rows: int = 1_000_000
    max_tokens_per_message: int = 64


DEFAULTS = Defaults()


# Registered domains that are never tokens: shared by spam and ham alike, so their
# reputation would be poisoned by the first campaign that links to them (a phishing
# mail links to the real paypal.com next to its fake one; HTML mail of every kind
# cites w3.org's DTDs). Kept short on purpose: a domain earns its place here by being
# common in legitimate mail *and* in spam; anything site-specific belongs in the
# configured ``allow_domains`` (for instance the organisation's own domains).
BUILTIN_ALLOW = frozenset("""
    gmail.com googlemail.com google.com youtube.com yahoo.com yahoo.co.uk hotmail.com
    outlook.com live.com msn.com microsoft.com aol.com icloud.com me.com apple.com
    facebook.com twitter.com x.com instagram.com linkedin.com amazon.com paypal.com
    ebay.com w3.org adobe.com macromedia.com mozilla.org wikipedia.org
    yandex.ru mail.ru gmx.net gmx.de web.de qq.com 163.com proton.me protonmail.com
""".split())

# Domains whose links are owned by their path, not by the domain: URL shorteners (the
# short link is the sender's, the domain everyone's) and free hosting that puts each
# user under a path (geocities.com/SiliconValley/1234). Their links are tokens with the
# path (``url:bit.ly/abc``); the domain itself never is. Hosting that gives each user
# a subdomain (x.blogspot.com) needs nothing here: the Public Suffix List's private
# section already makes x.blogspot.com a registered domain of its own.
PATH_OWNED = frozenset("""
    bit.ly bitly.com tinyurl.com t.co goo.gl ow.ly is.gd buff.ly rebrand.ly cutt.ly
    tiny.cc shorturl.at rb.gy t.ly s.id lnkd.in
    geocities.com tripod.com angelfire.com
""".split())

# Fields a mailing list adds (RFC 2369, RFC 2919, Mailman, ezmlm); the list's own
# addresses and links in them are not the author's.
_LIST_HEADERS = frozenset(("list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe",
                           "list-archive", "list-owner", "x-beenthere", "x-mailing-list", "mailing-list"))
_LIST_SENDER = re.compile(r"\bowner-|-(?:admin|bounces|request|owner)@", re.I)
_RULER = re.compile(r"^[ \t]*(?:_{20,}|-{20,})[ \t]*$", re.M)
_FOOTER_CHARS = 1500
_QUOTED_LINE = re.compile(r"[ \t]*(?:>|[|)][ \t>])|[ \t]*(?:from|to|cc|reply-to|sender|return-path)[ \t]*:", re.I)

_RECIPIENT_HEADERS = ("to", "cc", "delivered-to", "x-original-to", "envelope-to")

# the same hosts come back message after message; the list lookup is the costliest step
registered_domain = functools.lru_cache(maxsize=65536)(_psl_registered_domain)
_REPLY_HEADERS = ("reply-to",)


# ---------------------------------------------------------------- hashes for the wallets

_KECCAK_RC = [
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008]
_KECCAK_ROT = [[0, 36, 3, 41, 18], [1, 44, 10, 45, 2], [62, 6, 43, 15, 61],
               [28, 55, 25, 21, 56], [27, 20, 39, 8, 14]]
_M64 = (1 << 64) - 1


def _keccak_f(a: list[list[int]]) -> None:
    for rc in _KECCAK_RC:
        c = [a[x][0] ^ a[x][1] ^ a[x][2] ^ a[x][3] ^ a[x][4] for x in range(5)]
        d = [c[(x - 1) % 5] ^ (((c[(x + 1) % 5] << 1) | (c[(x + 1) % 5] >> 63)) & _M64) for x in range(5)]
        for x in range(5):
            for y in range(5):
                a[x][y] ^= d[x]
        b = [[0] * 5 for _ in range(5)]
        for x in range(5):
            for y in range(5):
                r = _KECCAK_ROT[x][y]
                v = a[x][y]
                b[y][(2 * x + 3 * y) % 5] = ((v << r) | (v >> (64 - r))) & _M64 if r else v
        for x in range(5):
            for y in range(5):
                a[x][y] = b[x][y] ^ ((~b[(x + 1) % 5][y]) & b[(x + 2) % 5][y])
        a[0][0] ^= rc


def keccak256(data: bytes) -> bytes:
    """Keccak-256 as Ethereum and Monero use it (the original padding 0x01, not SHA3's
    0x06, so ``hashlib.sha3_256`` does not do). Pure Python: a few hundred microseconds,
    spent only on a candidate address."""
    rate = 136
    msg = bytearray(data) + b"\x01" + b"\x00" * ((-len(data) - 1) % rate)
    msg[-1] |= 0x80
    a = [[0] * 5 for _ in range(5)]
    for off in range(0, len(msg), rate):
        block = msg[off:off + rate]
        for i in range(rate // 8):
            a[i % 5][i // 5] ^= int.from_bytes(block[8 * i:8 * i + 8], "little")
        _keccak_f(a)
    out = b"".join(a[i % 5][i // 5].to_bytes(8, "little") for i in range(4))
    return out


# ---------------------------------------------------------------- wallet validation

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def _b58int(s: str) -> int | None:
    """The base58 digits of ``s`` as a number (None: a character outside the alphabet)."""
    n = 0
    for ch in s:
        v = _B58_INDEX.get(ch)
        if v is None:
            return None
        n = n * 58 + v
    return n


def _b58decode(s: str) -> bytes | None:
    n = _b58int(s)
    if n is None:
        return None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(s) - len(s.lstrip("1"))
    return b"\x00" * pad + body


def _valid_base58check(addr: str) -> bool:
    raw = _b58decode(addr)
    if raw is None or len(raw) != 25 or raw[0] not in (0x00, 0x05):
        return False   # mainnet P2PKH (version 0, '1...') or P2SH (version 5, '3...')
    return hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4] == raw[21:]


_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_BECH32_CONST, _BECH32M_CONST = 1, 0x2BC830A3


def _bech32_polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _BECH32_GEN[i] if (top >> i) & 1 else 0
    return chk


def _convertbits(data: list[int], frombits: int, tobits: int) -> list[int] | None:
    acc = bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for v in data:
        acc = (acc << frombits) | v
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if bits >= frombits or ((acc << (tobits - bits)) & maxv):
        return None
    return out


def _valid_segwit(addr: str) -> bool:
    """BIP 173 (bech32, witness v0) and BIP 350 (bech32m, v1+) mainnet addresses."""
    if addr.lower() != addr and addr.upper() != addr:
        return False       # mixed case is invalid bech32
    addr = addr.lower()
    if len(addr) > 90 or not addr.startswith("bc1"):
        return False
    data = [_BECH32_CHARSET.find(c) for c in addr[3:]]
    if len(data) < 7 or -1 in data:
        return False
    hrp = [ord(c) >> 5 for c in "bc"] + [0] + [ord(c) & 31 for c in "bc"]
    const = _bech32_polymod(hrp + data)
    version = data[0]
    if version > 16 or const != (_BECH32_CONST if version == 0 else _BECH32M_CONST):
        return False
    prog = _convertbits(data[1:-6], 5, 8)
    if prog is None or not 2 <= len(prog) <= 40:
        return False
    return version != 0 or len(prog) in (20, 32)


def valid_btc(addr: str) -> bool:
    """A Bitcoin mainnet address whose checksum holds (P2PKH, P2SH, segwit v0/v1+)."""
    if addr[:3].lower() == "bc1":
        return _valid_segwit(addr)
    return addr[:1] in ("1", "3") and _valid_base58check(addr)


def valid_eth(addr: str) -> bool:
    """``0x`` + 40 hex digits; when the digits mix cases, their EIP-55 checksum must hold
    (all-lower or all-upper addresses carry no checksum and are taken as they are)."""
    if len(addr) != 42 or addr[:2] not in ("0x", "0X"):
        return False
    digits = addr[2:]
    if any(c not in "0123456789abcdefABCDEF" for c in digits):
        return False
    if digits == digits.lower() or digits == digits.upper():
        return int(digits, 16) != 0
    h = keccak256(digits.lower().encode()).hex()
    return all((c.upper() if int(h[i], 16) >= 8 else c.lower()) == c for i, c in enumerate(digits))


_XMR_BLOCK_CHARS = [0, 2, 3, 5, 6, 7, 9, 10, 11]   # encoded length of a 0..8-byte block


def _xmr_b58decode(s: str) -> bytes | None:
    out = bytearray()
    for i in range(0, len(s), 11):
        chunk = s[i:i + 11]
        try:
            nbytes = _XMR_BLOCK_CHARS.index(len(chunk))
        except ValueError:
            return None
        n = _b58int(chunk)
        if n is None or n >> (8 * nbytes):
            return None
        out += n.to_bytes(nbytes, "big")
    return bytes(out)


def valid_xmr(addr: str) -> bool:
    """A Monero mainnet address (standard '4', subaddress '8', integrated '4' of 106
    characters) whose Keccak-256 checksum holds."""
    if len(addr) not in (95, 106):
        return False
    raw = _xmr_b58decode(addr)
    if raw is None or len(raw) not in (69, 77):
        return False
    netbyte = raw[0]
    if (len(raw) == 69 and netbyte not in (18, 42)) or (len(raw) == 77 and netbyte != 19):
        return False
    return keccak256(raw[:-4])[:4] == raw[-4:]


# Each starts with a character class so that the regex engine skips to candidates fast;
# that the character before a match is not alphanumeric is checked by hand (_clean_left).
_BTC_CAND = re.compile(r"(?:[13][1-9A-HJ-NP-Za-km-z]{25,34}|(?i:bc1)[02-9ac-hj-np-zAC-HJ-NP-Z]{8,87})(?![A-Za-z0-9])")
_ETH_CAND = re.compile(r"0[xX][0-9a-fA-F]{40}(?![A-Za-z0-9])")
_XMR_CAND = re.compile(r"[48][1-9A-HJ-NP-Za-km-z]{94}(?:[1-9A-HJ-NP-Za-km-z]{11})?(?![A-Za-z0-9])")


def _clean_left(text: str, start: int) -> bool:
    return start == 0 or not text[start - 1].isascii() or not text[start - 1].isalnum()


def find_wallets(text: str, limit: int = 20) -> list[str]:
    """Wallet tokens (``btc:``, ``eth:``, ``xmr:``) of the addresses in ``text`` whose
    checksums hold; random strings of the right alphabet do not pass."""
    out: list[str] = []
    # an address is one run of letters and digits of 26 or more: only words that long
    # can hold one, and they are rare in text (joined by spaces, their edges stay edges)
    text = " ".join(w for w in text.split() if len(w) >= 26)
    if not text:
        return out
    for m in _BTC_CAND.finditer(text):
        a = m.group()
        if _clean_left(text, m.start()) and valid_btc(a):
            out.append("btc:" + (a.lower() if a[:3].lower() == "bc1" else a))
    if "0x" in text or "0X" in text:
        for m in _ETH_CAND.finditer(text):
            if _clean_left(text, m.start()) and valid_eth(m.group()):
                out.append("eth:0x" + m.group()[2:].lower())
    for m in _XMR_CAND.finditer(text):
        if _clean_left(text, m.start()) and valid_xmr(m.group()):
            out.append("xmr:" + m.group())
    return out[:limit]


# ---------------------------------------------------------------- phones

# International form: '+' or '00', a country code, groups with single separators; a
# "(0)" trunk prefix is dropped (+44 (0)20 ... is +44 20 ...).
_PHONE_INTL = re.compile(r"(?:\+|00(?=[1-9]))[1-9][0-9]{0,2}"
                         r"(?:[ .-]?(?:\(0\)[ .-]?)?\(?[0-9]{1,5}\)?){2,6}(?![\w]|[.-][0-9])")
# North American numbering plan: NXX-NXX-XXXX, the area code in parentheses or
# separated; an optional leading "1" is looked for by hand (the patterns start with a
# character class so that the regex engine skips to candidates fast).
_PHONE_NANP = re.compile(r"(?:\(([2-9][0-9]{2})\)[ .-]?|([2-9][0-9]{2})[ .-])"
                         r"([2-9][0-9]{2})[ .-]([0-9]{4})(?![\w]|[.-][0-9])")


def _left_edge(text: str, start: int, also: str) -> bool:
    """No word character (nor one of ``also``) right before ``start``."""
    if start == 0:
        return True
    c = text[start - 1]
    return not (c.isalnum() or c == "_" or c in also)


def find_phones(text: str, limit: int = 30) -> list[str]:
    """Phone numbers in E.164 (``+18005551234``) that can be normalised without guessing
    the country; see the module docstring for what is left out and why."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    if "+" in text or "00" in text:
        for m in _PHONE_INTL.finditer(text):
            if not _left_edge(text, m.start(), "+"):
                continue
            cand = m.group().replace("(0)", "")
            digits = re.sub(r"\D", "", cand)
            if cand.startswith("00"):
                digits = digits[2:]
            if 8 <= len(digits) <= 15:
                out.append("+" + digits)
                spans.append(m.span())
    for m in _PHONE_NANP.finditer(text):
        start = m.start()
        if start >= 2 and text[start - 1] in " .-" and text[start - 2] == "1":
            start -= 2                     # 1-800-...
        elif start >= 1 and text[start - 1] == "1":
            start -= 1                     # 1(800)...
        if not _left_edge(text, start, "+.-") or any(a <= start < b for a, b in spans):
            continue
        area = m.group(1) or m.group(2)
        out.append(f"+1{area}{m.group(3)}{m.group(4)}")
    return out[:limit]


# ---------------------------------------------------------------- token extraction

def _host_of(url: str) -> str:
    u = url.strip()
    if "://" not in u[:12]:
        u = "http://" + u
    try:
        host = urlsplit(u).hostname or ""
    except ValueError:
        return ""
    host = unquote(host).strip(".").lower()
    if host and not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return host


_HAS_LETTER = re.compile(r"[g-zG-Z]")


def _public_ip(text: str) -> str | None:
    if ":" not in text and _HAS_LETTER.search(text):
        return None                           # a host name: no need to ask ipaddress
    try:
        if text.isdigit():                    # http://3232235777/ is a dotted quad in disguise
            n = int(text)
            if n >= 2 ** 32:
                return None
            ip = ipaddress.IPv4Address(n)
        else:
            ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    return str(ip) if ip.is_global else None


def _recipients(features: MessageFeatures) -> tuple[set[str], set[str]]:
    addrs: set[str] = set()
    for name, value in features.headers:
        if name.lower() in _RECIPIENT_HEADERS:
            for _, a in parse_addresses(value):
                if "@" in a:
                    addrs.add(a.lower())
    domains = {d for d in (registered_domain(a.rsplit("@", 1)[1]) for a in addrs) if d}
    return addrs, domains


def _via_list(features: MessageFeatures) -> bool:
    """Did a mailing list relay this message (RFC 2369/2919 fields, Mailman's
    X-BeenThere, Majordomo's Sender: owner-...)?"""
    for name, value in features.headers:
        lname = name.lower()
        if lname in _LIST_HEADERS:
            return True
        if lname == "precedence" and value.strip().lower() == "list":
            return True
        if lname == "sender" and _LIST_SENDER.search(value):
            return True
    return False


def _list_footer(text: str) -> str:
    """What a list appended to the body: from the first ruler line (20 or more '_' or
    '-', as Mailman's and SourceForge's footers begin) in the last ``_FOOTER_CHARS``
    characters. Cuts a signature below such a ruler too, which costs nothing: a
    message's own tokens are rarely in its signature."""
    tail_start = max(0, len(text) - _FOOTER_CHARS)
    m = _RULER.search(text, tail_start)
    return text[m.start():] if m else ""


def _url_token(url: str) -> tuple[str, str] | None:
    """('ip' | 'url' | 'host' | 'email' | 'phone', value) for a link."""
    scheme = url[:7].lower()
    if scheme == "mailto:":
        addr = unquote(url[7:].split("?", 1)[0]).strip().lower()
        return ("email", addr) if find_emails(addr) == [addr] else None
    if scheme[:4] == "tel:":
        phones = find_phones(unquote(url[4:]))
        return ("phone", phones[0]) if phones else None
    host = _host_of(url)
    if not host:
        return None
    ip = _public_ip(host)
    if ip:
        return "ip", ip
    dom = registered_domain(host)
    if dom in PATH_OWNED:
        path = urlsplit(url if "://" in url[:12] else "http://" + url).path.strip("/")
        return ("url", f"{dom}/{path[:100]}") if path else None
    return "host", host


def _raw_tokens(urls: Iterable[str], emails: Iterable[str], ips: Iterable[str], text: str):
    """(kind, value) candidates before the allowlists: kind is ip, url, host, email,
    phone or wallet (the value of a wallet is its whole token)."""
    for url in urls:
        t = _url_token(url)
        if t:
            yield t
    for addr in emails:
        yield "email", addr
    for text_ip in ips:
        ip = _public_ip(text_ip)
        if ip:
            yield "ip", ip
    for phone in find_phones(text):
        yield "phone", phone
    for wallet in find_wallets(text):
        yield "wallet", wallet


def _text_candidates(text: str):
    return _raw_tokens(find_urls(text), find_emails(text), find_ips(text), text)


def _with_domains(cands) -> set[tuple[str, str]]:
    """The candidates plus the ('domain', registered domain) of each host and address."""
    out = set()
    for kind, value in cands:
        out.add((kind, value))
        host = value if kind == "host" else value.rsplit("@", 1)[1] if kind == "email" else None
        if host:
            dom = registered_domain(host)
            if dom:
                out.add(("domain", dom))
    return out


def _split_quoted(text: str) -> tuple[str, str]:
    """(the author's own lines, quoted lines): lines quoted with '>' (or '|', ')') and
    header-like lines of a quoted or forwarded message ("From: x@y")."""
    if ">" not in text and ":" not in text:
        return text, ""
    own, quoted = [], []
    for line in text.split("\n"):
        (quoted if _QUOTED_LINE.match(line) else own).append(line)
    return "\n".join(own), "\n".join(quoted)


def ucepp_tokens(features: MessageFeatures, allow_domains: Iterable[str] = (),
                 limit: int = DEFAULTS.max_tokens_per_message) -> list[str]:
    """The message's UCEPP tokens, each once, in a stable order, at most ``limit``.

    ``allow_domains`` adds registered domains to ``BUILTIN_ALLOW``. Left out: the
    recipients' addresses and domains, and, in a message a mailing list relayed,
    whatever the list itself names (its List-* fields and the footer it appends):
    those are the list's details, not the author's, and a list that relays one spam
    campaign would otherwise teach its own footer as a spam sign.
    """
    allow = BUILTIN_ALLOW | {d.lower().strip(".") for d in allow_domains}
    own_addrs, own_domains = _recipients(features)
    text = features.text
    emails = list(features.emails)
    for name, value in features.headers:
        if name.lower() in _REPLY_HEADERS:
            emails.extend(a.lower() for _, a in parse_addresses(value) if "@" in a)
    # details in text the author quotes or a list appends are someone else's: they are
    # left out unless the author's own text has them too
    own, foreign = _split_quoted(text)
    if _via_list(features):
        footer = _list_footer(own)
        if footer:
            own = own[: len(own) - len(footer)]
        foreign = "\n".join([foreign, footer] + [v for n, v in features.headers
                                                  if n.lower() in _LIST_HEADERS or n.lower() == "sender"])
    excluded: set[tuple[str, str]] = set()
    if foreign.strip():
        excluded = _with_domains(_text_candidates(foreign)) - _with_domains(_text_candidates(own))
    text = own

    out: dict[str, None] = {}

    def add_domain(host: str) -> None:
        dom = registered_domain(host)
        if dom and dom not in allow and dom not in own_domains and ("domain", dom) not in excluded:
            out.setdefault("domain:" + dom)

    for kind, value in _raw_tokens(features.urls, emails, features.ips, text):
        if (kind, value) in excluded:
            continue
        if kind == "host":
            add_domain(value)
        elif kind == "email":
            if value in own_addrs:
                continue
            out.setdefault("email:" + value)
            add_domain(value.rsplit("@", 1)[1])
        elif kind == "wallet":
            out.setdefault(value)
        else:
            out.setdefault(f"{kind}:{value}")
    return list(out)[:limit]


# ---------------------------------------------------------------- the store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    token  TEXT PRIMARY KEY,
    spam   REAL NOT NULL,
    ham    REAL NOT NULL,
    weight REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_weight ON tokens(weight);
"""
# 2**200 keeps a count of 1e100 far from float overflow (1.8e308)
_MAX_EXPONENT = 200.0


class UceppStore:
    """Per-token spam and ham counts with exponential decay, in SQLite.

    ``path`` is a file (":memory:" for a throwaway store). ``clock`` returns the time in
    seconds since the epoch; tests inject a fake one. Every method takes an optional
    ``now`` that overrides the clock for that call (replaying a corpus by its dates).
    """

    def __init__(self, path: str | os.PathLike, *, half_life_days: float = DEFAULTS.half_life_days,
                 floor: float = DEFAULTS.floor, max_rows: int = DEFAULTS.max_rows,
                 purge_every: int = 1000, allow_domains: Iterable[str] = (),
                 max_tokens_per_message: int = DEFAULTS.max_tokens_per_message,
                 clock: Callable[[], float] = time.time):
        if half_life_days <= 0:
            raise ValueError("half_life_days must be positive")
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.path = os.fspath(path)
        self.half_life_days = float(half_life_days)
        self.floor = float(floor)
        self.max_rows = int(max_rows)
        self.purge_every = int(purge_every)
        self.allow_domains = frozenset(d.lower().strip(".") for d in allow_domains)
        self.max_tokens_per_message = int(max_tokens_per_message)
        self.clock = clock
        self._lock = threading.Lock()
        self._learned = 0
        try:
            self._db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
            with self._db:
                self._db.executescript(_SCHEMA)
            self._load_meta()
        except sqlite3.Error as e:
            # a store that cannot be opened disables the check; it never stops the scorer
            reason = f"token store {self.path}: {e}"
            disabled(CLASSIFICATION, reason)
            raise Disabled(reason) from None

    # -- time and scale

    @property
    def _half_life(self) -> float:
        return self.half_life_days * DAY

    def _now(self, now: float | None) -> float:
        return float(self.clock() if now is None else now)

    def _load_meta(self) -> None:
        now = self._now(None)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
            if "epoch" not in meta:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)",
                                     [("epoch", now), ("half_life", self._half_life)])
                self._epoch = now
            else:
                self._epoch = meta["epoch"]
                old = meta.get("half_life", self._half_life)
                if old != self._half_life:
                    # bring every count to `now` with the old half-life; at the new epoch a
                    # stored value is the count itself, whatever the half-life
                    self._rescale(now, old)
                    self._db.execute("UPDATE meta SET value = ? WHERE key = 'half_life'", (self._half_life,))
                    log_event(log, "ucepp_half_life_changed", old_days=old / DAY,
                              new_days=self.half_life_days)

    def _rescale(self, new_epoch: float, half_life: float) -> None:
        """Move the epoch to ``new_epoch`` (inside a transaction). The exponent is
        clamped as in ``_scale``: a store made on today's clock and then fed mail dated
        decades back (a replay of an old corpus) would otherwise overflow the float."""
        x = (self._epoch - new_epoch) / half_life
        factor = 2.0 ** min(max(x, -_MAX_EXPONENT), _MAX_EXPONENT)
        self._db.execute("UPDATE tokens SET spam = spam * ?, ham = ham * ?, weight = weight * ?",
                         (factor, factor, factor))
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (new_epoch,))
        self._epoch = new_epoch

    def _refresh_epoch(self) -> None:
        # another process may have moved the epoch
        row = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row:
            self._epoch = row[0]

    def _scale(self, now: float) -> float:
        """2 ** ((now - epoch) / half_life), the exponent clamped so that a clock
        thrown far backwards cannot overflow (its reports then count as made at
        epoch - 200 half-lives, which is to say hardly at all)."""
        x = (now - self._epoch) / self._half_life
        return 2.0 ** min(max(x, -_MAX_EXPONENT), _MAX_EXPONENT)

    # -- tokens

    def tokens(self, features: MessageFeatures) -> list[str]:
        """The message's tokens, with this store's allowlist."""
        return ucepp_tokens(features, self.allow_domains, self.max_tokens_per_message)

    # -- learning

    def learn(self, features: MessageFeatures, label: str, now: float | None = None) -> list[str]:
        """Count the message's tokens (each once) as reported in ``label`` feedback;
        returns the tokens counted."""
        tokens = self.tokens(features)
        self.learn_tokens(tokens, label, now)
        return tokens

    def learn_tokens(self, tokens: Iterable[str], label: str, now: float | None = None) -> None:
        if label not in LABELS:
            raise ValueError(f"label must be 'spam' or 'ham', got {label!r}")
        tokens = list(dict.fromkeys(tokens))
        if not tokens:
            return
        now = self._now(now)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._refresh_epoch()
            x = (now - self._epoch) / self._half_life
            if x > _MAX_EXPONENT or (x < -_MAX_EXPONENT and
                                     self._db.execute("SELECT 1 FROM tokens LIMIT 1").fetchone() is None):
                # before the factor could overflow, or a store with nothing in it yet
                # (its epoch was set by the clock when it was created) meets a replay of
                # old dates: move the epoch, which costs one pass over the rows
                self._rescale(now, self._half_life)
            g = self._scale(now)
            ds, dh = (g, 0.0) if label == "spam" else (0.0, g)
            self._db.executemany(
                "INSERT INTO tokens (token, spam, ham, weight) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(token) DO UPDATE SET spam = spam + excluded.spam, ham = ham + excluded.ham, "
                "weight = max(spam + excluded.spam, ham + excluded.ham)",
                [(t, ds, dh, g) for t in tokens])
        self._learned += 1
        if self.purge_every and self._learned % self.purge_every == 0:
            self.purge(now)

    # -- reading

    def counts(self, tokens: Iterable[str], now: float | None = None) -> dict[str, tuple[float, float]]:
        """Decayed (spam, ham) counts at ``now`` of the tokens the store knows."""
        tokens = list(dict.fromkeys(tokens))
        if not tokens:
            return {}
        now = self._now(now)
        out: dict[str, tuple[float, float]] = {}
        with self._lock:
            self._refresh_epoch()
            # clamped like _scale, wider: a store left alone for years reads as decayed
            decay = 2.0 ** min(max((self._epoch - now) / self._half_life, -1000.0), 1000.0)
            for i in range(0, len(tokens), 500):
                chunk = tokens[i:i + 500]
                q = "SELECT token, spam, ham FROM tokens WHERE token IN (%s)" % ",".join("?" * len(chunk))
                for tok, s, h in self._db.execute(q, chunk):
                    out[tok] = (s * decay, h * decay)
        return out

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM tokens").fetchone()[0]

    # -- bounds

    def purge(self, now: float | None = None) -> int:
        """Drop the tokens whose decayed counts are all below ``floor``, then evict the
        weakest beyond ``max_rows`` (down to 90% of it, so that eviction does not run on
        every learn). Returns the number of rows removed."""
        now = self._now(now)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._refresh_epoch()
            removed = self._db.execute("DELETE FROM tokens WHERE weight < ?",
                                       (self.floor * self._scale(now),)).rowcount
            n = self._db.execute("SELECT count(*) FROM tokens").fetchone()[0]
            evicted = 0
            if n > self.max_rows:
                evicted = self._db.execute(
                    "DELETE FROM tokens WHERE token IN "
                    "(SELECT token FROM tokens ORDER BY weight LIMIT ?)",
                    (n - int(self.max_rows * 0.9),)).rowcount
        if removed or evicted:
            log_event(log, "ucepp_purge", decayed=removed, evicted=evicted, rows=n - evicted)
        return removed + evicted

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "UceppStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- the check

def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if x else "0"


def ucepp(features: MessageFeatures, store: UceppStore, *, min_spam: float = DEFAULTS.min_spam,
          max_ham_ratio: float = DEFAULTS.max_ham_ratio, weak_spam: float = DEFAULTS.weak_spam,
          now: float | None = None) -> Signal | None:
    """The UCEPP signal of a message, or None when none of its tokens has a spam record.

    A token counts when its decayed ham count is at most ``max_ham_ratio`` times its
    decayed spam count (with the default 0: no ham report at all) and its spam count
    reaches ``weak_spam``; the message is decided when a counting token's spam count
    reaches ``min_spam``. ``strength`` is log2(1 + spam count) of the strongest token,
    so that a campaign reported a hundred times does not outweigh everything else in
    the combined score. Evidence names up to three tokens with their counts.
    """
    tokens = store.tokens(features)
    if not tokens:
        return None
    counts = store.counts(tokens, now)
    hits = []
    for tok in tokens:
        s, h = counts.get(tok, (0.0, 0.0))
        if s >= weak_spam and h <= max_ham_ratio * s:
            hits.append((s, h, tok))
    if not hits:
        return None
    hits.sort(key=lambda x: (-x[0], x[2]))
    best = hits[0][0]
    hl = _fmt(store.half_life_days)
    evidence = tuple(f"{tok} seen in {_fmt(s)} spam, {_fmt(h)} ham (half-life {hl} d)"
                     for s, h, tok in hits[:3])
    return Signal(CLASSIFICATION, strength=math.log2(1.0 + best), decides=best >= min_spam,
                  evidence=evidence)
