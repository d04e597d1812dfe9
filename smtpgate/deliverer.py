"""The queue's delivery workers: they take due recipients from the durable queue
(``smtpgate.queue``), deliver them over SMTP per route, and record each recipient's
outcome: delivered, deferred (retried on ``[queue] retry_schedule`` until
``max_age``), or bounced with a DSN (RFC 3464, ``smtpgate.dsn``) to the sender.

Routing, per recipient: the message's own route when the enqueue fixed one (outgoing
mail goes to the outgoing relay), else the recipient's filtered domain's route, else
the outgoing relay, else none at all (``unrouteable``). A route's host name is looked
up through the gate's own resolver: no such name or no address is permanent (the
recipient bounces as ``unrouteable``, 5.4.4), DNS trouble is temporary.

One dispatcher task finds due work, claims it in the queue (a lease, so two processes
never deliver the same recipient) and starts one delivery per (message, route), at
most ``workers_per_route`` at once per route. Mail the gate has just queued is handed
over directly (``queued``), so a busy gate does not scan the queue for every message;
the queue is scanned every ``poll_interval`` (retries come due, ``mailsift queue
retry``, releases queued by the CLI) and whenever a route that was full has room. A delivery records the route's 250 in
the queue before it says QUIT (``SmtpRelay.transfer``'s ``on_accepted``): a crash can
then duplicate a message only between the route's 250 and that commit.

Every outcome is a decision-log line with phase ``delivery`` and an ``event``
(delivered, deferred, bounced): the classification is the message's own (what the gate
decided), or ``unrouteable`` for a route that does not exist.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import logging
import os
import re
import time
from dataclasses import dataclass

from classifier.classifications import CLASSIFICATIONS

from .config import GateConfig
from .decisionlog import DecisionLog
from .delivery import SmtpRelay, Transfer
from .dns import BaseResolver
from .queue import Due, Enqueue, Outcome, Queue, QueueEntry, format_route
from .result import CheckResult

log = logging.getLogger("mailsift.queue")

# How long a claim holds before another worker may take it. A live gate never gets near
# it (a delivery is cut off well before, see _deadline); after a crash a restarted gate
# takes its dead predecessor's claims back at once (Queue.recover), so this only matters
# where no lock file can tell (another host on a shared disk).
LEASE = 900.0
# Due recipients looked at per scan: a route's backlog beyond this waits for a later
# scan, other routes' mail is seen meanwhile once the backlog's own deliveries start.
SCAN_LIMIT = 500
# Whatever the message's classification was not recorded as (an enqueue without meta):
# the queue only holds mail that was accepted, so it reads as accepted mail.
DEFAULT_CLASSIFICATION = "not_spam"

_ENHANCED = re.compile(r"^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True)
class Result:
    """What one attempt means for one recipient."""
    idx: int
    rcpt: str
    event: str              # delivered, deferred, bounced
    reply: str              # the remote reply, or what went wrong
    classification: str
    status: str | None = None   # the DSN status for a bounce
    remote: str | None = None


class Deliverer:
    def __init__(self, queue: Queue, cfg: GateConfig, *, resolver: BaseResolver, decisions: DecisionLog,
                 relay: SmtpRelay | None = None, clock=time.time):
        self.queue = queue
        self.cfg = cfg
        self.q = cfg.queue
        self.resolver = resolver
        self.decisions = decisions
        self.relay = relay or SmtpRelay(cfg.hostname, cfg.relay_timeout, cfg.queue.connect_timeout)
        self.clock = clock
        self.owner: str | None = None
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._inflight: set[tuple[str, int]] = set()
        self._active: collections.Counter = collections.Counter()
        self._in_round = False
        self._hints: list[Due] = []      # just queued: deliver without a scan
        self._scan = True                # the next round scans the queue
        self._backlog = False            # a full route left due mail behind

    # ------------------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self.owner = await asyncio.to_thread(self.queue.register_worker)
        recovered = await asyncio.to_thread(self.queue.recover)
        if any(recovered.values()):
            log.warning("queue recovered after an unclean stop: %s", recovered)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="queue-dispatcher")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking work; deliveries in flight get ``grace`` seconds to finish, the
        rest are cut off and their recipients are given back to the queue untouched."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.owner is not None:
            await asyncio.to_thread(self.queue.unregister_worker, self.owner)
            self.owner = None

    def wake(self) -> None:
        """Scan the queue for due work now. On the event loop's thread."""
        self._scan = True
        if self._wake is not None:
            self._wake.set()

    def queued(self, queue_id: str, rcpts: list[str], route: tuple[str, int] | None) -> None:
        """Mail was just queued (by the gate, or a bounce by us): start its delivery
        without scanning the queue. On the event loop's thread."""
        self._hints += [Due(queue_id, i, r, route) for i, r in enumerate(rcpts)]
        if self._wake is not None:
            self._wake.set()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is due and nothing is being delivered (tests, benches)."""
        end = time.monotonic() + timeout
        quiet = 0
        while True:
            self.wake()
            if (not self._tasks and not self._in_round
                    and not await asyncio.to_thread(self.queue.due, self.clock(), 1)
                    and not self._tasks and not self._in_round):
                quiet += 1
                if quiet == 2:    # twice in a row: nothing was enqueued while we looked
                    return
            else:
                quiet = 0
            if time.monotonic() > end:
                raise TimeoutError(f"the queue did not settle within {timeout} s")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------------------
    # dispatching
    # ------------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        last_scan = 0.0
        while True:
            self._wake.clear()
            self._in_round = True
            hints, self._hints = self._hints, []
            scan = self._scan or time.monotonic() - last_scan >= self.q.poll_interval
            try:
                if scan:
                    self._scan = False
                    last_scan = time.monotonic()
                    due = await asyncio.to_thread(self.queue.due, self.clock(), SCAN_LIMIT)
                    self._backlog = len(due) >= SCAN_LIMIT
                else:
                    due = hints
                await self._start(due)
            except asyncio.CancelledError:
                raise
            except Exception:   # the database busy or a disk error: try again next round
                log.exception("queue dispatch failed")
            finally:
                self._in_round = False
            try:
                await asyncio.wait_for(self._wake.wait(), self.q.poll_interval)
            except asyncio.TimeoutError:
                pass

    def route_for(self, due: Due) -> tuple[str, int] | None:
        if due.route is not None:
            return due.route
        domain = self.cfg.domain_of(due.rcpt)
        if domain is not None:
            return domain.route
        return self.cfg.outgoing_relay

    async def _start(self, due: list[Due]) -> None:
        """Claim and start deliveries of ``due`` recipients, as their routes have room."""
        now = self.clock()
        groups: dict[tuple[str, tuple[str, int] | None], list[Due]] = {}
        for d in due:
            if (d.queue_id, d.idx) not in self._inflight:
                groups.setdefault((d.queue_id, self.route_for(d)), []).append(d)
        for (qid, route), ds in groups.items():
            if route is not None and self._active[route] >= self.q.workers_per_route:
                self._backlog = True     # scan again when one of its deliveries ends
                continue
            claimed = await asyncio.to_thread(self.queue.claim, self.owner, qid, [d.idx for d in ds],
                                              now + LEASE, now)
            if not claimed:
                continue
            self._active[route] += 1
            mine = [d for d in ds if d.idx in claimed]
            self._inflight.update((qid, d.idx) for d in mine)
            task = asyncio.create_task(self._deliver(qid, route, mine), name=f"deliver-{qid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------
    # one delivery
    # ------------------------------------------------------------------------------
    async def _deliver(self, qid: str, route: tuple[str, int] | None, ds: list[Due]) -> None:
        idxs = [d.idx for d in ds]
        entry = data = None
        finishing = False
        try:
            entry = await asyncio.to_thread(self.queue.get, qid)
            data = await asyncio.to_thread(self.queue.message, qid)
            results = await asyncio.wait_for(self._attempt(entry, data, route, ds), LEASE - 60)
            finishing = True
            await self._finish(entry, data, route, results)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self.queue.release, self.owner, qid, idxs))
            raise
        except Exception as exc:
            # Our own failure (not the route's): the recipients wait for the next attempt
            # like a temporary failure, on the same schedule and up to the same max_age,
            # then bounce; one already recorded as delivered stays so.
            log.exception("delivery of %s failed", qid)
            why = f"451 4.3.0 internal error: {type(exc).__name__}: {exc}"
            try:
                if entry is not None and not finishing:   # (a message file gone: its DSN has no copy)
                    await self._finish(entry, data or b"", route, [
                        Result(d.idx, d.rcpt, "deferred", why, _classification(entry.meta)) for d in ds])
                else:   # the entry cannot be read, or recording its outcome failed
                    await self._record(qid, [Outcome(i, "deferred", why, next_attempt=self.clock() + self.q.retry_schedule[0])
                                             for i in idxs])
            except Exception:   # the store itself fails: the lease lapses, then it is tried again
                log.exception("could not record the failed delivery of %s", qid)
        finally:
            self._active[route] -= 1
            self._inflight.difference_update((qid, i) for i in idxs)
            if self._backlog:
                self.wake()

    async def _record(self, qid: str, outcomes: list[Outcome], bounce: Enqueue | None = None) -> str | None:
        return await asyncio.to_thread(self.queue.record, qid, outcomes, owner=self.owner, bounce=bounce,
                                       now=self.clock())

    async def _attempt(self, entry: QueueEntry, data: bytes, route, ds: list[Due]) -> list[Result]:
        cls = _classification(entry.meta)
        rcpts = [d.rcpt for d in ds]
        if route is None:
            why = f"no route for {_domain(rcpts[0])}: not a filtered domain, and no outgoing relay"
            return [Result(d.idx, d.rcpt, "bounced", _unrouteable(why), "unrouteable", "5.4.4") for d in ds]
        host, port = route
        kind, addrs, why = await self._addresses(host)
        if kind == "permanent":
            return [Result(d.idx, d.rcpt, "bounced", _unrouteable(why), "unrouteable", "5.4.4") for d in ds]
        if kind == "temporary":
            return [Result(d.idx, d.rcpt, "deferred", why, cls) for d in ds]

        async def delivered(ok: list[int], line: str) -> None:
            # the route's 250: recorded before anything else, QUIT included
            await self._record(entry.queue_id, [Outcome(ds[i].idx, "delivered", line, format_route(route))
                                                for i in ok])

        smtputf8 = entry.smtputf8 or not all(a.isascii() for a in (entry.mail_from, *rcpts))
        t: Transfer = await self.relay.transfer(addrs, port, entry.mail_from, rcpts, data,
                                                smtputf8=smtputf8, body8bit=entry.body8bit,
                                                on_accepted=delivered)
        out = []
        for d, (code, line) in zip(ds, t.replies):
            if t.stage == "done" and 200 <= code < 300:
                event = "delivered"
            elif code >= 500:
                event = "bounced"
            else:
                event = "deferred"
            out.append(Result(d.idx, d.rcpt, event, line or f"{host}:{port}: no reply", cls,
                              remote=t.remote))
        return out

    async def _addresses(self, host: str) -> tuple[str, list[str], str]:
        """("ok", addresses, "") or ("permanent"|"temporary", [], why)."""
        try:
            ipaddress.ip_address(host)
            return "ok", [host], ""
        except ValueError:
            pass
        local = hosts_file().get(host.lower().rstrip("."))
        if local:   # localhost, or a route the admin pinned in /etc/hosts (as the synchronous relay finds it)
            return "ok", local, ""
        a, aaaa = await asyncio.gather(self.resolver.a(host), self.resolver.aaaa(host))
        addrs = (list(a.records) if a.ok else []) + (list(aaaa.records) if aaaa.ok else [])
        if addrs:
            return "ok", addrs, ""
        if a.temporary or aaaa.temporary:
            return "temporary", [], f"DNS {a.status if a.temporary else aaaa.status} looking up the route {host}"
        what = "does not exist (NXDOMAIN)" if "nxdomain" in (a.status, aaaa.status) else "has no address"
        return "permanent", [], f"the route {host} {what}"

    async def _finish(self, entry: QueueEntry, data: bytes, route, results: list[Result]) -> None:
        now = self.clock()
        expired = now - entry.arrival >= self.q.max_age
        final: list[Result] = []
        outcomes: list[Outcome] = []
        route_text = format_route(route) if route else "unrouteable"
        for r in results:
            if r.event == "delivered":
                final.append(r)     # already recorded at the route's 250
                continue
            if r.event == "deferred" and expired:
                r = Result(r.idx, r.rcpt, "bounced", r.reply, r.classification, "4.4.7", r.remote)
            if r.event == "deferred":
                outcomes.append(Outcome(r.idx, "deferred", r.reply, route_text, self._next_attempt(entry, r.idx, now)))
            else:
                outcomes.append(Outcome(r.idx, "bounced", r.reply, route_text))
            final.append(r)
        bounced = [r for r in final if r.event == "bounced"]
        bounce = self._bounce(entry, data, bounced, now) if bounced else None
        bounce_id = await self._record(entry.queue_id, outcomes, bounce) if outcomes else None
        if bounce_id is not None:
            self.queued(bounce_id, bounce.rcpts, bounce.route)
        for r in final:
            self._log(entry, r, route_text, bounce_id, outcomes)

    def _next_attempt(self, entry: QueueEntry, idx: int, now: float) -> float:
        done = entry.recipients[idx].attempts          # attempts before this one
        schedule = self.q.retry_schedule
        wait = schedule[min(done, len(schedule) - 1)]
        # the last try falls on max_age itself, so a recipient bounces on time
        return min(now + wait, entry.arrival + self.q.max_age)

    def _bounce(self, entry: QueueEntry, data: bytes, bounced: list[Result], now: float) -> Enqueue | None:
        from .dsn import Failure, build_dsn, is_8bit, needs_smtputf8

        failures = [Failure(rcpt=r.rcpt, status=r.status or _status(r.reply), diagnostic=r.reply,
                            remote_mta=(r.remote or "").rpartition(":")[0] or None, action="failed",
                            last_attempt=now) for r in bounced]
        dsn = build_dsn(reporting_mta=self.cfg.hostname, mail_from=entry.mail_from, failures=failures,
                        original=data, queue_id=entry.queue_id, arrival=entry.arrival, now=now,
                        postmaster=self.cfg.postmaster)
        if dsn is None:
            return None      # a null sender: never bounce a bounce (logged as such)
        return Enqueue(mail_from="", rcpts=[entry.mail_from], message=dsn, origin="bounce",
                       smtputf8=needs_smtputf8(entry.mail_from), body8bit=is_8bit(dsn),
                       meta={"classification": _classification(entry.meta), "bounce_of": entry.queue_id,
                             "bounced": [r.rcpt for r in bounced]})

    def _log(self, entry: QueueEntry, r: Result, route: str, bounce_id: str | None, outcomes) -> None:
        extra = {"route": route, "attempts": entry.recipients[r.idx].attempts + 1}
        if r.event == "deferred":
            extra["next_attempt"] = next(o.next_attempt for o in outcomes if o.idx == r.idx)
        if r.event == "bounced":
            extra["bounce"] = bounce_id or "none: null sender"
        details = {"route": route} | ({"remote": r.remote} if r.remote else {})
        log_outcome(self.decisions, entry, r.rcpt, r.event, r.reply, r.classification, details, **extra)


def log_outcome(decisions: DecisionLog, entry: QueueEntry, rcpt: str, event: str, reply: str,
                classification: str, details: dict, **extra) -> None:
    """One delivery-phase decision-log line (delivered, deferred, bounced, deleted)."""
    m = entry.meta
    try:
        decisions.write(
            classification=classification, reply=reply, phase="delivery", event=event,
            queue_id=entry.queue_id, origin=entry.origin, mail_from=entry.mail_from, rcpt=rcpt,
            message_id=m.get("message_id"), digest=m.get("digest"), settings_id=m.get("settings_id"),
            score=m.get("score"), evidence=[CheckResult(classification, "delivery", reply, details=details).to_log()],
            **extra)
    except Exception:   # the outcome is in the queue; a failed log line must not undo it
        log.exception("decision log write failed for %s %s", entry.queue_id, rcpt)


def log_delete(decisions: DecisionLog, entry: QueueEntry, rcpts: list[str], *, who: str, reason: str = "") -> None:
    """The administrator's delete (``mailsift queue delete``), one line per recipient."""
    why = f"deleted from the queue by {who}" + (f": {reason}" if reason else "")
    for rcpt in rcpts:
        log_outcome(decisions, entry, rcpt, "deleted", why, _classification(entry.meta), {"who": who}, who=who)


@functools.lru_cache(maxsize=1)
def _parse_hosts(mtime: float, path: str = "/etc/hosts") -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return names
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ipaddress.ip_address(fields[0])
        except ValueError:
            continue
        for name in fields[1:]:
            names.setdefault(name.lower().rstrip("."), []).append(fields[0])
    return names


def hosts_file(path: str = "/etc/hosts") -> dict[str, list[str]]:
    """The static host table (re-read when it changes): route names are looked up
    there first, then in DNS through the gate's resolver."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return {}
    return _parse_hosts(mtime, path)


def _classification(meta: dict) -> str:
    c = meta.get("classification")
    return c if c in CLASSIFICATIONS else DEFAULT_CLASSIFICATION


def _unrouteable(why: str) -> str:
    return f"550 5.4.4 Unrouteable address ({why})"


def _domain(rcpt: str) -> str:
    return rcpt.rpartition("@")[2] or rcpt


def _status(reply: str) -> str:
    m = _ENHANCED.match(reply)
    if m:
        return m.group(1)
    return "5.0.0" if reply[:1] == "5" else "4.0.0"
