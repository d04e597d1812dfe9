"""``pyzor``: the message's Pyzor digest checked against a store of reported digests.

The digest
----------
``pyzor_digest(raw)`` is the digest the reference ``pyzor`` package (1.1.2,
``pyzor/digest.py`` ``DataDigester`` fed by ``email.message_from_bytes``, as its
``pyzor digest`` / ``check`` / ``report`` commands do) computes for the same bytes, so
that our digests can be checked against and reported to any Pyzor server. It is our own
code (``pyzor`` is a test and bench dependency only) and follows the reference step by
step, including its edge cases:

- The message is parsed with the standard library's compat32 parser
  (``email.message_from_bytes``). Every part of ``walk()`` is visited: a ``text/*`` part
  contributes its transfer-decoded payload decoded with its charset (no charset: ASCII;
  undecodable bytes are dropped, except for a charset named like quoted-printable,
  which decodes strictly; an unknown or failing charset falls back to ASCII with errors
  ignored); ``text/html`` is reduced to its text by ``html.parser`` (script and style
  content dropped, each data run stripped, runs joined by one space). A multipart
  container contributes nothing. Any OTHER leaf part (an attachment, an image) is
  passed through as its still transfer-encoded payload: base64 lines of 10 or more
  characters vanish below, but short lines of an attachment do count.
- The HTML parser is fed and never closed: text after the last tag that might be an
  unfinished character reference (an ``&`` in the last 34 characters without a
  following blank or ``;``) stays in the parser's buffer and is not digested.
- Each line (``str.splitlines``, so form feed, U+2028 and friends split lines too) is
  normalised: NULs removed, then runs of 10 or more non-blank characters, then
  ``\\S+@\\S+`` (e-mail addresses), then ``[a-z]+:\\S+`` (URLs, case-insensitive), then
  every blank character are removed. Lines shorter than 8 characters are dropped.
- Four lines or fewer: all of them are hashed. More: 3 lines from 20 % and 3 lines
  from 60 % of the way through (``offset * len(lines) // 100``). SHA-1, hex.

Two deliberate departures, both cases where the reference has no useful digest:
a message with no line to digest gets ``None`` here where the reference answers the
SHA-1 of nothing (``EMPTY_DIGEST``, shared by every such message, which a check must
never count as a campaign); and a message the reference cannot digest at all (its HTML
stripper raises on some malformed markup, because it names ``HTMLParseError``, which
Python 3 no longer has) gets ``None`` where the reference dies with a traceback.

The HTML step uses the running interpreter's ``html.parser``, as the reference does: on
the same Python both agree byte for byte (``bench/pyzor_compat.py`` checks the
SpamAssassin corpus, ``tests/test_reputation_pyzor.py`` tricky messages); a Pyzor
client on another Python version may differ on HTML edge cases that its parser treats
differently.

The store
---------
``DigestStore`` is what the check needs: ``check``, ``report``, ``whitelist``.
``SqliteDigestStore`` is our own (counts and first/last-seen times, WAL, entries expire
after ``max_age_days`` without a report or whitelisting). ``PyzordStore`` is a client of
a real Pyzor server (``pyzord``, any engine) speaking Pyzor's UDP protocol; every call
has a timeout and fails with ``DigestStoreError``, never hangs.

The decision
------------
SpamAssassin 4's Pyzor plugin (``Mail::SpamAssassin::Plugin::Pyzor``, its result
handling and the documented defaults ``pyzor_count_min 5``, ``pyzor_welcomelist_min 10``,
``pyzor_welcomelist_factor 0.2``): a digest whitelisted at least ``whitelist_min`` times
AND at least ``whitelist_factor`` times as often as it was reported is whitelisted and
never hits (for the defaults: 50 reports need 10 whitelistings); otherwise it hits when
reported at least ``min_reports`` times; absurd counts (a million reports, ten thousand
whitelistings: the digest of an empty body or a boilerplate) are ignored. We chose
SpamAssassin's rule over the ``pyzor check`` command's own (hit on one report, cleared
by one whitelisting) because a single report or release, possibly mistaken, should not
decide alone; SpamAssassin's defaults are the ones its users run with.

Below ``min_reports`` a reported digest still gives a non-deciding ``Signal`` of the
same strength scale (``log1p(reports)``): one or two recent reports are evidence the
combined score can weigh, and its trained weight, not this module, says how much.
"""
from __future__ import annotations

import email
import email.message
import hashlib
import html.parser
import math
import os
import random
import re
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from .base import Signal

__all__ = [
    "EMPTY_DIGEST", "DigestCounts", "DigestStore", "DigestStoreError", "DigestStoreTimeout",
    "SqliteDigestStore", "PyzordStore", "pyzor_digest", "pyzor",
]

CLASSIFICATION = "pyzor"

# The reference's digest of a message with no line to digest.
EMPTY_DIGEST = hashlib.sha1(b"").hexdigest()

# ---------------------------------------------------------------- the digest
# Every constant below is the reference's (pyzor/digest.py, DataDigester); none is a
# tunable: changing one makes our digests useless against Pyzor servers.

_SPEC = ((20, 3), (60, 3))          # (percent offset, lines) picked from long messages
_ATOMIC_LINES = 4                   # this many lines or fewer: all are digested
_MIN_LINE = 8                       # shorter normalised lines are dropped
_LONG = re.compile(r"\S{10,}")      # identifiers, base64, long words
_EMAIL = re.compile(r"\S+@\S+")
_URL = re.compile(r"[a-z]+:\S+", re.IGNORECASE)
_BLANK = re.compile(r"\s")
_STRICT_CHARSETS = ("quopri-codec", "quopri", "quoted-printable", "quotedprintable")


class _HtmlText(html.parser.HTMLParser):
    """The reference's HTML stripper: stripped data runs outside script and style."""

    def __init__(self):
        super().__init__()      # convert_charrefs=True, as the reference
        self.runs: list[str] = []
        self._collect = True

    def handle_data(self, data):
        data = data.strip()
        if data and self._collect:
            self.runs.append(data)

    def handle_starttag(self, tag, attrs):
        if tag.lower() in ("script", "style"):
            self._collect = False

    def handle_endtag(self, tag):
        if tag.lower() in ("script", "style"):
            self._collect = True


class _Undigestable(Exception):
    """The reference would fail on this message (it dies with a traceback)."""


def _html_text(markup: str) -> str:
    stripper = _HtmlText()
    try:
        stripper.feed(markup)   # never close(): the reference does not
    except Exception as e:
        # The reference's except clause names html.parser.HTMLParseError, gone in
        # Python 3: evaluating it raises AttributeError, so ANY error here kills it.
        raise _Undigestable(f"html: {e!r}") from e
    return " ".join(stripper.runs)


def _decode_text_part(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    charset = part.get_content_charset()
    if charset:
        charset = charset.replace("\x00", "")
    errors = "ignore"
    if not charset:
        charset = "ascii"
    elif charset.lower().replace("_", "-") in _STRICT_CHARSETS:
        errors = "strict"
    try:
        return payload.decode(charset, errors)
    except (LookupError, UnicodeError, AssertionError):
        return payload.decode("ascii", "ignore")


def _payloads(msg: email.message.Message) -> Iterator[str]:
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            text = _decode_text_part(part)
            yield _html_text(text) if part.get_content_subtype() == "html" else text
        elif not part.is_multipart():
            # not decoded: the reference passes other leaf parts through as they are
            yield part.get_payload()


def _normalise(line: str) -> str:
    line = line.replace("\x00", "")
    line = _LONG.sub("", line)
    line = _EMAIL.sub("", line)
    line = _URL.sub("", line)
    return _BLANK.sub("", line).strip()


def _digest_lines(msg: email.message.Message) -> list[bytes]:
    lines = []
    for payload in _payloads(msg):
        for line in payload.splitlines():
            norm = _normalise(line)
            if len(norm) >= _MIN_LINE:
                lines.append(norm.encode("utf8", "ignore"))
    return lines


def _select(lines: list[bytes]) -> list[bytes]:
    if len(lines) <= _ATOMIC_LINES:
        return lines
    picked = []
    for offset, length in _SPEC:
        start = offset * len(lines) // 100
        picked.extend(lines[start:start + length])
    return picked


def pyzor_digest(raw: bytes) -> str | None:
    """The Pyzor digest of an RFC 822 message (40 hex digits), or None when the
    message has no line to digest or the reference could not digest it (see the module
    docstring). Never raises."""
    try:
        msg = email.message_from_bytes(raw)
        lines = _digest_lines(msg)
    except Exception:
        # _Undigestable, or a failure inside the standard library's parser or payload
        # decoding, which the reference does not catch either
        return None
    if not lines:
        return None
    h = hashlib.sha1()
    for line in _select(lines):
        h.update(line.rstrip())
    return h.hexdigest()


# ---------------------------------------------------------------- the stores

@dataclass(frozen=True, slots=True)
class DigestCounts:
    reports: int        # how often the digest was reported as spam
    whitelisted: int    # how often it was whitelisted (a released message)


class DigestStoreError(Exception):
    """A digest store could not answer (unreachable, refused, malformed reply). The
    scorer turns it into an abstained check with this message as the reason."""


class DigestStoreTimeout(DigestStoreError):
    """A digest store did not answer in time."""


class DigestStore(Protocol):
    def check(self, digest: str) -> DigestCounts: ...
    def report(self, digest: str) -> None: ...
    def whitelist(self, digest: str) -> None: ...


_DIGEST = re.compile(r"[0-9a-f]{40}")


def _valid(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a Pyzor digest (40 lower-case hex digits): {digest!r}")
    return digest


class SqliteDigestStore:
    """Report and whitelist counts per digest in one SQLite file.

    An entry expires ``max_age_days`` after its last report or whitelisting: ``check``
    no longer counts it and ``purge()`` deletes it. 30 days by default: a campaign is
    over long before (pyzord keeps four months by default, for a public server whose
    digests are shared world-wide; here the reports are one site's own). WAL mode lets
    the scorer's worker processes read while one writes. ``path`` may be ``":memory:"``.
    """

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS digests (
            digest       TEXT PRIMARY KEY,
            reports      INTEGER NOT NULL DEFAULT 0,
            whitelisted  INTEGER NOT NULL DEFAULT 0,
            first_seen   REAL NOT NULL,
            last_report  REAL,
            last_whitelist REAL,
            last_seen    REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS digests_last_seen ON digests (last_seen);
    """

    def __init__(self, path: str | os.PathLike, *, max_age_days: float = 30,
                 clock: Callable[[], float] = time.time):
        self.path = os.fspath(path)
        self.max_age_days = max_age_days
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False,
                                   isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(self._SCHEMA)

    def _cutoff(self) -> float:
        return self.clock() - self.max_age_days * 86400.0

    def check(self, digest: str) -> DigestCounts:
        with self._lock:
            row = self._db.execute(
                "SELECT reports, whitelisted FROM digests WHERE digest = ? AND last_seen >= ?",
                (_valid(digest), self._cutoff())).fetchone()
        return DigestCounts(*row) if row else DigestCounts(0, 0)

    def info(self, digest: str) -> dict | None:
        """Counts and times (epoch seconds) of one live entry, or None."""
        with self._lock:
            cur = self._db.execute(
                "SELECT reports, whitelisted, first_seen, last_report, last_whitelist, last_seen"
                " FROM digests WHERE digest = ? AND last_seen >= ?", (_valid(digest), self._cutoff()))
            row = cur.fetchone()
            if row is None:
                return None
            return dict(zip([c[0] for c in cur.description], row))

    def _bump(self, digest: str, column: str, stamp: str) -> None:
        now = self.clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # an expired entry starts again from zero, as if purged
                self._db.execute("DELETE FROM digests WHERE digest = ? AND last_seen < ?",
                                 (digest, self._cutoff()))
                self._db.execute(
                    f"INSERT INTO digests (digest, {column}, first_seen, {stamp}, last_seen)"
                    f" VALUES (?, 1, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET"
                    f" {column} = {column} + 1, {stamp} = excluded.{stamp},"
                    f" last_seen = excluded.last_seen", (digest, now, now, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def report(self, digest: str) -> None:
        self._bump(_valid(digest), "reports", "last_report")

    def whitelist(self, digest: str) -> None:
        self._bump(_valid(digest), "whitelisted", "last_whitelist")

    def purge(self) -> int:
        """Delete expired entries; returns how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM digests WHERE last_seen < ?", (self._cutoff(),))
            return cur.rowcount

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM digests WHERE last_seen >= ?",
                                    (self._cutoff(),)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"SqliteDigestStore({self.path!r}, max_age_days={self.max_age_days})"


# Pyzor's protocol (pyzor/client.py, message.py, account.py; protocol version 2.1): one
# UDP datagram each way, RFC 822-style "Name: value" lines. A request carries Op,
# Op-Digest, (report/whitelist) Op-Spec, Thread (a random id in [1024, 65536) the reply
# echoes), PV, User, Time and Sig = sha1(sha1(request without Sig) + ":Time:" +
# sha1("user:" + key)); the anonymous user's key is empty. A reply carries Code
# (200 = OK), Diag, PV, Thread and, for check, Count and WL-Count.
_PROTO_VERSION = "2.1"
_THREAD_RANGE = (1024, 65536)
_OP_SPEC = ",".join(f"{o},{n}" for o, n in _SPEC)
_MAX_PACKET = 8192


class PyzordStore:
    """A Pyzor server (``pyzord``) as a digest store, over Pyzor's UDP protocol.

    ``timeout`` (seconds) bounds each call as a whole; no call retries (a scoring path
    that waits for a second try is already late). The server's default access list lets
    the anonymous user check and report but not whitelist: give ``user`` and ``key``
    (the key half of a Pyzor account's ``salt,key``, as in pyzord's passwd file) of an
    account its access file allows to whitelist.
    """

    # pyzor's client and SpamAssassin's pyzor_timeout wait 5 s, for public servers
    # across the Internet; a site's own pyzord answers within milliseconds, and the
    # scoring path must not stall for seconds on one check.
    def __init__(self, host: str = "127.0.0.1", port: int = 24441, timeout: float = 2.0, *,
                 user: str = "anonymous", key: str = ""):
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout)
        self.user = user
        self._hashed_key = hashlib.sha1(f"{user}:{key.lower()}".encode()).hexdigest()

    def __repr__(self) -> str:   # the key stays out of logs
        return f"PyzordStore({self.host!r}, {self.port}, timeout={self.timeout}, user={self.user!r})"

    def _request(self, op: str, digest: str) -> dict[str, str]:
        thread = random.randrange(*_THREAD_RANGE)
        fields = [("Op", op), ("Op-Digest", _valid(digest))]
        if op in ("report", "whitelist"):
            fields.append(("Op-Spec", _OP_SPEC))
        stamp = int(time.time())
        fields += [("Thread", str(thread)), ("PV", _PROTO_VERSION), ("User", self.user),
                   ("Time", str(stamp))]
        signed = "\n".join(f"{k}: {v}" for k, v in fields).encode()
        sig = hashlib.sha1(hashlib.sha1(signed).digest()
                           + f":{stamp}:{self._hashed_key}".encode()).hexdigest()
        packet = signed + f"\nSig: {sig}\n\n".encode()
        where = f"pyzord {self.host}:{self.port}"
        deadline = time.monotonic() + self.timeout
        try:
            infos = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_DGRAM,
                                       socket.IPPROTO_UDP)
        except OSError as e:
            raise DigestStoreError(f"{where}: cannot resolve: {e}") from e
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.connect(address)   # replies from other addresses are not ours
                sock.send(packet)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise socket.timeout
                    sock.settimeout(left)
                    reply = _parse_reply(sock.recv(_MAX_PACKET), where)
                    # a late reply to an earlier request: keep waiting for ours
                    if reply.get("Thread") == str(thread):
                        break
            except socket.timeout as e:
                raise DigestStoreTimeout(f"{where}: no answer to {op} within {self.timeout:g} s") from e
            except OSError as e:    # ICMP port unreachable surfaces as ConnectionRefused
                raise DigestStoreError(f"{where}: {op} failed: {e}") from e
        if reply.get("Code") != "200":
            raise DigestStoreError(f"{where}: {op} refused: {reply.get('Code')} {reply.get('Diag')}")
        return reply

    def check(self, digest: str) -> DigestCounts:
        reply = self._request("check", digest)
        try:
            return DigestCounts(int(reply["Count"]), int(reply["WL-Count"]))
        except (KeyError, ValueError) as e:
            raise DigestStoreError(f"pyzord {self.host}:{self.port}: malformed check reply {reply}") from e

    def report(self, digest: str) -> None:
        self._request("report", digest)

    def whitelist(self, digest: str) -> None:
        self._request("whitelist", digest)


def _parse_reply(packet: bytes, where: str) -> dict[str, str]:
    try:
        text = packet.decode("utf8")
    except UnicodeDecodeError as e:
        raise DigestStoreError(f"{where}: reply is not UTF-8") from e
    fields = {}
    for line in text.split("\n"):
        if not line.strip():
            break
        name, sep, value = line.partition(":")
        if not sep:
            raise DigestStoreError(f"{where}: malformed reply line {line!r}")
        fields[name.strip()] = value.strip()
    if "Code" not in fields or "Thread" not in fields:
        raise DigestStoreError(f"{where}: incomplete reply {text!r}")
    return fields


# ---------------------------------------------------------------- the check

# SpamAssassin's hard-coded ceilings: counts this large belong to the digest of an
# empty body or of a boilerplate everyone reports, not to a campaign.
_ABSURD_REPORTS = 1_000_000
_ABSURD_WHITELISTED = 10_000


def pyzor(raw: bytes, store: DigestStore, *, min_reports: int = 5, whitelist_min: int = 10,
          whitelist_factor: float = 0.2, max_bytes: int | None = 2 * 1024 * 1024,
          digest: str | None = None) -> Signal | None:
    """The Pyzor check of one message; see the module docstring for the rules.

    None when the message has no digest, is larger than ``max_bytes`` (the feature
    parser's own cap, ``Limits.max_bytes``: Pyzor parses the whole message, and
    campaigns are small), was never reported, is whitelisted, or has absurd counts.
    ``digest`` skips recomputing a digest the caller already has. A store failure
    raises ``DigestStoreError``: the caller abstains with its message as the reason.
    """
    if digest is None:
        if max_bytes is not None and len(raw) > max_bytes:
            return None
        digest = pyzor_digest(raw)
        if digest is None:
            return None
    counts = store.check(digest)
    reports, wl = counts.reports, counts.whitelisted
    if reports <= 0 or reports >= _ABSURD_REPORTS or wl >= _ABSURD_WHITELISTED:
        return None
    wl_limit = reports * whitelist_factor if wl >= whitelist_min else 0
    if wl_limit and wl >= wl_limit:
        return None
    return Signal(CLASSIFICATION, strength=math.log1p(reports), decides=reports >= min_reports,
                  evidence=(f"digest {digest} reported {reports} times, whitelisted {wl} times",))
