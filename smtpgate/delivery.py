"""Handing accepted mail onward.

``Delivery`` is the interface between the gate and whatever takes an accepted message
from it. Until the durable queue exists (issue #7: fsync'd queue, retries, bounces),
``SmtpRelay`` relays synchronously to the recipient domain's route while the sending
server waits, and the gate answers 250 only after the route said 250: the route holds
the message when the sender is told it is delivered, so nothing is lost in between.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Protocol

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


class Delivery(Protocol):
    async def deliver(self, route: tuple[str, int], mail_from: str, rcpts: list[str],
                      message: bytes, *, smtputf8: bool = False, body8bit: bool = False) -> DeliveryResult:
        ...


class SmtpRelay:
    def __init__(self, local_hostname: str, timeout: float = 60.0):
        self.local_hostname = local_hostname
        self.timeout = timeout
        # Opportunistic TLS to the route (RFC 7435): encrypt when offered, without
        # certificate checks, as MTA-to-MTA delivery does by default.
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    async def deliver(self, route, mail_from, rcpts, message, *, smtputf8=False, body8bit=False):
        host, port = route
        options = (["SMTPUTF8"] if smtputf8 else []) + (["BODY=8BITMIME"] if body8bit else [])
        client = aiosmtplib.SMTP(hostname=host, port=port, timeout=self.timeout,
                                 local_hostname=self.local_hostname, start_tls=None,
                                 tls_context=self._tls)
        try:
            async with client:
                refused, _ = await client.sendmail(mail_from, rcpts, message, mail_options=options)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            errs = {r.recipient: (r.code, r.message) for r in exc.recipients}
            worst = min(code for code, _ in errs.values())
            return DeliveryResult("tempfail" if worst < 500 else "permfail", worst,
                                  "; ".join(f"{r}: {c} {m}" for r, (c, m) in errs.items()), errs)
        except aiosmtplib.SMTPResponseException as exc:
            return DeliveryResult("tempfail" if exc.code < 500 else "permfail", exc.code,
                                  f"{host}:{port} said {exc.code} {exc.message}")
        except (aiosmtplib.SMTPException, OSError) as exc:
            return DeliveryResult("tempfail", 0, f"{host}:{port}: {type(exc).__name__}: {exc}")
        return DeliveryResult("delivered", 250, f"{host}:{port} accepted",
                              {r: (resp.code, resp.message) for r, resp in refused.items()})
