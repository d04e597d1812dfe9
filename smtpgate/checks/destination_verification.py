"""Recipient verification by callout: does the domain's own mail server take this address?

Before accepting a RCPT for a domain that asks for it, the gate opens an SMTP session to
the domain's destination route and asks (EHLO, MAIL FROM:<>, RCPT TO:<address>, then
RSET and QUIT): the dialogue Postfix's ``reject_unverified_recipient`` and Exim's
``verify = recipient/callout`` hold. One check with two outcomes, as DMARC has
``dmarc_reject``/``dmarc_quarantine``:

- 5xx to the RCPT: ``destination_does_not_exist`` (550 5.1.1);
- 4xx, a refused MAIL FROM:<>, no answer within the timeout, or a connection failure:
  ``destination_unverified`` (451 4.4.0), so the sender retries and nothing is lost;
- 2xx: the address exists.

Answers are cached with separate lifetimes, since a good answer stays true far longer
than a bad one is worth trusting (defaults as Postfix's address_verify_positive_expire_time
of 31 days is too long for a filter in front of a changing server: 1 day positive, 1 hour
negative); temporary failures are not cached at all. The cache is any object with async
``get(key)``/``set(key, value, ttl_s)`` (the gate's state store).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiosmtplib

from smtpgate.result import CheckResult

POSITIVE_TTL = 24 * 3600.0
NEGATIVE_TTL = 3600.0
TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class CalloutAnswer:
    status: str          # exists, missing, unknown
    code: int            # the route's reply code (0: no reply)
    text: str
    cached: bool = False


async def callout(route: tuple[str, int], address: str, *, helo: str, timeout: float = TIMEOUT) -> CalloutAnswer:
    """Ask the route about ``address``; never raises for the route's trouble."""
    host, port = route
    client = aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout, local_hostname=helo,
                             start_tls=False)
    try:
        async with asyncio.timeout(timeout):
            await client.connect()
            try:
                await client.ehlo()
                mail = await client.mail("")
                if mail.code >= 300:
                    return CalloutAnswer("unknown", mail.code, f"MAIL FROM:<> refused: {mail.message}")
                try:
                    rcpt = await client.rcpt(address)
                    code, text = rcpt.code, rcpt.message
                except aiosmtplib.SMTPRecipientRefused as exc:
                    code, text = exc.code, exc.message
                try:
                    await client.rset()
                    await client.quit()
                except aiosmtplib.SMTPException:
                    pass
            finally:
                client.close()
    except aiosmtplib.SMTPResponseException as exc:
        return CalloutAnswer("unknown", exc.code, exc.message)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return CalloutAnswer("unknown", 0, f"{type(exc).__name__}: {exc}")
    if 200 <= code < 300:
        return CalloutAnswer("exists", code, text)
    if code >= 500:
        return CalloutAnswer("missing", code, text)
    return CalloutAnswer("unknown", code, text)


async def verify(cache, route: tuple[str, int], address: str, *, helo: str, timeout: float = TIMEOUT,
                 positive_ttl: float = POSITIVE_TTL, negative_ttl: float = NEGATIVE_TTL) -> CalloutAnswer:
    """``callout`` behind the cache."""
    key = f"callout:{route[0]}:{route[1]}:{address.lower()}"
    hit = await cache.get(key)
    if hit is not None:
        status, _, rest = (hit.decode() if isinstance(hit, bytes) else str(hit)).partition(" ")
        code, _, text = rest.partition(" ")
        return CalloutAnswer(status, int(code or 0), text, cached=True)
    answer = await callout(route, address, helo=helo, timeout=timeout)
    if answer.status != "unknown":
        ttl = positive_ttl if answer.status == "exists" else negative_ttl
        await cache.set(key, f"{answer.status} {answer.code} {answer.text}", ttl)
    return answer


def destination_verification(answer: CalloutAnswer, address: str, route: tuple[str, int]) -> CheckResult | None:
    """The verdict on a callout's answer: None when the address exists."""
    where = f"{route[0]}:{route[1]}"
    details = {"route": where, "code": answer.code, "cached": answer.cached}
    if answer.status == "missing":
        return CheckResult("destination_does_not_exist", "destination_verification",
                           f"{where} refused {address}: {answer.code} {answer.text}", details=details)
    if answer.status == "unknown":
        return CheckResult("destination_unverified", "destination_verification",
                           f"{where} could not verify {address}: {answer.code or ''} {answer.text}".strip(),
                           details=details)
    return None
