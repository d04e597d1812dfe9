"""What the DATA-phase checks look at: the message bytes the gate received, parsed once.

``DataContext.from_bytes`` is built once per message, from the bytes aiosmtpd hands the
gate at the end of DATA (``envelope.original_content``: dot-unstuffed, every line ending
in CRLF, the final ``.`` line removed). Bare LF is tolerated as a line end everywhere,
since mail that was not read by aiosmtpd (a test, a re-scan from the queue) may have it.

Why not the stdlib ``email`` parser for the header block: the gate must stay linear in
time and bounded in memory on hostile input (a 10 MB line, 100k header fields, NUL
bytes, no header/body separator), and ``email``'s Content-Type parameter splitter is
quadratic in the number of ``;``. The header block is therefore scanned with possessive
regular expressions, which run in C and never backtrack.

What is parsed, and where it stops:

* the header block: one ``HeaderField`` per field, unfolded (RFC 5322 2.2.3), in order,
  raw bytes kept; at most ``max_header_fields`` are kept and ``headers_truncated`` says
  when more were there. The block ends at the first empty line, or at the first line
  that is neither a field (``name WSP* ":"``, RFC 5322 3.6.8 plus the obsolete
  whitespace before the colon of 4.5.3) nor a continuation line, which then starts the
  body (as Postfix and the ``email`` package both do).
* the longest line, in bytes without its CRLF (or LF), over the whole message.
* the MIME structure (``mime``), lazily, at most once: the number of entities and where
  a message/partial entity is. The walk stops counting past ``mime_part_cap`` entities
  and does not descend more than ``MIME_DEPTH_LIMIT`` levels, so a bomb of a million
  parts, or parts nested ten thousand deep, costs no more than a small message.

Nothing here raises on message content; the checks in ``smtpgate/checks`` only read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

# A legitimate message carries tens of header fields; a long relay chain with ARC sets
# and list headers a couple of hundred. Past 1000 the message is malformed or an
# attack, ``bad_header_count`` says so, and keeping the rest would only cost memory.
MAX_HEADER_FIELDS = 1000

# Ten times the contract's default maximum of MIME parts (100), so the per-domain
# maximum can be raised well above the default before the count stops being exact.
# Counting a part costs a few microseconds: a million-part bomb stops here.
MIME_PART_CAP = 1000

# Each level of nesting is one more scan of its region for its boundary, so the depth
# is what bounds the walk's time (depth x message size). Legitimate nesting stays below
# ten (a forward of a forward of a signed message is about six); 32 is generous and
# keeps the worst case at 32 passes of ``bytes.find``-speed scanning.
MIME_DEPTH_LIMIT = 32

# The leading bytes of a Content-Type value that are parsed for its boundary. RFC 2046
# limits a boundary to 70 characters; a value longer than this is abuse, and
# ``header_too_long`` judges the top-level one.
_CONTENT_TYPE_PARSE_LIMIT = 8192
_MAX_PARAMS = 100

# Lines are split in chunks of about this size: every step runs in C while the list of
# lines held at once stays bounded (a 32 MB message of 2-byte lines would otherwise
# become 11 million bytes objects at once).
_LINE_CHUNK = 1 << 20

# ---------------------------------------------------------------- header grammar
# ftext (RFC 5322 3.6.8): printable US-ASCII except ":". Possessive quantifiers (*+, ++)
# never give back what they matched: every pattern below is linear in its input.
_NAME = rb"[!-9;-~]++"
# Every line of a header block: a continuation line (starts with WSP) or a field line.
_HEAD_LINES = re.compile(rb"(?:[ \t][^\n]*+\n|" + _NAME + rb"[ \t]*+:[^\n]*+\n)*+")
# The last line of a message without a final line end may still be a header line.
_LAST_HEAD_LINE = re.compile(rb"(?:[ \t]|" + _NAME + rb"[ \t]*+:)[^\n]*+")
# Continuation lines before the first field are ignored (the email package does too).
_LEADING_CONTINUATIONS = re.compile(rb"(?:[ \t][^\n]*+\n)*+")
_FIELD = re.compile(rb"(" + _NAME + rb")[ \t]*+:([^\n]*+(?:\n[ \t][^\n]*+)*+)")
_FOLD = re.compile(rb"\r?\n")
# Content-Type of a MIME entity: the field at the block's start, or after a line end.
_CT_FIRST = re.compile(rb"content-type[ \t]*+:([^\n]*+(?:\n[ \t][^\n]*+)*+)", re.I)
_CT_LATER = re.compile(rb"\ncontent-type[ \t]*+:([^\n]*+(?:\n[ \t][^\n]*+)*+)", re.I)
# What may follow "--boundary" on a delimiter line (RFC 2046 5.1.1).
_DELIM_TAIL = re.compile(rb"(--)?+[ \t]*+(?:\r?\n|\Z)")

_PARAM_NAME = re.compile(r"[ \t]*+([^\s=;\"]++)[ \t]*+=[ \t]*+")
_QUOTED = re.compile(r'"((?:[^"\\]++|\\.)*+)"?', re.S)
_TOKEN = re.compile(r"[^;]*+")
_SKIP_PARAM = re.compile(r'(?:[^;"]++|"(?:[^"\\]++|\\.)*+"?)*+;?', re.S)
_BACKSLASH = re.compile(r"\\(.)", re.S)
_RFC2231_SECTION = re.compile(r"boundary\*(?:([0-9]{1,3})(\*?))?")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_COMMENT = re.compile(r"\([^()]*+\)")


class HeaderField(NamedTuple):
    """One header field as received: ``(name, value, raw_length)``.

    ``name`` is the field name's bytes as sent (case kept). ``value`` is the unfolded
    field body (the line ends before continuation lines removed, RFC 5322 2.2.3) with
    the leading and trailing spaces and tabs stripped; every other byte is kept as
    received, bare CR and NUL included. ``raw_length`` is the size of the field in the
    message, from the first byte of its name to the end of its last line, folding line
    ends included, final line end excluded.
    """

    name: bytes
    value: bytes
    raw_length: int


@dataclass(frozen=True, slots=True)
class MimeSummary:
    """What the bounded MIME walk found.

    ``parts`` counts MIME entities the way ``email.message.Message.walk()`` does for a
    well-formed message: the message itself, every multipart container, every body part,
    and for a message/* part both the part and the message it encapsulates. One
    difference: a message/delivery-status part (in bounces) is one part here, where
    walk() also yields each of its blocks of status fields as a message.
    ``stopped`` is None when the walk saw everything, ``"parts"`` when it stopped
    counting past the cap (``parts`` is then cap + 1), ``"depth"`` when nesting went
    deeper than ``MIME_DEPTH_LIMIT``. ``partial`` locates the first message/partial
    entity: ``"top level"`` or ``"part 2.1"`` (IMAP-style part numbers), else None.
    """

    parts: int
    stopped: str | None
    partial: str | None
    max_depth: int

    @property
    def complete(self) -> bool:
        return self.stopped is None


class DataContext:
    """The parsed message for the DATA-phase checks. Build it with ``from_bytes``.

    Attributes:
        raw: the message bytes.
        smtputf8: whether MAIL FROM carried SMTPUTF8 (``envelope.smtp_utf8``).
        now: the time the message was received, as unix time; checks compare against
            it rather than the clock, so a test passes its own.
        headers: the header fields in order (see ``HeaderField``), at most
            ``max_header_fields`` of them.
        headers_truncated: True when the header block had more fields than were kept.
        header_end: offset where the header block ends (the empty line, or the first
            body line when there is no separator); it is the header block's size.
        body_offset: offset of the first body byte (``len(raw)`` when there is none).
        has_separator: whether an empty line separated the header block from the body.
        longest_line: the longest line in bytes, without its CRLF or LF (0 when empty).
        longest_line_number: its 1-based line number, or None when the gate's own
            measurement (``max_line_seen``) was the larger one.
        mime_part_cap: where the MIME walk stops counting.
    """

    __slots__ = ("raw", "smtputf8", "now", "headers", "headers_truncated", "header_end",
                 "body_offset", "has_separator", "longest_line", "longest_line_number",
                 "mime_part_cap", "_index", "_mime")

    def __init__(self, *, raw: bytes, smtputf8: bool, now: float,
                 headers: tuple[HeaderField, ...], headers_truncated: bool,
                 header_end: int, body_offset: int, has_separator: bool,
                 longest_line: int, longest_line_number: int | None,
                 mime_part_cap: int = MIME_PART_CAP):
        self.raw = raw
        self.smtputf8 = smtputf8
        self.now = now
        self.headers = headers
        self.headers_truncated = headers_truncated
        self.header_end = header_end
        self.body_offset = body_offset
        self.has_separator = has_separator
        self.longest_line = longest_line
        self.longest_line_number = longest_line_number
        self.mime_part_cap = mime_part_cap
        index: dict[bytes, list[int]] = {}
        for i, field in enumerate(headers):
            index.setdefault(field.name.lower(), []).append(i)
        self._index = index
        self._mime: MimeSummary | None = None

    @classmethod
    def from_bytes(cls, raw: bytes, *, smtputf8: bool, now: float,
                   max_line_seen: int | None = None,
                   max_header_fields: int = MAX_HEADER_FIELDS,
                   mime_part_cap: int = MIME_PART_CAP) -> DataContext:
        """Parse ``raw`` (the dot-unstuffed DATA bytes). Never raises on content.

        ``max_line_seen`` is the longest line the gate measured itself, in bytes without
        CRLF and without the transparency dot, for when it kept less than it read (a line
        cut short to bound memory): the larger of it and the measured one is the
        message's longest line.
        """
        raw = bytes(raw)
        header_end, body_offset, has_separator = _header_block_end(raw, 0, len(raw))
        headers, truncated = _parse_fields(raw, header_end, max_header_fields)
        longest, line_number = _longest_line(raw)
        if max_line_seen is not None and max_line_seen > longest:
            longest, line_number = max_line_seen, None
        return cls(raw=raw, smtputf8=smtputf8, now=now, headers=headers,
                   headers_truncated=truncated, header_end=header_end,
                   body_offset=body_offset, has_separator=has_separator,
                   longest_line=longest, longest_line_number=line_number,
                   mime_part_cap=mime_part_cap)

    # ---------------------------------------------------------------- headers

    def header(self, name: str) -> list[bytes]:
        """The values of every field named ``name`` (any case), in message order."""
        return [self.headers[i].value for i in self._index.get(_key(name), ())]

    def header_count(self, name: str) -> int:
        """How many fields are named ``name``, compared case-insensitively."""
        return len(self._index.get(_key(name), ()))

    def header_text(self, name: str) -> str:
        """The first ``name`` field's value as text, for evidence and logs: UTF-8, with
        undecodable bytes replaced; encoded-words are left as sent. "" when absent."""
        values = self.header(name)
        return values[0].decode("utf-8", "replace") if values else ""

    @property
    def message_id(self) -> str | None:
        values = self.header("message-id")
        return values[0].decode("utf-8", "replace") if values else None

    @property
    def subject_raw(self) -> bytes | None:
        values = self.header("subject")
        return values[0] if values else None

    @property
    def from_raw(self) -> bytes | None:
        values = self.header("from")
        return values[0] if values else None

    @property
    def body(self) -> bytes:
        return self.raw[self.body_offset:]

    # ---------------------------------------------------------------- MIME

    @property
    def mime(self) -> MimeSummary:
        """The MIME walk's summary, computed on first use and kept."""
        if self._mime is None:
            if self.headers_truncated:  # the kept fields may not hold the Content-Type
                ctype = _content_type(self.raw, 0, self.header_end)
            else:
                values = self.header("content-type")
                ctype = values[0] if values else None
            self._mime = _walk_mime(self.raw, self.mime_part_cap,
                                    (self.header_end, self.body_offset, ctype))
        return self._mime


def _key(name: str) -> bytes:
    return name.lower().encode("ascii", "replace")


def shown(value: str | bytes, limit: int = 100) -> str:
    """``value`` made safe for an evidence string or a log line: bytes decoded as UTF-8
    with replacement, characters that are not printable (controls, lone surrogates from
    aiosmtpd's surrogateescape) written as escapes, and cut at ``limit`` characters."""
    if isinstance(value, bytes):
        value = value[:limit * 4].decode("utf-8", "replace")
    cut = len(value) > limit
    value = value[:limit]
    if not value.isprintable():
        value = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
    return value + "..." if cut else value


# ---------------------------------------------------------------- header block

def _header_block_end(raw: bytes, start: int, end: int) -> tuple[int, int, bool]:
    """``(header_end, body_offset, has_separator)`` for the entity in ``raw[start:end]``."""
    p = _HEAD_LINES.match(raw, start, end).end()
    if p >= end:
        return end, end, False
    if raw.startswith(b"\n", p, end):
        return p, p + 1, True
    if raw.startswith(b"\r\n", p, end):
        return p, p + 2, True
    if raw.find(b"\n", p, end) < 0 and _LAST_HEAD_LINE.fullmatch(raw, p, end):
        return end, end, False
    return p, p, False


def _parse_fields(raw: bytes, header_end: int, cap: int) -> tuple[tuple[HeaderField, ...], bool]:
    fields: list[HeaderField] = []
    pos = _LEADING_CONTINUATIONS.match(raw, 0, header_end).end()
    while pos < header_end:
        if len(fields) >= cap:
            return tuple(fields), True
        m = _FIELD.match(raw, pos, header_end)
        if m is None:  # cannot happen: _HEAD_LINES accepted every line before header_end
            break
        stop = m.end()
        if stop < len(raw) and raw[stop] == 0x0A and stop > m.start(2) and raw[stop - 1] == 0x0D:
            stop -= 1  # the CR of the field's final CRLF
        value = raw[m.start(2):stop]
        if b"\n" in value:
            value = _FOLD.sub(b"", value)
        fields.append(HeaderField(m.group(1), value.strip(b" \t"), stop - m.start()))
        pos = m.end() + 1
    return tuple(fields), False


# ---------------------------------------------------------------- lines

def _longest_line(raw: bytes) -> tuple[int, int | None]:
    """(length, 1-based line number) of the first longest line; a line ends at LF, and a
    CR right before that LF is part of the line end, not of the line."""
    best, best_number, lines_before, pos, n = 0, None, 0, 0, len(raw)
    while pos < n:
        nl = raw.find(b"\n", min(pos + _LINE_CHUNK, n - 1))
        cut = n if nl < 0 else nl + 1
        chunk = raw[pos:cut]
        lines = chunk.replace(b"\r\n", b"\n").split(b"\n")
        if chunk.endswith(b"\n"):
            lines.pop()  # the empty string after the final line end is not a line
        lengths = list(map(len, lines))
        longest = max(lengths)
        if longest > best or best_number is None:
            best, best_number = longest, lines_before + lengths.index(longest) + 1
        lines_before += len(lines)
        pos = cut
    return best, best_number


# ---------------------------------------------------------------- MIME walk

def _content_type(raw: bytes, start: int, header_end: int) -> bytes | None:
    """The first Content-Type value in the header block ``raw[start:header_end]``."""
    m = _CT_FIRST.match(raw, start, header_end) or _CT_LATER.search(raw, start, header_end)
    if m is None:
        return None
    value = m.group(1)
    if b"\n" in value:
        value = _FOLD.sub(b"", value)
    return value.strip(b" \t\r")


def _parse_content_type(value: bytes | None, default: str) -> tuple[str, bytes | None]:
    """``(type/subtype, boundary)``, as the email package reads them: a missing
    Content-Type gives ``default``, a malformed one text/plain (RFC 2045 5.2)."""
    if value is None:
        return default, None
    text = value[:_CONTENT_TYPE_PARSE_LIMIT].decode("latin-1")  # lossless: bytes out again
    head, _, rest = text.partition(";")
    ctype = "".join(_COMMENT.sub("", head).split()).lower()  # RFC 2045 5.1 allows comments
    maintype, slash, subtype = ctype.partition("/")
    if not maintype or not subtype or "/" in subtype:
        return "text/plain", None
    if maintype != "multipart":
        return ctype, None
    return ctype, _boundary(rest)


def _boundary(params_text: str) -> bytes | None:
    """The boundary parameter, including RFC 2231 forms (``boundary*``, ``boundary*0``)."""
    params: dict[str, str] = {}
    pos, n = 0, len(params_text)
    while pos < n and len(params) < _MAX_PARAMS:
        m = _PARAM_NAME.match(params_text, pos)
        if m is None:  # not "name=": skip to the next ";" outside quotes
            pos = max(_SKIP_PARAM.match(params_text, pos).end(), pos + 1)
            continue
        name, pos = m.group(1).lower(), m.end()
        q = _QUOTED.match(params_text, pos)
        if q is not None:
            value = _BACKSLASH.sub(r"\1", q.group(1))
            pos = q.end()
        else:
            t = _TOKEN.match(params_text, pos)
            value, pos = t.group().strip(), t.end()
        params.setdefault(name, value)
        pos = _SKIP_PARAM.match(params_text, pos).end()  # anything up to the next ";"
    if "boundary" in params:
        value = params["boundary"]
    else:
        sections: dict[int, str] = {}
        for name, v in params.items():
            m = _RFC2231_SECTION.fullmatch(name)
            if m is None:
                continue
            number = int(m.group(1)) if m.group(1) else 0
            extended = m.group(1) is None or m.group(2) == "*"
            if extended:
                if number == 0 and v.count("'") >= 2:
                    v = v.split("'", 2)[2]  # charset'language'value
                v = _PERCENT.sub(lambda p: chr(int(p.group(1), 16)), v)
            sections.setdefault(number, v)
        if not sections:
            return None
        value = "".join(sections[k] for k in sorted(sections))
    value = value.rstrip()  # as email.message.Message.get_boundary does
    return value.encode("latin-1", "replace") if value else None


def _children(raw: bytes, body: int, end: int, boundary: bytes, limit: int) -> list[tuple[int, int]]:
    """The regions of the body parts between boundary delimiter lines (RFC 2046 5.1.1),
    at most ``limit``. The preamble and the epilogue are not parts; with no close
    delimiter the last part runs to the end, as the email package reads it."""
    delim = b"--" + boundary
    search = re.compile(re.escape(b"\n" + delim) + _DELIM_TAIL.pattern).search
    starts: list[int] = []  # (line start, line end) of each delimiter line
    ends: list[int] = []
    closes = False
    if raw.startswith(delim, body, end):
        m = _DELIM_TAIL.match(raw, body + len(delim), end)
        if m is not None:
            starts.append(body)
            ends.append(m.end())
            closes = m.group(1) is not None
    pos = ends[-1] if ends else body
    while not closes and len(starts) <= limit:
        m = search(raw, pos, end)
        if m is None:
            break
        starts.append(m.start() + 1)
        ends.append(m.end())
        closes = m.group(1) is not None
        pos = m.end()
    regions = []
    for i in range(len(starts)):
        if i + 1 < len(starts):
            stop = starts[i + 1] - 1  # the line end before a delimiter belongs to it
            if stop > ends[i] and raw[stop - 1] == 0x0D:
                stop -= 1
            regions.append((ends[i], max(stop, ends[i])))
        elif not closes:
            regions.append((ends[i], end))
    return regions[:limit]


def _walk_mime(raw: bytes, cap: int, root: tuple[int, int, bytes | None]) -> MimeSummary:
    """Count MIME entities depth-first in message order, as ``Message.walk()`` does.

    ``root`` is what the header parse already knows of the message itself:
    ``(header_end, body_offset, Content-Type value)``.
    """
    count, partial, stopped, max_depth = 0, None, None, 0
    # (start, end, default content type, depth, part number)
    stack: list[tuple[int, int, str, int, str]] = [(0, len(raw), "text/plain", 0, "")]
    while stack:
        start, end, default, depth, path = stack.pop()
        count += 1
        if count > cap:
            stopped = "parts"
            break
        max_depth = max(max_depth, depth)
        if depth == 0:
            header_end, body, ctype_value = root
        else:
            header_end, body, _ = _header_block_end(raw, start, end)
            ctype_value = _content_type(raw, start, header_end)
        ctype, boundary = _parse_content_type(ctype_value, default)
        if ctype == "message/partial" and partial is None:
            partial = f"part {path}" if path else "top level"
        maintype = ctype.partition("/")[0]
        if maintype not in ("multipart", "message") or ctype == "message/delivery-status":
            continue
        if depth >= MIME_DEPTH_LIMIT:
            stopped = "depth"
            break
        if maintype == "message":
            # The email package parses the body of every message/* part (but
            # delivery-status) as a message of its own, one more entity for walk().
            stack.append((body, end, "text/plain", depth + 1, path))
            continue
        if boundary is None:
            continue  # multipart without a boundary: one opaque entity (RFC 2046 5.1.1)
        child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        regions = _children(raw, body, end, boundary, cap - count + 1)
        for k in range(len(regions), 0, -1):
            s, e = regions[k - 1]
            stack.append((s, e, child_default, depth + 1, f"{path}.{k}" if path else str(k)))
    return MimeSummary(parts=min(count, cap + 1), stopped=stopped, partial=partial,
                       max_depth=max_depth)
