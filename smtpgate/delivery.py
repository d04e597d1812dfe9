"""Handing accepted mail onward over SMTP.

``SmtpRelay.transfer`` runs one SMTP transaction to a route and reports what happened
to each recipient: the reply that decided it (RCPT refused, or the reply to DATA), so
the queue (``smtpgate.deliverer``) can retry only the recipients that were put off and
bounce only those refused for good. Its ``on_accepted`` hook runs after the route's 250
to DATA and before QUIT: the queue records the delivery there, so a crash after the
route took the message and before we noted it (the one window in which a message can
arrive twice, RFC 1047) is as short as one database commit.

``SmtpRelay.deliver`` is the synchronous relay the gate uses with ``[queue] enabled =
false``: it relays while the sending server waits, and the gate answers 250 only after
the route said 250, so the route holds the message when the sender is told it is
delivered. It is also the benchmark's baseline for the queue.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

import aiosmtplib


@dataclass
class DeliveryResult:
    status: str                     # delivered, tempfail, permfail
    code: int = 250
    detail: str = ""
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # rcpt -> (code, text)

    @property
    def ok(self) -> bool:
        return self.status == "delivered"


@dataclass
class Transfer:
    """One SMTP transaction's outcome, per recipient (in the order given)."""
    replies: list[tuple[int, str]]  # (code, the full reply line); code 0: no reply (connection)
    stage: str                      # where it ended: connect, mail, rcpt, data, done
    remote: str | None = None       # host:port that answered, when one did

    def accepted(self) -> list[int]:
        return [i for i, (code, _) in enumerate(self.replies) if self.stage == "done" and 200 <= code < 300]


class Delivery(Protocol):
    async def deliver(self, route: tuple[str, int], mail_from: str, rcpts: list[str],
                      message: bytes, *, smtputf8: bool = False, body8bit: bool = False) -> DeliveryResult:
        ...


def _reply(code: int, message: str) -> str:
    """A reply as one line, code first ("550 5.1.1 No such user"); the lines of a
    multiline reply joined by spaces."""
    return f"{code} {' '.join(message.split())}".strip()


class SmtpRelay:
    def __init__(self, local_hostname: str, timeout: float = 60.0, connect_timeout: float | None = None):
        self.local_hostname = local_hostname
        self.timeout = timeout
        self.connect_timeout = connect_timeout or timeout
        # Opportunistic TLS to the route (RFC 7435): encrypt when offered, without
        # certificate checks, as MTA-to-MTA delivery does by default.
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    async def _connect(self, hosts: list[str], port: int) -> tuple[aiosmtplib.SMTP | None, str, str]:
        """A connected client to the first of ``hosts`` that answers; (None, host:port,
        why) when none does. A greeting other than 220 raises SMTPResponseException."""
        why = "no address"
        for host in hosts:
            client = aiosmtplib.SMTP(hostname=host, port=port, timeout=self.timeout,
                                     local_hostname=self.local_hostname, start_tls=None, tls_context=self._tls)
            try:
                await client.connect(timeout=self.connect_timeout)
                return client, f"{host}:{port}", ""
            except aiosmtplib.SMTPResponseException:
                client.close()
                raise
            except (aiosmtplib.SMTPException, OSError) as exc:
                client.close()
                why = f"{host}:{port}: {type(exc).__name__}: {exc}"
        return None, f"{hosts[-1] if hosts else '?'}:{port}", why

    async def transfer(self, hosts: list[str], port: int, mail_from: str, rcpts: list[str], message: bytes, *,
                       smtputf8: bool = False, body8bit: bool = False,
                       on_accepted: Callable[[list[int], str], Awaitable[None]] | None = None) -> Transfer:
        """Deliver ``message`` to ``rcpts`` through the first of ``hosts`` (addresses
        or names) that accepts a connection on ``port``."""
        options = (["SMTPUTF8"] if smtputf8 else []) + (["BODY=8BITMIME"] if body8bit else [])
        n = len(rcpts)
        try:
            client, remote, why = await self._connect(hosts, port)
        except aiosmtplib.SMTPResponseException as exc:      # a 4xx/5xx greeting
            return Transfer([(exc.code, _reply(exc.code, exc.message))] * n, "connect", f"{hosts[0]}:{port}")
        if client is None:
            return Transfer([(0, why)] * n, "connect")
        stage, replies = "mail", [(0, "")] * n
        try:
            encoding = "utf-8" if smtputf8 else "ascii"
            await client.mail(mail_from, options=options, encoding=encoding)
            stage = "rcpt"
            ok = []
            for i, rcpt in enumerate(rcpts):
                try:
                    r = await client.rcpt(rcpt, encoding=encoding)
                    replies[i] = (r.code, _reply(r.code, r.message))
                    ok.append(i)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    replies[i] = (exc.code, _reply(exc.code, exc.message))
            if not ok:
                await _quietly(client.rset())
                return Transfer(replies, "rcpt", remote)
            stage = "data"
            r = await client.data(message)
            line = _reply(r.code, r.message)
            for i in ok:
                replies[i] = (r.code, line)
            if on_accepted is not None:
                await on_accepted(ok, line)    # before QUIT: the record is the first thing after the 250
            stage = "done"
            await _quietly(client.quit())
            return Transfer(replies, "done", remote)
        except aiosmtplib.SMTPResponseException as exc:
            line = _reply(exc.code, exc.message)
            if stage == "data":
                replies = [(exc.code, line) if c // 100 == 2 else (c, t) for c, t in replies]
            else:
                replies = [(exc.code, line) if c == 0 else (c, t) for c, t in replies]
            await _quietly(client.quit())
            return Transfer(replies, stage, remote)
        except (aiosmtplib.SMTPException, OSError) as exc:
            # the connection broke or timed out mid-transaction: no recipient is done
            # (after DATA this is RFC 1047's ambiguity: the route may hold the message)
            what = f"{remote}: {type(exc).__name__} {'after DATA' if stage == 'data' else 'during ' + stage}: {exc}"
            replies = [(0, what) if c == 0 or c // 100 == 2 else (c, t) for c, t in replies]
            return Transfer(replies, stage, remote)
        finally:
            client.close()

    async def deliver(self, route, mail_from, rcpts, message, *, smtputf8=False, body8bit=False) -> DeliveryResult:
        host, port = route
        t = await self.transfer([host], port, mail_from, rcpts, message, smtputf8=smtputf8, body8bit=body8bit)
        if t.stage == "done":
            refused = {r: (c, text) for r, (c, text) in zip(rcpts, t.replies) if not 200 <= c < 300}
            return DeliveryResult("delivered", 250, f"{host}:{port} accepted", refused)
        if t.stage == "rcpt":
            errs = dict(zip(rcpts, t.replies))
            worst = min(c for c, _ in errs.values())
            return DeliveryResult("tempfail" if worst < 500 else "permfail", worst,
                                  "; ".join(f"{r}: {text}" for r, (c, text) in errs.items()), errs)
        code, text = next(((c, x) for c, x in t.replies if c == 0 or c >= 400), t.replies[0])
        detail = text if code == 0 else f"{host}:{port} said {text}"
        return DeliveryResult("tempfail" if code < 500 else "permfail", code, detail)


async def _quietly(aw) -> None:
    """A courtesy command (RSET, QUIT) whose failure changes nothing."""
    try:
        await aw
    except (aiosmtplib.SMTPException, OSError):
        pass
