"""Raw RFC 822 bytes -> what every classifier reads.

``extract(raw)`` is the one parser in mailsift. It never raises: malformed MIME, bad
base64, unknown charsets, NUL bytes, 100 000 headers or a 50 MB body degrade the result
and leave a ``gaveup:...`` token saying what was skipped. Work per message is capped by
``Limits``.

Tokens are readable, namespaced strings so that evidence explains itself, in the style
of SpamBayes' tokenizer:

    free                     a body word (lower-cased, 3..max_word chars)
    skip:x 40                a long body word: first char and length bucket
    subject:free             a Subject word
    from:addr:example.com    an address part in From/To/Cc/Reply-To/Sender
    hdr:x-mailer:outlook     a value word of a header worth reading
    header:X-Mailer:1        a header name present (and how often)
    received:10.1.2          Received-header hosts and IP prefixes
    url:host:example.com     link hosts, with their parent domains
    url:path:login           words of link paths
    html:tag:font            HTML facts (tags, images, forms, comments)
    attach:ext:exe           attachment facts
    mime:text/html           structure facts
    gaveup:bytes             what the parser gave up on

Hashing happens only at the edge (classifier/hashing.py), in the estimators that need
fixed-width vectors.
"""
from __future__ import annotations

import base64
import binascii
import email
import email.errors
import email.parser
import email.header
import email.policy
import email.utils
import hashlib
import math
import re
from dataclasses import dataclass, field

from .html import html_to_text

__all__ = ["Limits", "MessageFeatures", "Attachment", "extract", "as_features"]


@dataclass(frozen=True)
class Limits:
    """Caps on the work done per message. Defaults keep the worst message near 20 ms.

    The corpus mean is 5.4 KB and its largest message 300 KB, so these caps leave
    legitimate mail untouched while bounding what an attacker can make us do.
    """

    max_bytes: int = 2 * 1024 * 1024   # bytes of the message given to the MIME parser
    max_headers: int = 1000            # header fields parsed; the rest are counted
    max_header_chars: int = 8192       # characters of one header value tokenized
    max_parts: int = 200               # MIME parts walked
    max_depth: int = 8                 # message/rfc822 nesting followed
    max_part_chars: int = 200_000      # decoded characters of one text part
    max_text_chars: int = 400_000      # decoded characters over all text parts
    max_tokens: int = 6000             # tokens kept per message
    max_words: int = 2500              # ordered words kept for the OSB stream
    max_header_words: int = 600        # of which raw header words at most
    head_bytes: int = 3000             # raw prefix kept for byte n-grams
    max_word: int = 12                 # longer body words become skip: tokens


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class Attachment:
    content_type: str
    filename: str
    size: int


@dataclass(slots=True)
class MessageFeatures:
    """Everything the classifiers read about one message."""

    digest: str                     # SHA-256 of the raw bytes: the message's identity
    size: int
    headers: list[tuple[str, str]]  # (name, decoded value), in order, capped
    subject: str
    text: str                       # decoded text of all text parts, HTML as text
    urls: list[str]
    emails: list[str]
    ips: list[str]
    phones: list[str]
    attachments: list[Attachment]
    content_types: list[str]        # every part's type, in walk order
    tokens: list[str]               # namespaced tokens, document order, with repeats
    words: list[str]                # ordered raw words (case kept) for OSB features
    head: bytes                     # first Limits.head_bytes of the raw message
    gaveup: list[str] = field(default_factory=list)
    link_pairs: list[tuple[str, str]] = field(default_factory=list)  # (visible text, target)
    forms: int = 0
    password_inputs: int = 0
    form_actions: list[str] = field(default_factory=list)          # where HTML forms post
    facts: object = None            # GateFacts set by the scorer; None outside the gate
    _unique: list[str] | None = None

    def unique_tokens(self) -> list[str]:
        """The tokens without repeats, in first-seen order; computed once per message
        and shared by the classifiers that count each token once."""
        if self._unique is None:
            self._unique = list(dict.fromkeys(self.tokens))
        return self._unique


# ---------------------------------------------------------------- regular expressions

_STRIP = "\"'()[]{}<>.,:;!?*`~|^"
# URLs are found from their '://' or 'www.' anchor; a scan with an alternation at
# every text position costs 50 us per message, the anchored one a few.
_URL_ANCHOR = re.compile(r"://|www\.", re.I)
_URL_SCHEME_BEFORE = re.compile(r"(?:https?|ftp)$", re.I)
_URL_REST = re.compile(r"""[^\s<>"'()\[\]{}]+""")
_EMAIL_DOMAIN = re.compile(r"@((?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24})\b")
_EMAIL_LOCAL = re.compile(r"[\w.+'-]{1,64}$")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
# only at the start of a digit run, octets of at most 3 digits: linear on long digit runs
_IPV4_LOOSE = re.compile(r"(?<![0-9.])[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9]|\.[0-9])")
# starts with a character class so that the regex engine can skip to candidates fast
_PHONE = re.compile(r"[\d+(][\d ().-]{7,18}\d")
_UPPER_BYTES = bytes(range(65, 91))
_HOSTISH = re.compile(r"[a-z0-9][a-z0-9.-]*\.[a-z]{2,}", re.I)
_NONWORD_RUN = re.compile(r"[^\w\s]{2,}")
_DIGITS = re.compile(r"\d")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?")

_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "sender", "return-path", "errors-to")
_HEADER_SPLIT = re.compile(r"[\s;,()<>\[\]\"]+")
_COUNTED_ONCE = frozenset(
    "date from sender reply-to to cc bcc message-id in-reply-to references subject".split())


# ---------------------------------------------------------------- small helpers

def _log2_bucket(n: int) -> int:
    return 0 if n <= 0 else int(math.log2(n))


def _decode_bytes(data: bytes, charset: str | None, gaveup: list[str]) -> str:
    """Bytes to str with the declared charset, falling back without raising."""
    text = None
    if charset:
        cs = charset.strip().strip('"').lower()
        try:
            text = data.decode(cs, errors="replace")
        except (LookupError, ValueError):
            gaveup.append("charset:unknown")
    if text is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", errors="replace")
    # NUL never reaches a token: model files use it as a separator
    return text.replace("\x00", " ") if "\x00" in text else text


def decode_header_value(value: str, gaveup: list[str] | None = None) -> str:
    """RFC 2047 decoding that tolerates broken encoded-words and charsets."""
    if "\x00" in value:
        value = value.replace("\x00", " ")
    if "=?" not in value:
        return value
    try:
        parts = email.header.decode_header(value)
    except (email.errors.HeaderParseError, ValueError, LookupError, AssertionError):
        if gaveup is not None:
            gaveup.append("header:undecodable")
        return value
    out = []
    sink = gaveup if gaveup is not None else []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            out.append(_decode_bytes(chunk, charset, sink))
        else:
            out.append(chunk)
    return "".join(out)


_SURROGATE_ESCAPE = re.compile("[\udc80-\udcff]")


def _undo_surrogates(text: str) -> str:
    """compat32 keeps raw 8-bit header bytes as surrogate escapes; decode them as
    UTF-8, else cp1252, as mail clients do with undeclared 8-bit headers."""
    if text.isascii() or not _SURROGATE_ESCAPE.search(text):
        return text
    raw = text.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _raw_header_str(value) -> str:
    """compat32 gives str, or a Header object for 8-bit values; always str out."""
    if isinstance(value, str):
        return _undo_surrogates(value)
    try:
        chunks = email.header.decode_header(value)
    except Exception:  # a Header with undecodable chunks: never fail on a header
        return ""
    sink: list[str] = []
    return "".join(
        _decode_bytes(b, None if cs in (None, "unknown-8bit") else cs, sink) if isinstance(b, bytes) else b
        for b, cs in chunks)


def _cap_headers(raw: bytes, limits: Limits, gaveup: list[str]) -> bytes:
    """Drop header fields past ``max_headers`` before the MIME parser sees them.

    The stdlib parser is linear, but 100 000 header fields still cost it seconds;
    counting lines here is cheap. Continuation lines of a folded field are not fields.
    """
    end = raw.find(b"\n\n")
    end2 = raw.find(b"\r\n\r\n")
    if end2 != -1 and (end == -1 or end2 < end):
        end = end2
    block = raw if end == -1 else raw[:end]
    if block.count(b"\n") < limits.max_headers:
        return raw
    lines = block.split(b"\n")
    kept, fields = [], 0
    for line in lines:
        if line[:1] not in (b" ", b"\t"):
            fields += 1
            if fields > limits.max_headers:
                break
        kept.append(line)
    if fields <= limits.max_headers:
        return raw
    gaveup.append("headers")
    rest = b"" if end == -1 else raw[end:]
    return b"\n".join(kept) + rest


_CONTENT_FIELD = re.compile(rb"(?im)^content-[a-z0-9-]*[ \t]*:")
_MAX_CONTENT_FIELD = 2048
_MAX_CONTENT_PARAMS = 64


def _cap_content_fields(raw: bytes, gaveup: list[str]) -> bytes:
    """Shorten Content-* fields (top level and in every part) with absurd parameter lists.

    The stdlib re-parses Content-Type/-Disposition parameters on every
    get_content_charset(), get_filename() and get_boundary() call, in time quadratic
    in the number of ';'. A real field has a handful of parameters and fits in a line.
    """
    if raw.count(b";") <= _MAX_CONTENT_PARAMS:
        return raw
    pieces, last = [], 0
    for m in _CONTENT_FIELD.finditer(raw):
        start = m.start()
        if start < last:
            continue
        stop = raw.find(b"\n", start)
        while stop != -1 and raw[stop + 1: stop + 2] in (b" ", b"\t"):
            stop = raw.find(b"\n", stop + 1)
        stop = len(raw) if stop == -1 else stop
        field = raw[start:stop]
        if len(field) > _MAX_CONTENT_FIELD or field.count(b";") > _MAX_CONTENT_PARAMS:
            cut = field[:_MAX_CONTENT_FIELD]
            semis = [i for i, c in enumerate(cut) if c == 0x3B][:_MAX_CONTENT_PARAMS + 1]
            if len(semis) > _MAX_CONTENT_PARAMS:
                cut = cut[: semis[_MAX_CONTENT_PARAMS]]
            pieces += [raw[last:start], cut]
            last = stop
            gaveup.append("header:params")
    if not pieces:
        return raw
    pieces.append(raw[last:])
    return b"".join(pieces)


def _host_tokens(prefix: str, host: str) -> list[str]:
    """``url:host:a.b.example.com`` and its parents down to the last two labels."""
    host = host.strip(".").lower()
    if not host:
        return []
    if _IPV4.fullmatch(host):
        return [f"{prefix}:ip", f"{prefix}:{host.rsplit('.', 1)[0]}"]
    labels = host.split(".")
    out = []
    for i in range(max(0, len(labels) - 6), len(labels) - 1):
        out.append(f"{prefix}:" + ".".join(labels[i:]))
    if len(labels) == 1:
        out.append(f"{prefix}:{host}")
    return out


def _split_url(url: str) -> tuple[str, str, str]:
    """(scheme, host, path) without urllib's exceptions on hostile input."""
    u = url.strip()
    scheme = ""
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*):", u)
    if m:
        scheme = m.group(1).lower()
        u = u[m.end():]
    u = u.lstrip("/\\")
    host, sep, path = u.partition("/")
    host = host.rsplit("@", 1)[-1]            # user:pass@host
    host = host.split("?", 1)[0].split("#", 1)[0]
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return scheme, host[:255], path[:512]


def url_tokens(url: str) -> list[str]:
    scheme, host, path = _split_url(url)
    out = []
    if scheme and scheme not in ("http", "https"):
        out.append(f"url:scheme:{scheme}")
    if scheme == "mailto":
        return out
    if host:
        if "%" in host:
            out.append("url:host-escaped")
        out.extend(_host_tokens("url:host", host))
    if path:
        for piece in re.split(r"[/?&=#.%_+-]+", path.lower()):
            if 2 < len(piece) <= 20 and not piece.isdigit():
                out.append(f"url:path:{piece}")
        if len(path) > 100:
            out.append(f"url:path-long:{_log2_bucket(len(path))}")
    return out


_ADDR_IN_ANGLES = re.compile(r"<([^<>]*)>")
_QUOTED = re.compile(r'"[^"]*"')


def parse_addresses(value: str) -> list[tuple[str, str]]:
    """(display name, address) pairs from an address header, forgivingly.

    ``email.utils.getaddresses`` is strict and slow (a third of the header cost);
    tokens only need the name words and the address parts.
    """
    pairs = []
    # commas inside quoted display names do not separate addresses
    masked = _QUOTED.sub(lambda m: m.group().replace(",", "\x00"), value)
    for item in masked.split(","):
        item = item.replace("\x00", ",").strip()
        if not item:
            continue
        m = _ADDR_IN_ANGLES.search(item)
        if m:
            addr = m.group(1).strip()
            name = (item[: m.start()] + item[m.end():]).strip().strip('"').strip()
        else:
            paren = item.find("(")
            addr, name = (item[:paren].strip(), item[paren:].strip("() ")) if paren > 0 else (item, "")
        pairs.append((name, addr.strip()))
    return pairs


def _address_tokens(name: str, value: str) -> list[str]:
    out = []
    pairs = parse_addresses(value)
    if not pairs or not any(a for _, a in pairs):
        return [f"{name}:none"]
    if name in ("to", "cc"):
        out.append(f"{name}:2**{_log2_bucket(len(pairs))}")
    for real, addr in pairs[:20]:
        addr = addr.lower()
        if real:
            for w in real.lower().split()[:5]:
                out.append(f"{name}:name:{w.strip(_STRIP)}")
        else:
            out.append(f"{name}:no real name")
        local, _, domain = addr.rpartition("@")
        if domain:
            out.append(f"{name}:addr:{domain}")
            if local:
                out.append(f"{name}:addr:{local}@")
                if _DIGITS.search(local):
                    out.append(f"{name}:local-digits")
        elif addr:
            out.append(f"{name}:addr:{addr}")
    return out


_RECEIVED_WORDS = ("esmtp", "smtpsvc", "unverified", "helo", "may be forged", "localhost")
_RECEIVED_HOST = re.compile(r"(?:from|by)\s+([^\s()\[\];]+)", re.I)


def _received_tokens(value: str) -> list[str]:
    out = []
    for ip in find_ips(value, 20):
        a, b, c, _ = ip.split(".")
        out.append(f"received:{a}.{b}.{c}")
        out.append(f"received:{a}.{b}")
    for host in _RECEIVED_HOST.findall(value):
        host = host.lower().strip(".")
        if "." in host and not _IPV4.fullmatch(host):
            parts = host.split(".")
            out.append("received:" + ".".join(parts[-2:]))
            if len(parts) > 2:
                out.append("received:" + ".".join(parts[-3:]))
    low = value.lower()
    for word in _RECEIVED_WORDS:
        if word in low:
            out.append(f"received:says:{word}")
    return out


# ---------------------------------------------------------------- body words

def _body_tokens(text: str, limits: Limits, out: list[str], words_out: list[str]) -> None:
    """SpamBayes-style word tokens, plus an ordered raw word stream for OSB."""
    max_word = limits.max_word
    room = limits.max_words - len(words_out)
    raw_words = text.split()
    if room > 0:
        words_out.extend(raw_words[:room])
    # str.lower never adds whitespace, so this splits at the same places
    stripped = [w.strip(_STRIP) for w in text.lower().split()[: limits.max_tokens]]
    out.extend([w for w in stripped if 3 <= len(w) <= max_word])
    for w in stripped:
        n = len(w)
        if n <= max_word or "@" in w or "://" in w or w.startswith("www."):
            continue  # addresses and links are tokenized from the text as a whole
        out.append(f"skip:{w[0]} {n // 10 * 10}")
        if "." in w and n < 40 and not _DIGITS.search(w):
            # SpamBayes splits a long dotted word ('wwwcasino.com') into parts
            out.extend(p for p in w.split(".") if 3 <= len(p) <= max_word)


def find_urls(text: str, limit: int = 200) -> list[str]:
    """Links written out in text: scheme://... and bare www.... ."""
    urls = []
    end = 0
    for m in _URL_ANCHOR.finditer(text):
        start = m.start()
        if start < end:
            continue
        if m.group() == "://":
            sm = _URL_SCHEME_BEFORE.search(text, max(0, start - 5), start)
            if not sm:
                continue
            start = sm.start()
        elif start and (text[start - 1].isalnum() or text[start - 1] in "/."):
            continue
        rest = _URL_REST.match(text, m.end())
        if not rest:
            continue
        end = rest.end()
        urls.append(text[start:end].rstrip(".,;:!?)"))
        if len(urls) >= limit:
            break
    return urls


def find_emails(text: str, limit: int = 100) -> list[str]:
    out = []
    if "@" not in text:
        return out
    for m in _EMAIL_DOMAIN.finditer(text):
        local = _EMAIL_LOCAL.search(text, max(0, m.start() - 64), m.start())
        if local:
            out.append((local.group() + "@" + m.group(1)).lower())
            if len(out) >= limit:
                break
    return out


def find_ips(text: str, limit: int = 50) -> list[str]:
    if "." not in text:
        return []
    fullmatch = _IPV4.fullmatch  # the loose scan is linear; the strict check is per match
    return [ip for ip in _IPV4_LOOSE.findall(text) if fullmatch(ip)][:limit]


def find_phones(text: str, limit: int = 50) -> list[str]:
    out = []
    for ph in _PHONE.findall(text):
        if ph.count(".") == 3 and _IPV4.fullmatch(ph):
            continue
        digits = "".join(c for c in ph if c.isdigit())
        if 9 <= len(digits) <= 15:
            out.append(digits)
            if len(out) >= limit:
                break
    return out


def _text_fact_tokens(text: str, feats: MessageFeatures, out: list[str]) -> None:
    seen_hosts = set()
    for url in find_urls(text):
        feats.urls.append(url)
        for t in url_tokens(url if "://" in url else "http://" + url):
            if t not in seen_hosts:
                seen_hosts.add(t)
                out.append(t)
    for addr in find_emails(text):
        feats.emails.append(addr)
        out.append("email:addr:" + addr.rsplit("@", 1)[1])
    for ip in find_ips(text):
        feats.ips.append(ip)
        out.append("ip:" + ip.rsplit(".", 1)[0])
    for digits in find_phones(text):
        feats.phones.append(digits)
        out.append("phone:" + digits)
    n = len(text)
    if n:
        sample = text[:20000]
        ascii_ = sample.encode("ascii", "ignore")
        eight = len(sample) - len(ascii_)
        upper = len(ascii_) - len(ascii_.translate(None, _UPPER_BYTES))
        out.append(f"text:upper%:{int(20 * upper / len(sample)) * 5}")
        if eight:
            out.append(f"text:8bit%:{int(20 * eight / len(sample)) * 5}")
        out.append(f"text:len:2**{_log2_bucket(n)}")


# ---------------------------------------------------------------- headers

def _header_tokens(msg, feats: MessageFeatures, gaveup: list[str], limits: Limits,
                   out: list[str]) -> None:
    counts: dict[str, int] = {}
    names_in_case: dict[str, str] = {}
    for name, value in msg.items():
        if len(feats.headers) >= limits.max_headers:
            gaveup.append("headers")
            break
        name = str(name)
        lname = name.lower()
        counts[lname] = counts.get(lname, 0) + 1
        names_in_case.setdefault(lname, name)
        value = _raw_header_str(value)
        if len(value) > limits.max_header_chars:
            value = value[: limits.max_header_chars]
            gaveup.append("header:long")
        if "=?" in value:
            if _ENCODED_WORD.search(value):
                out.append(f"header:encoded:{lname}")
            value = decode_header_value(value, gaveup)
        elif "\x00" in value:
            value = value.replace("\x00", " ")
        feats.headers.append((name, value))

        if lname == "subject":
            if not feats.subject:
                feats.subject = value
            for w in value.split():
                wl = w.strip(_STRIP).lower()
                if 1 < len(wl) <= 20:
                    out.append("subject:" + wl)
                elif len(wl) > 20:
                    out.append(f"subject:skip:{wl[0]} {len(wl) // 10 * 10}")
            for run in _NONWORD_RUN.findall(value):
                out.append("subject:" + run[:8])
            letters = [c for c in value if c.isalpha()]
            if len(letters) > 5 and sum(c.isupper() for c in letters) > 0.6 * len(letters):
                out.append("subject:ALLCAPS")
            if _DIGITS.search(value) and re.search(r"\d{3,}", value):
                out.append("subject:has-long-number")
        elif lname in _ADDRESS_HEADERS:
            out.extend(_address_tokens(lname, value))
        elif lname == "received":
            out.extend(_received_tokens(value))
        elif lname == "message-id":
            m = re.search(r"@([^>\s]+)>?", value)
            if m:
                out.extend("message-id:@" + t.removeprefix("h:")
                           for t in _host_tokens("h", m.group(1))[-2:])
            else:
                out.append("message-id:invalid")
        elif lname == "content-type":
            ct = value.split(";", 1)[0].strip().lower()
            out.append(f"content-type:{ct}")
            m = re.search(r'charset\s*=\s*"?([^";\s]+)', value, re.I)
            if m:
                out.append(f"charset:{m.group(1).lower()}")
        elif lname == "date":
            try:
                d = email.utils.parsedate_tz(value)
            except Exception:
                d = None
            if d is None:
                out.append("date:unparseable")
        if lname != "subject":
            # every header's value words, namespaced by header (SpamBayes' generic
            # header tokenizing; on the batch split it took token Bayes from 1-ROCA%
            # 0.052 to 0.045)
            prefix = f"hdr:{lname}:"
            out.extend([prefix + w for w in _HEADER_SPLIT.split(value.lower(), 30)[:30] if 2 < len(w) <= 40])
    for lname, n in counts.items():
        out.append(f"header:{names_in_case[lname]}:{min(n, 5)}")
        if n > 1 and lname in _COUNTED_ONCE:
            out.append(f"header:duplicate:{lname}")
    for needed in ("date", "message-id", "from", "to", "subject"):
        if needed not in counts:
            out.append(f"header:missing:{needed}")
    out.append(f"header:count:2**{_log2_bucket(len(feats.headers))}")


# ---------------------------------------------------------------- MIME walk

_BASE64_DEFECTS = (email.errors.InvalidBase64PaddingDefect, email.errors.InvalidBase64CharactersDefect,
                   email.errors.InvalidBase64LengthDefect)
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")


def _lenient_b64(text: str) -> bytes:
    """Decode what can be decoded of broken base64: the stdlib gives up on a length
    of 1 mod 4 (a truncated part) and returns the undecoded text instead."""
    clean = _NOT_BASE64.sub("", text)
    clean = clean[: len(clean) - len(clean) % 4]
    try:
        return base64.b64decode(clean)
    except (ValueError, binascii.Error):
        return b""


def _part_text(part, gaveup: list[str]) -> str | None:
    """Decoded text of a leaf part (None when it has no payload)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # a broken part must not stop the walk
        gaveup.append("payload")
        return None
    if payload is None:
        return None
    if part.defects and any(isinstance(d, _BASE64_DEFECTS) for d in part.defects):
        gaveup.append("base64")
        if isinstance(part.get_payload(), str):
            payload = _lenient_b64(part.get_payload())
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return _decode_bytes(payload, charset, gaveup)


def _filename(part) -> str:
    # get_filename() re-parses the parameters (slow): only ask when there can be a name
    if part.get("Content-Disposition") is None and "name" not in str(part.get("Content-Type", "")).lower():
        return ""
    try:
        name = part.get_filename() or ""
    except Exception:
        return ""
    return decode_header_value(_raw_header_str(name))[:200]


def _walk(msg, depth: int, state: dict, limits: Limits):
    """Yield (part, depth), following message/rfc822 to ``max_depth``, capped in parts."""
    stack = [(msg, depth)]
    while stack:
        part, d = stack.pop()
        state["parts"] += 1
        if state["parts"] > limits.max_parts:
            state["gaveup"].append("parts")
            return
        yield part, d
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                if d + 1 > limits.max_depth:
                    state["gaveup"].append("depth")
                    continue
                stack.extend((p, d + 1) for p in reversed(payload) if hasattr(p, "get_content_type"))


def message_bytes(raw: bytes | bytearray | memoryview | str) -> bytes:
    """The bytes that are the message: a str as UTF-8, without a leading mbox separator.

    An mbox ``From `` line is not part of the message: SMTP never carries it, and in the
    public corpora its date tells spam from ham by accident.
    """
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:  # lone surrogates outside the escape range
            raw = raw.encode("utf-8", errors="replace")
    raw = bytes(raw)
    if raw.startswith(b"From "):
        nl = raw.find(b"\n")
        raw = raw[nl + 1:] if nl != -1 else b""
    return raw


def message_digest(raw) -> str:
    """A message's identity (``MessageFeatures.digest``) without parsing it."""
    return hashlib.sha256(message_bytes(raw)).hexdigest()


def extract(raw: bytes | bytearray | memoryview | str, limits: Limits = DEFAULT_LIMITS) -> MessageFeatures:
    """Parse one raw message. Never raises on malformed input."""
    raw = message_bytes(raw)
    gaveup: list[str] = []
    feats = MessageFeatures(
        digest=hashlib.sha256(raw).hexdigest(), size=len(raw), headers=[], subject="",
        text="", urls=[], emails=[], ips=[], phones=[], attachments=[], content_types=[],
        tokens=[], words=[], head=raw[: limits.head_bytes], gaveup=gaveup)
    try:
        _extract(raw, feats, limits)
    except Exception as exc:  # the last line of defence: degrade, never raise
        gaveup.append("parser:" + type(exc).__name__)
    # what was given up on is said even when the token cap cuts: the cut makes room
    reasons = list(dict.fromkeys(gaveup))
    room = limits.max_tokens + 1
    if len(feats.tokens) + len(reasons) > room:
        gaveup.append("tokens")
        reasons = [r for r in reasons if r != "tokens"][: max(0, room - 1)] + ["tokens"]
        del feats.tokens[max(0, room - len(reasons)):]
    feats.tokens.extend("gaveup:" + g for g in reasons)
    return feats


def _extract(raw: bytes, feats: MessageFeatures, limits: Limits) -> None:
    gaveup = feats.gaveup
    out = feats.tokens
    words = feats.words
    if b"\x00" in raw[:limits.max_bytes]:
        out.append("raw:nul")
        raw = raw.replace(b"\x00", b" ")
    if len(raw) > limits.max_bytes:
        raw = raw[: limits.max_bytes]
        gaveup.append("bytes")
    out.append(f"raw:size:2**{_log2_bucket(len(raw))}")
    raw = _cap_headers(raw, limits, gaveup)
    raw = _cap_content_fields(raw, gaveup)
    # The OSB stream starts with the raw header words, as CRM114 reads them: on the
    # batch split this took OSB from 1-ROCA% 0.108 (Subject and From only) to 0.012.
    end = raw.find(b"\n\n")
    header_block = raw if end == -1 else raw[:end]
    words.extend(header_block[:16384].decode("latin-1").split()[: min(limits.max_header_words, limits.max_words)])
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except RecursionError:
        # MIME nested a thousand deep exhausts the stdlib parser's recursion; keep the
        # outer headers and read the rest as plain text rather than lose it all
        gaveup.append("depth")
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
        body = raw[end + 2:] if end != -1 else b""
        msg.set_payload(body.decode("latin-1"))
        for name in ("Content-Type", "Content-Transfer-Encoding"):
            del msg[name]

    _header_tokens(msg, feats, gaveup, limits, out)

    state = {"parts": 0, "gaveup": gaveup}
    texts: list[str] = []
    total_chars = 0
    html_seen = plain_seen = False
    for part, depth in _walk(msg, 0, state, limits):
        try:
            ctype = part.get_content_type()
        except Exception:
            ctype = "text/plain"
        feats.content_types.append(ctype)
        for defect in part.defects or ():
            out.append("defect:" + type(defect).__name__)
        if part is not msg:
            out.append(f"mime:{ctype}")
        if ctype in ("message/rfc822", "message/partial"):
            out.append(f"mime:nested:{ctype}")
        if part.is_multipart():
            continue
        maintype = ctype.split("/", 1)[0]
        disposition = (part.get("Content-Disposition") or "")
        disposition = _raw_header_str(disposition).split(";", 1)[0].strip().lower()
        filename = _filename(part)
        if maintype == "text" and disposition != "attachment" and total_chars < limits.max_text_chars:
            text = _part_text(part, gaveup)
            if text is None:
                continue
            if len(text) > limits.max_part_chars:
                text = text[: limits.max_part_chars]
                gaveup.append("part-chars")
            if ctype == "text/html":
                html_seen = True
                facts = html_to_text(text, limits.max_part_chars)
                text = facts.text
                _html_tokens(facts, feats, out)
            else:
                plain_seen = True
            total_chars += len(text)
            texts.append(text)
            if filename:
                out.append("attach:text-with-name")
        else:
            try:
                payload = part.get_payload(decode=True)
            except Exception:
                payload = None
                gaveup.append("payload")
            size = len(payload) if payload else 0
            feats.attachments.append(Attachment(ctype, filename, size))
            out.append(f"attach:type:{ctype}")
            out.append(f"attach:size:2**{_log2_bucket(size)}")
            if filename:
                ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
                out.append(f"attach:ext:{ext[:10] or 'none'}")
                if filename.count(".") > 1:
                    out.append("attach:double-extension")
            if maintype == "text":
                gaveup.append("text-chars")
    n_parts = min(state["parts"], limits.max_parts)
    out.append(f"mime:parts:{min(n_parts, 10)}")
    if html_seen and not plain_seen:
        out.append("mime:html-only")
    if feats.attachments:
        out.append(f"attach:count:{min(len(feats.attachments), 5)}")

    text = "\n".join(texts)
    feats.text = text
    body_out: list[str] = []
    _body_tokens(text, limits, body_out, words)
    out.extend(body_out)
    _text_fact_tokens(text, feats, out)


def _html_tokens(facts, feats: MessageFeatures, out: list[str]) -> None:
    for tag in sorted(facts.tags):
        out.append(f"html:tag:{tag}")
    if facts.images:
        out.append(f"html:img:{min(facts.images, 5)}")
    if facts.comments:
        out.append(f"html:comments:2**{_log2_bucket(facts.comments)}")
    if facts.forms:
        out.append("html:form")
        feats.forms += facts.forms
    if facts.password_inputs:
        out.append("html:password-input")
        feats.password_inputs += facts.password_inputs
    seen = set()
    for link in facts.links[:200]:
        url = link.url
        if url.lower().startswith("javascript:"):
            out.append("url:javascript")
            continue
        feats.urls.append(url)
        if link.kind == "form":
            feats.form_actions.append(url)
        if link.kind != "a":
            out.append(f"url:in:{link.kind}")
        if link.text:
            feats.link_pairs.append((link.text, url))
            shown = _HOSTISH.search(link.text)
            if shown:
                _, real_host, _ = _split_url(url)
                if real_host and not real_host.lower().endswith(shown.group().lower().removeprefix("www.")):
                    out.append("url:text-host-mismatch")
        for t in url_tokens(url):
            if t not in seen:
                seen.add(t)
                out.append(t)


def as_features(x) -> MessageFeatures:
    """Accept raw bytes/str or already-extracted features (the estimators' X items)."""
    if isinstance(x, MessageFeatures):
        return x
    return extract(x)
