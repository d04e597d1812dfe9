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


_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)")


def _authserv_id(value: bytes) -> bytes | None:
    """The authserv-id of an Authentication-Results value (RFC 8601 2.2): unfolded,
    comments removed, the first token before ';' or a space (a version may follow),
    without a trailing dot, lower case. None when there is none."""
    v = re.sub(rb"\r?\n[ \t]", b" ", value)
    for _ in range(3):   # nested comments, a few levels
        v = _COMMENT.sub(b" ", v)
    token = v.strip().split(b";", 1)[0].split(None, 1)
    return token[0].rstrip(b".").lower() if token else None


def strip_ours(raw: bytes, authserv_id: str) -> bytes:
    """Remove incoming X-Mailsift-* fields and Authentication-Results fields that claim
    our authserv-id (or whose authserv-id cannot be read), keeping everything else byte
    for byte. Continuation lines before the first field are dropped too: prepended
    below our own fields they would read as part of them."""
    end = _header_block_end(raw)
    lines = raw[:end].splitlines(keepends=True)
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1].append(line)
            continue
        fields.append([line])
    aid = authserv_id.lower().rstrip(".").encode()
    out = []
    for field in fields:
        name, _, value = b"".join(field).partition(b":")
        lname = name.strip().lower()
        if lname.startswith(_OURS):
            continue
        if lname == b"authentication-results" and _authserv_id(value) in (aid, None):
            continue
        out.extend(field)
    return b"".join(out) + raw[end:]


def prepend(raw: bytes, fields: list[tuple[str, str]], strip_authserv_id: str) -> bytes:
    """Our fields on top (trace fields are prepended, RFC 5322 3.6.7), in CRLF."""
    body = strip_ours(raw, strip_authserv_id)
    top = b"".join(f"{n}: {v}\r\n".encode("utf-8", "surrogateescape") for n, v in fields)
    return top + body
