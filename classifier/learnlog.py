"""The learn log: every Learn, in order. It is at once the audit record, the
idempotency registry and the stream that keeps every scorer process in step.

A scorer runs several processes, each with its own copy of the model. A Learn reaches
one of them, so it is written here first, in one transaction that also decides its
outcome:
- a message learned before with the same label is a no-op (audited, not applied);
- with the other label it is relearned (undone, then learned);
- otherwise it is learned.
Then every process applies the log in id order. Learning is deterministic, so all
the processes end in the same state, and each one can undo a learn exactly (it
recomputes the receipt itself). After a restart a process replays the log on top of
its bundle, so feedback outlives restarts. A retrain that folds the log into a new
bundle records the last id it used, and replay starts after it.

SQLite in WAL mode serves one host's scorer processes (the embedded default). Every
write is one immediate transaction, so concurrent Learns from several processes are
serialised by SQLite's own lock. Within a process, the RPC threads share one
connection, and a lock serialises them.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass

LEARNED, NOOP, RELEARNED = "learned", "noop", "relearned"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS learn (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    digest TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('spam', 'ham')),
    previous_label TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('learned', 'noop', 'relearned')),
    source TEXT NOT NULL,
    who TEXT NOT NULL,
    classifiers TEXT NOT NULL,   -- JSON list; [] means the model's default for the source
    message BLOB                 -- zlib; NULL for no-ops (nothing to apply)
);
CREATE INDEX IF NOT EXISTS learn_digest ON learn (digest);
CREATE TABLE IF NOT EXISTS current (
    digest TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    classifiers TEXT NOT NULL,
    log_id INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Entry:
    id: int
    at: float
    digest: str
    label: str
    previous_label: str | None
    outcome: str
    source: str
    who: str
    classifiers: list[str]
    message: bytes | None


class LearnLog:
    def __init__(self, path: str):
        self.path = path
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged learn survives a crash
        self._db.executescript(_SCHEMA)
        self._mutex = threading.Lock()

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    def record(self, digest: str, label: str, source: str, who: str, classifiers: list[str],
               message: bytes) -> Entry:
        """Decide the outcome of a learn and append it, atomically."""
        if label not in ("spam", "ham"):
            raise ValueError(f"label must be spam or ham, not {label!r}")
        with self._mutex:
            return self._record(digest, label, source, who, classifiers, message)

    def _record(self, digest, label, source, who, classifiers, message) -> Entry:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT label, classifiers FROM current WHERE digest = ?", (digest,)).fetchone()
            names = json.dumps(sorted(classifiers))
            if row is not None and row[0] == label and row[1] == names:
                outcome, previous, blob = NOOP, row[0], None
            else:
                outcome = LEARNED if row is None else RELEARNED
                previous = None if row is None else row[0]
                blob = zlib.compress(message, 3)
            at = time.time()
            cur = db.execute(
                "INSERT INTO learn (at, digest, label, previous_label, outcome, source, who, classifiers, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, digest, label, previous, outcome, source, who, names, blob))
            log_id = cur.lastrowid
            if outcome != NOOP:
                db.execute("INSERT INTO current (digest, label, classifiers, log_id) VALUES (?, ?, ?, ?)"
                           " ON CONFLICT(digest) DO UPDATE SET label = excluded.label,"
                           " classifiers = excluded.classifiers, log_id = excluded.log_id",
                           (digest, label, names, log_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Entry(log_id, at, digest, label, previous, outcome, source, who, json.loads(names), message)

    def last_id(self) -> int:
        with self._mutex:
            return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM learn").fetchone()[0]

    def since(self, after_id: int, upto: int | None = None):
        """Entries with after_id < id (<= upto), in order, message bytes decompressed."""
        q = ("SELECT id, at, digest, label, previous_label, outcome, source, who, classifiers, message"
             " FROM learn WHERE id > ?" + (" AND id <= ?" if upto is not None else "") + " ORDER BY id")
        args = (after_id,) if upto is None else (after_id, upto)
        with self._mutex:
            rows = self._db.execute(q, args).fetchall()
        for r in rows:
            yield Entry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]),
                        zlib.decompress(r[9]) if r[9] is not None else None)

    def audit(self, digest: str | None = None, limit: int = 100) -> list[Entry]:
        """The newest audit records (all, or one message's), without message bytes."""
        q = ("SELECT id, at, digest, label, previous_label, outcome, source, who, classifiers FROM learn"
             + (" WHERE digest = ?" if digest else "") + " ORDER BY id DESC LIMIT ?")
        args = (digest, limit) if digest else (limit,)
        with self._mutex:
            rows = self._db.execute(q, args).fetchall()
        return [Entry(*r[:8], json.loads(r[8]), None) for r in rows]
