"""The embedded state store: one SQLite file in WAL mode, the default for a single gate.

Why SQLite: it is in the standard library, survives a restart (the file is in the gate's
state dir), and WAL mode lets readers go on while a writer commits, so a second process on
the same file (a second gate node on one machine, the CLI managing credentials) shares the
state safely: every read-modify-write runs in one ``BEGIN IMMEDIATE`` transaction, which
makes it atomic across connections. ``synchronous=NORMAL`` is the WAL setting that does not
fsync each commit: a power cut may lose the last few counts, never corrupt the file, and a
rate counter is not worth an fsync per SMTP command.

Why calls run inline in the event loop: a call takes 7 (read) to 25 (window hit, lease)
microseconds there, and about 100 more when it hops to a worker thread and back
(``bench/state_bench.py`` measures both; its ``sqlite-thread`` rows are this store with
``inline=False``). What could stall the loop never runs inline:

- a write lock held by another process (a second node, the CLI): inline the connection
  has no busy handler, so the call fails at once with SQLITE_BUSY, nothing applied, and
  is redone in the store's calls thread, which waits up to ``busy_timeout_s``. Calls sent
  there take turns on an asyncio lock: they wait in the loop, in order;
- checkpoints, which copy the WAL into the file and fsync: a maintenance thread runs them
  on a connection of its own (``wal_autocheckpoint`` is off) beside the callers.

What does run inline, in small steps: the purge. Every ``purge_every`` writes the write
that makes the count also deletes up to ``purge_chunk`` expired rows per table and
evicts any rows over the cap (a few hundred microseconds). Done by a thread, the same
deletes held the callers off far longer: a thread that wants the GIL back from a busy
loop waits up to the 5 ms switch interval after every SQLite call, with the write lock
held (the bench's loaded p99 went from ~1 ms to ~30 ms).

Why it stays bounded under a flood of distinct IPs (``tests/test_state_store.py`` checks
each point):

- every row that traffic creates has an expiry: a window bucket expires one window
  after its bucket began, a lease at its ``expires_at``, a value at its TTL (only values
  set with ``ttl_s=None``, which traffic does not create, have none);
- a key's window is at most ``WINDOW_BUCKETS`` rows however often it is hit;
- every ``purge_every`` writes (and on the first write after ``purge_interval_s`` of
  clock time), up to ``purge_chunk`` expired rows of each table go: at least twice what
  those writes could have created, so reclaiming outpaces creation;
- the value and window tables are capped at ``max_rows`` rows each: triggers keep an
  exact row count in the file (across processes), and the same step evicts what is over
  it, the rows that would expire soonest first and never one without expiry. So even a
  flood faster than the expiry (distinct IPv6 /64s are plentiful) holds at most
  ``max_rows + purge_every`` rows per table, and what it pushes out is what would have
  gone first anyway: the oldest greylist triplets and window buckets;
- the pages of deleted rows are reused by later rows, so the file does not outgrow the
  rows it held at its peak; ``purge()`` also returns free pages to the file system
  (``auto_vacuum=INCREMENTAL``) and truncates the WAL. Between checkpoints the WAL grows
  by two or three pages a write; a checkpoint per ``checkpoint_every`` writes lets it
  start over, and when writes never pause long enough for that, a RESTART checkpoint
  past ``WAL_RESTART_BYTES`` makes it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .base import StateStore, StateUnavailable, Window

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# One million rows per table: bench/state_bench.py measured 173 MB of file for a million
# greylist triplets and 60k window buckets (about 165 bytes a row, keys and expiry index
# included), so the cap holds the file under 350 MB, far above what a single gate's real
# traffic keeps alive (a row lives one window or one TTL) and small enough for any state
# dir.
MAX_ROWS = 1_000_000
# A write lock is held for well under a millisecond by our own transactions; a second of
# waiting means something is wrong, and the sender is better told 451 than kept waiting.
BUSY_TIMEOUT_S = 1.0
# Purge cadence: a step per 200 writes deletes up to 400 expired rows per table, twice
# what those writes could create, in about 1 ms when all 400 are there (2.5 us a row,
# the row count's trigger included) and less in the usual case.
PURGE_EVERY = 200
PURGE_CHUNK = 400
# Rows expire on the clock even without writes; the first write after this long purges.
PURGE_INTERVAL_S = 60.0
# A checkpoint per 250 writes: a write adds two or three 4 KiB pages to the WAL (table,
# index, row count), so the WAL stays near SQLite's own autocheckpoint size (1000 pages).
CHECKPOINT_EVERY = 250
# A WAL this large after a checkpoint gets a RESTART checkpoint (see _maintain).
WAL_RESTART_BYTES = 8 * 1024 * 1024
# The WAL file is truncated to this after a checkpoint (SQLite's default keeps its peak).
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024

# table -> (its primary key, whether traffic can grow it without limit and so is capped)
_TABLES = {"kv": ("key", True), "win": ("key, bucket", True), "lease": ("key, holder", False)}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry ON kv(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS win (
    key TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (key, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS win_expiry ON win(expires_at);
CREATE TABLE IF NOT EXISTS lease (
    key TEXT NOT NULL, holder TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (key, holder)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lease_expiry ON lease(expires_at);
-- Row counts of the capped tables, kept by triggers: COUNT(*) costs 13 ms at a million
-- rows, this costs a row update per insert or delete.
CREATE TABLE IF NOT EXISTS counts (tbl TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO counts VALUES ('kv', 0), ('win', 0);
""" + "".join(f"""
CREATE TRIGGER IF NOT EXISTS {t}_added AFTER INSERT ON {t}
    BEGIN UPDATE counts SET n = n + 1 WHERE tbl = '{t}'; END;
CREATE TRIGGER IF NOT EXISTS {t}_removed AFTER DELETE ON {t}
    BEGIN UPDATE counts SET n = n - 1 WHERE tbl = '{t}'; END;
""" for t, (_pk, capped) in _TABLES.items() if capped)


class SqliteStore(StateStore):
    """The state in one SQLite file at ``path`` (created with its directory, mode 0600:
    it holds credential hashes). Two ``SqliteStore`` objects on one file, in one process
    or two, share the state as two gate nodes would."""

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike, *, clock: Callable[[], float] = time.time,
                 max_rows: int = MAX_ROWS, busy_timeout_s: float = BUSY_TIMEOUT_S,
                 purge_every: int = PURGE_EVERY, purge_chunk: int = PURGE_CHUNK,
                 purge_interval_s: float = PURGE_INTERVAL_S,
                 checkpoint_every: int = CHECKPOINT_EVERY, inline: bool = True):
        super().__init__(clock=clock)
        self.path = Path(path)
        self.max_rows = max_rows
        self.busy_timeout_s = busy_timeout_s
        self.purge_every = purge_every
        self.purge_chunk = purge_chunk
        self.purge_interval_s = purge_interval_s
        self.checkpoint_every = checkpoint_every
        self.inline = inline
        # The callers' connection: inline in the loop, or in the calls thread.
        self._db: sqlite3.Connection | None = None
        self._calls: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()       # _db is used by one thread at a time
        self._turn = asyncio.Lock()         # calls sent to the thread queue here, in order
        # The maintenance connection (checkpoints, stats), in a thread of its own.
        self._mdb: sqlite3.Connection | None = None
        self._maint: ThreadPoolExecutor | None = None
        self._checkpoint: Future | None = None
        self._writes = 0                    # writes since the last purge step
        self._unchecked = 0                 # writes since the last checkpoint began
        self._next_purge = float("-inf")    # on the callers' clock
        self._restart_wal = False           # set by a checkpoint that could not reset it

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- plumbing ----------------------------------------------------------------------
    async def _run(self, fn: Callable, *args):
        """``fn(*args)`` on the callers' connection: inline when it is free and the file
        not locked, else in the calls thread.

        An inline call never awaits, so it is atomic in the loop and needs no turn. Calls
        sent to the thread take turns on an asyncio lock, and on their turn try inline
        again first: what sent them there may have cleared, and otherwise the queue
        would feed itself, every call finding the thread busy with the one before."""
        if self._calls is None:
            raise RuntimeError(f"{self!r} is not open")
        try:
            if self.inline and (done := self._try_inline(fn, args)):
                return done[0]
            async with self._turn:
                if self.inline and (done := self._try_inline(fn, args)):
                    return done[0]
                return await asyncio.get_running_loop().run_in_executor(
                    self._calls, self._in_thread, fn, args)
        finally:
            self._schedule_checkpoint()

    def _try_inline(self, fn: Callable, args: tuple) -> tuple | None:
        """``(result,)``, or None if the connection is busy in the thread (a call waiting
        for another process's lock, or a cancelled caller's call still running there) or
        the file is locked."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return (self._guarded(fn, args),)
        except _Busy:
            return None             # nothing was applied: redo it where waiting is harmless
        finally:
            self._lock.release()

    def _in_thread(self, fn: Callable, args: tuple):
        with self._lock:
            if self.inline:
                self._db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            try:
                return self._guarded(fn, args, wait=True)
            finally:
                if self.inline and self._db is not None:
                    self._db.execute("PRAGMA busy_timeout = 0")

    def _guarded(self, fn: Callable, args: tuple, wait: bool = False):
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:     # locked, disk full, I/O error, read-only
            if not wait and _is_busy(exc):
                raise _Busy() from exc
            raise StateUnavailable(f"sqlite {self.path}: {exc}") from exc

    def _tx(self):
        return _tx(self._db)

    def _write(self, sql: str, params: tuple) -> int:
        """One statement that adds no row; returns the rows it changed."""
        n = self._db.execute(sql, params).rowcount
        self._wrote()
        return n

    def _wrote(self, now: float | None = None) -> None:
        """After a write, on the callers' connection (``now``: the caller's clock): the
        purge step when one is due, the RESTART checkpoint when one was asked for. Their
        failure (another process holding the lock) is not the caller's: the write is
        done, and the next one tries again."""
        self._writes += 1
        self._unchecked += 1
        due = self._writes >= self.purge_every or (now is not None and now >= self._next_purge)
        if not due and not self._restart_wal:
            return
        try:
            if due:
                now = self.clock() if now is None else now
                self._writes = 0
                self._next_purge = now + self.purge_interval_s
                _purge_step(self._db, now, self.purge_chunk)
                _enforce_cap(self._db, self.max_rows)
            if self._restart_wal:
                self._restart_wal = False
                self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.OperationalError as exc:
            log.debug("state store purge step put off: %s", exc)

    def _schedule_checkpoint(self) -> None:
        """A checkpoint in the maintenance thread, when one is due and none runs."""
        if self._unchecked < self.checkpoint_every or self._maint is None:
            return
        if self._checkpoint is not None and not self._checkpoint.done():
            return          # the next call asks again
        self._unchecked = 0
        self._checkpoint = self._maint.submit(self._checkpoint_wal)
        self._checkpoint.add_done_callback(_log_failure)

    def _checkpoint_wal(self) -> None:
        """PASSIVE: it neither waits for nor blocks the callers. Writes that never pause
        could keep it from ever reaching the WAL's end, and the WAL only starts over
        once a checkpoint has: past ``WAL_RESTART_BYTES`` the callers' connection is
        asked for a RESTART checkpoint (which holds writers off until it is done; run
        there, it holds them by being in their own thread, not by SQLite's lock, whose
        waiters retry after sleeps)."""
        try:
            self._mdb.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.OperationalError as exc:
            raise StateUnavailable(f"sqlite {self.path}: checkpoint: {exc}") from exc
        if _wal_bytes(self.path) > WAL_RESTART_BYTES:
            self._restart_wal = True

    async def _in_maintenance(self, fn: Callable, *args):
        """``fn`` in the maintenance thread, on its connection."""
        if self._maint is None:
            raise RuntimeError(f"{self!r} is not open")
        try:
            return await asyncio.wrap_future(self._maint.submit(fn, *args))
        except sqlite3.OperationalError as exc:
            raise StateUnavailable(f"sqlite {self.path}: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> SqliteStore:
        if self._calls is None:
            calls = ThreadPoolExecutor(1, thread_name_prefix="state-sqlite")
            maint = ThreadPoolExecutor(1, thread_name_prefix="state-sqlite-maintenance")
            loop = asyncio.get_running_loop()
            try:
                self._db = await loop.run_in_executor(calls, self._connect, self.inline)
                self._mdb = await loop.run_in_executor(maint, self._connect, False)
            except BaseException:
                for db in (self._db, self._mdb):
                    if db is not None:
                        db.close()
                self._db = self._mdb = None
                calls.shutdown(wait=False)
                maint.shutdown(wait=False)
                raise
            self._calls, self._maint = calls, maint
        return self

    def _connect(self, inline: bool) -> sqlite3.Connection:
        """A connection with our settings, the schema made if the file is new.
        ``inline``: no busy handler (the caller retries in the thread instead)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                 check_same_thread=False)     # self._lock serializes _db
        except sqlite3.OperationalError as exc:
            raise StateUnavailable(f"sqlite {self.path}: {exc}") from exc
        try:
            # auto_vacuum only takes effect on a file without tables yet: set it first.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StateUnavailable(f"sqlite {self.path}: WAL mode refused (got {mode}); "
                                       "is the state dir on a network file system?")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA wal_autocheckpoint = 0")     # the maintenance thread's job
            db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StateUnavailable(f"sqlite {self.path}: schema version {version}, "
                                       f"this gate knows {SCHEMA_VERSION}")
            if version == 0:     # IF NOT EXISTS: two processes may race to create it
                db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} "
                                 f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            if inline:
                db.execute("PRAGMA busy_timeout = 0")
        except sqlite3.OperationalError as exc:
            db.close()
            raise StateUnavailable(f"sqlite {self.path}: {exc}") from exc
        except BaseException:
            db.close()
            raise
        return db

    async def close(self) -> None:
        if self._calls is None:
            return
        calls, maint, self._calls, self._maint = self._calls, self._maint, None, None
        loop = asyncio.get_running_loop()
        try:
            async with self._turn:
                await loop.run_in_executor(calls, self._disconnect)
            # queued after a checkpoint that may still run
            await loop.run_in_executor(maint, self._disconnect_maintenance)
        finally:
            calls.shutdown(wait=True)
            maint.shutdown(wait=True)

    def _disconnect(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _disconnect_maintenance(self) -> None:
        if self._mdb is not None:
            self._mdb.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._mdb.close()
            self._mdb = None

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    # -- windows -----------------------------------------------------------------------
    async def _window(self, key: str, window: Window, amount: int) -> int:
        return await self._run(self._window_sync, key, window, amount)

    def _window_sync(self, key: str, window: Window, amount: int) -> int:
        total_sql = "SELECT COALESCE(SUM(n), 0) FROM win WHERE key = ? AND bucket >= ?"
        if not amount:
            return self._db.execute(total_sql, (key, window.oldest)).fetchone()[0]
        with self._tx() as db:
            db.execute("INSERT INTO win (key, bucket, n, expires_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (key, bucket) DO UPDATE SET n = n + excluded.n",
                       (key, window.bucket, amount, window.expires_at))
            total = db.execute(total_sql, (key, window.oldest)).fetchone()[0]
        self._wrote(window.now)
        return total

    async def _window_reset(self, key: str) -> None:
        await self._run(self._write, "DELETE FROM win WHERE key = ?", (key,))

    # -- leases ------------------------------------------------------------------------
    async def _acquire(self, key: str, holder: str, limit: int, expires_at: float,
                       now: float) -> bool:
        return await self._run(self._acquire_sync, key, holder, limit, expires_at, now)

    def _acquire_sync(self, key, holder, limit, expires_at, now) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM lease WHERE key = ? AND expires_at <= ?", (key, now))
            held = db.execute("SELECT 1 FROM lease WHERE key = ? AND holder = ?",
                              (key, holder)).fetchone()
            if not held:
                n = db.execute("SELECT COUNT(*) FROM lease WHERE key = ?", (key,)).fetchone()[0]
                if n >= limit:
                    return False
            db.execute("INSERT INTO lease (key, holder, expires_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (key, holder) DO UPDATE SET expires_at = excluded.expires_at",
                       (key, holder, expires_at))
        self._wrote(now)
        return True

    async def _renew(self, key: str, holder: str, expires_at: float, now: float) -> bool:
        return await self._run(self._write, "UPDATE lease SET expires_at = ? "
                               "WHERE key = ? AND holder = ? AND expires_at > ?",
                               (expires_at, key, holder, now)) == 1

    async def _release(self, key: str, holder: str) -> None:
        await self._run(self._write, "DELETE FROM lease WHERE key = ? AND holder = ?",
                        (key, holder))

    async def _leases(self, key: str, now: float) -> int:
        return await self._run(lambda: self._db.execute(
            "SELECT COUNT(*) FROM lease WHERE key = ? AND expires_at > ?", (key, now)).fetchone()[0])

    # -- values ------------------------------------------------------------------------
    _LIVE = "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
    _PUT = ("INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")

    async def _get(self, key: str, now: float) -> bytes | None:
        def get():
            row = self._db.execute(self._LIVE, (key, now)).fetchone()
            return None if row is None else bytes(row[0])
        return await self._run(get)

    async def _set(self, key: str, value: bytes, expires_at: float | None, now: float) -> None:
        def put():
            self._db.execute(self._PUT, (key, value, expires_at))
            self._wrote(now)
        await self._run(put)

    async def _get_or_set(self, key: str, value: bytes, expires_at: float | None,
                          now: float) -> tuple[bytes, bool]:
        def get_or_set():
            with self._tx() as db:
                row = db.execute(self._LIVE, (key, now)).fetchone()
                if row is not None:
                    return bytes(row[0]), False
                db.execute(self._PUT, (key, value, expires_at))
            self._wrote(now)
            return value, True
        return await self._run(get_or_set)

    async def _incr(self, key: str, amount: int, expires_at: float | None, now: float) -> int:
        def incr():
            with self._tx() as db:
                row = db.execute(self._LIVE, (key, now)).fetchone()
                total = amount + (_as_int(key, row[0]) if row is not None else 0)
                db.execute(self._PUT, (key, str(total).encode("ascii"), expires_at))
            self._wrote(now)
            return total
        return await self._run(incr)

    async def _delete(self, key: str) -> None:
        await self._run(self._write, "DELETE FROM kv WHERE key = ?", (key,))

    # -- reclaiming --------------------------------------------------------------------
    async def purge(self, now: float | None = None) -> int:
        """Delete every expired row, enforce the cap, give free pages back to the file
        system and truncate the WAL; returns the number of rows deleted. It works in the
        calls thread in steps of ``10 * purge_chunk`` rows a table, taking its turn like
        a call, so callers go on between steps (a million rows took 4 s here). The store
        stays bounded without it; the gate may call it now and then to give disk space
        back."""
        now = self._now(now)
        total = 0
        while n := await self._in_turn(_purge_step, self._db, now, 10 * self.purge_chunk):
            total += n

        def finish() -> int:
            evicted = _enforce_cap(self._db, self.max_rows)
            # executescript steps it to the end (execute() frees one page per call)
            self._db.executescript("PRAGMA incremental_vacuum;")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return evicted
        return total + await self._in_turn(finish)

    async def _in_turn(self, fn: Callable, *args):
        """``fn(*args)`` on the callers' connection in the calls thread, in turn."""
        if self._calls is None:
            raise RuntimeError(f"{self!r} is not open")
        async with self._turn:
            return await asyncio.get_running_loop().run_in_executor(
                self._calls, self._in_thread, fn, args)

    async def stats(self) -> dict[str, int]:
        """Rows per table and the bytes of the file and its WAL (for tests and the bench)."""
        def stats():
            db = self._mdb
            out = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in _TABLES}
            page = db.execute("PRAGMA page_size").fetchone()[0]
            out["pages"] = db.execute("PRAGMA page_count").fetchone()[0]
            out["free_pages"] = db.execute("PRAGMA freelist_count").fetchone()[0]
            out["file_bytes"] = out["pages"] * page
            out["wal_bytes"] = _wal_bytes(self.path)
            return out
        return await self._in_maintenance(stats)


@contextlib.contextmanager
def _tx(db: sqlite3.Connection):
    """A write transaction: takes the write lock first, so a read-modify-write is atomic
    against every other connection to the file."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _purge_step(db: sqlite3.Connection, now: float, limit: int) -> int:
    """Up to ``limit`` expired rows of each table, in one write transaction."""
    deleted = 0
    with _tx(db):
        for table, (pk, _capped) in _TABLES.items():
            deleted += db.execute(
                f"DELETE FROM {table} WHERE ({pk}) IN (SELECT {pk} FROM {table} "
                f"WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
                (now, limit)).rowcount
    return deleted


def _enforce_cap(db: sqlite3.Connection, max_rows: int) -> int:
    """Each capped table back to ``max_rows``: the rows that would expire soonest go,
    never one without expiry."""
    evicted = 0
    for table, n in db.execute("SELECT tbl, n FROM counts").fetchall():
        if n > max_rows:
            pk = _TABLES[table][0]
            with _tx(db):
                evicted += db.execute(
                    f"DELETE FROM {table} WHERE ({pk}) IN (SELECT {pk} FROM {table} "
                    f"WHERE expires_at IS NOT NULL ORDER BY expires_at LIMIT ?)",
                    (n - max_rows,)).rowcount
    return evicted


def _wal_bytes(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


class _Busy(Exception):
    """The file is locked by another connection; the call was not applied."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _log_failure(future: Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("state store maintenance failed: %s", future.exception())


def _as_int(key: str, value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"incr on {key!r}: its value {bytes(value)[:40]!r} is not an integer") from None
