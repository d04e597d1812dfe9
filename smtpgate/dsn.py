"""Delivery status notifications (RFC 3464): the bounce the queue sends to a sender.

A 250 from the gate is a promise; when a recipient's server then refuses the message
for good, or keeps deferring it, the sender must be told, in the format mail programs
read (RFC 3464 inside RFC 6522 ``multipart/report``):

1. ``text/plain``: what happened, for a person: each recipient, its status, what the
   remote server said, and our queue id (the key an admin needs).
2. ``message/delivery-status``: the same for a program, one per-message group
   (``Reporting-MTA``, ``X-Mailsift-Queue-ID``, ``Arrival-Date``) and one group per
   recipient (``Final-Recipient``, ``Action``, ``Status``, ``Remote-MTA``,
   ``Diagnostic-Code``, ``Last-Attempt-Date``).
3. The original: ``message/rfc822`` when it is small enough and can travel as 7bit/8bit
   (no NUL, no line over 998 octets: RFC 5322 2.1.1), else ``text/rfc822-headers``
   with its header block only (RFC 6522 3), so a 40 MB attachment is not mailed back.

Why the bytes are written by hand rather than by ``email.generator``: most of what goes
in comes from outside (the original message, the remote server's reply, addresses),
and the output must be exact: CRLF everywhere (a bare LF in the original is a line end
and becomes CRLF), each part's transfer encoding declared as what it really is (7bit
or 8bit), every line at most 998 octets, no CR or LF from a remote reply starting a
field of its own, and a boundary that the original cannot have guessed. The ``email``
package serves for what it does exactly: dates (``format_datetime``) and Message-IDs
(``make_msgid``); the tests parse every DSN back with it.

Never bounce a bounce (RFC 5321 6.1, RFC 3464 2): with a null sender ``build_dsn``
returns None. The caller sends the DSN itself with a null envelope sender (``MAIL
FROM:<>``), and with SMTPUTF8 / BODY=8BITMIME when the bytes need them
(``needs_smtputf8`` / ``is_8bit``).
"""
from __future__ import annotations

import datetime
import re
import secrets
from dataclasses import dataclass
from email.utils import format_datetime, make_msgid

__all__ = ["Failure", "build_dsn", "is_8bit", "needs_smtputf8"]

CRLF = b"\r\n"
# RFC 5322 2.1.1: 998 octets a line at most; our own fields keep well inside it.
MAX_LINE = 998
# A remote reply is told in full as far as it is useful; past this it is the remote's
# padding (some servers send a page of policy). Limits are in UTF-8 octets, and escaped
# values are cut again, so every field stays one line within MAX_LINE.
MAX_DIAGNOSTIC = 700
# RFC 5321 4.5.3.1.3: a path is at most 256 octets; room for quoting.
MAX_ADDRESS = 512
MAX_HOST = 255
MAX_ESCAPED = 900

_ACTIONS = ("failed", "delayed")
# RFC 3463 2: class "." subject "." detail, subject and detail 1 to 3 digits.
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
# An SMTP reply as the delivery code keeps it: basic code, then maybe an enhanced one
# (RFC 2034) after a space or a continuation dash.
_REPLY = re.compile(r"([245])\d\d(?:[ -]+([245]\.\d{1,3}\.\d{1,3})(?![\d.]))?")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"[A-Za-z0-9.\-_:\[\]]+")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_DECLARED_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]*)"|([^\s;]+))', re.I)
# Random boundaries drawn before the original is cut down to its headers (each has 128
# random bits: an honest message never collides; a hostile one can only reject every
# candidate by declaring a boundary that ours would start with, like "=_mailsift_").
_BOUNDARY_TRIES = 16

_token = secrets.token_hex    # tests replace it to force a collision


@dataclass
class Failure:
    """One recipient the queue could not (yet) deliver to."""
    rcpt: str
    status: str                      # RFC 3463, e.g. "5.1.1"; derived from diagnostic when not valid
    diagnostic: str | None           # the remote reply, e.g. "550 5.1.1 No such user", or our own reason
    remote_mta: str | None           # the host that answered, when one did
    action: str = "failed"           # failed | delayed (RFC 3464 2.3.3)
    last_attempt: float | None = None


def build_dsn(*, reporting_mta: str, mail_from: str, failures: list[Failure], original: bytes,
              queue_id: str, arrival: float, now: float, postmaster: str | None = None,
              full_message_limit: int = 256 * 1024) -> bytes | None:
    """The DSN for ``failures`` of the message ``original`` (CRLF bytes, ready for
    DATA), addressed to ``mail_from``; None when ``mail_from`` is the null sender."""
    sender = _address(mail_from)
    if not sender:
        return None
    if not failures:
        raise ValueError("a DSN needs at least one recipient (RFC 3464 2.3)")
    for f in failures:
        if f.action not in _ACTIONS:
            raise ValueError(f"DSN action {f.action!r} is not one of {_ACTIONS}")
    host = _host(reporting_mta) or "localhost"
    qid = re.sub(r"[^\x21-\x7e]", "", queue_id or "")[:100]   # ours, but still one ASCII token
    failed = any(f.action == "failed" for f in failures)
    rcpts = [(f, _address(f.rcpt), _diagnostic(f.diagnostic), _status(f)) for f in failures]

    status = _status_part(host, qid, arrival, rcpts)
    content, why = _original_part(original, full_message_limit)
    boundary = None
    # Each fallback carries less of the original; only a hostile original, one that
    # declares boundaries starting like ours or quotes our delimiter, gets past the first.
    for fallback in (None, "collision", "omitted"):
        if fallback == "collision":
            content, why = _headers_only(original, full_message_limit), "collision"
        elif fallback == "omitted":
            content, why = None, "collision"
        text = _text_part(host, qid, arrival, rcpts, failed, why, len(original), postmaster)
        boundary = _pick_boundary([text, status] + ([content] if content else []),
                                  nested=content if content and not why else None)
        if boundary is not None:
            break
    if boundary is None:   # text and status are ours: 16 fresh random tokens cannot all collide
        raise RuntimeError("no MIME boundary found that the DSN's own parts do not contain")

    parts = [(b"text/plain; charset=utf-8", text), (b"message/delivery-status", status)]
    if content is not None:
        parts.append((b"text/rfc822-headers" if why else b"message/rfc822", content))

    subject = "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: {make_msgid('dsn', domain=host)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary.decode()}"',
        f"Content-Transfer-Encoding: {_cte(b''.join(p for _, p in parts))}",
    ]
    out = [CRLF.join(line.encode("utf-8") for line in top), CRLF, CRLF,
           b"This is a MIME-encapsulated delivery status notification (RFC 3464).", CRLF]
    for ctype, body in parts:
        out += [CRLF, b"--", boundary, CRLF,
                b"Content-Type: ", ctype, CRLF,
                b"Content-Transfer-Encoding: ", _cte(body).encode(), CRLF,
                CRLF, body]
    out += [CRLF, b"--", boundary, b"--", CRLF]
    return b"".join(out)


def is_8bit(dsn: bytes) -> bool:
    """Whether the DSN must be sent with BODY=8BITMIME (RFC 6152)."""
    return any(b > 0x7f for b in dsn)


def needs_smtputf8(mail_from: str) -> bool:
    """Whether the DSN to ``mail_from`` needs SMTPUTF8 (RFC 6531): its recipient, and so
    its To: field, is not ASCII."""
    return not _address(mail_from).isascii()


# --- the parts -------------------------------------------------------------------------

def _status_part(host: str, qid: str, arrival: float, rcpts) -> bytes:
    lines = [f"Reporting-MTA: dns; {host}",
             f"X-Mailsift-Queue-ID: {qid}",
             f"Arrival-Date: {_date(arrival)}"]
    for f, addr, diag, status in rcpts:
        lines += ["", f"Final-Recipient: {_typed_address(addr)}",
                  f"Action: {f.action}",
                  f"Status: {status}"]
        remote = _host(f.remote_mta or "")
        if remote:
            lines.append(f"Remote-MTA: dns; {remote}")
        if diag:
            kind = "smtp" if _REPLY.match(diag) else "X-Mailsift"
            # RFC 3464 2.3.6: the field is 7-bit text; a non-ASCII reply is escaped.
            lines.append(f"Diagnostic-Code: {kind}; {_ascii(diag)}")
        if f.last_attempt is not None:
            lines.append(f"Last-Attempt-Date: {_date(f.last_attempt)}")
    return CRLF.join(line.encode("ascii") for line in lines) + CRLF


def _text_part(host, qid, arrival, rcpts, failed, why_headers_only, size, postmaster) -> bytes:
    if failed:
        lead = [f"This is the mail system at {host}.", "",
                "Your message could not be delivered to one or more recipients.",
                "Delivery to the recipients marked 'failed' has been given up for good."]
        if any(f.action == "delayed" for f, *_ in rcpts):
            lead.append("Delivery to those marked 'delayed' is still being retried.")
    else:
        lead = [f"This is the mail system at {host}.", "",
                "Your message has not been delivered yet to the recipients below.",
                "It is still being retried; you do not need to send it again.",
                "You will be told if delivery finally fails."]
    lines = lead + ["", f"Queue ID: {qid}", f"Arrival date: {_date(arrival)}", ""]
    for f, addr, diag, status in rcpts:
        lines.append(f"<{addr}>: {f.action} ({status})")
        remote = _host(f.remote_mta or "")
        if diag:
            lines.append(f"    {remote} said: {diag}" if remote else f"    {diag}")
        elif remote:
            lines.append(f"    last tried: {remote}")
    lines.append("")
    if why_headers_only == "size":
        lines.append(f"The original message ({size} bytes) is too large to return in full;"
                     " its headers are attached.")
    elif why_headers_only == "form":
        lines.append("The original message has lines too long or bytes that mail cannot"
                     " carry; its headers are attached.")
    elif why_headers_only == "collision":
        lines.append("The original message could not be attached safely in full.")
    if postmaster:
        lines.append(f"For help, write to the postmaster: <{_address(postmaster)}>.")
    return CRLF.join(line.encode("utf-8") for line in lines) + CRLF


def _original_part(original: bytes, limit: int) -> tuple[bytes | None, str | None]:
    """The third part's content and, when it is the header block only, why."""
    if not original:
        return None, None
    if len(original) > limit:
        return _headers_only(original, limit), "size"
    lines = _LINE_END.split(original)
    if b"\0" in original or any(len(line) > MAX_LINE for line in lines):
        return _headers_only(original, limit), "form"
    return _crlf(lines), None


def _headers_only(original: bytes, limit: int) -> bytes | None:
    """The header block of ``original`` (up to its first empty line), CRLF, NUL-free,
    lines cut at 998 octets, and at most ``limit`` bytes, ending at a whole field."""
    out, size = [], 0
    for line in _lines(original):   # lazily: a 50 MB original is not split for its headers
        if not line:
            break
        line = line.replace(b"\0", b"")[:MAX_LINE]
        size += len(line) + 2
        if size > limit:
            if line[:1] in (b" ", b"\t"):   # the field goes on past the limit: none of it
                while out and out[-1][:1] in (b" ", b"\t"):
                    out.pop()
                out = out[:-1]
            break
        out.append(line)
    return _crlf(out) if out else None


def _lines(data: bytes):
    pos = 0
    for m in _LINE_END.finditer(data):
        yield data[pos:m.start()]
        pos = m.end()
    if pos < len(data):
        yield data[pos:]


def _crlf(lines: list[bytes]) -> bytes:
    """Lines joined with CRLF, ending with one (a trailing empty piece is the last line
    end of the input, not an extra line)."""
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    return CRLF.join(lines) + CRLF


# --- the boundary ------------------------------------------------------------------------

def _pick_boundary(contents: list[bytes], nested: bytes | None) -> bytes | None:
    """A fresh random boundary (RFC 2046 5.1.1) that no part contains (so no line of
    the original can be, or begin with, our delimiter) and, when the original goes in
    whole (``nested``: parsed as MIME in its turn), that is not a prefix of a boundary
    it declares, nor starts with one (a parser that matches delimiters by prefix would
    otherwise nest the parts wrongly); None when ``_BOUNDARY_TRIES`` draws all collide."""
    declared = [m.group(1) or m.group(2) for m in _DECLARED_BOUNDARY.finditer(nested or b"")]
    for _ in range(_BOUNDARY_TRIES):
        candidate = f"=_mailsift_{_token(16)}".encode()
        if any(candidate in c for c in contents):
            continue
        if any(d and (candidate.startswith(d) or d.startswith(candidate)) for d in declared):
            continue
        return candidate
    return None


# --- values from outside -------------------------------------------------------------------

def _clip(value: str, limit: int) -> str:
    """``value`` cut to at most ``limit`` UTF-8 octets, never inside a character; a lone
    surrogate (bytes decoded with surrogateescape) becomes U+FFFD."""
    data = value.encode("utf-8", "replace")[:limit]
    return data.decode("utf-8", "ignore")


def _text(value: str, limit: int) -> str:
    """One line of text: control characters (CR and LF first) become spaces, runs of
    white space (Unicode line separators too) one space, at most ``limit`` octets."""
    return _clip(" ".join(_CONTROLS.sub(" ", value).split()), limit)


def _address(value: str) -> str:
    """An envelope address without angle brackets and control characters; "" for the
    null sender. Spaces stay: a quoted local part may hold them."""
    v = _CONTROLS.sub("", value or "").strip()
    if v.startswith("<") and v.endswith(">"):
        v = v[1:-1].strip()
    return _clip(v.replace("<", "").replace(">", ""), MAX_ADDRESS)


def _host(value: str) -> str:
    """A host name or address literal as a DSN names it: the leading run of letters,
    digits, '.', '-', '_', ':' and brackets (IPv6 literals); what follows anything else
    (a CR, a space) is not part of the name."""
    m = _HOST.match((value or "").strip())
    return m.group(0)[:MAX_HOST] if m else ""


def _diagnostic(value: str | None) -> str:
    """A reply as one line: a multiline SMTP reply ("550-5.1.1 No such user" CRLF
    "550 5.1.1 Try later") keeps its code once ("550 5.1.1 No such user Try later")."""
    lines = (value or "").splitlines()
    first = _REPLY.match(lines[0].strip()) if lines else None
    if first and len(lines) > 1:
        prefix = re.compile(re.escape(first.group(0)[:3]) + r"[ -]" + (
            re.escape(first.group(2)) + r"(?:\s|$)" if first.group(2) else ""))
        rest = [prefix.sub("", line.strip(), count=1) for line in lines[1:]]
        head = lines[0].strip()
        value = head[:3] + " " + head[4:] + " " + " ".join(rest)
    return _text(value or "", MAX_DIAGNOSTIC)


def _typed_address(addr: str) -> str:
    """``rfc822; addr``, or for a non-ASCII address RFC 6533's ``utf-8;`` type in its 7-bit
    form (utf-8-addr-xtext): every character outside QCHAR (printable ASCII but '\\',
    '+' and '=') as ``\\x{HEX}``."""
    if addr.isascii():
        return f"rfc822; {addr}"
    return "utf-8; " + _escape(addr, lambda c: "!" <= c <= "~" and c not in "\\+=")


def _ascii(value: str) -> str:
    """A diagnostic for the 7-bit delivery-status part: non-ASCII as ``\\x{HEX}``."""
    return _escape(value, str.isascii)


def _escape(value: str, keep, limit: int = MAX_ESCAPED) -> str:
    out, size = [], 0
    for c in value:
        piece = c if keep(c) else f"\\x{{{ord(c):X}}}"
        size += len(piece)
        if size > limit:     # cut between escapes, never inside one
            break
        out.append(piece)
    return "".join(out)


def _status(f: Failure) -> str:
    """The RFC 3463 code for ``f``: its own when valid and of a class its action allows
    (failed: 4 or 5 — a message that expired after temporary failures keeps its 4.x.x;
    delayed: 4), else the enhanced code of its diagnostic, else the class of the
    diagnostic's reply code, else the action's default."""
    allowed = "45" if f.action == "failed" else "4"
    code = (f.status or "").strip()
    if _STATUS.fullmatch(code) and code[0] in allowed:
        return code
    m = _REPLY.match(_diagnostic(f.diagnostic))
    if m:
        basic, enhanced = m.group(1), m.group(2)
        if enhanced and enhanced[0] == basic and basic in allowed:
            return enhanced
        if basic in allowed:
            return f"{basic}.0.0"
    return "5.0.0" if f.action == "failed" else "4.0.0"


def _date(t: float) -> str:
    return format_datetime(datetime.datetime.fromtimestamp(t, datetime.timezone.utc))


def _cte(body: bytes) -> str:
    return "8bit" if any(b > 0x7f for b in body) else "7bit"
