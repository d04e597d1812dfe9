"""``safebrowsing``: the message's URLs checked against a local threat list in the Safe
Browsing format.

How a URL is checked is Google Safe Browsing v4's "URLs and Hashing"
(https://developers.google.com/safe-browsing/v4/urls-hashing), implemented exactly:

1. ``canonicalize``: strip surrounding whitespace, remove tab/CR/LF, drop the fragment,
   percent-unescape repeatedly until nothing changes, then take the host (no userinfo,
   no port; IDN to punycode; dots trimmed and collapsed; any legal IPv4 spelling --
   decimal, octal, hex, fewer than four parts -- to dotted quad; bracketed IPv6
   compressed; lower case) and the path (``/./`` and ``/../`` resolved, runs of ``/``
   collapsed; the query is left alone), and percent-escape every byte <= 0x20, >= 0x7F,
   ``#`` and ``%`` with upper-case hex.
2. ``expressions``: up to 5 host suffixes (the exact host, then up to four formed from
   the last five labels, never the top-level label alone; an IP address only as itself)
   times up to 6 path prefixes (the exact path with the query, without it, and ``/``
   plus up to three leading directories).
3. SHA-256 of each expression; the list holds hash prefixes of 4 to 32 bytes.

Where the reference client (github.com/google/safebrowsing ``urls.go``) and the
document disagree, the document wins, since its examples are the published test
vectors: the query is kept (``/q?`` stays ``/q?``), at most five hosts are tried (the Go
client tries seven), escapes are upper case, and an IPv4 part out of range
(``276.2.3``) makes the host a name, as ``inet_aton`` does, instead of wrapping.

The list file (an example with every form: ``tests/data/safebrowsing.example.txt``)
is UTF-8 text, one entry per line, ``#`` starts a comment, blank lines are ignored:

    <hash> <THREAT_TYPE>              8..64 hex digits: a 4..32-byte SHA-256 prefix
    expr:<expression> <THREAT_TYPE>   an expression such as evil.test/login/ or
                                      evil.test/, hashed (all 32 bytes) at load

``THREAT_TYPE`` is one word (Safe Browsing's are MALWARE, SOCIAL_ENGINEERING,
UNWANTED_SOFTWARE, POTENTIALLY_HARMFUL_APPLICATION; any ``[A-Za-z0-9_]+`` is accepted
and kept upper-cased). The expression after ``expr:`` is canonicalised as the host and
path of an ``http://`` URL, so ``expr:Evil.TEST`` is ``evil.test/``.

What a hit means. In Safe Browsing proper, a prefix hit is only a candidate that the
server confirms with full hashes. Here the list is the admin's own and there is no
server, so:
- a full 32-byte hash decides when it equals an expression's hash;
- a shorter prefix that the file also "confirms" (the file holds full hashes starting
  with it) decides only through those full hashes, as the server would;
- a prefix with no full hash under it decides on its own. Short prefixes of a large
  list do collide: with N 4-byte prefixes, each URL (up to 30 expressions) hits one by
  chance with probability about 30 * N / 2**32, i.e. 1 in 14 000 URLs for N = 10 000.
  Lists meant to decide alone should carry full hashes or long prefixes.

The file is re-read when its modification time, size or inode changes (checked on
every ``check``: one ``stat``). A file that cannot be loaded the first time disables
the check (``Disabled``, logged with the reason); a later bad version is logged and the
last good list stays in use, as Rspamd keeps a map whose update fails.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from typing import Iterable

import idna

from .base import Disabled, Signal, disabled

__all__ = ["Match", "SafeBrowsingList", "canonicalize", "expressions", "full_hashes",
           "parse_ipv4", "safebrowsing"]

log = logging.getLogger("mailsift.reputation.safebrowsing")

CHECK = "safebrowsing"

# Distinct URLs checked per message: each costs up to 30 SHA-256 (about 30 us); the
# parser already caps a message at 400 URLs, this keeps the worst case near 6 ms.
MAX_URLS = 200

_MAX_HOSTS = 5      # the spec: the exact host plus up to four suffixes
_MAX_LABELS = 5     # ... "starting with the last five components"
_MAX_PREFIXES = 4   # the spec: "/" plus successive directories, four paths in all

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_SCHEME = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*):")
_PORT_AFTER_COLON = re.compile(rb":[0-9]+(?:/|$)")
_DOTS = re.compile(rb"\.{2,}")
_NEEDS_ESCAPE = re.compile(rb"[\x00-\x20\x7f-\xff#%]")
_THREAT = re.compile(r"[A-Za-z0-9_]+")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_WHITESPACE = bytes(range(0x21))


# ---------------------------------------------------------------- canonicalisation

def _unescape_once(data: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), data)


def _unescape(data: bytes) -> bytes:
    # Every round that changes something makes the string shorter, so this ends.
    while True:
        out = _unescape_once(data)
        if out == data:
            return data
        data = out


def _escape(data: bytes) -> str:
    return _NEEDS_ESCAPE.sub(lambda m: b"%%%02X" % m.group()[0], data).decode("ascii")


def parse_ipv4(host: str) -> str | None:
    """The dotted quad of any legal IPv4 spelling (``inet_aton``), else None.

    One to four parts; each decimal, octal (leading 0) or hex (0x); the last part fills
    the bytes left ("3279880203" is 195.127.0.11, "12.0x12.01234" is 12.18.2.156).
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        low = part.lower()
        try:
            if low.startswith("0x"):
                value = int(low[2:], 16) if len(low) > 2 else 0
            elif low.startswith("0") and len(low) > 1:
                value = int(low[1:], 8)
            elif low.isdigit() and low.isascii():
                value = int(low)
            else:
                return None
        except ValueError:
            return None
        values.append(value)
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return str(ipaddress.IPv4Address(number))


def _idna(host: bytes) -> bytes:
    """A host with non-ASCII bytes as punycode when it is valid UTF-8 and a valid IDN;
    otherwise unchanged (its bytes are then percent-escaped, as in ``\\x01\\x80.com``)."""
    if host.isascii():
        return host
    try:
        return idna.encode(host.decode("utf-8"), uts46=True)
    except (UnicodeError, ValueError):   # idna.IDNAError is a UnicodeError
        return host


def _canonical_host(host: bytes) -> bytes | None:
    host = host.rpartition(b"@")[2]                  # no userinfo
    if host.startswith(b"["):
        end = host.find(b"]")
        if end == -1:
            return None
        literal = host[1:end]
        try:
            return b"[" + ipaddress.IPv6Address(literal.decode("ascii")).compressed.encode() + b"]"
        except (ValueError, UnicodeDecodeError):
            return b"[" + literal.lower() + b"]"
    colon = host.rfind(b":")
    if colon != -1 and host[colon + 1:].isdigit() or host.endswith(b":"):
        host = host[:colon]                          # no port
    host = _idna(host)
    host = _DOTS.sub(b".", host).strip(b".")
    if not host:
        return None
    if host.isascii():
        ip = parse_ipv4(host.decode("ascii"))
        if ip is not None:
            return ip.encode("ascii")
    return host.lower()


def _canonical_path(path: bytes) -> bytes:
    """RFC 3986 dot-segment removal plus collapsed slashes: ``/a/./b/../c//d`` is
    ``/a/c/d``; a path ending in a ``.``/``..`` segment ends in ``/``."""
    segments = path.split(b"/")
    out: list[bytes] = []
    for seg in segments:
        if seg in (b"", b"."):
            continue
        if seg == b"..":
            if out:
                out.pop()
            continue
        out.append(seg)
    trailing = bool(segments) and segments[-1] in (b"", b".", b"..")
    if not out:
        return b"/"
    return b"/" + b"/".join(out) + (b"/" if trailing else b"")


@dataclass(frozen=True, slots=True)
class _Parts:
    scheme: str
    host: str
    path: str
    query: str | None      # None: no "?" at all; "": a bare "?"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}" + ("" if self.query is None else "?" + self.query)


def _parse(url: str | bytes) -> _Parts | None:
    raw = url if isinstance(url, bytes) else url.encode("utf-8", "surrogatepass")
    raw = raw.strip(_WHITESPACE)
    raw = raw.replace(b"\t", b"").replace(b"\r", b"").replace(b"\n", b"")
    raw = raw.partition(b"#")[0]
    raw = _unescape(raw)
    scheme = b"http"
    m = _SCHEME.match(raw)
    if m and not _PORT_AFTER_COLON.match(raw, m.end() - 1):
        # "www.example.com:80/" has no scheme: what follows the ':' is a port
        if not raw.startswith(b"//", m.end()):
            return None                              # mailto:, cid:, ... : not a web URL
        scheme = m.group(1).lower()
        raw = raw[m.end() + 2:]
    raw, question, query = raw.partition(b"?")
    slash = raw.find(b"/")
    hostish, path = (raw, b"") if slash == -1 else (raw[:slash], raw[slash:])
    host = _canonical_host(hostish)
    if host is None:
        return None
    return _Parts(scheme.decode("ascii", "replace"), _escape(host), _escape(_canonical_path(path)),
                  _escape(query) if question else None)


def canonicalize(url: str | bytes) -> str | None:
    """The Safe Browsing canonical form of ``url``, or None when it has no host or is
    not a web URL (``mailto:``, a relative link). A ``str`` is taken as UTF-8; give
    ``bytes`` to canonicalise bytes that are not (the spec's ``http://\\x01\\x80.com/``)."""
    parts = _parse(url)
    return None if parts is None else parts.url


def _host_suffixes(host: str) -> list[str]:
    if host.startswith("["):
        return [host]
    try:
        ipaddress.IPv4Address(host)
        return [host]
    except ValueError:
        pass
    labels = host.split(".")[-_MAX_LABELS:]
    hosts = [host]
    for i in range(len(labels) - 1):                 # never the top-level label alone
        suffix = ".".join(labels[i:])
        if suffix not in hosts:
            hosts.append(suffix)
    return hosts[:_MAX_HOSTS]


def _path_prefixes(path: str, query: str | None) -> list[str]:
    paths = []
    if query:
        paths.append(f"{path}?{query}")
    paths.append(path)
    dirs = path.split("/")[1:-1]
    for i in range(min(len(dirs) + 1, _MAX_PREFIXES)):
        prefix = "/" + "".join(d + "/" for d in dirs[:i])
        if prefix not in paths:
            paths.append(prefix)
    return paths


def expressions(url: str | bytes) -> list[str]:
    """The host-suffix/path-prefix expressions of ``url`` (at most 5 x 6), most
    specific first; [] when it cannot be canonicalised."""
    parts = _parse(url)
    if parts is None:
        return []
    paths = _path_prefixes(parts.path, parts.query)
    return [h + p for h in _host_suffixes(parts.host) for p in paths]


def full_hashes(url: str | bytes) -> dict[bytes, str]:
    """SHA-256 of each expression of ``url``: {hash: expression}."""
    return {hashlib.sha256(e.encode("ascii")).digest(): e for e in expressions(url)}


# ---------------------------------------------------------------- the list

@dataclass(frozen=True, slots=True)
class Match:
    """``url`` has an expression whose hash the list holds: ``entry`` is the list's hash
    (hex) that matched, 64 digits for a full hash, fewer for a prefix."""

    url: str
    expression: str
    threat_type: str
    entry: str

    @property
    def full_hash(self) -> bool:
        return len(self.entry) == 64


@dataclass(frozen=True, slots=True)
class _Tables:
    by_length: dict[int, dict[bytes, tuple[str, ...]]]   # prefix length -> prefix -> threats
    confirmed: dict[int, frozenset[bytes]]                # prefixes with full hashes under them
    entries: int


class SafeBrowsingList:
    """A threat list file, loaded and kept current. Build it with ``load(path)``."""

    def __init__(self, path: str | os.PathLike, tables: _Tables, stamp: tuple):
        self.path = os.fspath(path)
        self._tables = tables
        self._stamp = stamp
        self._failed: str | None = None     # the last reload error, said once
        self._bad_stamp: tuple | None = None  # the version that failed, not read again

    def __repr__(self) -> str:
        return f"SafeBrowsingList({self.path!r}, entries={len(self)})"

    def __len__(self) -> int:
        return self._tables.entries

    @classmethod
    def load(cls, path: str | os.PathLike) -> SafeBrowsingList:
        """Read the list; raise ``Disabled`` (after logging the reason) when it cannot."""
        path = os.fspath(path)
        try:
            stamp = _stamp(path)
            tables = _read(path)
        except (OSError, ValueError) as e:
            reason = f"{path}: {e}"
            disabled(CHECK, reason)
            raise Disabled(reason) from e
        return cls(path, tables, stamp)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when a new version was loaded. A new
        version that fails to load is logged and the current list kept."""
        stamp = None
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp or stamp == self._bad_stamp:
                return False
            tables = _read(self.path)
        except (OSError, ValueError) as e:
            # A bad version is read once (not once per message) and said once.
            self._bad_stamp = stamp
            if self._failed != str(e):
                self._failed = str(e)
                log.warning("safebrowsing list not reloaded, keeping the last good one",
                            extra={"fields": {"event": "list_reload_failed", "check": CHECK,
                                              "reason": f"{self.path}: {e}"}})
            return False
        self._tables, self._stamp, self._failed, self._bad_stamp = tables, stamp, None, None
        log.info("safebrowsing list reloaded", extra={"fields": {
            "event": "list_reloaded", "check": CHECK, "entries": tables.entries}})
        return True

    def check(self, urls: Iterable[str], *, max_urls: int = MAX_URLS) -> list[Match]:
        """The matches of ``urls`` (the first ``max_urls`` distinct ones), in URL order."""
        self.refresh()
        tables = self._tables
        if not tables.entries:
            return []
        lengths = sorted(tables.by_length)
        matches: list[Match] = []
        seen: set[str] = set()
        for url in urls:
            if url in seen:
                continue
            seen.add(url)
            if len(seen) > max_urls:
                break
            for digest, expression in full_hashes(url).items():
                for length in lengths:
                    prefix = digest[:length]
                    threats = tables.by_length[length].get(prefix)
                    if threats is None:
                        continue
                    if length < 32 and prefix in tables.confirmed.get(length, ()):
                        continue             # decided by the full hashes under it
                    matches.extend(Match(url, expression, t, prefix.hex()) for t in threats)
        return matches


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read(path: str) -> _Tables:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    by_length: dict[int, dict[bytes, tuple[str, ...]]] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line.startswith("#"):
            continue
        # a comment after an entry starts at " #": an expression holds '#' only as %23
        line = re.split(r"\s#", line, maxsplit=1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"line {number}: expected '<hash> <THREAT_TYPE>' or "
                             f"'expr:<expression> <THREAT_TYPE>', got {line[:80]!r}")
        key, threat = fields
        if not _THREAT.fullmatch(threat):
            raise ValueError(f"line {number}: bad threat type {threat[:40]!r}")
        if key.startswith("expr:"):
            expression = _expression(key[5:])
            if expression is None:
                raise ValueError(f"line {number}: bad expression {key[5:80]!r}")
            prefix = hashlib.sha256(expression.encode("ascii")).digest()
        else:
            if not _HEX.fullmatch(key) or len(key) % 2 or not 8 <= len(key) <= 64:
                raise ValueError(f"line {number}: a hash is 8 to 64 hex digits "
                                 f"(4 to 32 bytes), got {key[:70]!r}")
            prefix = bytes.fromhex(key)
        table = by_length.setdefault(len(prefix), {})
        threats = table.get(prefix, ())
        if threat.upper() not in threats:
            table[prefix] = threats + (threat.upper(),)
    full = by_length.get(32, {})
    confirmed = {length: frozenset(h[:length] for h in full if h[:length] in table)
                 for length, table in by_length.items() if length < 32}
    return _Tables(by_length, confirmed, sum(len(t) for t in by_length.values()))


def _expression(text: str) -> str | None:
    parts = _parse(b"http://" + text.encode("utf-8"))
    if parts is None:
        return None
    return parts.host + parts.path + ("" if parts.query is None else "?" + parts.query)


# ---------------------------------------------------------------- the check

MAX_EVIDENCE = 5


def safebrowsing(features, sblist: SafeBrowsingList | None) -> Signal | None:
    """A deciding Signal when any URL of the message is on the list; None otherwise or
    when there is no list (the check disabled)."""
    if sblist is None:
        return None
    matches = sblist.check(features.urls)
    if not matches:
        return None
    evidence = []
    for m in matches[:MAX_EVIDENCE]:
        kind = "full hash" if m.full_hash else f"{len(m.entry) // 2}-byte prefix {m.entry}"
        evidence.append(f"url {m.url[:200]} matches {m.expression[:200]} ({m.threat_type}, {kind})")
    if len(matches) > MAX_EVIDENCE:
        evidence.append(f"and {len(matches) - MAX_EVIDENCE} more")
    return Signal(CHECK, 1.0, True, tuple(evidence))
