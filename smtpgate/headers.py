"""Trace and result headers the gate adds to accepted mail.

- ``Received`` (RFC 5321 4.4), with the client's HELO, its verified reverse name and
  address, our queue id, and ESMTP/ESMTPS/ESMTPSA (RFC 3848).
- ``Authentication-Results`` (RFC 8601) from the SPF, DKIM and DMARC outcomes. RFC 8601
  section 5: a receiver MUST remove any such header carrying its own authserv-id that
  arrives from outside, or a sender could forge our results; the same goes for our
  ``X-Mailsift-*`` headers.
"""
from __future__ import annotations

import re

_OURS = (b"x-mailsift-",)


def received(*, helo: str, ptr_name: str | None, ip: str, by: str, with_: str, queue_id: str,
             rcpt: str | None, date: str) -> str:
    client = f"({ptr_name} [{ip}])" if ptr_name else f"([{ip}])"
    helo = re.sub(r"[\x00-\x20\x7f()]", "?", helo or "unknown")[:255]
    out = f"from {helo} {client}\r\n\tby {by} (mailsift) with {with_} id {queue_id}"
    if rcpt:
        out += f"\r\n\tfor <{rcpt}>"
    return f"{out}; {date}"


def auth_results(authserv_id: str, spf, dkim, dmarc, conn) -> str:
    from .authresults import authentication_results

    return authentication_results(authserv_id, spf, dkim or [], dmarc,
                                  iprev=(conn.ptr, conn.ptr_name), client_ip=conn.client_ip)


def _header_block_end(raw: bytes) -> int:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = raw.find(sep)
        if i >= 0:
            return i + len(sep) // 2
    return len(raw)


def strip_ours(raw: bytes, authserv_id: str) -> bytes:
    """Remove incoming X-Mailsift-* fields and Authentication-Results fields that claim
    our authserv-id, keeping everything else byte for byte."""
    end = _header_block_end(raw)
    head = raw[:end]
    lines = head.splitlines(keepends=True)
    out, drop = [], False
    aid = authserv_id.lower().encode()
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not drop:
                out.append(line)
            continue
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        drop = lname.startswith(_OURS) or (
            lname == b"authentication-results" and value.strip().lower().split(b";")[0].strip() == aid)
        if not drop:
            out.append(line)
    return b"".join(out) + raw[end:]


def prepend(raw: bytes, fields: list[tuple[str, str]], strip_authserv_id: str) -> bytes:
    """Our fields on top (trace fields are prepended, RFC 5322 3.6.7), in CRLF."""
    body = strip_ours(raw, strip_authserv_id)
    top = b"".join(f"{n}: {v}\r\n".encode("utf-8", "surrogateescape") for n, v in fields)
    return top + body
