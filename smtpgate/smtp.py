"""aiosmtpd's SMTP protocol, with what a filtering MX needs that it does not do.

- A connect phase: ``handler.handle_CONNECT`` runs before the greeting. It may refuse
  with 421 (close at once) or 554; after a 554 greeting RFC 5321 3.1 has us answer every
  command but QUIT with 503 until the client quits.
- DATA keeps long lines. aiosmtpd drops a message with a line over 1001 bytes and says
  500; the contract wants such mail quarantined (``line_too_long``, 550 5.6.0) with the
  longest line reported, so DATA here keeps every byte up to the SIZE limit (the
  handler's ``DataContext`` measures the lines). Over SIZE: the rest is read and dropped, then
  552 5.3.4 (RFC 5321 4.5.3.1.10, RFC 3463).
- ENHANCEDSTATUSCODES (RFC 2034): once advertised, every reply carries an enhanced
  code, aiosmtpd's own too ("503 Error: need MAIL command" becomes
  "503 5.5.1 Error: need MAIL command"), except the greeting and the EHLO/HELO reply.
- PIPELINING (RFC 2920) is advertised: aiosmtpd reads one command at a time from a
  buffered stream, so pipelined commands already work.
- A command timeout says ``421 4.4.2`` before closing instead of closing silently.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import re

from aiosmtpd.smtp import SMTP, syntax

log = logging.getLogger("mailsift.smtp")

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
# The enhanced code for aiosmtpd's own replies, by basic code (RFC 3463 / RFC 5248).
_ENHANCED_FOR = {
    221: "2.0.0", 235: "2.7.0", 250: "2.0.0", 251: "2.1.5", 252: "2.5.0",
    421: "4.3.0", 450: "4.2.0", 451: "4.3.0", 452: "4.5.3", 454: "4.7.0", 455: "4.5.4",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
    530: "5.7.0", 534: "5.7.9", 535: "5.7.8", 538: "5.7.11", 550: "5.0.0", 552: "5.3.4",
    553: "5.1.3", 554: "5.0.0", 555: "5.5.4",
}
_NO_ENHANCED = {220, 334, 354}


def with_enhanced_code(status: str) -> str:
    if len(status) < 4 or not status[:3].isdigit() or _HAS_ENHANCED.match(status):
        return status
    code = int(status[:3])
    if code in _NO_ENHANCED:
        return status
    enhanced = _ENHANCED_FOR.get(code, f"{status[0]}.0.0")
    return f"{status[:4]}{enhanced} {status[4:]}".rstrip()


class GateSMTP(SMTP):
    """One SMTP connection. ``listener`` (inbound/submission/submissions) is set by the
    factory; the handler reads it from ``server.listener``."""

    listener = None

    def __init__(self, handler, *, max_message_size: int, **kw):
        super().__init__(handler, data_size_limit=max_message_size, enable_SMTPUTF8=True,
                         decode_data=False, **kw)
        self._in_greeting_reply = False

    # -- replies -------------------------------------------------------------------
    async def push(self, status):
        if isinstance(status, str) and not self._in_greeting_reply:
            status = with_enhanced_code(status)
        await super().push(status)

    async def smtp_EHLO(self, hostname: str):
        self._in_greeting_reply = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_greeting_reply = False

    async def smtp_HELO(self, hostname: str):
        self._in_greeting_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_greeting_reply = False

    def _timeout_cb(self):
        if self.transport is not None and not self.transport.is_closing():
            try:
                self._writer.write(b"421 4.4.2 Timeout, closing connection\r\n")
            except Exception:  # the peer may be gone already
                pass
        super()._timeout_cb()

    # -- AUTH: credentials are checked by an async handler method ----------------------
    def _authenticate(self, mechanism, auth_data):
        # aiosmtpd calls this synchronously from auth_PLAIN/auth_LOGIN; we hand back the
        # handler's coroutine and await it there, so a slow password hash never blocks
        # the event loop.
        return self.event_handler.authenticate(self, self.session, mechanism, auth_data)

    async def auth_PLAIN(self, _, args):
        result = await super().auth_PLAIN(_, args)
        return await result if inspect.isawaitable(result) else result

    async def auth_LOGIN(self, _, args):
        result = await super().auth_LOGIN(_, args)
        return await result if inspect.isawaitable(result) else result

    # -- STARTTLS: aiosmtpd starts a new session (RFC 3207 4.2: forget what the client
    # said before TLS); what the gate learnt about the connection itself is kept.
    def connection_made(self, transport) -> None:
        conn = getattr(self.session, "gate", None) if self.session is not None else None
        super().connection_made(transport)
        if conn is not None:
            conn.tls = True
            conn.helo = ""
            self.session.gate = conn

    def connection_lost(self, error) -> None:
        # the handler gives back what the connection held (its concurrency lease)
        on_disconnect = getattr(self.event_handler, "on_disconnect", None)
        if on_disconnect is not None and self.session is not None:
            self.loop.create_task(on_disconnect(self.session))
        super().connection_lost(error)

    # -- the connect phase ---------------------------------------------------------
    async def _handle_client(self) -> None:
        refusal = await self.event_handler.handle_CONNECT(self, self.session)
        if refusal is None:
            return await super()._handle_client()
        if refusal.startswith("4"):
            # A temporary refusal at connect is 421: the only 4xx a greeting may carry.
            await self.push("421" + refusal[3:])
            self.transport.close()
            return
        await self.push(refusal)
        # 554 at connect: wait for QUIT, 503 to everything else (RFC 5321 3.1).
        for _ in range(20):
            try:
                line = await self._reader.readuntil()
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
                break
            if line.strip().upper().startswith(b"QUIT"):
                await self.push("221 Bye")
                break
            await self.push("503 5.5.1 Bad sequence of commands: this connection was refused")
        if self.transport is not None:
            self.transport.close()

    # -- DATA ------------------------------------------------------------------------
    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limit = self.data_size_limit
        data = bytearray()
        too_much = False
        line = bytearray()
        # Part of the current line was already read and dropped (over SIZE): what is left
        # of it is no line of its own, so a "." ending it does not end DATA. Without this
        # a client could end DATA mid-line and smuggle commands (SMTP smuggling).
        partial = False
        while self.transport is not None:
            try:
                chunk = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as e:
                # A line longer than the stream's buffer limit: take what is buffered
                # and keep reading the same line.
                chunk = await self._reader.read(e.consumed)
            except asyncio.CancelledError:
                log.info("%r connection lost during DATA", self.session.peer)
                self._writer.close()
                raise
            line += chunk
            if not line.endswith(b"\r\n"):
                if not too_much and limit and len(data) + len(line) > limit:
                    too_much = True
                if too_much:
                    line.clear()
                    partial = True
                continue
            if line == b".\r\n" and not partial:
                break
            partial = False
            if line.startswith(b"."):
                del line[0]   # RFC 5321 4.5.2 transparency
            if not too_much:
                if limit and len(data) + len(line) > limit:
                    too_much = True
                    data.clear()
                else:
                    data += line
            line.clear()
        if too_much:
            await self.push(f"552 5.3.4 Message size exceeds fixed maximum message size ({limit} bytes)")
            self._set_post_data_state()
            return
        self._reset_timeout()   # scoring and relaying get a fresh command timeout
        self.envelope.content = self.envelope.original_content = bytes(data)
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is None else status)
