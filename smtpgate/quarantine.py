"""The quarantine: every message whose contract action is ``quarantine`` is kept here,
searchable, until it is released, deleted or purged after the retention period.

The files are the truth. Each message is two files in a day directory, each written to
a temporary name, fsync'd, then renamed into place (the rename is the commit):
``<id>.eml`` with the bytes exactly as received, and ``<id>.json`` with the envelope,
the classification, its evidence and scores, and, once someone acts on it, its state
and the actions done on it. The gate writes the copy *before* it answers the 5xx, so a
quarantined message is never lost to a crash.

The index (``index.db``, SQLite in WAL mode) is what makes the quarantine searchable by
recipient, sender, domain, classification and date without reading every file. It is
derived data: ``store()`` adds a row after the files are durable, with no fsync of its
own (``synchronous=NORMAL``), and a failure to write it does not fail the store. An index
that is missing, corrupt or behind the files is rebuilt from the ``.json`` files: the
first use of a ``Quarantine`` (and every purge) compares, day by day, how many messages
the files and the index hold, and re-reads the days that differ. A message whose files
landed but whose row did not (a crash between the two) is therefore found again.

Actions (release, delete) are read-modify-write of the ``.json`` file under an exclusive
lock on the quarantine directory (``flock``, so the gate, the CLI and the control panel
take turns), and the index row follows. A release is written as *pending*, with the
queue id it will use, before the message is queued, and as *done* after: a release
interrupted by a crash is settled on the next action by asking the queue whether that
id exists, so the message is neither queued twice nor reported released when it was not.
A purge settles such a release (given the queue) before the message goes, and keeps
the message while it cannot. What a release teaches is submitted to the feedback store
after the lock is let go (the store may wait seconds for the scorer; the gate and the
CLI should not), and its answer is written into the action afterwards; a release done
but not yet learned (a crash in between) is learned by the next action on it.

Report as spam from a user's copy (``report_spam``): the copy names our queue id in our
trace fields, but the copy is the user's to edit, so the id is believed only when the
copy's body is the queue entry's; the score is the entry's, never the copy's.

Releasing feeds the classifiers where the contract's ``release`` column says ``learn``,
and only when the message goes to its original recipients: that is the admin saying
"this was not spam". A release to another address (an admin looking at the message
from their own mailbox, a copy for a colleague) delivers without teaching anything.
"""
from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from classifier.classifications import get as classification_row
from classifier.durable import fsync_dir, replace_file

from . import headers
from .config import normalise_address
from .queue import new_id

log = logging.getLogger("mailsift.quarantine")

STATES = ("held", "released", "deleted")
SUBJECT_MAX = 200            # characters of the decoded Subject kept in the index
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# a classifier "fired" when its own probability said spam; the combined score's
# threshold is a setting of the recipient, the classifiers' vote is at 0.5
FIRED_AT = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    day TEXT NOT NULL,              -- the day directory holding <id>.eml and <id>.json
    stored REAL NOT NULL,
    sender TEXT NOT NULL,           -- MAIL FROM, lower case; '' for the null sender
    sender_domain TEXT NOT NULL,
    classification TEXT,
    score REAL,
    message_id TEXT,
    subject TEXT,
    size INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_stored ON messages (stored);
CREATE INDEX IF NOT EXISTS messages_day ON messages (day);
CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender);
CREATE INDEX IF NOT EXISTS messages_sender_domain ON messages (sender_domain);
CREATE INDEX IF NOT EXISTS messages_classification ON messages (classification, stored);
CREATE TABLE IF NOT EXISTS rcpts (
    id TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    domain TEXT NOT NULL,
    PRIMARY KEY (id, rcpt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rcpts_rcpt ON rcpts (rcpt);
CREATE INDEX IF NOT EXISTS rcpts_domain ON rcpts (domain);
CREATE TABLE IF NOT EXISTS actions (
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,           -- release | delete
    why TEXT NOT NULL,
    targets TEXT NOT NULL,          -- JSON list of the addresses released to
    detail TEXT NOT NULL,           -- JSON: queue id, status, what the feedback said
    PRIMARY KEY (id, seq)
) WITHOUT ROWID;
"""


class QuarantineError(Exception):
    """An action that cannot be done; the message says why."""


class NotFound(QuarantineError):
    pass


class AlreadyReleased(QuarantineError):
    pass


class Deleted(QuarantineError):
    pass


@dataclass(frozen=True)
class Entry:
    """One quarantined message as the index has it (a search result)."""
    id: str
    stored: float
    sender: str
    rcpts: tuple[str, ...]
    classification: str | None
    score: float | None
    message_id: str | None
    subject: str | None
    size: int
    state: str

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rcpts"] = list(self.rcpts)
        return d


@dataclass(frozen=True)
class Release:
    """What a release did: where the message went, and what the classifiers were told."""
    quarantine_id: str
    queue_id: str
    to: tuple[str, ...]
    original_recipients: bool
    feedback: dict[str, Any] | None       # the FeedbackResult, when one was submitted
    not_learned: str | None               # why nothing was submitted, when nothing was
    feedback_error: str | None = None     # the submit failed (the release itself stands)


@dataclass(frozen=True)
class Report:
    """What a "report as spam" submitted."""
    queue_id: str | None                  # None: the message was not found in our queue
    from_queue: bool                      # the bytes came from the queue (else: the user's copy)
    score: float | None
    classification: str | None
    feedback: dict[str, Any]


def subject_of(message: bytes) -> str | None:
    """The Subject, RFC 2047 words decoded, truncated to ``SUBJECT_MAX`` characters."""
    # a message with no end to its header block is not read whole for its Subject
    block = message[:min(headers._header_block_end(message), 256 * 1024)]
    try:
        value = BytesHeaderParser(policy=policy.default).parsebytes(block).get("Subject")
        value = None if value is None else str(value)
    except Exception:   # a broken encoded word: the raw text is still worth showing
        m = re.search(rb"(?im)^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", block)
        value = None if m is None else m.group(1).decode("utf-8", "replace")
    if value is None:
        return None
    value = re.sub(r"\s+", " ", value).strip()
    return value[:SUBJECT_MAX]


def _domain(address: str) -> str:
    return address.rpartition("@")[2] if "@" in address else ""


def fired_classifiers(record: dict[str, Any]) -> list[str] | None:
    """The classifiers a release teaches: those whose own probability said spam, plus
    ``cluster_tokens``, which learns at once (issue #7). None when no statistical
    classifier fired (a reputation check decided alone): the scorer's default for a
    release then applies, and the reputation stores learn it either way."""
    fired = {name for name, p in (record.get("scores") or {}).items()
             if p is not None and p >= FIRED_AT}
    return sorted(fired | {"cluster_tokens"}) if fired else None


def _plain(result: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(result):
        return dataclasses.asdict(result)
    if isinstance(result, dict):
        return dict(result)
    return {k: v for k, v in vars(result).items() if not k.startswith("_")}


class Quarantine:
    def __init__(self, directory: Path, *, retention: float = 30 * 86400.0, clock=time.time):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.retention = retention
        self.clock = clock
        self.index_path = self.directory / "index.db"
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()      # one connection, shared by the gate's threads
        self._checked = False              # the index was compared with the files

    # ------------------------------------------------------------------------------
    # The index
    # ------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self._db = self._open_index()
            except sqlite3.DatabaseError as exc:
                # derived data: a corrupt index is set aside and rebuilt from the files
                log.warning("quarantine index %s unusable (%s): rebuilding it", self.index_path, exc)
                stamp = int(self.clock())
                for suffix in ("", "-wal", "-shm"):
                    p = Path(f"{self.index_path}{suffix}")
                    if p.exists():
                        p.replace(Path(f"{self.index_path}{suffix}.corrupt-{stamp}"))
                self._db = self._open_index()
        return self._db

    def _open_index(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.index_path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")   # the files are durable; this can be rebuilt
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @staticmethod
    def _put(db: sqlite3.Connection, day: str, rec: dict[str, Any]) -> None:
        qid = rec["id"]
        sender = normalise_address(rec.get("mail_from") or "")
        db.execute("INSERT OR REPLACE INTO messages (id, day, stored, sender, sender_domain, classification,"
                   " score, message_id, subject, size, state) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (qid, day, rec["stored"], sender, _domain(sender), rec.get("classification"),
                    rec.get("score"), rec.get("message_id"), rec.get("subject"), rec.get("size", 0),
                    rec.get("state", "held")))
        db.execute("DELETE FROM rcpts WHERE id = ?", (qid,))
        db.executemany("INSERT OR IGNORE INTO rcpts (id, rcpt, domain) VALUES (?,?,?)",
                       [(qid, r, _domain(r)) for r in {normalise_address(x) for x in rec.get("rcpts") or ()}])
        db.execute("DELETE FROM actions WHERE id = ?", (qid,))
        db.executemany("INSERT INTO actions (id, seq, at, who, action, why, targets, detail) VALUES (?,?,?,?,?,?,?,?)",
                       [(qid, i, a["at"], a["who"], a["action"], a.get("why", ""), json.dumps(a.get("to", [])),
                         json.dumps({k: v for k, v in a.items() if k not in ("at", "who", "action", "why", "to")},
                                    default=str))
                        for i, a in enumerate(rec.get("actions") or ())])

    def _days_on_disk(self) -> dict[str, int]:
        """Each day directory and how many messages (``.json`` files) it holds."""
        out = {}
        for d in os.scandir(self.directory):
            if d.is_dir() and _DAY.fullmatch(d.name):
                with os.scandir(d.path) as it:
                    out[d.name] = sum(1 for e in it if e.name.endswith(".json") and not e.name.startswith("."))
        return out

    def _reindex_day(self, day: str) -> int:
        """Read one day's ``.json`` files into the index, replacing what it had of that day.
        The listing happens inside the write transaction, so a store that lands meanwhile
        either is listed here or writes its own row after this commits."""
        with self._txn() as db:
            path = self.directory / day
            recs = []
            if path.is_dir():
                for p in path.glob("*.json"):
                    try:
                        rec = json.loads(p.read_bytes())
                    except (OSError, ValueError) as exc:   # a file being purged, or damaged
                        log.warning("quarantine: cannot read %s: %s", p, exc)
                        continue
                    if "subject" not in rec:   # written before the index existed
                        eml = p.with_suffix(".eml")
                        rec["subject"] = subject_of(eml.read_bytes()) if eml.exists() else None
                    recs.append(rec)
            ids = [r[0] for r in db.execute("SELECT id FROM messages WHERE day = ?", (day,))]
            for table in ("rcpts", "actions", "messages"):
                db.executemany(f"DELETE FROM {table} WHERE id = ?", [(i,) for i in ids])
            for rec in recs:
                self._put(db, day, rec)
        return len(recs)

    def _stale_days(self) -> set[str]:
        on_disk = self._days_on_disk()
        with self._lock:
            indexed = dict(self._connect().execute("SELECT day, count(*) FROM messages GROUP BY day"))
        return {d for d in on_disk.keys() | indexed.keys() if on_disk.get(d, 0) != indexed.get(d, 0)}

    def _catch_up(self) -> None:
        for day in sorted(self._stale_days()):
            n = self._reindex_day(day)
            log.info("quarantine: index of %s rebuilt from the files (%d messages)", day, n)
        self._checked = True

    def _ready(self) -> None:
        if not self._checked:
            self._catch_up()

    def reindex(self) -> int:
        """Rebuild the whole index from the ``.json`` files; the number of messages."""
        days = set(self._days_on_disk())
        with self._lock:
            days |= {r[0] for r in self._connect().execute("SELECT DISTINCT day FROM messages")}
        n = sum(self._reindex_day(d) for d in sorted(days))
        self._checked = True
        return n

    # ------------------------------------------------------------------------------
    # Storing (the gate, at the end of DATA)
    # ------------------------------------------------------------------------------
    def store(self, qid: str, message: bytes, record: dict[str, Any]) -> Path:
        now = self.clock()
        day_name = time.strftime("%Y-%m-%d", time.gmtime(now))
        day = self.directory / day_name
        day.mkdir(exist_ok=True)
        replace_file(day / f"{qid}.eml", message)
        meta = {"id": qid, "stored": now, "size": len(message), "subject": subject_of(message),
                **record, "state": "held", "actions": []}
        replace_file(day / f"{qid}.json", json.dumps(meta, default=str, ensure_ascii=False).encode())
        fsync_dir(day)
        try:
            with self._txn() as db:
                self._put(db, day_name, meta)
        except sqlite3.Error as exc:
            # the message is safe in its files; the next catch-up indexes it
            log.warning("quarantine index write failed for %s: %s", qid, exc)
        return day / f"{qid}.eml"

    # ------------------------------------------------------------------------------
    # Reading
    # ------------------------------------------------------------------------------
    def search(self, *, recipient: str | None = None, sender: str | None = None, domain: str | None = None,
               classification: str | None = None, since: float | None = None, until: float | None = None,
               state: str | None = "held", limit: int = 100, offset: int = 0) -> list[Entry]:
        """Quarantined messages, newest first. ``recipient`` and ``sender`` are addresses,
        or ``@domain`` for any address at that domain; ``domain`` is a recipient's domain
        (a domain admin's view); ``since``/``until`` are Unix times (until exclusive);
        ``state=None`` matches every state."""
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)} (or None for all)")
        self._ready()
        conds: list[tuple[str, Any]] = [("m.state = ?", state), ("m.classification = ?", classification or None),
                                        ("m.stored >= ?", since), ("m.stored < ?", until)]
        in_rcpts = "m.id IN (SELECT id FROM rcpts WHERE {} = ?)"
        if recipient:
            r = normalise_address(recipient)
            conds.append((in_rcpts.format("domain"), r[1:]) if r.startswith("@") else (in_rcpts.format("rcpt"), r))
        if domain:
            conds.append((in_rcpts.format("domain"), normalise_address(domain).lstrip("@")))
        if sender is not None:
            s = normalise_address(sender)
            conds.append(("m.sender_domain = ?", s[1:]) if s.startswith("@") else ("m.sender = ?", s))
        where = [c for c, v in conds if v is not None]
        args = [v for c, v in conds if v is not None]
        sql = ("SELECT m.id, m.stored, m.sender, m.classification, m.score, m.message_id, m.subject,"
               " m.size, m.state FROM messages m" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY m.stored DESC, m.id DESC LIMIT ? OFFSET ?")
        with self._lock:
            db = self._connect()
            rows = db.execute(sql, (*args, limit, offset)).fetchall()
            rcpts: dict[str, list[str]] = {}
            ids = [r[0] for r in rows]
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for qid, rcpt in db.execute(
                        f"SELECT id, rcpt FROM rcpts WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY rcpt", chunk):
                    rcpts.setdefault(qid, []).append(rcpt)
        return [Entry(id=r[0], stored=r[1], sender=r[2], rcpts=tuple(rcpts.get(r[0], ())), classification=r[3],
                      score=r[4], message_id=r[5], subject=r[6], size=r[7], state=r[8]) for r in rows]

    def _locate(self, qid: str) -> Path | None:
        """The day directory of a message: from the index, else by looking."""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", qid) or qid.startswith("."):
            return None
        with self._lock:
            row = self._connect().execute("SELECT day FROM messages WHERE id = ?", (qid,)).fetchone()
        if row is not None and (self.directory / row[0] / f"{qid}.json").exists():
            return self.directory / row[0]
        for p in self.directory.glob(f"*/{qid}.json"):
            return p.parent
        return None

    def get(self, qid: str) -> tuple[bytes | None, dict[str, Any]] | None:
        """The message bytes (None once deleted) and its full record (envelope,
        classification, evidence, scores, state, actions); None for an unknown id."""
        day = self._locate(qid)
        if day is None:
            return None
        try:
            rec = json.loads((day / f"{qid}.json").read_bytes())
        except FileNotFoundError:   # purged meanwhile
            return None
        rec.setdefault("state", "held")
        rec.setdefault("actions", [])
        eml = day / f"{qid}.eml"
        return (eml.read_bytes() if eml.exists() else None), rec

    # ------------------------------------------------------------------------------
    # Retention
    # ------------------------------------------------------------------------------
    def purge(self, now: float | None = None, *, queue=None, feedback=None) -> int:
        """Remove every message stored more than ``retention`` ago (files and index
        rows); the number removed. The gate's server calls it hourly.

        A message whose release a crash left unsettled (pending, or done and not yet
        learned) is settled first when ``queue`` is given (and learned with
        ``feedback``) and purged on a later run; without ``queue`` it is kept until
        something settles it, since deleting it would lose the release's outcome."""
        now = self.clock() if now is None else now
        cutoff = now - self.retention
        self._catch_up()   # a message the index missed is purged too
        owed: dict[str, list[dict[str, Any]]] = {}
        try:
            return self._purge(now, cutoff, queue, owed)
        finally:
            for qid, acts in owed.items():
                self._learn_owed(qid, acts, feedback)

    def _unsettled(self, day: Path, qid: str, queue, owed: dict[str, list[dict[str, Any]]]) -> bool:
        """Whether the message has a release to settle before it may go (see purge)."""
        try:
            rec = json.loads((day / f"{qid}.json").read_bytes())
        except (OSError, ValueError):
            return False
        rec.setdefault("actions", [])
        if not any(a["action"] == "release" and (a.get("status") == "pending" or
                                                 (a.get("status") == "done" and "learn" not in a))
                   for a in rec["actions"]):
            return False
        if queue is None:
            log.warning("quarantine: %s has an unsettled release; kept until it is settled", qid)
            return True
        owed[qid] = self._settle(day, rec, queue)
        return bool(owed[qid])

    def _purge(self, now: float, cutoff: float, queue, owed: dict[str, list[dict[str, Any]]]) -> int:
        with self._exclusive():
            with self._lock:
                rows = self._connect().execute(
                    "SELECT id, day FROM messages WHERE stored < ?", (cutoff,)).fetchall()
            rows = [(qid, day) for qid, day in rows if not self._unsettled(self.directory / day, qid, queue, owed)]
            days = set()
            for qid, day in rows:
                path = self.directory / day
                # the .eml first: a crash in between leaves a .json, which is indexed and
                # purged next time, rather than a .eml nothing knows about
                (path / f"{qid}.eml").unlink(missing_ok=True)
                (path / f"{qid}.json").unlink(missing_ok=True)
                days.add(path)
            for path in days:
                if path.is_dir():
                    fsync_dir(path)
            for i in range(0, len(rows), 500):
                with self._txn() as db:
                    for table in ("rcpts", "actions", "messages"):
                        db.executemany(f"DELETE FROM {table} WHERE id = ?", [(r[0],) for r in rows[i:i + 500]])
            self._remove_old_days(cutoff, now)
        if rows:
            log.info("quarantine: purged %d messages stored before %s", len(rows),
                     time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(cutoff)))
        return len(rows)

    def _remove_old_days(self, cutoff: float, now: float) -> None:
        """Day directories wholly before the cutoff (and before today, where the gate may
        be storing) hold only leftovers now (a temporary file from a crash): they go."""
        last = min(time.strftime("%Y-%m-%d", time.gmtime(cutoff)), time.strftime("%Y-%m-%d", time.gmtime(now)))
        for d in os.scandir(self.directory):
            if d.is_dir() and _DAY.fullmatch(d.name) and d.name < last:
                for f in os.scandir(d.path):
                    if f.name.startswith(".") and f.name.endswith(".tmp"):
                        os.unlink(f.path)
                with contextlib.suppress(OSError):   # not empty: a message not yet due
                    os.rmdir(d.path)

    # ------------------------------------------------------------------------------
    # Actions
    # ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One action at a time across processes (gate, CLI, control panel)."""
        fd = os.open(self.directory / ".actions.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)   # closing releases the lock

    def _load(self, qid: str) -> tuple[Path, dict[str, Any]]:
        day = self._locate(qid)
        if day is None:
            raise NotFound(f"no quarantined message {qid}")
        rec = json.loads((day / f"{qid}.json").read_bytes())
        rec.setdefault("state", "held")
        rec.setdefault("actions", [])
        return day, rec

    def _save(self, day: Path, rec: dict[str, Any]) -> None:
        replace_file(day / f"{rec['id']}.json", json.dumps(rec, default=str, ensure_ascii=False).encode())
        fsync_dir(day)
        try:
            with self._txn() as db:
                self._put(db, day.name, rec)
        except sqlite3.Error as exc:
            log.warning("quarantine index write failed for %s: %s (reindex repairs it)", rec["id"], exc)

    def _settle(self, day: Path, rec: dict[str, Any], queue) -> list[dict[str, Any]]:
        """Settle releases a crash left pending: queued (the queue knows the id: it is
        done) or not (abandoned). Returns the done releases whose learn is still owed
        (settled now, or done by a process that died before it learned): the caller
        submits them with ``_learn`` once it has let go of the lock."""
        owed = []
        for a in rec["actions"]:
            if a["action"] != "release":
                continue
            if a.get("status") == "pending":
                if queue.get(a["queue_id"]) is None:
                    a["status"] = "abandoned"
                    self._save(day, rec)
                    continue
                a["status"] = "done"
                if a.get("original_recipients"):
                    rec["state"] = "released"
                self._save(day, rec)
            if a.get("status") == "done" and "learn" not in a:
                owed.append(a)
        return owed

    def _learn(self, qid: str, act: dict[str, Any], feedback) -> tuple[dict[str, Any] | None, str | None, str | None]:
        """Submit a done release as ham where it should be, *outside* the actions lock
        (the feedback store may wait for the scorer), then record what it said in the
        action. Returns (the feedback result, why nothing was submitted, the submit's error)."""
        got = self.get(qid)
        rec = got[1] if got else {"id": qid}
        message = got[0] if got else None
        not_learned = _why_not_learn(rec, act["original_recipients"], act.get("learn_requested", True), feedback)
        if not_learned is None and message is None:
            not_learned = "the message is gone"
        result, error = None, None
        if not_learned is None:
            try:
                result = _plain(feedback.submit(
                    message=message, label="ham", source="release", who=act["who"], why=act.get("why", ""),
                    score=rec.get("score"), classification=rec.get("classification"), queue_id=rec["id"],
                    classifiers=fired_classifiers(rec), classifier_scores=rec.get("scores") or None))
            except Exception as exc:   # the message is queued: the release stands, and says so
                log.exception("feedback for the release of %s failed", rec["id"])
                error = f"{type(exc).__name__}: {exc}"
        outcome = result if result is not None else {"not_learned": not_learned, "error": error}
        with self._exclusive():
            with contextlib.suppress(NotFound):
                day, rec = self._load(qid)
                for a in rec["actions"]:
                    if a["action"] == "release" and a.get("queue_id") == act["queue_id"]:
                        a["learn"] = outcome
                        self._save(day, rec)
                        break
        return result, not_learned, error

    def _learn_owed(self, qid: str, owed: list[dict[str, Any]], feedback) -> None:
        for a in owed:
            self._learn(qid, a, feedback)

    def release(self, qid: str, *, queue, feedback=None, who: str, why: str = "",
                to: list[str] | None = None, force: bool = False, learn: bool = True) -> Release:
        """Deliver a quarantined message through the queue.

        Without ``to`` it goes to its original recipients (as the client wrote them)
        and, where the contract's ``release`` column says ``learn``, is submitted to
        ``feedback`` as ham for the classifiers that fired (``learn=False``: an admin
        releasing a message they know is spam, because a user insists). With ``to`` it
        goes to those addresses instead and nothing is learned. Delivering to an address
        it was already released to needs ``force``."""
        owed: list[dict[str, Any]] = []
        try:
            return self._release(qid, queue=queue, feedback=feedback, who=who, why=why, to=to, force=force,
                                 learn=learn, owed=owed)
        finally:
            self._learn_owed(qid, owed, feedback)   # what a crash left unlearned, after the lock

    def _release(self, qid: str, *, queue, feedback, who: str, why: str, to: list[str] | None, force: bool,
                 learn: bool, owed: list[dict[str, Any]]) -> Release:
        with self._exclusive():
            day, rec = self._load(qid)
            if rec["state"] == "deleted":
                raise Deleted(f"{qid} was deleted")
            owed += self._settle(day, rec, queue)
            original = not to
            targets = list(to) if to else list(rec.get("deliver_to") or rec.get("rcpts") or ())
            if not targets:
                raise QuarantineError(f"{qid} has no recipients to release to")
            done = {normalise_address(t) for a in rec["actions"]
                    if a["action"] == "release" and a.get("status") == "done" for t in a["to"]}
            again = sorted(t for t in targets if normalise_address(t) in done)
            if again and not force:
                raise AlreadyReleased(f"{qid} was already released to {', '.join(again)} (force to send again)")
            eml = day / f"{qid}.eml"
            if not eml.exists():
                raise NotFound(f"the message of {qid} is gone")
            message = eml.read_bytes()
            now = self.clock()
            queue_id = new_id()   # chosen here, so a crash after the enqueue can be settled
            act = {"action": "release", "at": now, "who": who, "why": why, "to": targets,
                   "original_recipients": original, "learn_requested": learn, "queue_id": queue_id,
                   "status": "pending"}
            rec["actions"].append(act)
            self._save(day, rec)
            # the bytes as received, under one trace field saying where they come from;
            # the queue keeps the offset, so report-as-spam later finds the original
            trace = (f"X-Mailsift-Released: {qid}; queue-id={queue_id}; classification="
                     f"{rec.get('classification')}; {email.utils.formatdate(now, usegmt=True)}\r\n").encode()
            mail_from = rec.get("mail_from") or ""
            queue.enqueue(
                mail_from=mail_from, rcpts=targets, message=trace + message, queue_id=queue_id,
                origin="release",
                smtputf8=rec.get("smtputf8", not all(a.isascii() for a in [mail_from, *targets])),
                body8bit=rec.get("body8bit", not message.isascii()), original_offset=len(trace),
                meta={"quarantine_id": qid, "classification": rec.get("classification"),
                      "score": rec.get("score"), "released_by": who, "message_id": rec.get("message_id")})
            act["status"] = "done"
            if original:
                rec["state"] = "released"
            self._save(day, rec)
        result, not_learned, error = self._learn(qid, act, feedback)
        return Release(quarantine_id=qid, queue_id=queue_id, to=tuple(targets), original_recipients=original,
                       feedback=result, not_learned=not_learned, feedback_error=error)

    def delete(self, qid: str, *, who: str, why: str = "") -> None:
        """Delete a message's bytes for good; its record (who deleted it, when, why) stays
        until the retention period ends."""
        with self._exclusive():
            day, rec = self._load(qid)
            if rec["state"] == "deleted":
                raise Deleted(f"{qid} was already deleted")
            (day / f"{qid}.eml").unlink(missing_ok=True)
            rec["state"] = "deleted"
            rec["actions"].append({"action": "delete", "at": self.clock(), "who": who, "why": why, "to": []})
            self._save(day, rec)


def _why_not_learn(rec: dict[str, Any], original: bool, learn: bool, feedback) -> str | None:
    cls = rec.get("classification")
    try:
        row = classification_row(cls) if cls else None
    except KeyError:
        row = None
    if row is None or not row.learns_on_release:
        return f"the contract releases {cls} without learning (release: {row.release if row else 'unknown'})"
    if not original:
        return "released to other addresses: not a verdict on the message"
    if not learn:
        return "released without learning, as asked"
    if feedback is None:
        return "no feedback store given"
    return None


# --------------------------------------------------------------------------------------
# Report as spam (a delivered message)
# --------------------------------------------------------------------------------------
_OUR_RECEIVED = re.compile(r"\bby\s+(\S+)\s+\(mailsift\)\s+with\s+\S+\s+id\s+([A-Za-z0-9._-]+)", re.IGNORECASE)
_RELEASED = re.compile(r"queue-id=([A-Za-z0-9._-]+)", re.IGNORECASE)


def _fields(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its continuation lines and line end) and the rest."""
    end = headers._header_block_end(message)
    return [f for f in re.split(rb"(?<=\n)(?![ \t])", message[:end]) if f], message[end:]


def _name_value(field: bytes) -> tuple[str, str]:
    name, _, value = field.partition(b":")
    return name.strip().lower().decode("ascii", "replace"), re.sub(r"\s+", " ", value.decode("utf-8", "replace")).strip()


def find_queue_id(message: bytes, hostname: str | None = None) -> tuple[str, int] | None:
    """Our queue id in a delivered message, and the index of the field that names it:
    whichever of ours comes first from the top, the ``Received: ... by <hostname>
    (mailsift) ... id <ID>`` of a delivery (any host when ``hostname`` is None) or the
    ``X-Mailsift-Released: ...; queue-id=<ID>`` of a release. Fields above it were added
    after us (downstream hops). The gate strips ``X-Mailsift-*`` fields that arrive from
    outside, so below our Received there is no other; a released message's original
    bytes are kept as received, so a sender's forgery can only sit below ours.

    This is a hint, not a proof: the user's copy is the user's to edit. report_spam
    checks that the copy's body is the queue entry's before it believes it."""
    fields, _ = _fields(message)
    for i, field in enumerate(fields):
        name, value = _name_value(field)
        if name == "received":
            m = _OUR_RECEIVED.search(value)
            if m and (hostname is None or m.group(1).lower().rstrip(".") == hostname.lower().rstrip(".")):
                return m.group(2), i
        elif name == "x-mailsift-released":
            m = _RELEASED.search(value)
            if m:
                return m.group(1), i
    return None


def strip_trace(message: bytes, hostname: str | None = None) -> bytes:
    """The message as the gate received it, as near as the user's copy allows: the fields
    down to and including our trace field go, then our Authentication-Results and
    ``X-Mailsift-*`` fields. A copy saved with bare LF line ends gets CRLF back."""
    if b"\r\n" not in message:
        message = message.replace(b"\n", b"\r\n")
    found = find_queue_id(message, hostname)
    authserv = hostname
    if found is not None:
        fields, rest = _fields(message)
        mine = fields[found[1]]
        m = _OUR_RECEIVED.search(_name_value(mine)[1])
        authserv = authserv or (m.group(1) if m else None)
        message = b"".join(fields[found[1] + 1:]) + rest
    # our Authentication-Results carry our host name as authserv-id; without one, only
    # the X-Mailsift fields (and unreadable Authentication-Results) can be told apart
    return headers.strip_ours(message, authserv or "")


class Mismatch(QuarantineError):
    """The user's copy is not the message the queue id it names was."""


def same_body(copy: bytes, original: bytes) -> bool:
    """Whether a user's copy (our trace fields stripped) carries the body the gate
    received: the same body bytes (line ends and trailing blanks aside), or the same
    Pyzor digest (a mailbox that re-encoded a part)."""
    from classifier.reputation.reported import _body_bytes, body_digest

    mine = _body_bytes(copy)
    if mine is not None and mine == _body_bytes(original):
        return True
    digest = body_digest(copy)
    return digest is not None and digest.startswith("pyzor:") and digest == body_digest(original)


def report_spam(queue, feedback, *, queue_id: str | None = None, message: bytes | None = None,
                who: str, why: str = "", hostname: str | None = None) -> Report:
    """Report a delivered message as spam: by our queue id (the bytes as received come
    from the queue, score and classification from the entry), or from the message as
    the user has it.

    A copy names its queue id in our trace fields (``find_queue_id``), but the copy is
    the user's to edit: the id is believed only when the copy's body is that entry's
    (``same_body``), else the report is refused (``Mismatch``), so nobody reports
    another user's message by forging a header. The score is never read from the
    copy: it is the queue entry's, and when the queue no longer has the entry the
    copy (our trace fields stripped) is submitted without one, which the feedback
    store holds for review (``no_verdict``) unless the reporter is trusted."""
    if (queue_id is None) == (message is None):
        raise ValueError("report_spam needs a queue id or a message, not both")
    if message is not None:
        found = find_queue_id(message, hostname)
        entry = queue.get(found[0]) if found else None
        copy = strip_trace(message, hostname)
        if entry is None:
            qid = found[0] if found else None
            result = feedback.submit(message=copy, label="spam", source="report", who=who, why=why,
                                     score=None, classification=None, queue_id=qid, require_verdict=True)
            return Report(queue_id=qid, from_queue=False, score=None, classification=None,
                          feedback=_plain(result))
        queue_id = found[0]
        if not same_body(copy, queue.original(queue_id)):
            raise Mismatch(f"the message names queue id {queue_id}, but its body is not that message's:"
                           " not reported (send the message as it was delivered)")
    else:
        entry = queue.get(queue_id)
        if entry is None:
            raise NotFound(f"no message {queue_id} in the queue (delivered mail is kept for a limited time)")
    meta = getattr(entry, "meta", None) or {}
    score, classification = meta.get("score"), meta.get("classification")
    result = feedback.submit(message=queue.original(queue_id), label="spam", source="report", who=who, why=why,
                             score=score, classification=classification, queue_id=queue_id,
                             require_verdict=True)
    return Report(queue_id=queue_id, from_queue=True, score=score, classification=classification,
                  feedback=_plain(result))
