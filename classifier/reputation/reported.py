"""``reported`` (``considered_spam``): this installation's own reports and releases, by body.

A report as spam (``mailsift feedback``, the quarantine's "report as spam", a spam trap)
teaches the token classifiers, but a token model moves slowly: the next copy of the
same campaign, to another recipient, may still pass. This check remembers the verdict
itself. Every Learn of source ``report`` or ``trap`` records a spam vote, every
``release`` a ham vote, keyed by the message's body digest and the reporter (one
spelling: ``normalise_who``), with whether the feedback store vouched for the reporter
(``LearnRequest.trusted``: on ``[feedback] trusted``, an admin). Every such Learn
votes, also one the learn log answers ``noop`` (the same bytes learned before by
someone else): a vote is per reporter, and voting again only renews it.

What counts: each reporter's latest vote on a body digest (label, when, trusted).

- When any trusted vote exists, the latest trusted vote decides. Spam: a
  ``considered_spam`` finding that decides alone ("reported as spam by 2 reporters,
  last 2026-01-03, an admin's decision"; the contract's reply is "550 5.7.1 Message
  considered spam", which names nobody). Ham: a ``not_spam`` finding of negative
  strength that also decides: the scorer lets a deciding ham finding overrule its
  statistical classifiers (their solo decisions and the combined threshold, rule 5),
  because an admin who released this very body has overruled exactly what those
  classifiers said about its words. A spam decision of another reputation check (a
  Safe Browsing hit, a signature) still stands. No number of ordinary reports undoes
  an admin's release, and an admin's report outweighs ordinary releases.
- Otherwise only untrusted reporters voted, and the label more of them hold is the
  verdict (none on a tie). Spam decides alone only when at least ``min_reporters``
  (2) distinct reporters hold it and they outnumber those holding ham: one user's
  report must not quarantine every later copy of a newsletter or a bank notice for
  the store's 30 days; fewer reporters pull the combined score without deciding. Ham
  from untrusted reporters is a ``not_spam`` finding of modest negative strength
  (0.5, at most 1) that never decides: one user's release must not whitelist a
  campaign the classifiers are sure of.

The feedback store (training/feedback.py) decided beforehand whether a vote may be
learned at all (rate limits, reporter agreement, review of learns that contradict an
overwhelming verdict); this store weighs what reaches it as above.

The digest (``body_digest``) is Pyzor's (``classifier/reputation/pyzor.py``): it skips
the headers, so copies to other recipients, with their own Message-ID, Date and To,
match, and it drops long tokens, addresses and URLs, which campaigns vary per copy.
The scorer computes it once per message for both checks. A message Pyzor cannot
digest (no text line: an image or an attachment alone) falls back to the SHA-1 of its
body bytes after the header block, which still matches the same message sent to other
recipients. Near-duplicates that differ in a few words are the ``neardup`` check's
business; it is taught by the same Learn.

Strength: ``1 + ln(reporters)``, positive for spam and negative for ham (halved, at
most 1, for untrusted ham), so that the combined score's weight (``combined.fact_weights.reported``, a prior) pulls by one
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

__all__ = ["CLASSIFICATION", "ReportedStore", "Standing", "body_digest", "normalise_who", "reported"]

CLASSIFICATION = "considered_spam"
HAM_CLASSIFICATION = "not_spam"
# Pyzor parses the whole message; beyond the feature parser's own cap (Limits.max_bytes)
# the body's bytes are hashed instead, which costs microseconds per megabyte.
MAX_PARSE_BYTES = 2 * 1024 * 1024


def normalise_who(who: str | None) -> str:
    """One reporter, however it is spelt: surrounding blanks and angle brackets go and
    the case folds (``" Bob"``, ``BOB`` and ``<bob>`` are ``bob``; an address's domain
    and local part alike, as smtpgate.config.normalise_address compares them). The
    feedback store (rate limits, trusted, agreement, review) and this store's votes key
    on it, so a respelling is never a second reporter."""
    w = (who or "").strip().strip("<>").strip().casefold()
    return w or "unknown"


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
    label: str          # spam | ham: the verdict
    reporters: int      # how many reporters' latest vote is that label
    last: float         # when the most recent vote was cast (epoch seconds)
    trusted: bool = False   # a trusted reporter's vote decided it
    against: int = 0        # how many reporters' latest vote is the other label


class ReportedStore:
    """Each reporter's latest vote per body digest, in one SQLite file (WAL: the
    scorer's worker processes share it; the one that received a Learn writes)."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS votes (     -- the rowid orders the votes
            digest TEXT NOT NULL,
            who    TEXT NOT NULL,
            label  TEXT NOT NULL CHECK (label IN ('spam', 'ham')),
            at     REAL NOT NULL,
            trusted INTEGER NOT NULL DEFAULT 0,
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
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(votes)")}
        if "trusted" not in columns:   # a store from before trusted votes: every vote was untrusted
            self._db.execute("ALTER TABLE votes ADD COLUMN trusted INTEGER NOT NULL DEFAULT 0")

    def _cutoff(self) -> float:
        return self.clock() - self.max_age_days * 86400.0

    def vote(self, digest: str, label: str, who: str, *, trusted: bool = False) -> None:
        """Record ``who``'s vote on a body (replacing their earlier one). ``trusted``: the
        feedback store vouched for ``who`` (an admin). Voting the same again is harmless:
        the vote is only moved to now."""
        if label not in ("spam", "ham"):
            raise ValueError(f"label must be spam or ham, not {label!r}")
        who = normalise_who(who)
        with self._lock:
            # replaced, not updated: the new row's rowid is the highest, which orders
            # votes cast within one tick of the clock too
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM votes WHERE digest = ? AND who = ?", (digest, who))
                self._db.execute("INSERT INTO votes (digest, who, label, at, trusted) VALUES (?, ?, ?, ?, ?)",
                                 (digest, who, label, self.clock(), int(bool(trusted))))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def standing(self, digest: str) -> Standing | None:
        """The body's current verdict, or None when nobody voted on it (recently): the
        latest trusted vote when there is one, else the label most untrusted reporters
        hold (None on a tie)."""
        with self._lock:
            rows = self._db.execute("SELECT label, at, trusted FROM votes WHERE digest = ? AND at >= ?"
                                    " ORDER BY rowid DESC", (digest, self._cutoff())).fetchall()
        if not rows:
            return None
        last = rows[0][1]
        held = {lbl: sum(1 for r in rows if r[0] == lbl) for lbl in ("spam", "ham")}
        deciding = next((r for r in rows if r[2]), None)
        if deciding is not None:
            label = deciding[0]
        elif held["spam"] != held["ham"]:
            label = "spam" if held["spam"] > held["ham"] else "ham"
        else:
            return None
        other = "ham" if label == "spam" else "spam"
        return Standing(label, held[label], last, trusted=deciding is not None, against=held[other])

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


# an ordinary user's word (a release, or reports short of the quorum) is a hint, not a
# ruling: it pulls the combined score with at most this share of a ruling's strength
UNTRUSTED_PULL = 0.5
# reports short of the quorum, at most this share of a ruling's strength: the reported,
# near-duplicate and Pyzor checks all see the same report, so each pulls little
QUORUM_PULL = 0.25


def below_quorum(strength: float, reporters: int, min_reporters: int) -> float:
    """The pull of ordinary users' reports short of ``min_reporters``: a fraction of a
    deciding report's strength, growing with the reporters, at most ``QUORUM_PULL`` of
    it. With the default priors one user's report of an exact copy adds about 2.2 to
    the combined log-odds (reported 0.6, neardup 0.5 and Pyzor's own 1.0): it moves a
    message the classifiers lean towards spam over the threshold, not one they think is
    ham. At full strength (+10.0) it quarantined every copy of a 30-message ham sample,
    which is the quorum's point lost."""
    return strength * QUORUM_PULL * min(1.0, max(1, reporters) / max(1, min_reporters))


def exact_digest(raw: bytes) -> str | None:
    """The key of a message's exact body: ``body:<SHA-1 of the body bytes>`` (line ends
    and trailing blanks normalised), or None (no body). Copies of one message to other
    recipients share it; a Pyzor digest is shared more widely (see ``reported``)."""
    body = _body_bytes(raw)
    return None if body is None else "body:" + hashlib.sha1(body).hexdigest()


def reported(raw: bytes, store: ReportedStore, *, min_reporters: int = 2,
             digest: str | None = None, exact: str | None = None) -> Signal | None:
    """This installation's verdict on the message's body, or None when it has none.
    ``digest`` is ``body_digest(raw)`` and ``exact`` is ``exact_digest(raw)`` when the
    caller has them already. ``min_reporters``: how many distinct untrusted reporters
    must hold spam (and outnumber those holding ham) before their report decides alone;
    a trusted vote decides whatever the count.

    Only the exact body decides. Votes are kept under both keys, and a body that only
    shares the Pyzor digest of a judged one gets a pull, never a ruling: Pyzor drops
    URLs, long words and short lines, so two list messages whose own text is a URL and a
    few code lines digest to their common list footer (a ham of the SpamAssassin corpus
    was quarantined by an admin's report of a spam through the same list)."""
    exact = exact or exact_digest(raw)
    s = store.standing(exact) if exact is not None else None
    fuzzy = s is None
    if fuzzy:
        digest = digest or body_digest(raw)
        if digest is None or digest == exact:
            return None
        s = store.standing(digest)
        if s is None:
            return None
    strength = 1.0 + math.log(s.reporters)
    day = datetime.datetime.fromtimestamp(s.last, datetime.UTC).date().isoformat()
    who = f"{s.reporters} reporter{'s' if s.reporters != 1 else ''}, last {day}"
    if s.trusted:
        who += ", an admin's decision"
    like = "a body like one " if fuzzy else ""
    if s.label == "spam":
        decides = not fuzzy and (s.trusted or s.reporters >= min_reporters)
        if not decides:   # below the quorum, or only alike: evidence that pulls, never a verdict
            strength = below_quorum(strength, s.reporters, 1 if fuzzy else min_reporters)
        return Signal(CLASSIFICATION, strength=strength, decides=decides,
                      evidence=(f"{like}reported as spam by {who}",))
    decides = s.trusted and not fuzzy
    if not decides:
        strength = min(1.0, UNTRUSTED_PULL * strength) if not fuzzy else below_quorum(strength, s.reporters, 1)
    return Signal(HAM_CLASSIFICATION, strength=-strength, decides=decides,
                  evidence=(f"{like}released as not spam by {who}",))
