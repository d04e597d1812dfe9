"""The gate's SMTP handler: runs the policy table's steps in each phase, answers with
the contract's reply, asks the scorer, delivers, quarantines, and logs every decision.

The order of the steps is ``smtpgate.policy.POLICY``; each step is a method here named
``<phase>_<step>`` that gathers the step's inputs, calls the check module and returns
``None`` or a ``CheckResult``. Nothing here decides a reply text: replies come from the
contract table through ``CheckResult.reply()``.
"""
from __future__ import annotations

import asyncio
import datetime
import concurrent.futures
import functools
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from email.utils import format_datetime

import grpc
from aiosmtpd.smtp import AuthResult, LoginPassword

from classifier.classifications import get
from classifier.client import AsyncRemoteScorer, MessageTooLarge, ScorerUnavailable
from classifier.facts import GateFacts
from classifier.features import message_digest
from classifier.proto import scorer_pb2 as pb

from . import headers
from .auth import verify_password
from .checks import dnsbl as dnsbl_mod
from .checks import dkim as dkim_mod
from .checks import dmarc as dmarc_mod
from .checks import ptr as ptr_mod
from .checks import spf_fail as spf_mod
from .checks.bad_header_count import bad_header_count
from .checks.date_skew import date_skew
from .checks.destination_verification import destination_verification
from .checks.destination_verification import verify as verify_destination
from .checks.greylisted import add_reputation, greylisted, network_of
from .checks.header_too_long import header_too_long
from .checks.invalid_helo import invalid_helo
from .checks.line_too_long import line_too_long
from .checks.message_partial import message_partial
from .checks.restricted_address_chars import restricted_address_chars
from .checks.sender_missing_dns import sender_missing_dns
from .checks.subject_invalid_chars import subject_invalid_chars
from .checks.too_many_mime_parts import too_many_mime_parts
from .config import GateConfig, Settings, address_matches, normalise_address
from .decisionlog import DecisionLog
from .delivery import Delivery, DeliveryResult
from .dns import Resolver
from .message import DataContext, shown
from .policy import POLICY
from .quarantine import Quarantine
from .queue import Queue, new_id
from .result import CheckResult
from .users import get_user

log = logging.getLogger("mailsift.gate")

_BEFORE_RCPT = ("connect", "helo", "auth", "mail")


@dataclass
class Conn:
    """What the gate knows about one SMTP connection."""
    id: str
    listener: str                 # inbound, submission, submissions
    client_ip: str
    client_port: int
    ptr: str = "unknown"          # match, mismatch, missing, unknown
    ptr_name: str | None = None
    helo: str = ""
    helo_valid: bool = True
    dnsbl: list[str] = field(default_factory=list)
    dnswl: list[str] = field(default_factory=list)
    dnswl_result: CheckResult | None = None
    deferred: list[CheckResult] = field(default_factory=list)
    user: str | None = None
    tls: bool = False
    lease: str | None = None      # the concurrency lease this connection holds
    vouched: bool = False         # its network's reputation was raised (AUTH, DNSWL)
    ip_rate_count: int = 0        # connections from this IP in the rate window, this one included

    @property
    def submission(self) -> bool:
        return self.listener != "inbound"


@dataclass
class Txn:
    """One mail transaction (MAIL to end of DATA or RSET)."""
    queue_id: str
    mail_from: str
    smtputf8: bool = False
    body8bit: bool = False
    spf: object | None = None     # checks.spf_fail.SpfOutcome
    deferred: list[CheckResult] = field(default_factory=list)
    settings: Settings | None = None
    route: tuple[str, int] | None = None
    rcpts: list[str] = field(default_factory=list)         # accepted, normalised (matching, logs)
    deliver_to: list[str] = field(default_factory=list)    # the same, as written (RFC 5321 2.4)
    blackholed: list[tuple[str, CheckResult]] = field(default_factory=list)
    whitelisted: CheckResult | None = None
    bypassed: list[CheckResult] = field(default_factory=list)   # what the whitelist let pass
    sender_rate_count: int = 0    # this sender's messages in the last minute, this one included
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)   # synchronous relay: 5xx per rcpt

    def bypass(self, result: CheckResult) -> None:
        if result not in self.bypassed:
            self.bypassed.append(result)


def _guarded(phase: str):
    """Any failure of ours in a hook answers ``internal_error`` (451 4.3.0), is logged as
    a decision with the exception as evidence, and never accepts a message."""
    def deco(fn):
        @functools.wraps(fn)   # aiosmtpd reads the hook's signature (old/new EHLO hook)
        async def hook(self, server, session, *args):
            try:
                return await fn(self, server, session, *args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("internal error in %s", phase)
                result = CheckResult("internal_error", phase, f"{type(exc).__name__}: {exc}")
                conn = getattr(session, "gate", None)
                envelope = args[0] if args and phase != "connect" else None
                txn = getattr(envelope, "gate", None)
                if conn is not None:
                    self._log(conn, txn, result, "internal_error", result.reply(), phase,
                              rcpt=args[1] if phase == "rcpt" else None)
                if phase == "ehlo":
                    return args[2]   # the EHLO reply as aiosmtpd built it
                if phase == "helo":
                    return f"250 {server.hostname}"
                return result.reply()
        return hook
    return deco


class Gate:
    """The aiosmtpd handler. One per process; per-connection state lives on the
    aiosmtpd session (``session.gate``) and envelope (``envelope.gate``)."""

    def __init__(self, config: GateConfig, *, resolver: Resolver, scorer: AsyncRemoteScorer,
                 delivery: Delivery, quarantine: Quarantine, decisions: DecisionLog,
                 clock=time.time, state=None, queue: Queue | None = None, queued=None):
        self.cfg = config
        self.resolver = resolver
        self.scorer = scorer
        self.delivery = delivery
        self.queue = queue            # accepted mail goes here with [queue] enabled
        self.queued = queued          # called (on the loop) with (queue id, rcpts, route) after each enqueue
        self.quarantine = quarantine
        self.decisions = decisions
        self.clock = clock
        self.busy = 0                 # DATA being decided right now (see handle_DATA)
        self.state = state            # smtpgate.state.StateStore: the stateful protections
        self.limits = config.limits
        # the rate limits set globally or by any domain: counted on every connection/MAIL
        self._rate_limited = {k for k in ("ip_rate", "sender_rate")
                              if getattr(config.limits, k) or any(d.rate_limits.get(k) for d in config.domains.values())}
        # pyspf is synchronous: each evaluation holds a thread while it waits for DNS.
        # Its own pool, sized for many concurrent connections, keeps SPF from starving
        # the loop's default executor (password hashing) and vice versa.
        self._spf_pool = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="spf")
        self._own_names = {config.hostname.lower()}
        self._own_ips = set(config.own_ips)

    def close(self) -> None:
        self._spf_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------
    # Running the table
    # ------------------------------------------------------------------------------
    async def _run(self, phase: str, *args) -> CheckResult | None:
        for step in POLICY[phase]:
            result = await getattr(self, f"{phase}_{step}")(*args)
            if result is None:
                continue
            row = result.row
            if row.action == "accept":
                continue
            if phase in _BEFORE_RCPT and row.whitelist:
                self._defer(phase, args, result)
                continue
            return result
        return None

    def _defer(self, phase, args, result: CheckResult) -> None:
        conn_or_txn = args[1] if phase == "mail" else args[0]
        conn_or_txn.deferred.append(result)

    def _log(self, conn: Conn, txn: Txn | None, result: CheckResult | None, classification: str,
             reply: str, phase: str, rcpt: str | None = None, **extra) -> None:
        evidence = [result.to_log()] if result is not None else []
        if txn is not None and txn.bypassed:
            extra["bypassed"] = [r.to_log() for r in txn.bypassed]
        self.decisions.write(
            classification=classification, reply=reply, phase=phase,
            queue_id=txn.queue_id if txn else None, conn=conn.id, listener=conn.listener,
            client_ip=conn.client_ip, ptr=conn.ptr_name, helo=conn.helo or None, user=conn.user,
            mail_from=txn.mail_from if txn else None, rcpt=rcpt,
            settings_id=txn.settings.id if txn and txn.settings else None,
            evidence=evidence + extra.pop("more_evidence", []), **extra)

    # ------------------------------------------------------------------------------
    # aiosmtpd hooks
    # ------------------------------------------------------------------------------
    async def authenticate(self, server, session, mechanism: str, auth_data: LoginPassword) -> AuthResult:
        """AUTH on the submission listeners (aiosmtpd offers it only over TLS). The scrypt
        check runs in a thread: it takes ~0.1 s on purpose and must not stall the loop."""
        conn: Conn = session.gate
        name = auth_data.login.decode("utf-8", "replace")
        denied = await self._auth_locked(conn, name)
        if denied is not None:
            # Locked out: the password is not even checked, so the answer cannot tell a
            # guesser whether it was right.
            reply = denied.reply()
            self._log(conn, None, denied, "auth_denied", reply, "auth")
            return AuthResult(success=False, handled=False, message=reply)
        user = await self._user(name)
        ok = False
        if user is not None:
            ok = await asyncio.to_thread(verify_password, auth_data.password, user.password_hash)
        log.info("auth", extra={"fields": {"event": "auth", "conn": conn.id, "client_ip": conn.client_ip,
                                           "user": name, "mechanism": mechanism, "success": ok}})
        if ok:
            conn.user = name
            return AuthResult(success=True, auth_data=auth_data)
        await self._auth_failed(conn, name)
        return AuthResult(success=False, handled=False)

    async def _user(self, name: str):
        """An outgoing user: the state store's (``mailsift gate user``) first, then the
        configuration's ``[outgoing.users]``."""
        if self.state is not None:
            stored = await get_user(self.state, name)
            if stored is not None:
                return stored
        return self.cfg.users.get(name)

    def _auth_keys(self, conn: Conn, name: str) -> list[tuple[str, str]]:
        return [("ip", conn.client_ip), ("user", name.lower())]

    async def _auth_locked(self, conn: Conn, name: str) -> CheckResult | None:
        if not self.limits.auth_failures or self.state is None:
            return None
        for kind, who in self._auth_keys(conn, name):
            if await self.state.get(f"lock:auth:{kind}:{who}") is not None:
                return CheckResult("auth_denied", "auth_denied",
                                   f"{kind} {who} is locked out after {self.limits.auth_failures} failed"
                                   f" AUTH attempts in {self.limits.auth_window:g} s",
                                   details={"locked": kind, "login": name})
        return None

    async def _auth_failed(self, conn: Conn, name: str) -> None:
        """Count a failed AUTH per IP and per user; at the limit, lock that one out."""
        lim = self.limits
        if not lim.auth_failures or self.state is None:
            return
        for kind, who in self._auth_keys(conn, name):
            n = await self.state.hit(f"authfail:{kind}:{lim.auth_window:g}:{who}", lim.auth_window)
            if n >= lim.auth_failures:
                await self.state.set(f"lock:auth:{kind}:{who}", "1", lim.auth_lockout)

    async def on_disconnect(self, session) -> None:
        """The connection is gone: give its concurrency lease back."""
        conn = getattr(session, "gate", None)
        if conn is not None and conn.lease and self.state is not None:
            try:
                await self.state.release(conn.lease, conn.id)
            except Exception:   # the lease lapses on its own (ttl)
                log.warning("could not release the lease of %s", conn.id, exc_info=True)

    @_guarded("connect")
    async def handle_CONNECT(self, server, session) -> str | None:
        peer = session.peer or ("0.0.0.0", 0)
        conn = Conn(id=new_id(), listener=server.listener, client_ip=str(peer[0]), client_port=int(peer[1]))
        session.gate = conn
        result = await self._run("connect", conn)
        if result is None:
            return None
        reply = result.reply()
        self._log(conn, None, result, result.classification, reply, "connect")
        return reply

    @_guarded("helo")
    async def handle_HELO(self, server, session, envelope, hostname):
        conn: Conn = session.gate
        session.host_name = hostname
        await self._helo(conn, hostname)
        return f"250 {server.hostname}"

    @_guarded("ehlo")
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        conn: Conn = session.gate
        session.host_name = hostname
        await self._helo(conn, hostname)
        keep = [r for r in responses[:-1] if r.strip() != "250-AUTH"]   # inbound: no AUTH at all
        return keep + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def _helo(self, conn: Conn, hostname: str) -> None:
        conn.helo = hostname
        conn.deferred = [r for r in conn.deferred if r.classification != "invalid_helo"]
        conn.helo_valid = True
        await self._run("helo", conn)

    @_guarded("mail")
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        conn: Conn = session.gate
        mail_from = "" if address in ("<>", "") else address
        txn = Txn(queue_id=new_id(), mail_from=mail_from, smtputf8=bool(envelope.smtp_utf8),
                  body8bit="BODY=8BITMIME" in mail_options)
        if not txn.smtputf8 and not mail_from.isascii():
            return "553 5.6.7 Non-ASCII sender address requires SMTPUTF8 (RFC 6531)"
        try:
            result = await self._run("mail", conn, txn)
        except _Reply as r:
            return r.reply
        if result is not None:
            reply = result.reply()
            self._log(conn, txn, result, result.classification, reply, "mail")
            return reply
        envelope.gate = txn
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    @_guarded("rcpt")
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        conn: Conn = session.gate
        txn: Txn = envelope.gate
        rcpt = normalise_address(address)
        if rcpt == "postmaster" and self.cfg.postmaster:
            # RFC 5321 4.5.1: <postmaster> without a domain must be accepted; it goes to
            # the configured postmaster of one of our domains.
            address = rcpt = normalise_address(self.cfg.postmaster)
        try:
            result = await self._run("rcpt", conn, txn, rcpt)
        except _Reply as r:
            return r.reply
        if result is not None:
            await self._count_invalid(conn, result)
            reply = result.reply()
            if result.row.action == "discard":   # blackhole: 250 now, delivered nowhere
                txn.blackholed.append((rcpt, result))
                envelope.rcpt_tos.append(address)
            self._log(conn, txn, result, result.classification, reply, "rcpt", rcpt=rcpt)
            return reply
        txn.rcpts.append(rcpt)
        txn.deliver_to.append(address)   # as the client wrote it: local parts keep their case
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_RSET(self, server, session, envelope):
        return "250 2.0.0 OK"   # aiosmtpd sends a hook's None as is: it must be a reply

    async def handle_DATA(self, server, session, envelope):
        # counted, so that a stopping server lets a message it is deciding (and may have
        # queued already) get its reply before connections are closed: a reply lost
        # after the enqueue would have the sender send the message twice
        self.busy += 1
        try:
            return await self._data(server, session, envelope)
        finally:
            self.busy -= 1

    @_guarded("data")
    async def _data(self, server, session, envelope):
        conn: Conn = session.gate
        txn: Txn = envelope.gate
        conn.tls = session.ssl is not None
        raw: bytes = envelope.original_content
        ctx = DataContext.from_bytes(raw, smtputf8=txn.smtputf8, now=self.clock(),
                                     mime_part_cap=txn.settings.max_mime_parts + 1 if txn.settings else 1000)
        common = dict(message_id=ctx.message_id or None, size=len(raw))
        for rcpt, bh in txn.blackholed:
            self._log(conn, txn, bh, "blackhole", bh.reply(), "data", rcpt=rcpt, **common)
        if not txn.rcpts:
            return "250 2.0.0 OK"   # only blackholed recipients
        outcome = _DataOutcome()
        result = await self._run("data", conn, txn, ctx, outcome)
        if result is None:   # the scorer accepts (or a whitelist did)
            result = outcome.accepted
        return await self._act(conn, txn, ctx, raw, result, outcome, common)

    async def handle_exception(self, error: Exception) -> str:
        log.exception("internal error in the SMTP session: %s", error)
        return get("internal_error").reply()

    # ------------------------------------------------------------------------------
    # After DATA: act on the decision
    # ------------------------------------------------------------------------------
    async def _act(self, conn, txn, ctx, raw, result: CheckResult, outcome, common) -> str:
        row = result.row
        # the message's identity, as the scorer and the learn log know it
        digest = outcome.digest or message_digest(raw)
        log_extra = dict(common, score=outcome.score, scores=outcome.scores or None,
                         # the threshold the score was compared with (mailsift tune reads it)
                         threshold=txn.settings.threshold if outcome.score is not None and txn.settings else None,
                         model_version=outcome.model_version, digest=digest,
                         more_evidence=[r.to_log() for r in outcome.notes])
        if row.action == "accept":
            message = headers.prepend(raw, self._trace_headers(conn, txn, ctx, result, outcome),
                                      strip_authserv_id=self.cfg.hostname)
            if self.queue is not None and self.cfg.queue.enabled:
                # what follows our trace fields: the bytes as received, less forged fields of ours
                offset = len(message) - len(headers.strip_ours(raw, self.cfg.hostname))
                failed = await self._enqueue(conn, txn, ctx, raw, message, offset, result, outcome,
                                             digest, log_extra)
            else:
                failed = await self._relay_now(conn, txn, message, result, log_extra)
            if failed is not None:
                return failed
            reply = row.reply()
            # From here on the queue (or the route) holds the message: whatever fails, the
            # 250 stands, since a 4xx would have the sender send it twice.
            try:
                if (self.cfg.greylist is not None and self.state is not None and not conn.submission
                        and result.classification in ("not_spam", "dnswl")):
                    # ham accepted from this network: it needs no greylisting from now on
                    await add_reputation(self.state, network_of(conn.client_ip, conn.ptr, conn.ptr_name),
                                         self.cfg.greylist)
                if conn.user is not None and self.state is not None:
                    for limit, window in ((self.limits.outgoing_per_hour, 3600.0),
                                          (self.limits.outgoing_per_day, 86400.0)):
                        if limit:
                            await self.state.hit(f"quota:{window:g}:{conn.user}", window)
            except Exception:
                log.exception("state store update failed after accepting %s", txn.queue_id)
            try:
                for rcpt in txn.rcpts:
                    extra = dict(log_extra)
                    refused = txn.refused.get(rcpt)
                    if refused:   # synchronous relay: refused for good (5xx) while the route
                        extra["delivery"] = {"refused": list(refused)}   # took the others
                    self._log(conn, txn, result, result.classification, reply, "data", rcpt=rcpt, **extra)
            except Exception:   # the 250 stands (above); the failure is logged where it can be
                log.exception("decision log write failed after accepting %s", txn.queue_id)
            return reply
        reply = result.reply()
        if row.action == "quarantine":
            # fsync'd before the 5xx is sent; in a thread, so other sessions go on meanwhile
            await asyncio.to_thread(self.quarantine.store, txn.queue_id, raw, {
                "mail_from": txn.mail_from, "rcpts": txn.rcpts, "deliver_to": txn.deliver_to,
                "client_ip": conn.client_ip, "helo": conn.helo, "classification": result.classification,
                "release": row.release, "reply": reply,
                "evidence": [result.to_log()] + [r.to_log() for r in outcome.notes],
                "score": outcome.score, "scores": outcome.scores, "model_version": outcome.model_version,
                "settings_id": txn.settings.id if txn.settings else None, "digest": digest,
                "message_id": ctx.message_id, "route": txn.route,
                # how a release must relay it (RFC 6531 SMTPUTF8, RFC 6152 8BITMIME)
                "smtputf8": txn.smtputf8, "body8bit": txn.body8bit})
        for rcpt in txn.rcpts:
            self._log(conn, txn, result, result.classification, reply, "data", rcpt=rcpt, **log_extra)
        return reply

    async def _enqueue(self, conn, txn, ctx, raw, message, offset, result, outcome, digest, log_extra) -> str | None:
        """Accepted mail into the durable queue, on disk before the 250 is answered; the
        ``internal_error`` reply when it cannot be stored (then nothing was accepted)."""
        meta = {"classification": result.classification, "score": outcome.score, "digest": digest,
                "message_id": ctx.message_id or None, "settings_id": txn.settings.id if txn.settings else None,
                "client_ip": conn.client_ip, "user": conn.user}
        # outgoing mail goes to the outgoing relay; inbound mail per recipient to its domain's route
        route = self.cfg.outgoing_relay if conn.submission else None
        try:
            await asyncio.to_thread(
                self.queue.enqueue, mail_from=txn.mail_from, rcpts=txn.deliver_to, message=message,
                queue_id=txn.queue_id, origin="smtp", route=route,
                smtputf8=txn.smtputf8, body8bit=txn.body8bit, original_offset=offset, meta=meta, original=raw)
        except Exception as exc:
            log.exception("enqueue of %s failed", txn.queue_id)
            bad = CheckResult("internal_error", "queue", f"the queue could not store the message: "
                              f"{type(exc).__name__}: {exc}")
            reply = bad.reply()
            for rcpt in txn.rcpts:
                self._log(conn, txn, bad, bad.classification, reply, "data", rcpt=rcpt,
                          **dict(log_extra, more_evidence=log_extra["more_evidence"] + [result.to_log()]))
            return reply
        if self.queued is not None:
            self.queued(txn.queue_id, txn.deliver_to, route)
        return None

    async def _relay_now(self, conn, txn, message, result, log_extra) -> str | None:
        """``[queue] enabled = false``: relay while the sender waits; the reply to give
        when the route did not take the message (None: it did)."""
        d = await self.delivery.deliver(txn.route, txn.mail_from, txn.deliver_to, message,
                                        smtputf8=txn.smtputf8, body8bit=txn.body8bit)
        # A recipient the route put off (4xx) while it took the others: SMTP has one
        # reply for all, so the whole transaction is put off and retried. The others
        # may then arrive twice; that is better than a 250 for mail nobody holds.
        # (The queue retries per recipient instead.)
        d.refused = {normalise_address(r): c for r, c in d.refused.items()}
        deferred = {r: c for r, c in d.refused.items() if c[0] < 500}
        if deferred and d.ok:
            d = DeliveryResult("tempfail", min(c for c, _ in deferred.values()),
                               "; ".join(f"{r}: {t}" for r, (c, t) in deferred.items())
                               + " (the route took the other recipients)", d.refused)
        if d.ok:
            txn.refused = d.refused
            return None
        # The route refused or could not be reached while the sender waits: say so with
        # the contract's rows for a destination that fails.
        bad = CheckResult("destination_unverified" if d.status == "tempfail" else
                          "destination_does_not_exist", "delivery", d.detail,
                          details={"route": f"{txn.route[0]}:{txn.route[1]}", "code": d.code})
        reply = bad.reply()
        for rcpt in txn.rcpts:
            self._log(conn, txn, bad, bad.classification, reply, "data", rcpt=rcpt,
                      **dict(log_extra, more_evidence=log_extra["more_evidence"] + [result.to_log()]))
        return reply

    def _trace_headers(self, conn, txn, ctx, result, outcome) -> list[tuple[str, str]]:
        with_ = "ESMTP"
        if conn.tls:
            with_ += "S"
        if conn.user:
            with_ += "A"
        out = [("Received", headers.received(
            helo=conn.helo, ptr_name=conn.ptr_name if conn.ptr == "match" else None, ip=conn.client_ip, by=self.cfg.hostname,
            with_=with_, queue_id=txn.queue_id, rcpt=txn.rcpts[0] if len(txn.rcpts) == 1 else None,
            date=format_datetime(datetime.datetime.fromtimestamp(self.clock(), datetime.timezone.utc))))]
        if outcome.auth_results:
            out.append(("Authentication-Results", outcome.auth_results))
        score = "" if outcome.score is None else f"{outcome.score:.4f}"
        out.append(("X-Mailsift-Classification", f"{result.classification}; {get(result.classification).name}"))
        if score:
            out.append(("X-Mailsift-Score", f"{score}; threshold={txn.settings.threshold}; "
                        f"model={outcome.model_version}"))
        return out

    # ------------------------------------------------------------------------------
    # connect
    # ------------------------------------------------------------------------------
    async def connect_ip_concurrency_limit(self, conn: Conn):
        limit = self.limits.ip_concurrency
        if not limit or self.state is None:
            return None
        key = f"conc:{conn.client_ip}"
        # A lease lapses if its node dies; a live connection renews it at each command
        # (``_renew``), and no command waits longer than the command timeout.
        if await self.state.acquire(key, conn.id, limit, self._lease_ttl):
            conn.lease = key
            return None
        return CheckResult("ip_concurrency_limit", "ip_concurrency_limit",
                           f"{conn.client_ip} already has {limit} connections open",
                           details={"limit": limit})

    @property
    def _lease_ttl(self) -> float:
        return 2 * self.cfg.command_timeout + 60

    async def _renew(self, conn: Conn) -> None:
        if conn.lease and self.state is not None:
            await self.state.renew(conn.lease, conn.id, self._lease_ttl)

    def _rate_limit(self, kind: str, rcpt: str | None) -> int:
        """The limit that applies: the recipient domain's ``[domains."D".limits]``, else
        the global ``[limits]``."""
        domain = self.cfg.domain_of(rcpt) if rcpt else None
        if domain is not None and kind in domain.rate_limits:
            return domain.rate_limits[kind]
        return getattr(self.limits, kind)


    async def connect_ip_rate_limit(self, conn: Conn):
        # Counted here; judged at RCPT (rcpt_rate_limits), where the recipient's domain,
        # which may set its own limit, and its sender whitelist are known.
        if self.state is None or "ip_rate" not in self._rate_limited:
            return None
        window = self.limits.ip_rate_window
        conn.ip_rate_count = await self.state.hit(f"rate:ip:{window:g}:{conn.client_ip}", window)
        return None

    async def connect_ip_blacklisted(self, conn: Conn):
        try:
            ip = ipaddress.ip_address(conn.client_ip)
        except ValueError:
            return None
        for net in self.cfg.ip_blacklist:
            if ip in net:
                return CheckResult("ip_blacklisted", "ip_blacklisted", f"{ip} is in {net}",
                                   details={"entry": str(net)})
        return None

    async def connect_dnsbl(self, conn: Conn):
        if conn.submission:
            return None   # authenticated users are judged by who they are, not where from
        zones_bl, zones_wl = self.cfg.dnsbl_zones, self.cfg.dnswl_zones
        skip = not self.cfg.dnsbl_check_private
        bl, wl = await asyncio.gather(
            dnsbl_mod.lookup(self.resolver, conn.client_ip, zones_bl, skip_private=skip),
            dnsbl_mod.lookup(self.resolver, conn.client_ip, zones_wl, skip_private=skip))
        conn.dnsbl = [x.zone for x in bl]
        conn.dnswl = [x.zone for x in wl]
        conn.dnswl_result = dnsbl_mod.dnswl(wl, min_hits=self.cfg.dnswl_min_hits)
        if conn.dnswl_result is not None:
            return None   # listed on a whitelist: the blocklists' verdict does not apply
        return dnsbl_mod.dnsbl_multiple(bl, min_hits=self.cfg.dnsbl_min_hits)

    async def connect_ptr(self, conn: Conn):
        conn.ptr, conn.ptr_name = await ptr_mod.ptr_fact(self.resolver, conn.client_ip)
        return None

    # ------------------------------------------------------------------------------
    # HELO
    # ------------------------------------------------------------------------------
    async def helo_invalid_helo(self, conn: Conn):
        r = invalid_helo(conn.helo, conn.client_ip, self._own_names, self._own_ips)
        conn.helo_valid = r is None
        if conn.submission:
            return None   # submission clients (laptops) send anything as HELO
        return r

    # ------------------------------------------------------------------------------
    # MAIL
    # ------------------------------------------------------------------------------
    async def mail_submission_auth_required(self, conn: Conn, txn: Txn):
        if conn.submission and conn.user is None:
            return CheckResult("submission_auth_required", "submission_auth_required",
                               f"MAIL on the {conn.listener} port without AUTH")
        return None

    async def mail_sender_login_mismatch(self, conn: Conn, txn: Txn):
        user = await self._user(conn.user) if conn.user else None
        if user is not None and user.senders and not (txn.mail_from and address_matches(txn.mail_from, user.senders)):
            # Not a contract row: Postfix's reject_sender_login_mismatch, answered as a
            # protocol reply (RFC 3463 5.7.1: not authorised for this sender).
            raise _Reply("553 5.7.1 Sender address not owned by the authenticated user")
        return None

    async def mail_outgoing_quota(self, conn: Conn, txn: Txn):
        if conn.user is None or self.state is None:
            return None
        await self._renew(conn)
        for limit, window, what in ((self.limits.outgoing_per_hour, 3600.0, "hour"),
                                    (self.limits.outgoing_per_day, 86400.0, "day")):
            if limit and await self.state.count(f"quota:{window:g}:{conn.user}", window) >= limit:
                return CheckResult("outgoing_quota", "outgoing_quota",
                                   f"{conn.user} has sent {limit} messages this {what}",
                                   details={"limit": limit, "window_s": window})
        return None

    async def mail_sender_rate_limit(self, conn: Conn, txn: Txn):
        # Counted here, judged at RCPT (see connect_ip_rate_limit).
        who = conn.user or txn.mail_from
        if self.state is None or not who or "sender_rate" not in self._rate_limited:
            return None
        txn.sender_rate_count = await self.state.hit(f"rate:sender:60:{who.lower()}", 60.0)
        return None

    async def rcpt_rate_limits(self, conn: Conn, txn: Txn, rcpt):
        if txn.whitelisted is not None:
            return None   # both rows are ones a sender whitelist bypasses
        limit = self._rate_limit("ip_rate", rcpt)
        if limit and conn.ip_rate_count > limit:
            window = self.limits.ip_rate_window
            return CheckResult("ip_rate_limit", "ip_rate_limit",
                               f"{conn.client_ip}: {conn.ip_rate_count} connections in {window:g} s (limit {limit})",
                               details={"count": conn.ip_rate_count, "limit": limit, "window_s": window})
        limit = self._rate_limit("sender_rate", rcpt)
        if limit and txn.sender_rate_count > limit:
            who = conn.user or txn.mail_from
            return CheckResult("sender_rate_limit", "sender_rate_limit",
                               f"{who}: {txn.sender_rate_count} messages in the last minute (limit {limit})",
                               details={"count": txn.sender_rate_count, "limit": limit})
        return None

    async def mail_sender_blacklisted(self, conn: Conn, txn: Txn):
        hit = txn.mail_from and address_matches(txn.mail_from, self.cfg.sender_blacklist)
        if hit:
            return CheckResult("sender_blacklisted", "sender_blacklisted",
                               f"{txn.mail_from} matches the administrator's sender blacklist entry {hit!r}",
                               details={"entry": hit})
        return None

    async def mail_spf_fail(self, conn: Conn, txn: Txn):
        if conn.submission:
            return None
        txn.spf = await spf_mod.evaluate(self.resolver, conn.client_ip, conn.helo, txn.mail_from,
                                         executor=self._spf_pool)
        return spf_mod.spf_fail(txn.spf)

    async def mail_sender_missing_dns(self, conn: Conn, txn: Txn):
        if conn.submission:
            return None
        return await sender_missing_dns(self.resolver, txn.mail_from)

    # ------------------------------------------------------------------------------
    # RCPT
    # ------------------------------------------------------------------------------
    def _rcpt_settings(self, conn: Conn, rcpt: str) -> Settings:
        if conn.submission:
            return self.cfg.outgoing_settings
        domain = self.cfg.domain_of(rcpt)
        return domain.settings_for(rcpt) if domain else self.cfg.filtering

    async def rcpt_too_many_invalid_recipients(self, conn: Conn, txn: Txn, rcpt):
        limit, window = self.limits.invalid_rcpt, self.limits.invalid_rcpt_window
        if not limit or self.state is None:
            return None
        await self._renew(conn)
        n = await self.state.count(f"invalid:{window:g}:{conn.client_ip}", window)
        if n >= limit:
            return CheckResult("too_many_invalid_recipients", "too_many_invalid_recipients",
                               f"{conn.client_ip} tried {n} invalid addresses in {window:g} s (limit {limit})",
                               details={"count": n, "limit": limit, "window_s": window})
        return None

    async def _count_invalid(self, conn: Conn, result: CheckResult) -> None:
        if (self.limits.invalid_rcpt and self.state is not None and result.classification in
                ("destination_not_configured", "destination_does_not_exist")):
            window = self.limits.invalid_rcpt_window
            await self.state.hit(f"invalid:{window:g}:{conn.client_ip}", window)

    async def rcpt_destination_verification(self, conn: Conn, txn, rcpt):
        domain = None if conn.submission else self.cfg.domain_of(rcpt)
        if domain is None or not domain.verify_recipients or self.state is None:
            return None
        answer = await verify_destination(self.state, domain.route, rcpt, helo=self.cfg.hostname,
                                          timeout=self.cfg.relay_timeout)
        return destination_verification(answer, rcpt, domain.route)

    async def rcpt_too_many_recipients(self, conn, txn: Txn, rcpt):
        if len(txn.rcpts) + len(txn.blackholed) >= self.cfg.max_recipients:
            # Not a contract classification: a protocol limit, answered as RFC 5321
            # 4.5.3.1.10 says, and the client sends the rest in another transaction.
            raise _Reply("452 4.5.3 Too many recipients")
        return None

    async def rcpt_restricted_address_chars(self, conn, txn, rcpt):
        if not txn.smtputf8 and not rcpt.isascii():
            # RFC 6531 3.4: only a transaction that asked for SMTPUTF8 may carry one;
            # accepted anyway, it could be delivered nowhere (aiosmtplib, and most
            # routes, cannot send it without SMTPUTF8)
            return CheckResult("restricted_address_chars", "rcpt",
                               f"non-ASCII address {shown(rcpt)} without SMTPUTF8 (RFC 6531 3.4)")
        settings = self._rcpt_settings(conn, rcpt)
        if not settings.enabled("restricted_address_chars"):
            return None
        return restricted_address_chars(rcpt, settings.allowed_address_chars)

    async def rcpt_relay_not_permitted(self, conn: Conn, txn, rcpt):
        if conn.submission:
            return None   # authenticated (MAIL checked it): outgoing mail goes anywhere
        if self.cfg.domain_of(rcpt) is None:
            return CheckResult("relay_not_permitted", "relay_not_permitted",
                               f"{rcpt.rpartition('@')[2]} is not a filtered domain")
        return None

    async def rcpt_destination_not_configured(self, conn: Conn, txn, rcpt):
        domain = None if conn.submission else self.cfg.domain_of(rcpt)
        if domain and domain.local_recipients is not None and rcpt not in domain.local_recipients:
            return CheckResult("destination_not_configured", "destination_not_configured",
                               f"{rcpt} is not in the Local Recipients of {domain.name}")
        return None

    async def rcpt_null_sender_multiple_rcpt(self, conn, txn: Txn, rcpt):
        if (txn.mail_from == "" and (txn.rcpts or txn.blackholed)
                and self._rcpt_settings(conn, rcpt).enabled("null_sender_multiple_rcpt")):
            return CheckResult("null_sender_multiple_rcpt", "null_sender_multiple_rcpt",
                               f"null sender, recipient {len(txn.rcpts) + len(txn.blackholed) + 1}",
                               details={"earlier": txn.rcpts + [r for r, _ in txn.blackholed]})
        return None

    async def rcpt_blackhole(self, conn, txn, rcpt):
        hit = address_matches(rcpt, self._rcpt_settings(conn, rcpt).blackhole)
        if hit:
            return CheckResult("blackhole", "blackhole", f"{rcpt} is a blackhole address ({hit!r})")
        return None

    async def rcpt_domain_sender_blacklisted(self, conn, txn: Txn, rcpt):
        settings = self._rcpt_settings(conn, rcpt)
        hit = txn.mail_from and address_matches(txn.mail_from, settings.sender_blacklist)
        if hit:
            return CheckResult("domain_sender_blacklisted", "domain_sender_blacklisted",
                               f"{txn.mail_from} matches {rcpt.rpartition('@')[2]}'s sender blacklist"
                               f" entry {hit!r}", details={"entry": hit})
        return None

    async def rcpt_whitelisted(self, conn, txn: Txn, rcpt):
        settings = self._rcpt_settings(conn, rcpt)
        hit = txn.mail_from and address_matches(txn.mail_from, settings.sender_whitelist)
        if hit and (txn.settings is None or txn.settings.id == settings.id):
            txn.whitelisted = CheckResult("whitelisted", "whitelisted",
                                          f"{txn.mail_from} matches the sender whitelist entry {hit!r}",
                                          details={"entry": hit})
        return None

    async def rcpt_deferred(self, conn: Conn, txn: Txn, rcpt):
        for r in conn.deferred + txn.deferred:
            if txn.whitelisted is None or not r.row.whitelist:
                return r
            txn.bypass(r)
        return None

    async def rcpt_greylisted(self, conn: Conn, txn: Txn, rcpt):
        g = self.cfg.greylist
        if g is None or self.state is None:
            return None
        vouched = conn.user is not None or conn.dnswl_result is not None
        if vouched and not conn.vouched:
            # an authenticated session or a DNSWL listing vouches for the network: once
            # per connection, its reputation grows (the sources of reputation)
            conn.vouched = True
            await add_reputation(self.state, network_of(conn.client_ip, conn.ptr, conn.ptr_name), g)
        if vouched or conn.submission or txn.whitelisted is not None:
            return None
        return await greylisted(self.state, network=network_of(conn.client_ip, conn.ptr, conn.ptr_name),
                                sender=txn.mail_from, rcpt=rcpt, now=self.clock(), settings=g)

    async def rcpt_split_delivery(self, conn: Conn, txn: Txn, rcpt):
        settings = self._rcpt_settings(conn, rcpt)
        route = self.cfg.outgoing_relay if conn.submission else self.cfg.domain_of(rcpt).route
        if txn.settings is None:
            txn.settings, txn.route = settings, route
            return None
        # The synchronous relay ([queue] enabled = false) needs one route per transaction,
        # so there a different route splits too; the queue routes each recipient itself.
        split_route = route != txn.route and not (self.queue is not None and self.cfg.queue.enabled)
        if settings.id != txn.settings.id or split_route:
            return CheckResult("split_delivery", "split_delivery",
                               f"{rcpt} has settings {settings.id}, this transaction {txn.settings.id}",
                               details={"settings_id": settings.id, "transaction_settings_id": txn.settings.id,
                                        "route": list(route or ()), "transaction_route": list(txn.route or ())})
        return None

    # ------------------------------------------------------------------------------
    # DATA
    # ------------------------------------------------------------------------------
    async def data_message_partial(self, conn, txn: Txn, ctx, out):
        return message_partial(ctx) if txn.settings.enabled("message_partial") else None

    async def data_dmarc(self, conn: Conn, txn: Txn, ctx, out):
        if conn.submission:
            return None
        dkim = await dkim_mod.verify(self.resolver, ctx.raw) if ctx.header("DKIM-Signature") else []
        dmarc = None
        if txn.spf is not None:
            dmarc = await dmarc_mod.evaluate(self.resolver, ctx.raw, txn.spf, dkim, txn.mail_from, conn.helo,
                                             from_fields=ctx.header("From"))
        out.dkim, out.dmarc = dkim, dmarc
        out.auth_results = headers.auth_results(self.cfg.hostname, txn.spf, dkim, dmarc, conn)
        if dmarc is None or not txn.settings.enabled("dmarc"):
            return None
        return dmarc_mod.dmarc(dmarc)

    async def data_line_too_long(self, conn, txn, ctx, out):
        return self._format_check(txn, "line_too_long", line_too_long, ctx, txn.settings.max_line_length)

    async def data_too_many_mime_parts(self, conn, txn, ctx, out):
        return self._format_check(txn, "too_many_mime_parts", too_many_mime_parts, ctx,
                                  txn.settings.max_mime_parts)

    async def data_bad_header_count(self, conn, txn, ctx, out):
        return self._format_check(txn, "bad_header_count", bad_header_count, ctx)

    async def data_header_too_long(self, conn, txn, ctx, out):
        return self._format_check(txn, "header_too_long", header_too_long, ctx, txn.settings.max_header_length)

    async def data_subject_invalid_chars(self, conn, txn, ctx, out):
        return self._format_check(txn, "subject_invalid_chars", subject_invalid_chars, ctx)

    async def data_date_skew(self, conn, txn, ctx, out):
        return self._format_check(txn, "date_skew", date_skew, ctx, txn.settings.max_date_skew_days)

    def _format_check(self, txn: Txn, name: str, check, ctx, *args):
        if not txn.settings.enabled(name):
            return None
        r = check(ctx, *args)
        if r is not None and txn.whitelisted is not None and r.row.whitelist:
            txn.bypass(r)   # the whitelisted accept logs what it let pass
            return None
        return r

    async def data_whitelisted(self, conn, txn: Txn, ctx, out):
        if txn.whitelisted is not None:
            out.accepted = txn.whitelisted   # and the scorer step skips the message
        return None

    async def data_scorer(self, conn: Conn, txn: Txn, ctx, out):
        if txn.whitelisted is not None:
            return None
        if not txn.settings.enabled("scorer"):
            out.accepted = conn.dnswl_result or CheckResult("not_spam", "scorer", "scoring is turned off")
            return None
        facts = GateFacts(
            spf=getattr(txn.spf, "result", "none") if txn.spf else "none",
            dkim=_dkim_fact(out.dkim), dmarc=_dmarc_fact(out.dmarc),
            dnsbl=list(conn.dnsbl), dnswl=list(conn.dnswl), helo_valid=conn.helo_valid,
            ptr=conn.ptr, authenticated=conn.user is not None)
        envelope = pb.Envelope(client_ip=conn.client_ip, helo=conn.helo, mail_from=txn.mail_from,
                               rcpt_to=txn.rcpts, authenticated=conn.user is not None)
        try:
            v = await self.scorer.score(ctx.raw, facts=facts, envelope=envelope,
                                        settings_id=txn.settings.id, threshold=txn.settings.threshold,
                                        request_id=txn.queue_id)
        except ScorerUnavailable as exc:
            return CheckResult("internal_error", "scorer", f"scorer unavailable: {exc}")
        except MessageTooLarge as exc:
            return CheckResult("internal_error", "scorer", f"message too large for the scorer: {exc}")
        except grpc.RpcError as exc:   # DEADLINE_EXCEEDED, INTERNAL, ...: never an unscanned accept
            return CheckResult("internal_error", "scorer", f"scorer: {exc.code().name}: {exc.details()}")
        out.score, out.model_version, out.digest = v.score, v.model_version, v.digest or None
        out.scores = {c.id: round(c.p_spam, 4) for c in v.classifiers if not c.abstained}
        strongest = _strongest_evidence(v)
        details = {"threshold": v.threshold}
        if v.reputation:
            details["reputation"] = [{"check": r.check, "classification": r.classification,
                                      "strength": r.strength, "decides": r.decides_alone,
                                      "evidence": r.evidence} for r in v.reputation]
        if v.verdict == "quarantine":
            return CheckResult(v.classification, "scorer", strongest, score=v.score,
                               details=details, reply_args=v.reply_args)
        out.accepted = (CheckResult("dnswl", "scorer", f"{conn.dnswl_result.evidence}; {strongest}",
                                    score=v.score) if conn.dnswl_result is not None
                        else CheckResult("not_spam", "scorer", strongest, score=v.score))
        return None


class _Reply(Exception):
    """A protocol reply that is not a contract classification (452 too many recipients)."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


@dataclass
class _DataOutcome:
    """What the DATA steps learn on the way, for headers, the log and the quarantine."""
    accepted: CheckResult | None = None
    dkim: list | None = None
    dmarc: object | None = None
    auth_results: str | None = None
    score: float | None = None
    scores: dict | None = None
    model_version: str | None = None
    digest: str | None = None     # the scorer's: SHA-256 of the message as received
    notes: list[CheckResult] = field(default_factory=list)


def _dkim_fact(results) -> str:
    if not results:
        return "none"
    return "pass" if any(r.result == "pass" for r in results) else "fail"


def _dmarc_fact(d) -> str:
    if d is None:
        return "none"
    return d.result if d.result in ("pass", "fail") else "none"


def _strongest_evidence(v) -> str:
    bits = [f"score {v.score:.4f} (threshold {v.threshold})"]
    for r in v.reputation:
        if r.decides_alone and r.classification == v.classification:
            bits.append(f"{r.check}: " + "; ".join(r.evidence[:3]))
    r = v.responsible() if v.verdict == "quarantine" else None
    for c in ([r] if r else v.classifiers)[:3]:
        if c and c.evidence:
            bits.append(f"{c.id}: " + ", ".join(e.feature for e in c.evidence[:3]))
    return "; ".join(bits)
