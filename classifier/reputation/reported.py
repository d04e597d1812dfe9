"""``reported`` (``considered_spam``): this installation's own reports and releases, by body.

A report as spam (``mailsift feedback``, the quarantine's "report as spam", a spam trap)
teaches the token classifiers, but a token model moves slowly: the next copy of the
same campaign, to another recipient, may still pass. This check remembers the verdict
itself. Every Learn of source ``report`` or ``trap`` records a spam vote, every
``release`` a ham vote, keyed by the message's body digest and the reporter; a message
with the same body digest then gets the installation's current verdict on that body:

- reported as spam, and not released since: a ``considered_spam`` finding that decides
  alone ("reported as spam by 2 reporters, last 2026-01-03"; the contract's reply is
  "550 5.7.1 Message considered spam", which names nobody);
- released since: a ``not_spam`` finding of negative strength that also decides. The
  scorer lets a deciding ham finding overrule its statistical classifiers (their solo
  decisions and the combined threshold): an admin who released this very body has
  overruled exactly what those classifiers said about its words. A spam decision of
  another reputation check (a Safe Browsing hit, a signature) still stands.

What counts: each reporter's latest vote on a body digest. The body's verdict is the
label of the most recent vote, and the count is how many reporters currently hold
it: A reports, B releases -> ham (1 reporter); then C reports -> spam (2 reporters, A
and C). The feedback store (training/feedback.py) decided beforehand whether a vote
may be learned at all (rate limits, reporter agreement, review of learns that
contradict an overwhelming verdict); this store trusts what reaches it.

The digest (``body_digest``) is Pyzor's (``classifier/reputation/pyzor.py``): it skips
the headers, so copies to other recipients, with their own Message-ID, Date and To,
match, and it drops long tokens, addresses and URLs, which campaigns vary per copy.
The scorer computes it once per message for both checks. A message Pyzor cannot
digest (no text line: an image or an attachment alone) falls back to the SHA-1 of its
body bytes after the header block, which still matches the same message sent to other
recipients. Near-duplicates that differ in a few words are the ``neardup`` check's
business; it is taught by the same Learn.

Strength: ``1 + ln(reporters)``, positive for spam and negative for ham, so that the
combined score's weight (``combined.fact_weights.reported``, a prior) pulls by one
weight for one reporter and a little more for each further one. Entries expire
``max_age_days`` (30, as the Pyzor and near-duplicate stores) after their last vote.
"""
from __future__ import annotations

import datetime
import hashlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .base import Signal
from .pyzor import pyzor_digest

__all__ = ["CLASSIFICATION", "ReportedStore", "Standing", "body_digest", "reported"]

CLASSIFICATION = "considered_spam"
HAM_CLASSIFICATION = "not_spam"
# Pyzor parses the whole message; beyond the feature parser's own cap (Limits.max_bytes)
# the body's bytes are hashed instead, which costs microseconds per megabyte.
MAX_PARSE_BYTES = 2 * 1024 * 1024


def _body_bytes(raw: bytes) -> bytes | None:
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(sep)
        if at >= 0:
            body = raw[at + len(sep):]
            break
    else:
        return None
    lines = [line.rstrip() for line in body.replace(b"\r\n", b"\n").split(b"\n")]
    body = b"\n".join(lines).strip(b"\n")
    return body or None


def body_digest(raw: bytes, pyzor: str | None = None) -> str | None:
    """The key of a message's body: ``pyzor:<Pyzor digest>``, else ``body:<SHA-1 of
    the body bytes>`` (line ends and trailing blanks normalised), else None (no body).
    ``pyzor`` is the Pyzor digest when the caller has computed it already."""
    if pyzor is None and len(raw) <= MAX_PARSE_BYTES:
        pyzor = pyzor_digest(raw)
    if pyzor is not None:
        return "pyzor:" + pyzor
    body = _body_bytes(raw)
    return None if body is None else "body:" + hashlib.sha1(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Standing:
    """The installation's current verdict on one body digest."""
    label: str          # spam | ham: the label of the most recent vote
    reporters: int      # how many reporters' latest vote is that label
    last: float         # when the most recent vote was cast (epoch seconds)


class ReportedStore:
    """Each reporter's latest vote per body digest, in one SQLite file (WAL: the
    scorer's worker processes share it; the one that received a Learn writes)."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS votes (     -- the rowid orders the votes
            digest TEXT NOT NULL,
            who    TEXT NOT NULL,
            label  TEXT NOT NULL CHECK (label IN ('spam', 'ham')),
            at     REAL NOT NULL,
            UNIQUE (digest, who)
        );
        CREATE INDEX IF NOT EXISTS votes_at ON votes (at);
    """

    def __init__(self, path: str | os.PathLike, *, max_age_days: float = 30,
                 clock: Callable[[], float] = time.time):
        self.path = os.fspath(path)
        self.max_age_days = max_age_days
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(self._SCHEMA)

    def _cutoff(self) -> float:
        return self.clock() - self.max_age_days * 86400.0

    def vote(self, digest: str, label: str, who: str) -> None:
        """Record ``who``'s vote on a body (replacing their earlier one)."""
        if label not in ("spam", "ham"):
            raise ValueError(f"label must be spam or ham, not {label!r}")
        with self._lock:
            # replaced, not updated: the new row's rowid is the highest, which orders
            # votes cast within one tick of the clock too
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM votes WHERE digest = ? AND who = ?", (digest, who or "unknown"))
                self._db.execute("INSERT INTO votes (digest, who, label, at) VALUES (?, ?, ?, ?)",
                                 (digest, who or "unknown", label, self.clock()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def standing(self, digest: str) -> Standing | None:
        """The body's current verdict, or None when nobody voted on it (recently)."""
        with self._lock:
            rows = self._db.execute("SELECT label, at FROM votes WHERE digest = ? AND at >= ?"
                                    " ORDER BY rowid DESC", (digest, self._cutoff())).fetchall()
        if not rows:
            return None
        label, last = rows[0]
        return Standing(label, sum(1 for r in rows if r[0] == label), last)

    def purge(self) -> int:
        """Delete expired votes; returns how many."""
        with self._lock:
            return self._db.execute("DELETE FROM votes WHERE at < ?", (self._cutoff(),)).rowcount

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(DISTINCT digest) FROM votes WHERE at >= ?",
                                    (self._cutoff(),)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"ReportedStore({self.path!r}, max_age_days={self.max_age_days})"


def reported(raw: bytes, store: ReportedStore, *, min_reporters: int = 1,
             digest: str | None = None) -> Signal | None:
    """This installation's verdict on the message's body, or None when it has none.
    ``digest`` is ``body_digest(raw)`` when the caller has it already."""
    digest = digest or body_digest(raw)
    if digest is None:
        return None
    s = store.standing(digest)
    if s is None:
        return None
    strength = 1.0 + math.log(s.reporters)
    day = datetime.datetime.fromtimestamp(s.last, datetime.UTC).date().isoformat()
    who = f"{s.reporters} reporter{'s' if s.reporters != 1 else ''}, last {day}"
    if s.label == "spam":
        return Signal(CLASSIFICATION, strength=strength, decides=s.reporters >= min_reporters,
                      evidence=(f"reported as spam by {who}",))
    return Signal(HAM_CLASSIFICATION, strength=-strength, decides=s.reporters >= min_reporters,
                  evidence=(f"released as not spam by {who}",))
