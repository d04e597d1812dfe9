"""Feedback: releases and spam reports, kept as training data and taught to the scorer,
with guards against poisoning.

Every release from the quarantine (a ham label) and every "report as spam" (a spam
label) comes here through ``Feedback.submit``. Each one is stored, whatever happens to
it next, in ``<state_dir>/feedback.db`` (SQLite, WAL, synchronous=FULL): who, when, why,
the label and its source, the message (zlib) with its SHA-256 (the scorer's learn-log
digest) and its body digest (the ``reported`` check's key, which is the same for the
copies of one message to several recipients), the score and classification it had
when the gate decided, its queue id, and what became of it. That table is the
training data of ``mailsift retrain`` (``labelled``) and of the evaluation notebook.

What becomes of it (``status``)
-------------------------------
- ``learned`` / ``noop`` / ``relearned``: sent to the scorer's Learn, which answered so.
  The scorer is idempotent per message digest and label: the same message learned
  twice with one label is a ``noop``, with the other label (a change of mind) it is
  undone and learned again, ``relearned``.
- ``pending``: to be sent, and the scorer could not be reached (or none is
  configured). Nothing is lost: ``retry_pending()`` sends what is pending, oldest
  first, and every ``submit`` does so before sending its own, so the scorer learns
  them in the order they were given.
- ``review``: held for an admin, with its reasons (below); ``approve`` sends it (and
  the item ends ``approved``), ``reject`` drops it (``rejected``), and either counts
  towards the reporter's agreement.
- ``recorded``: kept as data and not taught, because ``[feedback] learn = false``, or
  the scorer refused the message for good (too large, invalid): ``reasons`` says which.

The guards (``[feedback]``, smtpgate.config.FeedbackConfig)
-----------------------------------------------------------
- ``rate_limit``: a reporter's submissions in the last hour (``per_reporter_hour``) and
  day (``per_reporter_day``); past either, the rest are held for review. Trusted
  reporters are limited too: a stolen admin account should not flood the model.
- ``overwhelming_verdict``: releasing a message the gate scored at or above
  ``review_release_above`` (0.99), or reporting one it scored at or below
  ``review_report_below`` (0.01), contradicts a verdict the model was nearly sure of:
  an admin looks before it is learned. A release is also held when any classifier
  on its own (the quarantine record's ``scores``) was that sure. The score is the
  caller's (the quarantine record or the queue entry has it, never the user's copy);
  a report whose verdict the caller cannot vouch for is held (``no_verdict``).
- ``low_agreement``: a reporter's weight is how often they agree with the rest,
  Laplace-smoothed: (agreements + 1) / (samples + 2). A sample is a message (body
  digest) that someone else also labelled, counting the share of those others who
  gave the same label (rejected and still-held items of others do not count), and
  an admin's review decision on one of the reporter's held items (approved 1,
  rejected 0). With at least ``agreement_min_samples`` samples and a weight below
  ``min_agreement``, their feedback is held for review. 0.5 before any sample.
- ``trusted`` reporters (the postmaster, the admins) skip the last three guards, and
  their weight is 1. Their learns, and the items a trusted admin approved, carry
  ``trusted`` to the scorer, whose ``reported`` check lets a trusted vote decide over
  any number of untrusted ones.

Reporters are one spelling each (``normalise_who``: blanks and angle brackets
stripped, case folded) for the rate limit, the trusted list, agreement, review and
the scorer's votes: ``Bob``, `` bob`` and ``BOB`` are one reporter. A reporter's
item that is held, pending or rejected is not submitted again under another digest
with the same body (a copy with a header changed). Nobody but a trusted reporter
approves or rejects their own item.

A scorer that refuses the request itself (INVALID_ARGUMENT, FAILED_PRECONDITION, a
message too large) makes the item ``recorded``; any other failure (a timeout, a
worker restarting) leaves it ``pending``, since sending again is safe.

The weight also travels with each item to the retraining job (``labelled``), so that
a reporter the others disagree with counts for less even where nothing was held.

For the admin CLI (``mailsift feedback ...``, smtpgate/quarantine_cli.py)
------------------------------------------------------------------------
    fb = open_feedback(gate_config)                 # Feedback on <state_dir>/feedback.db
    review   -> print(format_items(fb.review_queue()))
    show ID  -> print(format_item(fb.get(ID)))        (the message: fb.get(ID).message)
    approve ID --who W  -> print(format_result(fb.approve(ID, W)))
    reject ID --who W   -> print(format_result(fb.reject(ID, W)))
    stats    -> print(format_stats(fb.reporter_stats()))
    retry    -> print("\\n".join(format_result(r) for r in fb.retry_pending()))
``approve`` and ``reject`` raise ``FeedbackError`` (a ValueError) for an id that is
unknown or not held for review; print it and exit 1.
"""
from __future__ import annotations

import datetime
import json
import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from classifier.logs import log_event
from classifier.reputation.reported import normalise_who

log = logging.getLogger("mailsift.feedback")

LEARNED, NOOP, RELEARNED = "learned", "noop", "relearned"
REVIEW, APPROVED, REJECTED, RECORDED, PENDING = "review", "approved", "rejected", "recorded", "pending"
STATUSES = (LEARNED, NOOP, RELEARNED, REVIEW, APPROVED, REJECTED, RECORDED, PENDING)
# what the scorer has learned: the training data the retraining job takes
TAUGHT = (LEARNED, NOOP, RELEARNED, APPROVED)
# others' items that count when a reporter's agreement is measured: every opinion
# that passed the guards or that an admin upheld
_OPINIONS = (LEARNED, NOOP, RELEARNED, APPROVED, RECORDED, PENDING)
SOURCES = ("release", "report")     # a release is usually ham and a report spam; the label says
# what the scorer answers to a request that is wrong in itself; anything else (a
# timeout, a worker restarting) is worth sending again
_REFUSED = ("INVALID_ARGUMENT", "FAILED_PRECONDITION")
# a claim on a pending item (being sent) older than this was left by a process that
# died while sending; another may take it over
_STALE_CLAIM = 300.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    why TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL CHECK (source IN ('release', 'report')),
    label TEXT NOT NULL CHECK (label IN ('spam', 'ham')),
    digest TEXT NOT NULL,             -- SHA-256 of the message: the learn log's digest
    body_digest TEXT,                 -- the reported check's key (Pyzor's digest or the body's)
    score REAL,                       -- when the gate decided
    classification TEXT,
    queue_id TEXT,
    classifiers TEXT NOT NULL,        -- JSON list; [] = the scorer's default for the source
    status TEXT NOT NULL,
    reasons TEXT NOT NULL DEFAULT '[]',
    detail TEXT NOT NULL DEFAULT '',
    outcome TEXT,                     -- the scorer's answer: learned | noop | relearned
    audit_id INTEGER,                 -- its learn-log id
    queued REAL,                      -- when it became pending (the order of sending)
    claimed REAL,                     -- a process is sending it since
    reviewed_by TEXT,
    reviewed_at REAL,
    review TEXT,                      -- approved | rejected
    message BLOB NOT NULL             -- zlib
);
CREATE INDEX IF NOT EXISTS feedback_who_at ON feedback (who, at);
CREATE INDEX IF NOT EXISTS feedback_body ON feedback (body_digest);
CREATE INDEX IF NOT EXISTS feedback_digest ON feedback (digest);
CREATE INDEX IF NOT EXISTS feedback_status ON feedback (status);
"""

_COLUMNS = ("id", "at", "who", "why", "source", "label", "digest", "body_digest", "score", "classification",
            "queue_id", "classifiers", "status", "reasons", "detail", "outcome", "audit_id", "reviewed_by",
            "reviewed_at", "review")


class FeedbackError(ValueError):
    """A request the store refuses: an unknown id, an item not held for review, a bad label."""


@dataclass(frozen=True)
class FeedbackResult:
    status: str                 # learned | noop | relearned | review | recorded | pending | approved | rejected
    reasons: list[str]          # rate_limit, overwhelming_verdict, low_agreement, scorer_unavailable, ...
    digest: str                 # SHA-256 of the message (the learn log's)
    audit_id: int | None        # the learn-log id, once the scorer learned it
    id: int = 0                 # this feedback's id (for approve/reject)
    outcome: str | None = None  # the scorer's answer (learned | noop | relearned), also for approved items
    detail: str = ""            # one readable sentence: why held, what the scorer said


@dataclass(frozen=True)
class FeedbackItem:
    id: int
    at: float
    who: str
    why: str
    source: str
    label: str
    digest: str
    body_digest: str | None
    score: float | None
    classification: str | None
    queue_id: str | None
    classifiers: list[str]
    status: str
    reasons: list[str]
    detail: str
    outcome: str | None
    audit_id: int | None
    reviewed_by: str | None
    reviewed_at: float | None
    review: str | None
    message: bytes | None = None    # with get(); None in listings


@dataclass(frozen=True)
class ReporterStats:
    who: str
    submitted: int
    by_status: dict[str, int]
    samples: float              # shared messages and review decisions the weight rests on
    agreement: float            # agreements among them
    weight: float               # Laplace-smoothed agreement; 1.0 for a trusted reporter
    trusted: bool
    last_at: float


@dataclass(frozen=True)
class Labelled:
    """One labelled message for the retraining job and the notebook."""
    id: int
    digest: str
    label: str                  # spam | ham
    message: bytes
    weight: float               # the reporter's weight
    at: float
    who: str
    source: str
    why: str = ""


@dataclass
class _Agreement:
    agree: float = 0.0
    samples: float = 0.0

    def weight(self) -> float:
        return (self.agree + 1.0) / (self.samples + 2.0)


class Feedback:
    """The feedback store and the guarded path to the scorer's Learn.

    ``scorer`` is a ``classifier.client.RemoteScorer`` (anything with its ``learn``), or
    None, in which case every learnable item stays ``pending``. ``clock`` gives epoch
    seconds. Safe to use from several threads and processes (the gate, the CLI) at once.
    """

    def __init__(self, path: Path, cfg, scorer, *, clock=time.time):
        self.path = Path(path)
        self.cfg = cfg
        self.scorer = scorer
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")   # feedback is training data: kept once acknowledged
        self._db.executescript(_SCHEMA)
        self._normalise_reporters()
        self._mutex = threading.RLock()
        self._owns_scorer = False       # open_feedback made it: close() closes it

    def _normalise_reporters(self) -> None:
        """Items stored before reporters were normalised get the one spelling."""
        for col in ("who", "reviewed_by"):
            for (w,) in self._db.execute(f"SELECT DISTINCT {col} FROM feedback WHERE {col} IS NOT NULL").fetchall():
                if normalise_who(w) != w:
                    self._db.execute(f"UPDATE feedback SET {col} = ? WHERE {col} = ?", (normalise_who(w), w))

    def close(self) -> None:
        with self._mutex:
            self._db.close()
        if self._owns_scorer:
            self.scorer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ submit
    def submit(self, *, message: bytes, label: str, source: str, who: str, why: str = "",
               score: float | None = None, classification: str | None = None, queue_id: str | None = None,
               classifiers: list[str] | None = None, classifier_scores: dict[str, float] | None = None,
               require_verdict: bool = False) -> FeedbackResult:
        """Store one piece of feedback and, unless a guard holds it, teach it to the scorer.

        ``classifier_scores`` are the classifiers' own probabilities when the gate decided
        (the quarantine record's ``scores``): a release contradicting any of them at
        ``review_release_above`` is held like one contradicting the combined score.
        ``require_verdict``: the caller could not vouch for a score (a report from a copy
        the queue no longer has); without one, an untrusted reporter's item is held
        (``no_verdict``) rather than let the overwhelming-verdict guard lapse."""
        from classifier.features import message_digest
        from classifier.reputation.reported import body_digest

        if label not in ("spam", "ham"):
            raise FeedbackError(f"label must be spam or ham, not {label!r}")
        if source not in SOURCES:
            raise FeedbackError(f"source must be release or report, not {source!r}")
        if not message:
            raise FeedbackError("the message is empty")
        who = normalise_who(who)
        digest = message_digest(message)
        body = body_digest(message)
        blob = zlib.compress(message, 6)
        with self._mutex:
            db = self._db
            db.execute("BEGIN IMMEDIATE")   # the counts and the insert are one decision
            try:
                same = self._held_duplicate(who, digest, body, label)
                if same is not None:
                    db.execute("COMMIT")
                    if same.status == PENDING:
                        self.retry_pending()
                    return self._settled(same.id)
                now = self.clock()
                status, reasons, detail = self._judge(who, label, score, now, classifier_scores or {},
                                                      require_verdict)
                cur = db.execute(
                    "INSERT INTO feedback (at, who, why, source, label, digest, body_digest, score, classification,"
                    " queue_id, classifiers, status, reasons, detail, queued, message)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (now, who, why, source, label, digest, body, score, classification, queue_id,
                     json.dumps(list(classifiers or [])), status, json.dumps(reasons), detail,
                     now if status == PENDING else None, blob))
                fid = cur.lastrowid
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        log_event(log, "feedback", id=fid, who=who, source=source, label=label, digest=digest, status=status,
                  reasons=reasons or None)
        if status == PENDING:
            self.retry_pending()
        return self._settled(fid)

    def _held_duplicate(self, who: str, digest: str, body: str | None, label: str) -> FeedbackItem | None:
        """The reporter's latest item on this message or its body, if it says the same and
        is still held, pending or rejected: sending it again changes nothing (the review
        queue gets no copies; a rejected item is not resubmitted past the admin, not even
        as a copy with a header changed, which has another digest but the same body)."""
        row = self._db.execute("SELECT id, label, status FROM feedback WHERE who = ? AND (digest = ? OR"
                               " body_digest = ?) ORDER BY id DESC LIMIT 1", (who, digest, body)).fetchone()
        if row and row[1] == label and row[2] in (REVIEW, PENDING, REJECTED):
            return self._row(row[0])
        return None

    def trusted(self, who: str) -> bool:
        """``who`` (any spelling) is on ``[feedback] trusted``."""
        return normalise_who(who) in {normalise_who(t) for t in self.cfg.trusted}

    def _judge(self, who: str, label: str, score: float | None, now: float, scores: dict[str, float],
               require_verdict: bool) -> tuple[str, list[str], str]:
        """(status, reasons, detail) of a new item, from the guards."""
        cfg = self.cfg
        if not cfg.learn:
            return RECORDED, ["learn_disabled"], "recorded only: [feedback] learn = false"
        reasons, details = [], []
        for window, limit, name in ((3600.0, cfg.per_reporter_hour, "hour"),
                                    (86400.0, cfg.per_reporter_day, "day")):
            if limit:
                n = self._db.execute("SELECT count(*) FROM feedback WHERE who = ? AND at > ?",
                                     (who, now - window)).fetchone()[0]
                if n >= limit:
                    reasons.append("rate_limit")
                    details.append(f"{who} sent {n} in the last {name} (limit {limit})")
                    break
        if not self.trusted(who):
            sure = {n: p for n, p in scores.items() if p is not None and p >= cfg.review_release_above}
            if score is None and require_verdict:
                reasons.append("no_verdict")
                details.append("the gate's verdict on it is unknown (not found in the queue)")
            elif score is not None and label == "ham" and score >= cfg.review_release_above:
                reasons.append("overwhelming_verdict")
                details.append(f"release of a message scored {score:.4f} >= {cfg.review_release_above}")
            elif label == "ham" and sure:
                # one classifier sure of it decided alone, whatever the combined score
                reasons.append("overwhelming_verdict")
                details.append("release of a message " + ", ".join(f"{n} scored {p:.4f}" for n, p in sorted(
                    sure.items())) + f" >= {cfg.review_release_above}")
            elif score is not None and label == "spam" and score <= cfg.review_report_below:
                reasons.append("overwhelming_verdict")
                details.append(f"report of a message scored {score:.4f} <= {cfg.review_report_below}")
            a = self._agreement(who)
            if a.samples >= cfg.agreement_min_samples and a.weight() < cfg.min_agreement:
                reasons.append("low_agreement")
                details.append(f"{who} agrees with the rest {a.weight():.2f} (< {cfg.min_agreement})"
                               f" over {a.samples:g} samples")
        if reasons:
            return REVIEW, reasons, "held for review: " + "; ".join(details)
        return PENDING, [], ""

    # ------------------------------------------------------------------ agreement
    def _agreement(self, who: str) -> _Agreement:
        db = self._db
        a = _Agreement()
        mine: dict[str, str] = {}
        for body, label in db.execute(
                "SELECT body_digest, label FROM feedback WHERE who = ? AND body_digest IS NOT NULL"
                " AND status != ? ORDER BY id", (who, REJECTED)):
            mine[body] = label          # the latest word of this reporter on each body
        if mine:
            others: dict[str, dict[str, str]] = {}
            marks = ",".join("?" * len(_OPINIONS))
            rows = db.execute(
                f"SELECT f.body_digest, f.who, f.label FROM feedback f JOIN"
                f" (SELECT DISTINCT body_digest FROM feedback WHERE who = ? AND body_digest IS NOT NULL) m"
                f" ON f.body_digest = m.body_digest WHERE f.who != ? AND f.status IN ({marks}) ORDER BY f.id",
                (who, who, *_OPINIONS))
            for body, other, label in rows:
                others.setdefault(body, {})[other] = label
            for body, votes in others.items():
                if body in mine:
                    a.samples += 1
                    a.agree += sum(1 for v in votes.values() if v == mine[body]) / len(votes)
        for (review,) in db.execute("SELECT review FROM feedback WHERE who = ? AND review IS NOT NULL", (who,)):
            a.samples += 1
            a.agree += review == APPROVED
        return a

    def weight(self, who: str) -> float:
        """The reporter's weight: 1.0 if trusted, else their smoothed agreement."""
        if self.trusted(who):
            return 1.0
        with self._mutex:
            return self._agreement(normalise_who(who)).weight()

    # ------------------------------------------------------------------ sending
    def retry_pending(self) -> list[FeedbackResult]:
        """Send what is pending, oldest first; stop at the first item the scorer cannot
        take now (it stays pending). Returns the results of the items tried."""
        out = []
        with self._mutex:
            ids = [r[0] for r in self._db.execute(
                "SELECT id FROM feedback WHERE status = ? ORDER BY queued, id", (PENDING,))]
        for fid in ids:
            result = self._send(fid)
            if result is None:
                continue        # another process has it
            out.append(result)
            if result.status == PENDING:
                # the scorer is down: the later items wait their turn, and say so
                with self._mutex:
                    self._db.execute("UPDATE feedback SET reasons = ?, detail = ? WHERE status = ? AND id != ?"
                                     " AND claimed IS NULL", (json.dumps(result.reasons),
                                                              "behind earlier feedback; " + result.detail,
                                                              PENDING, fid))
                break
        return out

    def _send(self, fid: int) -> FeedbackResult | None:
        import grpc

        from classifier.client import MessageTooLarge, ScorerUnavailable

        now = self.clock()
        with self._mutex:
            claimed = self._db.execute(
                "UPDATE feedback SET claimed = ? WHERE id = ? AND status = ? AND (claimed IS NULL OR claimed < ?)",
                (now, fid, PENDING, now - _STALE_CLAIM)).rowcount
            if not claimed:
                return None
            row = self._db.execute("SELECT message, label, source, who, classifiers, review, reviewed_by"
                                   " FROM feedback WHERE id = ?", (fid,)).fetchone()
        message, label, source, who, classifiers, review, reviewed_by = zlib.decompress(row[0]), *row[1:]
        # the store vouches for a trusted reporter, and for an item a trusted admin approved
        trusted = self.trusted(who) or (review == APPROVED and self.trusted(reviewed_by or ""))
        update: dict = {"claimed": None}
        if self.scorer is None:
            update.update(reasons=["scorer_unavailable"],
                          detail="no scorer configured: kept as pending; retry_pending() sends it")
        else:
            try:
                reply = self.scorer.learn(message, label, source, who, json.loads(classifiers) or None,
                                          trusted=trusted)
            except ScorerUnavailable as exc:
                update.update(reasons=["scorer_unavailable"],
                              detail=f"scorer unavailable ({exc}): kept as pending; retry_pending() sends it")
            except MessageTooLarge as exc:
                update.update(status=RECORDED, reasons=["message_too_large"], detail=str(exc))
            except grpc.RpcError as exc:
                code = getattr(exc.code(), "name", "UNKNOWN")
                if code in _REFUSED:   # the request itself is wrong: resending cannot help
                    update.update(status=RECORDED, reasons=["scorer_refused"],
                                  detail=f"the scorer refused it ({code}: {exc.details()})")
                else:   # a timeout, a crash mid-call: resending is safe (the learn log is idempotent)
                    update.update(reasons=["scorer_unavailable"],
                                  detail=f"the scorer failed ({code}: {exc.details()}): kept as"
                                         " pending; retry_pending() sends it")
            else:
                from classifier import wire

                outcome = {v: k for k, v in wire.OUTCOMES.items()}[reply.outcome]
                update.update(status=APPROVED if review == APPROVED else outcome, outcome=outcome,
                              audit_id=reply.audit_id, reasons=[],
                              detail=f"scorer: {outcome} (learn log {reply.audit_id})")
        with self._mutex:
            sets = ", ".join(f"{k} = ?" for k in update)
            values = [json.dumps(v) if k == "reasons" else v for k, v in update.items()]
            self._db.execute(f"UPDATE feedback SET {sets} WHERE id = ? AND status = ?", (*values, fid, PENDING))
        return self._result(self._row(fid))

    def _settled(self, fid: int) -> FeedbackResult:
        """The item's result once no one is sending it: another thread or process that
        claimed it (its own retry_pending) answers for it within the scorer's deadline."""
        end = None
        while True:
            with self._mutex:
                claimed = self._db.execute("SELECT claimed FROM feedback WHERE id = ?", (fid,)).fetchone()[0]
            if claimed is None:
                return self._result(self._row(fid))
            if end is None:
                end = time.monotonic() + getattr(self.scorer, "deadline", 10.0) + 5.0
            elif time.monotonic() > end:
                return self._result(self._row(fid))
            time.sleep(0.005)

    # ------------------------------------------------------------------ review
    def review_queue(self, limit: int = 1000) -> list[FeedbackItem]:
        """Items held for review, oldest first (without their message bytes)."""
        with self._mutex:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM feedback WHERE status = ?"
                                    " ORDER BY id LIMIT ?", (REVIEW, limit)).fetchall()
        return [_item(r) for r in rows]

    def approve(self, fid: int, who: str) -> FeedbackResult:
        """An admin upholds a held item: it is learned now (or pending if the scorer is down).
        Nobody but a trusted reporter reviews their own item."""
        self._decide(fid, who, APPROVED)
        self.retry_pending()        # in its turn, behind anything pending before it
        return self._settled(fid)

    def reject(self, fid: int, who: str) -> FeedbackResult:
        """An admin drops a held item: never learned; it counts against its reporter."""
        self._decide(fid, who, REJECTED)
        return self._result(self._row(fid))

    def _decide(self, fid: int, who: str, review: str) -> None:
        now = self.clock()
        who = normalise_who(who)
        with self._mutex:
            row = self._db.execute("SELECT who FROM feedback WHERE id = ?", (fid,)).fetchone()
            if row is not None and row[0] == who and not self.trusted(who):
                raise FeedbackError(f"feedback {fid} is {who}'s own: another admin (or a trusted one) reviews it")
            status = PENDING if review == APPROVED else REJECTED
            n = self._db.execute(
                "UPDATE feedback SET status = ?, review = ?, reviewed_by = ?, reviewed_at = ?, queued = ?"
                " WHERE id = ? AND status = ?", (status, review, who, now,
                                                 now if status == PENDING else None, fid, REVIEW)).rowcount
            if n:
                return
            row = self._db.execute("SELECT status FROM feedback WHERE id = ?", (fid,)).fetchone()
        raise FeedbackError(f"no feedback {fid}" if row is None else f"feedback {fid} is {row[0]}, not held for review")

    # ------------------------------------------------------------------ reading
    def get(self, fid: int) -> FeedbackItem | None:
        """One item with its message bytes."""
        with self._mutex:
            r = self._db.execute(f"SELECT {', '.join(_COLUMNS)}, message FROM feedback WHERE id = ?",
                                 (fid,)).fetchone()
        return None if r is None else _item(r[:-1], zlib.decompress(r[-1]))

    def items(self, *, who: str | None = None, status: str | None = None, digest: str | None = None,
              limit: int = 100) -> list[FeedbackItem]:
        """The newest items (without message bytes), optionally of one reporter, status or message."""
        where, args = [], []
        for col, v in (("who", None if who is None else normalise_who(who)), ("status", status),
                       ("digest", digest)):
            if v is not None:
                where.append(f"{col} = ?")
                args.append(v)
        q = (f"SELECT {', '.join(_COLUMNS)} FROM feedback" + (" WHERE " + " AND ".join(where) if where else "")
             + " ORDER BY id DESC LIMIT ?")
        with self._mutex:
            return [_item(r) for r in self._db.execute(q, (*args, limit)).fetchall()]

    def reporter_stats(self) -> list[ReporterStats]:
        """Per reporter: how much they sent, what became of it, and their weight."""
        with self._mutex:
            counts: dict[str, dict[str, int]] = {}
            last: dict[str, float] = {}
            for who, status, n, at in self._db.execute(
                    "SELECT who, status, count(*), max(at) FROM feedback GROUP BY who, status"):
                counts.setdefault(who, {})[status] = n
                last[who] = max(last.get(who, 0.0), at)
            out = []
            for who in sorted(counts):
                a = self._agreement(who)
                trusted = self.trusted(who)
                out.append(ReporterStats(who=who, submitted=sum(counts[who].values()), by_status=counts[who],
                                         samples=a.samples, agreement=a.agree,
                                         weight=1.0 if trusted else a.weight(), trusted=trusted,
                                         last_at=last[who]))
        return out

    def labelled(self, *, since: float | None = None, until: float | None = None,
                 include_recorded: bool = False) -> Iterator[Labelled]:
        """The labelled messages, oldest first: per message (digest) its latest word
        among the items the scorer learned (or approved; ``include_recorded`` adds
        those kept without learning), with its reporter's current weight. Held,
        pending and rejected items are not training data."""
        statuses = TAUGHT + ((RECORDED,) if include_recorded else ())
        marks = ",".join("?" * len(statuses))
        where, args = [f"status IN ({marks})"], list(statuses)
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        if until is not None:
            where.append("at < ?")
            args.append(until)
        with self._mutex:
            latest = self._db.execute(
                f"SELECT max(id) FROM feedback WHERE {' AND '.join(where)} GROUP BY digest ORDER BY max(id)",
                args).fetchall()
        weights: dict[str, float] = {}
        for (fid,) in latest:
            with self._mutex:
                r = self._db.execute("SELECT id, digest, label, message, at, who, source, why FROM feedback"
                                     " WHERE id = ?", (fid,)).fetchone()
            if r[5] not in weights:
                weights[r[5]] = self.weight(r[5])
            yield Labelled(id=r[0], digest=r[1], label=r[2], message=zlib.decompress(r[3]),
                           weight=weights[r[5]], at=r[4], who=r[5], source=r[6], why=r[7])

    # ------------------------------------------------------------------ helpers
    def _row(self, fid: int) -> FeedbackItem:
        with self._mutex:
            r = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM feedback WHERE id = ?", (fid,)).fetchone()
        return _item(r)

    @staticmethod
    def _result(item: FeedbackItem) -> FeedbackResult:
        return FeedbackResult(status=item.status, reasons=list(item.reasons), digest=item.digest,
                              audit_id=item.audit_id, id=item.id, outcome=item.outcome, detail=item.detail)


def _item(r, message: bytes | None = None) -> FeedbackItem:
    d = dict(zip(_COLUMNS, r))
    d["classifiers"] = json.loads(d["classifiers"])
    d["reasons"] = json.loads(d["reasons"])
    return FeedbackItem(**d, message=message)


# ---------------------------------------------------------------------- for the CLI
def open_feedback(gate_cfg, scorer=None) -> Feedback:
    """The installation's feedback store, ``<state_dir>/feedback.db``, sending to the
    configured scorer (``[scorer] addresses``, ``deadline``) unless one is given."""
    if scorer is None:
        from classifier.client import RemoteScorer

        fb = Feedback(Path(gate_cfg.state_dir) / "feedback.db", gate_cfg.feedback,
                      RemoteScorer(list(gate_cfg.scorer_addresses), deadline=gate_cfg.scorer_deadline))
        fb._owns_scorer = True
        return fb
    return Feedback(Path(gate_cfg.state_dir) / "feedback.db", gate_cfg.feedback, scorer)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_result(r: FeedbackResult) -> str:
    parts = [f"feedback {r.id}: {r.status}"]
    if r.reasons:
        parts.append("(" + ", ".join(r.reasons) + ")")
    if r.detail:
        parts.append("- " + r.detail)
    return " ".join(parts)


def format_items(items: list[FeedbackItem]) -> str:
    """One line per item: id, when, who, label/source, score, status and reasons."""
    if not items:
        return "nothing held for review"
    lines = [f"{'id':>6}  {'at':20}  {'who':24}  {'label':5}  {'source':7}  {'score':>6}  status"]
    for i in items:
        score = f"{i.score:.4f}" if i.score is not None else "-"
        lines.append(f"{i.id:>6}  {_when(i.at):20}  {i.who[:24]:24}  {i.label:5}  {i.source:7}  {score:>6}  "
                     f"{i.status}" + (f" ({', '.join(i.reasons)})" if i.reasons else ""))
    return "\n".join(lines)


def format_item(i: FeedbackItem | None) -> str:
    if i is None:
        return "no such feedback"
    fields = [("id", i.id), ("at", _when(i.at)), ("who", i.who), ("why", i.why or "-"), ("source", i.source),
              ("label", i.label), ("digest", i.digest), ("body digest", i.body_digest or "-"),
              ("score", "-" if i.score is None else f"{i.score:.4f}"), ("classification", i.classification or "-"),
              ("queue id", i.queue_id or "-"), ("status", i.status), ("reasons", ", ".join(i.reasons) or "-"),
              ("detail", i.detail or "-"), ("learn log id", i.audit_id or "-"),
              ("reviewed", f"{i.review} by {i.reviewed_by} at {_when(i.reviewed_at)}" if i.review else "-")]
    return "\n".join(f"{k:15} {v}" for k, v in fields)


def format_stats(stats: list[ReporterStats]) -> str:
    if not stats:
        return "no feedback yet"
    lines = [f"{'who':24}  {'sent':>5}  {'weight':>6}  {'samples':>7}  {'last':20}  statuses"]
    for s in stats:
        lines.append(f"{s.who[:24]:24}  {s.submitted:>5}  {s.weight:>6.2f}  {s.samples:>7g}  {_when(s.last_at):20}  "
                     + ", ".join(f"{k}={v}" for k, v in sorted(s.by_status.items()))
                     + ("  (trusted)" if s.trusted else ""))
    return "\n".join(lines)
