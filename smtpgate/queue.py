"""The durable queue: accepted mail is on disk before the gate answers 250, and stays
there until every recipient has a final outcome (delivered, bounced or deleted).

Layout of the queue directory (``<state_dir>/queue``):

- ``msg/<queue_id>.eml``: the message as it will be delivered (our trace headers
  followed by the bytes as received; ``original_offset`` says where they start).
  Written to a temporary name, fsync'd, linked to
  its name (a link, unlike a rename, refuses to replace an existing message), and the
  directory fsync'd: after a crash a message file is complete or absent.
- ``msg/<queue_id>.orig``: only where the delivered bytes after ``original_offset``
  are not exactly what was received (the gate removed forged ``X-Mailsift-*`` or
  ``Authentication-Results`` fields claiming our name, RFC 8601 5): the bytes as
  received, so ``original`` (report-as-spam, learning) keeps the message's digest.
- ``queue.db``: SQLite in WAL mode with ``synchronous=FULL``, so a commit is on disk
  when it returns. One row per message (envelope, origin, meta) and one per
  recipient (status, attempts, next attempt, last reply, route, lease). The index row
  is the commit point of an enqueue: a message file without a row is an enqueue that
  never returned, so nobody was told 250 for it, and ``recover`` removes it.

Recipient statuses: ``queued`` (never tried), ``deferred`` (a temporary failure; tried
again at ``next_attempt``), and the final ``delivered``, ``bounced`` and ``deleted``.

Several processes use one queue at once: the gate (enqueue, delivery) and the admin
commands (``mailsift queue``, ``mailsift quarantine release``). SQLite serialises the
writers; each thread has its own connection. A delivery worker claims recipients by
writing a lease (owner, until) in the transaction that checks they are free, so two
workers never deliver the same recipient. A worker holds an ``flock`` on
``workers/<owner>.lock`` for as long as it lives: a restarted gate sees that the
killed gate's lock is free and takes its claims back at once (``recover``), instead of
waiting for the leases to lapse, which remains the rule where no lock can tell.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from classifier.durable import fsync_dir, synced_temp

ORIGINS = ("smtp", "release", "bounce")
PENDING = ("queued", "deferred")
FINAL = ("delivered", "bounced", "deleted")
STATUSES = PENDING + FINAL

# A message file that has no index row this long after it was written is an enqueue
# that died before its commit (an enqueue takes milliseconds; an hour leaves room for a
# slow disk and for another process's enqueue that is still running).
ORPHAN_AGE = 3600.0

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    queue_id TEXT PRIMARY KEY,
    mail_from TEXT NOT NULL,
    origin TEXT NOT NULL,
    route TEXT,                   -- host:port fixed at enqueue; NULL: per recipient from the config
    smtputf8 INTEGER NOT NULL,
    body8bit INTEGER NOT NULL,
    original_offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    arrival REAL NOT NULL,
    meta TEXT NOT NULL,
    done REAL                     -- when the last recipient reached a final status
);
CREATE INDEX IF NOT EXISTS message_done ON message (done) WHERE done IS NOT NULL;
CREATE TABLE IF NOT EXISTS recipient (
    queue_id TEXT NOT NULL REFERENCES message (queue_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    rcpt TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_attempt REAL,
    last_reply TEXT,
    route TEXT,                   -- where the last attempt went: host:port, or "unrouteable"
    lease_owner TEXT,
    lease_until REAL,
    updated REAL NOT NULL,
    PRIMARY KEY (queue_id, idx)
);
CREATE INDEX IF NOT EXISTS recipient_pending ON recipient (next_attempt)
    WHERE status IN ('queued', 'deferred');
"""


class QueueError(Exception):
    """A queue operation that cannot be done (unknown id, duplicate id)."""


def new_id() -> str:
    """A queue id: time-ordered (milliseconds, hex) and unique (random tail)."""
    return f"{int(time.time() * 1000):011X}{secrets.token_hex(3).upper()}"


def format_route(route: tuple[str, int] | None) -> str | None:
    if route is None:
        return None
    host, port = route
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_route(text: str | None) -> tuple[str, int] | None:
    if not text or text == "unrouteable":
        return None
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class RecipientState:
    idx: int
    rcpt: str
    status: str
    attempts: int
    next_attempt: float
    last_attempt: float | None
    last_reply: str | None
    route: str | None
    lease_owner: str | None
    lease_until: float | None
    updated: float


@dataclass(frozen=True)
class QueueEntry:
    queue_id: str
    mail_from: str
    origin: str
    route: tuple[str, int] | None
    smtputf8: bool
    body8bit: bool
    original_offset: int
    size: int
    arrival: float
    meta: dict[str, Any]
    done: float | None
    recipients: list[RecipientState] = field(default_factory=list)

    @property
    def rcpts(self) -> list[str]:
        return [r.rcpt for r in self.recipients]

    @property
    def status(self) -> str:
        """The message's status: the least advanced of its recipients' (queued before
        deferred before the final ones), so a message shows as pending while any
        recipient still is."""
        statuses = {r.status for r in self.recipients}
        return next(s for s in STATUSES if s in statuses)


@dataclass(frozen=True)
class Due:
    """A recipient whose next attempt is due, with what routing it needs."""
    queue_id: str
    idx: int
    rcpt: str
    route: tuple[str, int] | None    # the message's fixed route, if it has one


@dataclass(frozen=True)
class Outcome:
    """What one attempt did for one recipient (``Queue.record``)."""
    idx: int
    status: str                       # delivered, deferred, bounced
    reply: str                        # the remote reply, or what went wrong
    route: str | None = None          # host:port, or "unrouteable"
    next_attempt: float | None = None  # deferred: when to try again


@dataclass(frozen=True)
class Enqueue:
    """A message to add (``Queue.enqueue`` takes the same fields as keywords)."""
    mail_from: str
    rcpts: list[str]
    message: bytes
    queue_id: str | None = None
    origin: str = "smtp"
    route: tuple[str, int] | None = None
    smtputf8: bool = False
    body8bit: bool = False
    original_offset: int = 0
    meta: dict | None = None
    original: bytes | None = None     # the bytes as received, when not message[original_offset:]


class Queue:
    def __init__(self, directory: Path, *, clock=time.time):
        self.directory = Path(directory)
        self.clock = clock
        self.msg_dir = self.directory / "msg"
        self.workers_dir = self.directory / "workers"
        for d in (self.directory, self.msg_dir, self.workers_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.db_path = self.directory / "queue.db"
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._owners: dict[str, int] = {}    # our workers' lock file descriptors
        self._db().executescript(_SCHEMA)     # its own transaction; IF NOT EXISTS: idempotent

    # ------------------------------------------------------------------------------
    # storage
    # ------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")    # a commit is on disk when it returns
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._conns_lock:
                self._conns.append(db)
        return db

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock at once, so what it
        reads stays true until it commits (the claim relies on that). The threads of
        one process take turns on a lock of their own first: waiting on SQLite's lock
        means its busy handler's sleeps (1 ms, 2 ms, 5 ms... up to 100 ms), and the
        commit of a delivery must not sleep behind an enqueue.

        ``durable=False`` (leases only) commits without waiting for the disk: a lease
        lost to a power cut belonged to a process that is gone too, and the next
        durable commit writes it out anyway (WAL: one log, in order)."""
        db = self._db()
        with self._write_lock:
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                if not durable:
                    db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        for owner in list(self._owners):
            self.unregister_worker(owner)
        with self._conns_lock:
            for db in self._conns:
                try:
                    db.close()
                except sqlite3.ProgrammingError:   # closed from its own thread already
                    pass
            self._conns.clear()
        self._local = threading.local()

    def path(self, queue_id: str) -> Path:
        if not _ID.fullmatch(queue_id):
            raise QueueError(f"not a queue id: {queue_id!r}")
        return self.msg_dir / f"{queue_id}.eml"

    def _write(self, path: Path, data: bytes) -> None:
        """A new file, complete and fsync'd, under ``path`` (which must not exist); the
        caller fsyncs the directory."""
        tmp = synced_temp(self.msg_dir, path.name, data)
        try:
            os.link(tmp, path)      # never replaces: a second message with this id fails
        except FileExistsError:
            raise QueueError(f"queue id {path.stem} is already in the queue") from None
        finally:
            os.unlink(tmp)

    # ------------------------------------------------------------------------------
    # enqueue and read
    # ------------------------------------------------------------------------------
    def enqueue(self, *, mail_from: str, rcpts: list[str], message: bytes, queue_id: str | None = None,
                origin: str = "smtp", route: tuple[str, int] | None = None, smtputf8: bool = False,
                body8bit: bool = False, original_offset: int = 0, meta: dict | None = None,
                original: bytes | None = None) -> str:
        """Add a message; when this returns it is durable (file and index fsync'd).
        Returns its queue id. Synchronous: the gate calls it in a thread.
        ``original``: the bytes as received, only needed where they are not
        ``message[original_offset:]``."""
        e = Enqueue(mail_from, list(rcpts), message, queue_id, origin, route, smtputf8, body8bit,
                    original_offset, meta, original)
        qid = self._prepare(e)
        try:
            with self._tx() as db:
                self._insert(db, qid, e, self.clock())
        except BaseException:
            self._discard(qid)
            raise
        return qid

    def _prepare(self, e: Enqueue) -> str:
        """Check an enqueue and write its message file; returns its queue id."""
        if not e.rcpts:
            raise ValueError("a message needs at least one recipient")
        if e.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {e.origin!r}")
        if not 0 <= e.original_offset <= len(e.message):
            raise ValueError(f"original_offset {e.original_offset} is outside the message")
        qid = e.queue_id or new_id()
        self._write(self.path(qid), e.message)
        if e.original is not None and e.original != e.message[e.original_offset:]:
            try:
                self._write(self._orig_path(qid), e.original)
            except BaseException:
                self._discard(qid)
                raise
        fsync_dir(self.msg_dir)   # the link (and the temporary name's removal) is durable
        return qid

    def _orig_path(self, queue_id: str) -> Path:
        return self.path(queue_id).with_suffix(".orig")

    def _discard(self, queue_id: str) -> None:
        self.path(queue_id).unlink(missing_ok=True)
        self._orig_path(queue_id).unlink(missing_ok=True)

    @staticmethod
    def _insert(db: sqlite3.Connection, qid: str, e: Enqueue, now: float) -> None:
        try:
            db.execute(
                "INSERT INTO message (queue_id, mail_from, origin, route, smtputf8, body8bit,"
                " original_offset, size, arrival, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (qid, e.mail_from, e.origin, format_route(e.route), int(e.smtputf8), int(e.body8bit),
                 e.original_offset, len(e.message), now,
                 json.dumps(e.meta or {}, default=str, ensure_ascii=False)))
        except sqlite3.IntegrityError:
            raise QueueError(f"queue id {qid} is already in the queue") from None
        db.executemany(
            "INSERT INTO recipient (queue_id, idx, rcpt, status, next_attempt, updated)"
            " VALUES (?, ?, ?, 'queued', ?, ?)",
            [(qid, i, r, now, now) for i, r in enumerate(e.rcpts)])

    def get(self, queue_id: str) -> QueueEntry | None:
        db = self._db()
        row = db.execute("SELECT * FROM message WHERE queue_id = ?", (queue_id,)).fetchone()
        if row is None:
            return None
        rcpts = db.execute("SELECT * FROM recipient WHERE queue_id = ? ORDER BY idx", (queue_id,)).fetchall()
        return _entry(row, rcpts)

    def message(self, queue_id: str) -> bytes:
        """The message as it is delivered (our trace headers included)."""
        try:
            return self.path(queue_id).read_bytes()
        except FileNotFoundError:
            raise QueueError(f"no message {queue_id} in the queue") from None

    def original(self, queue_id: str) -> bytes:
        """The bytes as the gate received them (for report-as-spam and learning)."""
        entry = self.get(queue_id)
        if entry is None:
            raise QueueError(f"no message {queue_id} in the queue")
        try:
            return self._orig_path(queue_id).read_bytes()
        except FileNotFoundError:
            return self.message(queue_id)[entry.original_offset:]

    def list(self, *, status: str | None = None, route: str | None = None, sender: str | None = None,
             recipient: str | None = None, limit: int | None = None) -> list[QueueEntry]:
        """Messages, oldest first, that have a recipient matching every filter given:
        ``status`` (a recipient status, or ``pending`` for queued or deferred),
        ``route`` (host:port as shown, or ``unrouteable``), ``sender`` and ``recipient``
        (substrings, case-insensitive)."""
        where, args = [], []
        if status == "pending":
            where.append("r.status IN ('queued', 'deferred')")
        elif status:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {STATUSES + ('pending',)}, got {status!r}")
            where.append("r.status = ?")
            args.append(status)
        if route:
            where.append("(r.route = ? OR (r.route IS NULL AND m.route = ?))")
            args += [route, route]
        if sender is not None:
            where.append("instr(lower(m.mail_from), ?) > 0")
            args.append(sender.lower())
        if recipient:
            where.append("instr(lower(r.rcpt), ?) > 0")
            args.append(recipient.lower())
        sql = ("SELECT DISTINCT m.queue_id FROM message m JOIN recipient r USING (queue_id)"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY m.arrival, m.queue_id")
        if limit:
            sql += f" LIMIT {int(limit)}"
        ids = [r[0] for r in self._db().execute(sql, args).fetchall()]
        return [e for e in (self.get(i) for i in ids) if e is not None]

    def counts(self) -> dict[str, int]:
        """Recipients per status."""
        rows = self._db().execute("SELECT status, count(*) FROM recipient GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | {r[0]: r[1] for r in rows}

    # ------------------------------------------------------------------------------
    # delivery workers
    # ------------------------------------------------------------------------------
    def register_worker(self) -> str:
        """A new worker identity, alive while this process holds its lock file."""
        owner = f"{os.getpid()}-{secrets.token_hex(6)}"
        fd = os.open(self.workers_dir / f"{owner}.lock", os.O_RDWR | os.O_CREAT, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._owners[owner] = fd
        return owner

    def unregister_worker(self, owner: str) -> None:
        """Give back the worker's claims and its identity."""
        with self._tx(durable=False) as db:
            db.execute("UPDATE recipient SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                       (owner,))
        fd = self._owners.pop(owner, None)
        (self.workers_dir / f"{owner}.lock").unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)

    def _alive(self, owner: str) -> bool:
        if owner in self._owners:
            return True
        path = self.workers_dir / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True                  # its process holds the lock: it lives
        finally:
            os.close(fd)
        return False

    def recover(self) -> dict[str, int]:
        """After a crash: take back the claims of workers whose process is gone, and
        remove message files that never got an index row (and stale temporary files)."""
        db = self._db()
        owners = [r[0] for r in db.execute(
            "SELECT DISTINCT lease_owner FROM recipient WHERE lease_owner IS NOT NULL").fetchall()]
        dead = [o for o in owners if not self._alive(o)]
        released = 0
        if dead:
            with self._tx(durable=False) as db:
                for o in dead:
                    released += db.execute("UPDATE recipient SET lease_owner = NULL, lease_until = NULL"
                                           " WHERE lease_owner = ?", (o,)).rowcount
        for lock in self.workers_dir.glob("*.lock"):
            if lock.stem in dead or (lock.stem not in owners and not self._alive(lock.stem)):
                lock.unlink(missing_ok=True)
        orphans = 0
        cutoff = time.time() - ORPHAN_AGE
        for p in self.msg_dir.iterdir():
            try:
                if p.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            if p.name.startswith("."):
                p.unlink(missing_ok=True)
                orphans += 1
            elif p.suffix in (".eml", ".orig") and db.execute("SELECT 1 FROM message WHERE queue_id = ?",
                                                   (p.stem,)).fetchone() is None:
                p.unlink(missing_ok=True)
                orphans += 1
        return {"released": released, "orphans": orphans}

    def due(self, now: float | None = None, limit: int = 1000) -> list[Due]:
        """Recipients whose attempt is due and that no live lease holds, oldest first."""
        now = self.clock() if now is None else now
        rows = self._db().execute(
            "SELECT r.queue_id, r.idx, r.rcpt, m.route FROM recipient r JOIN message m USING (queue_id)"
            " WHERE r.status IN ('queued', 'deferred') AND r.next_attempt <= ?"
            " AND (r.lease_until IS NULL OR r.lease_until < ?)"
            " ORDER BY r.next_attempt, r.queue_id, r.idx LIMIT ?", (now, now, limit)).fetchall()
        return [Due(r[0], r[1], r[2], parse_route(r[3])) for r in rows]

    def next_due(self) -> float | None:
        """When the earliest pending recipient is due (None: nothing is pending)."""
        row = self._db().execute("SELECT min(next_attempt) FROM recipient"
                                 " WHERE status IN ('queued', 'deferred')").fetchone()
        return row[0]

    def claim(self, owner: str, queue_id: str, idxs: list[int], until: float,
              now: float | None = None) -> list[int]:
        """Lease these recipients to ``owner`` until ``until``; returns those it got
        (a recipient delivered, deleted or claimed meanwhile is left out)."""
        now = self.clock() if now is None else now
        got = []
        with self._tx(durable=False) as db:
            for i in idxs:
                n = db.execute(
                    "UPDATE recipient SET lease_owner = ?, lease_until = ? WHERE queue_id = ? AND idx = ?"
                    " AND status IN ('queued', 'deferred') AND (lease_until IS NULL OR lease_until < ?)",
                    (owner, until, queue_id, i, now)).rowcount
                if n:
                    got.append(i)
        return got

    def record(self, queue_id: str, outcomes: list[Outcome], *, owner: str | None = None,
               bounce: Enqueue | None = None, now: float | None = None) -> str | None:
        """Record the outcome of an attempt for some recipients and free their lease,
        in one transaction with the enqueue of the bounce (DSN) they caused, if any:
        a crash leaves either both or neither, so a bounced recipient is never without
        its DSN and a DSN is never sent for a recipient still pending. Returns the
        bounce's queue id. Every attempt counts; ``delivered`` wins over any status
        (a delivery that raced a ``delete`` still happened)."""
        now = self.clock() if now is None else now
        bounce_id = self._prepare(bounce) if bounce is not None else None
        try:
            with self._tx() as db:
                for o in outcomes:
                    if o.status not in ("delivered", "deferred", "bounced"):
                        raise ValueError(f"not an attempt's outcome: {o.status!r}")
                    # the route's 250 is a fact whoever holds the lease now; a failure is
                    # recorded only by the lease's holder, for a recipient still pending
                    guard = "" if o.status == "delivered" else (
                        " AND status IN ('queued', 'deferred')" + (" AND lease_owner = ?" if owner else ""))
                    db.execute(
                        "UPDATE recipient SET status = ?, attempts = attempts + 1, last_attempt = ?,"
                        " last_reply = ?, route = coalesce(?, route), next_attempt = coalesce(?, next_attempt),"
                        " lease_owner = NULL, lease_until = NULL, updated = ?"
                        " WHERE queue_id = ? AND idx = ?" + guard,
                        (o.status, now, o.reply, o.route, o.next_attempt, now, queue_id, o.idx)
                        + ((owner,) if owner and o.status != "delivered" else ()))
                self._mark_done(db, queue_id, now)
                if bounce is not None:
                    self._insert(db, bounce_id, bounce, now)
        except BaseException:
            if bounce_id is not None:
                self._discard(bounce_id)
            raise
        return bounce_id

    def release(self, owner: str, queue_id: str, idxs: list[int]) -> None:
        """Give back a claim without an attempt (the worker is stopping)."""
        with self._tx(durable=False) as db:
            db.executemany("UPDATE recipient SET lease_owner = NULL, lease_until = NULL"
                           " WHERE queue_id = ? AND idx = ? AND lease_owner = ?",
                           [(queue_id, i, owner) for i in idxs])

    @staticmethod
    def _mark_done(db: sqlite3.Connection, queue_id: str, now: float) -> None:
        db.execute("UPDATE message SET done = ? WHERE queue_id = ? AND done IS NULL AND NOT EXISTS"
                   " (SELECT 1 FROM recipient WHERE queue_id = ? AND status IN ('queued', 'deferred'))",
                   (now, queue_id, queue_id))

    # ------------------------------------------------------------------------------
    # admin
    # ------------------------------------------------------------------------------
    def retry(self, queue_id: str | None = None, now: float | None = None) -> int:
        """Make deferred recipients (of one message, or all) due now; returns how many."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            if queue_id is None:
                return db.execute("UPDATE recipient SET next_attempt = ?, updated = ?"
                                  " WHERE status = 'deferred'", (now, now)).rowcount
            return db.execute("UPDATE recipient SET next_attempt = ?, updated = ?"
                              " WHERE status = 'deferred' AND queue_id = ?", (now, now, queue_id)).rowcount

    def delete(self, queue_id: str, now: float | None = None) -> tuple[list[str], list[str]]:
        """Stop delivering a message: its pending recipients become ``deleted`` (no
        delivery, no bounce). Returns (deleted, busy): recipients being delivered at
        this moment (a live lease) cannot be recalled and are left alone."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            rows = db.execute("SELECT idx, rcpt, lease_until FROM recipient WHERE queue_id = ?"
                              " AND status IN ('queued', 'deferred')", (queue_id,)).fetchall()
            if not rows and db.execute("SELECT 1 FROM message WHERE queue_id = ?", (queue_id,)).fetchone() is None:
                raise QueueError(f"no message {queue_id} in the queue")
            deleted, busy = [], []
            for idx, rcpt, until in rows:
                if until is not None and until >= now:
                    busy.append(rcpt)
                    continue
                db.execute("UPDATE recipient SET status = 'deleted', updated = ? WHERE queue_id = ? AND idx = ?",
                           (now, queue_id, idx))
                deleted.append(rcpt)
            self._mark_done(db, queue_id, now)
        return deleted, busy

    def purge(self, keep: float, now: float | None = None) -> int:
        """Remove messages whose recipients all reached a final status more than
        ``keep`` seconds ago (delivered mail stays that long for report-as-spam).
        The index rows go first: a file left by a crash here is an orphan for
        ``recover``, never a row without its file."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT queue_id FROM message WHERE done IS NOT NULL AND done < ?",
                                            (now - keep,)).fetchall()]
            db.executemany("DELETE FROM message WHERE queue_id = ?", [(i,) for i in ids])
        for i in ids:
            self._discard(i)
        return len(ids)


def _entry(row: sqlite3.Row, rcpts: list[sqlite3.Row]) -> QueueEntry:
    return QueueEntry(
        queue_id=row["queue_id"], mail_from=row["mail_from"], origin=row["origin"],
        route=parse_route(row["route"]), smtputf8=bool(row["smtputf8"]), body8bit=bool(row["body8bit"]),
        original_offset=row["original_offset"], size=row["size"], arrival=row["arrival"],
        meta=json.loads(row["meta"]), done=row["done"],
        recipients=[RecipientState(
            idx=r["idx"], rcpt=r["rcpt"], status=r["status"], attempts=r["attempts"],
            next_attempt=r["next_attempt"], last_attempt=r["last_attempt"], last_reply=r["last_reply"],
            route=r["route"], lease_owner=r["lease_owner"], lease_until=r["lease_until"],
            updated=r["updated"]) for r in rcpts])
