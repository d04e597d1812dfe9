"""Near-duplicates of recently reported spam: shingles, MinHash and LSH banding.

Pyzor's digest is exact after normalisation; a campaign that varies a few words per
copy defeats it. This index keeps a MinHash signature of every message reported as
spam and finds, for a new message, the reported one whose text is most similar. It
feeds ``content_spam`` ("similar messages have been reported as spam").

How a message becomes a signature:

- Text: ``MessageFeatures.text`` (every text part decoded, HTML as text). Lower-cased;
  leftover tags, URLs and e-mail addresses become the placeholder words ``xurlx`` and
  ``xemailx``, digit runs become ``0``: campaigns vary exactly these per copy.
- Shingles: the set of word 3-grams (``shingle``), hashed to 64 bits (BLAKE2b per word,
  a polynomial over the words, a splitmix64 finaliser), over the first ``max_words``
  words. 3 rather than 5: one changed word breaks ``shingle`` shingles, and campaigns
  vary words; on the bench below 3-grams decide alone on 423 held-out copies where
  5-grams decide on 402, with the best ham similarity 0.27 against 0.22. Fewer than
  ``min_shingles`` distinct shingles (about that many words) and the message is never
  indexed nor matched: short texts are mostly boilerplate, and few shingles make the
  estimate noisy. The default, 30, is from the bench: with every spam of the
  SpamAssassin corpus reported, the ham most similar to any of them scores 0.55 at 20
  (a short list post against a "spam" that is nothing but that list's sponsor
  footer, 24 words) and 0.27 at 30, which loses 12 of the 489 copies caught at 20.
- MinHash: ``num_perm`` = 128 hash functions ``a * x + b (mod 2**64)`` (odd ``a``; the
  shingle hashes are already mixed) drawn from a fixed seed; the signature keeps the
  top 32 bits of each minimum (512 bytes a message). The fraction of equal positions
  of two signatures estimates the Jaccard similarity of their shingle sets (standard
  error sqrt(J(1-J)/128): 0.04 at J = 0.6).
- LSH: the signature cut into ``bands`` = 32 bands of 4 rows; two messages become
  candidates when any band is equal (probability 1-(1-J^4)^32: 0.87 at J = 0.5, 0.99
  at J = 0.6, 1.0 from 0.7). Only candidates are compared, with the estimate above;
  at most ``max_candidates``, the most recent, so that a campaign reported a thousand
  times costs no more than one reported 256 times.

Storage: one SQLite file (``path``; None keeps it in memory), WAL, so an index
survives a restart and the scorer's worker processes share one; memory use is
SQLite's page cache, not the index size. Entries older than ``max_age_days`` are not
matched and are purged; past ``max_entries`` the oldest go first. The hashing
parameters are stored with the index and an index made with others is refused
(its signatures would be meaningless).

``threshold`` (default 0.5) is the least similarity ``query`` reports; ``neardup`` lets
the signal decide alone from ``decide_at`` (default 0.8) up. Both come from the sweep
of ``bench/neardup_bench.py`` on the SpamAssassin corpus (1896 spam; 317 campaigns of
2 or more, grouped by exact Jaccard >= 0.5 on 5-grams; the earlier half of each
reported, 502 copies held out): caught at 0.5 / 0.6 / 0.7 / 0.8 / 0.9 =
477 / 466 / 452 / 423 / 349, and no ham hit at any threshold, even with all spam
reported (best ham similarity 0.27: 0.5 keeps a margin of more than twice the
estimate's worst error seen, 0.10). Deciding alone needs 0.8, and a report the
installation vouches for: below it the similarity is evidence the combined score
weighs.

Who reported: each entry keeps its reporter (``normalise_who``: one spelling per
reporter, as the ``reported`` check and the feedback store key on) and whether the
Learn was trusted (``LearnRequest.trusted``: the reporter is on ``[feedback]
trusted``, an admin; a spam trap's Learn is trusted by nature). The rules are the
``reported`` check's, so the two agree on one user's report:

- a match at ``decide_at`` or more against a trusted entry decides alone;
- matches against untrusted entries only decide alone when entries of at least
  ``min_reporters`` (2, ``[neardup] min_reporters``) distinct reporters match at
  ``decide_at`` or more: one ordinary user's report, perhaps of a newsletter or a
  bank notice they no longer want, must not quarantine every copy for everyone for
  ``max_age_days``;
- any other match is a finding with its similarity as strength that does not decide
  (it still pulls the combined score).

The count costs nothing extra: it is taken among the LSH candidates ``query`` already
compares. An index from before this distinction (no ``who``/``trusted`` columns) is
migrated when opened: its entries count as trusted, since nothing then distinguished
an admin's report from a user's, and as one unnamed reporter. A release (ham) removes
the released message's entry and the entry it matches best, whoever reported them.
"""
from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .base import Signal
from .reported import below_quorum, normalise_who

__all__ = ["Match", "NearDupIndex", "neardup", "normalise_words", "shingle_hashes", "minhash"]

CLASSIFICATION = "content_spam"

_TAG = re.compile(r"<[^<>]{0,300}>")
_URL = re.compile(r"(?:(?:https?|ftp)://|www\.)\S+", re.I)
_EMAIL = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
_DIGITS = re.compile(r"\d+")
_WORD = re.compile(r"[^\W_]+")

_U64 = np.uint64
_POLY = _U64(0x100000001B3)          # the FNV-1a 64-bit prime: an odd multiplier


def normalise_words(text: str, max_words: int = 3000) -> list[str]:
    """The words shingled: lower-cased, tags dropped, URLs/addresses/numbers masked.
    Only the first ``max_words * 32`` characters are read: the words wanted are in
    there unless the text is mostly markup, and the cost stays bounded."""
    text = _TAG.sub(" ", text[:max_words * 32].lower())
    text = _URL.sub(" xurlx ", text)
    text = _EMAIL.sub(" xemailx ", text)
    text = _DIGITS.sub("0", text)
    words = []
    for m in _WORD.finditer(text):
        words.append(m.group())
        if len(words) >= max_words:
            break
    return words


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def shingle_hashes(words: list[str], k: int = 3) -> np.ndarray:
    """The distinct 64-bit hashes of the word ``k``-grams (sorted), stable across runs."""
    if len(words) < k:
        return np.empty(0, dtype=_U64)
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(w, len(vocab)) for w in words]
    table = np.frombuffer(b"".join(hashlib.blake2b(w.encode("utf8", "surrogatepass"),
                                                   digest_size=8).digest() for w in vocab), dtype="<u8")
    w = table[np.asarray(ids, dtype=np.intp)]
    n = len(words) - k + 1
    h = w[:n].copy()
    with np.errstate(over="ignore"):
        for j in range(1, k):
            h = h * _POLY + w[j:j + n]
        h = _splitmix(h)
    return np.unique(h)


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64) | _U64(1)   # odd: a bijection
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(shingles: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """The MinHash signature (uint32, one per permutation) of a non-empty shingle set."""
    mins = np.full(len(a), np.iinfo(np.uint64).max, dtype=_U64)
    with np.errstate(over="ignore"):
        for start in range(0, len(shingles), chunk):
            block = shingles[start:start + chunk, None] * a + b
            np.minimum(mins, block.min(axis=0), out=mins)
    return (mins >> _U64(32)).astype(np.uint32)


def _text(message) -> str:
    """The text of MessageFeatures, of raw bytes (parsed here), or a str itself."""
    if isinstance(message, str):
        return message
    if isinstance(message, (bytes, bytearray, memoryview)):
        from ..features import extract
        message = extract(bytes(message))
    return message.text


@dataclass(frozen=True, slots=True)
class Match:
    """A message's nearest reported spam, and who stands behind the close ones."""
    similarity: float   # to the most similar live entry
    label: str          # that entry's label id
    trusted: bool       # a trusted entry matches at decide_at or more
    reporters: int      # distinct untrusted reporters whose entries match at decide_at or more


class NearDupIndex:
    """MinHash/LSH index of reported spam; see the module docstring.

    ``max_entries`` (50 000: at 512 bytes of signature plus 32 band rows an entry, about
    70 MB on disk) and ``max_age_days`` (30, as the Pyzor digest store) bound it.
    """

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS entries (
            id INTEGER PRIMARY KEY,
            label TEXT NOT NULL UNIQUE,
            added REAL NOT NULL,
            shingles INTEGER NOT NULL,
            sig BLOB NOT NULL,
            who TEXT NOT NULL DEFAULT '',
            trusted INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX IF NOT EXISTS entries_added ON entries (added);
        CREATE TABLE IF NOT EXISTS bands (key INTEGER NOT NULL, entry INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS bands_key ON bands (key);
        CREATE INDEX IF NOT EXISTS bands_entry ON bands (entry);
    """

    def __init__(self, path: str | os.PathLike | None = None, *, threshold: float = 0.5,
                 max_entries: int = 50_000, max_age_days: float = 30, num_perm: int = 128,
                 bands: int = 32, shingle: int = 3, min_shingles: int = 30,
                 max_words: int = 3000, max_candidates: int = 256, seed: int = 1,
                 clock: Callable[[], float] = time.time):
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        self.path = None if path is None else os.fspath(path)
        self.threshold = threshold
        self.max_entries = max_entries
        self.max_age_days = max_age_days
        self.num_perm = num_perm
        self.bands = bands
        self.shingle = shingle
        self.min_shingles = min_shingles
        self.max_words = max_words
        self.max_candidates = max_candidates
        self.seed = seed
        self.clock = clock
        self._a, self._b = _permutations(num_perm, seed)
        self._band_salt = _splitmix(np.arange(1, bands + 1, dtype=_U64))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path or ":memory:", timeout=5.0, check_same_thread=False,
                                   isolation_level=None)
        if self.path:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(self._SCHEMA)
        self._migrate()
        self._check_meta()

    def _migrate(self) -> None:
        """An index from before reporters were kept: its entries are trusted (nothing
        then told an admin's report from a user's) and share one unnamed reporter."""
        with self._lock:
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(entries)")}
            if "who" not in columns:
                self._db.execute("ALTER TABLE entries ADD COLUMN who TEXT NOT NULL DEFAULT ''")
            if "trusted" not in columns:
                self._db.execute("ALTER TABLE entries ADD COLUMN trusted INTEGER NOT NULL DEFAULT 1")

    def _check_meta(self) -> None:
        want = {"num_perm": str(self.num_perm), "bands": str(self.bands),
                "shingle": str(self.shingle), "seed": str(self.seed), "hash": "blake2b-poly-splitmix/1",
                "max_words": str(self.max_words)}
        with self._lock:
            have = dict(self._db.execute("SELECT name, value FROM meta"))
            if not have:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", want.items())
                return
        if have != want:
            raise ValueError(f"{self.path}: near-duplicate index made with {have}, not {want}; "
                             "its signatures cannot be compared (remove it to start afresh)")

    # ------------------------------------------------------------ signatures

    def signature(self, features_or_raw) -> tuple[np.ndarray, int] | None:
        """(MinHash signature, distinct shingles), or None for too little text."""
        sh = shingle_hashes(normalise_words(_text(features_or_raw), self.max_words), self.shingle)
        if len(sh) < self.min_shingles:
            return None
        return minhash(sh, self._a, self._b), len(sh)

    def _band_keys(self, sig: np.ndarray) -> list[int]:
        rows = sig.astype(_U64).reshape(self.bands, -1)
        with np.errstate(over="ignore"):
            h = self._band_salt.copy()
            for j in range(rows.shape[1]):
                h = (h ^ rows[:, j]) * _POLY
            h = _splitmix(h)
        return h.view(np.int64).tolist()     # SQLite integers are signed 64-bit

    def _cutoff(self) -> float:
        return self.clock() - self.max_age_days * 86400.0

    # ------------------------------------------------------------ index

    def add(self, features_or_raw, label_id: str, *, who: str = "unknown", trusted: bool = False) -> bool:
        """Index a message ``who`` reported as spam under ``label_id`` (re-adding an id
        replaces it); ``trusted``: the report was vouched for (an admin, a spam trap).
        False when the message has too little text to be indexed."""
        found = self.signature(features_or_raw)
        if found is None:
            return False
        sig, n = found
        keys = self._band_keys(sig)
        now = self.clock()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                old = db.execute("SELECT id FROM entries WHERE label = ?", (label_id,)).fetchone()
                if old:
                    self._delete_ids(db, [old[0]])
                cur = db.execute("INSERT INTO entries (label, added, shingles, sig, who, trusted)"
                                 " VALUES (?, ?, ?, ?, ?, ?)",
                                 (label_id, now, n, sig.tobytes(), normalise_who(who), int(bool(trusted))))
                db.executemany("INSERT INTO bands (key, entry) VALUES (?, ?)",
                               [(k, cur.lastrowid) for k in keys])
                self._evict(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return True

    def remove(self, label_id: str) -> bool:
        """Forget a report (its message was released as not spam); False if unknown."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id FROM entries WHERE label = ?", (label_id,)).fetchone()
                if row:
                    self._delete_ids(self._db, [row[0]])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return row is not None

    @staticmethod
    def _delete_ids(db, ids: list[int]) -> None:
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            db.execute(f"DELETE FROM bands WHERE entry IN ({marks})", part)
            db.execute(f"DELETE FROM entries WHERE id IN ({marks})", part)

    def _evict(self, db) -> int:
        ids = [r[0] for r in db.execute("SELECT id FROM entries WHERE added < ?", (self._cutoff(),))]
        over = db.execute("SELECT count(*) FROM entries").fetchone()[0] - len(ids) - self.max_entries
        if over > 0:
            ids += [r[0] for r in db.execute(
                "SELECT id FROM entries WHERE added >= ? ORDER BY added, id LIMIT ?", (self._cutoff(), over))]
        if ids:
            self._delete_ids(db, ids)
        return len(ids)

    def purge(self) -> int:
        """Delete entries past ``max_age_days`` or beyond ``max_entries``; returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._evict(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n

    def query(self, features_or_raw) -> tuple[float, str] | None:
        """(similarity, label id) of the most similar live entry at or above
        ``threshold``, or None (also for a message with too little text)."""
        found = self.match(features_or_raw)
        return None if found is None else (found.similarity, found.label)

    def query_signature(self, sig: np.ndarray) -> tuple[float, str] | None:
        found = self.match_signature(sig)
        return None if found is None else (found.similarity, found.label)

    def match(self, features_or_raw, decide_at: float = 1.0) -> Match | None:
        """The most similar live entry at or above ``threshold`` and who stands behind
        the entries at ``decide_at`` or more (see ``Match``), or None."""
        found = self.signature(features_or_raw)
        if found is None:
            return None
        return self.match_signature(found[0], decide_at)

    def match_signature(self, sig: np.ndarray, decide_at: float = 1.0) -> Match | None:
        keys = self._band_keys(sig)
        marks = ",".join("?" * len(keys))
        with self._lock:
            rows = self._db.execute(
                f"SELECT e.id, e.label, e.sig, e.who, e.trusted FROM entries e WHERE e.added >= ? AND e.id IN"
                f" (SELECT entry FROM bands WHERE key IN ({marks}))"
                f" ORDER BY e.id DESC LIMIT ?", (self._cutoff(), *keys, self.max_candidates)).fetchall()
        if not rows:
            return None
        sigs = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint32).reshape(len(rows), -1)
        sims = (sigs == sig).mean(axis=1)
        best = int(np.argmax(sims))
        if sims[best] < self.threshold:
            return None
        close = [r for r, sim in zip(rows, sims) if sim >= decide_at]
        return Match(float(sims[best]), rows[best][1],
                     trusted=any(r[4] for r in close),
                     reporters=len({r[3] for r in close if not r[4]}))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM entries WHERE added >= ?",
                                    (self._cutoff(),)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return (f"NearDupIndex({self.path!r}, threshold={self.threshold}, "
                f"max_entries={self.max_entries}, max_age_days={self.max_age_days})")


def neardup(features, index: NearDupIndex, *, decide_at: float = 0.8,
            min_reporters: int = 2) -> Signal | None:
    """``content_spam`` when the message is a near-duplicate of reported spam: strength
    is the similarity. It decides alone when a trusted entry matches at ``decide_at``
    or more, or entries of at least ``min_reporters`` distinct untrusted reporters do."""
    found = index.match(features, decide_at)
    if found is None:
        return None
    if found.trusted:
        decides, by = True, ", a trusted report"
    else:
        decides = found.reporters >= min_reporters
        by = f", {found.reporters} reporter{'s' if found.reporters != 1 else ''}" if found.reporters else ""
        if found.reporters and not decides:
            by += f" ({min_reporters} needed to decide)"
    strength = found.similarity
    if not decides and not found.trusted and found.reporters and found.similarity >= decide_at:
        strength = below_quorum(strength, found.reporters, min_reporters)   # see reported.below_quorum
    return Signal(CLASSIFICATION, strength=strength, decides=decides,
                  evidence=(f"similar ({found.similarity:.2f}) to reported spam {found.label}{by}",))
