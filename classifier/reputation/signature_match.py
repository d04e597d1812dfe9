"""ClamAV-format signatures: hash and body signatures of the kind Sanesecurity publishes.

Two engines give the same ``signature_match`` signal ("Message matched signature
SIGNATURE"):

- ``SignatureSet``, our own matcher for the ClamAV database formats below, loaded from
  files an admin keeps (``load_signatures``);
- ``ClamdScanner``, a client of a running ``clamd`` (Debian package clamav-daemon)
  that streams the message over clamd's INSTREAM protocol: the real engine, for the
  whole of the format and for large signature sets.

Formats read by ``SignatureSet`` (the ClamAV manual's "Signatures" chapter; example
files: ``tests/data/signatures.example.ndb`` and ``.hdb``)::

    .hdb .hsb      HashString:FileSize:MalwareName[:min_flevel[:max_flevel]]
                   MD5 (32 hex), SHA1 (40) or SHA256 (64) of a whole file; FileSize may
                   be '*' (any size), which ClamAV accepts only with min_flevel >= 73
    .hdu .hsu      the same (ClamAV's PUA variants)
    .fp .sfp       the same format, read as an allowlist: a file with a listed hash is
                   not reported
    .ndb .ndu      MalwareName:TargetType:Offset:HexSignature[:min_flevel[:max_flevel]]
    .ldb .ldu      SignatureName;TargetDescriptionBlock;LogicalExpression;Subsig0;...
                   (a subset, below)
    .ign2 .ign     signature names (one per line, optionally followed by ':...') to drop

Everything else (.cdb, .mdb, .ftm, .pdb, .wdb, .yara, .cvd/.cld containers...) is
skipped with one log line naming the file.

What a "file" is for a message, as clamd 1.4 treats a mail (checked against the real
daemon, see tests/test_reputation_signatures.py):

- the message as received: TargetType 0 and 4, and the hash signatures;
- the decoded payload of every MIME leaf part: TargetType 0 and the hash signatures;
- a part that is HTML by ClamAV's HTML magic (``<html>``, ``<img``, ``<table``,
  ``<a ... href``..., whatever its Content-Type says) is also scanned normalised, twice:
  comments dropped, and tags dropped, both lower-cased with white space collapsed
  (TargetType 0 and 3; an approximation of ClamAV's HTML normaliser, which also decodes
  entities and normalises scripts);
- any other part that is text is also scanned normalised exactly as ClamAV's text
  normaliser does it: ASCII letters lower-cased, a run of white space one space,
  control and 8-bit bytes dropped (TargetType 0 and 7). So a TargetType 0 signature
  written in lower case matches "ACT   NOW" as "act now", as it does in clamd.

Other target types (executables, OLE2, PDF, graphics...) are skipped at load time with
a reason: a mail filter's own matcher does not parse those formats; clamd does.

Body signature syntax supported: hex bytes; ``??``; nibbles ``a?``/``?a``; ``*``;
``{n}``, ``{-n}``, ``{n-}``, ``{n-m}``; ``[n-m]``; alternatives ``(aa|bbcc|d?)``
(generic: any length, wildcards inside) and negated ones ``!(aa|bb)`` (single-byte or
fixed-length); ``(B)``, ``(L)``, ``(W)`` and their negations at either end of the
signature. Offsets: ``*``, ``n``, ``EOF-n``, and floating ``n,m`` / ``EOF-n,m``
(EP/Sx/SE/SL apply to executables and are refused). min/max flevel are accepted and
not enforced.

Logical signatures (.ldb) subset: TargetDescriptionBlock keys Engine (ignored), Target
(0, 3, 4, 7) and FileSize; the full LogicalExpression grammar (``&``, ``|``,
parentheses, ``=X``, ``=X,Y``, ``>X``, ``>X,Y``, ``<X``, ``<X,Y``; like ClamAV, an
operator binds everything to its right); hex subsignatures with an optional offset and
the modifiers ``::i`` (nocase), ``::w`` (wide), ``::a`` (ascii), ``::f`` (fullword);
PCRE subsignatures ``[offset:]Trigger/regex/flags`` run with Python ``re`` (flags i, s,
m, x, A, E, g, r, e; named groups ``(?<n>`` are translated; a regex Python cannot
compile skips its signature). Macro (``${...}$``) and byte-compare subsignatures, and
other TDB keys, skip their signature with a reason.

A line that cannot be read is skipped with a logged reason (file, line number, why);
the rest of the file loads. (ClamAV itself refuses a whole database with one bad line;
its loader also refuses blank lines but accepts '#' comments, as this one does.)

Speed: each signature's longest fixed byte string is its anchor; one Aho-Corasick pass
(``pyahocorasick``) over a file finds the signatures whose anchor occurs, and only
those run their regular expression. A signature split by ``*`` is matched part after
part, each part after the previous one's end, so that ``A*B*C`` costs linear time
instead of a backtracking regex's cubic time.
"""
from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import os
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable

from classifier.features import MessageFeatures, message_bytes
from classifier.logs import log_event

from .base import Disabled, Signal, disabled

__all__ = ["SignatureError", "BodySignature", "HashSignature", "LogicalSignature", "SignatureSet",
           "Match", "load_signatures", "parse_ndb", "parse_hash", "parse_ldb", "hex_to_regex",
           "ClamdScanner", "ClamdError", "signature_match", "text_normalise"]

log = logging.getLogger("mailsift.reputation.signature_match")

CLASSIFICATION = "signature_match"
MAX_SCAN = 4 * 1024 * 1024     # bytes of one file scanned by body signatures
MAX_PARTS = 200                 # MIME parts of one message scanned (as features.Limits)
MAX_COUNT = 256                 # occurrences of one subsignature counted for =X/>X/<X
SUPPORTED_TARGETS = {0: "any", 3: "HTML (normalised)", 4: "mail", 7: "text (normalised)"}
_HASH_EXT = (".hdb", ".hsb", ".hdu", ".hsu")
_FP_EXT = (".fp", ".sfp")
_NDB_EXT = (".ndb", ".ndu")
_LDB_EXT = (".ldb", ".ldu")
_IGN_EXT = (".ign2", ".ign")


class SignatureError(ValueError):
    """One signature line that cannot be used; the message says why."""


# ---------------------------------------------------------------- hex signatures -> regex

_HEX = "0123456789abcdefABCDEF"
# ClamAV's boundary table (libclamav/matcher-ac.c): bytes that may precede / follow a
# (B) boundary
_B_LEFT = b" -./<@_"
_B_RIGHT = b"\n\r \"'-/=>_"


def _cls(byteset: Iterable[int], negate: bool = False) -> bytes:
    body = b"".join(re.escape(bytes([b])) for b in sorted(set(byteset)))
    return b"[" + (b"^" if negate else b"") + body + b"]"


def _lit(data: bytes, wide: bool) -> bytes:
    if wide:
        return b"".join(re.escape(bytes([b])) + b"\\x00" for b in data)
    return re.escape(data)


@dataclass
class _Parsed:
    """A hex signature split at its top-level '*': one regex per part, the anchors
    (fixed byte strings of which one must occur), and boundary assertions."""

    parts: list[bytes]
    anchor: bytes


class _HexParser:
    def __init__(self, text: str, wide: bool):
        self.s = text
        self.i = 0
        self.wide = wide
        self.literals: list[bytes] = []    # fixed runs, for the anchor

    def error(self, msg: str) -> SignatureError:
        return SignatureError(f"hex signature, at character {self.i}: {msg}")

    def peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def number(self) -> int:
        j = self.i
        while self.i < len(self.s) and self.s[self.i].isdigit():
            self.i += 1
        if j == self.i:
            raise self.error("a number was expected")
        return int(self.s[j:self.i])

    def seq(self, stop: str = "") -> list:
        """Nodes until end of input or a character in ``stop``."""
        nodes: list = []
        run = bytearray()

        def flush():
            if run:
                nodes.append(("lit", bytes(run)))
                self.literals.append(bytes(run))
                run.clear()

        while self.i < len(self.s) and self.s[self.i] not in stop:
            c = self.s[self.i]
            two = self.s[self.i:self.i + 2]
            if len(two) == 2 and two[0] in _HEX and two[1] in _HEX:
                run.append(int(two, 16))
                self.i += 2
                continue
            flush()
            if two == "??":
                nodes.append(("gap", 1, 1))
                self.i += 2
            elif len(two) == 2 and two[0] in _HEX and two[1] == "?":
                hi = int(two[0], 16) << 4
                nodes.append(("class", range(hi, hi + 16)))
                self.i += 2
            elif len(two) == 2 and two[0] == "?" and two[1] in _HEX:
                lo = int(two[1], 16)
                nodes.append(("class", range(lo, 256, 16)))
                self.i += 2
            elif c == "*":
                nodes.append(("star",))
                self.i += 1
            elif c == "{":
                self.i += 1
                if self.peek() == "-":
                    self.i += 1
                    lo, hi = 0, self.number()
                else:
                    lo = self.number()
                    hi = lo
                    if self.peek() == "-":
                        self.i += 1
                        hi = None if self.peek() == "}" else self.number()
                if self.peek() != "}":
                    raise self.error("'}' expected")
                self.i += 1
                if hi is not None and hi < lo:
                    raise self.error(f"range {{{lo}-{hi}}} is empty")
                nodes.append(("gap", lo, hi))
            elif c == "[":
                self.i += 1
                lo = self.number()
                if self.peek() != "-":
                    raise self.error("'-' expected in [x-y]")
                self.i += 1
                hi = self.number()
                if self.peek() != "]":
                    raise self.error("']' expected")
                self.i += 1
                if hi < lo:
                    raise self.error(f"range [{lo}-{hi}] is empty")
                nodes.append(("gap", lo, hi))
            elif c == "!" or c == "(":
                neg = c == "!"
                if neg:
                    self.i += 1
                    if self.peek() != "(":
                        raise self.error("'(' expected after '!'")
                if self.s[self.i:self.i + 3] in ("(B)", "(L)", "(W)"):
                    nodes.append(("anchor", self.s[self.i + 1], neg))
                    self.i += 3
                    continue
                self.i += 1
                alts = []
                saved = self.literals
                self.literals = []          # literals inside alternatives are not required
                while True:
                    alts.append(self.seq("|)"))
                    if self.peek() == "|":
                        self.i += 1
                        continue
                    if self.peek() == ")":
                        self.i += 1
                        break
                    raise self.error("unclosed '('")
                self.literals = saved
                if any(any(n[0] in ("star", "anchor") for n in alt) for alt in alts):
                    raise self.error("'*' and (B)/(L)/(W) are not allowed inside alternatives")
                nodes.append(("alt", alts, neg))
            else:
                raise self.error(f"unexpected {c!r}")
        flush()
        return nodes


def _fixed_len(nodes: list) -> int | None:
    n = 0
    for node in nodes:
        if node[0] == "lit":
            n += len(node[1])
        elif node[0] == "class":
            n += 1
        elif node[0] == "gap" and node[1] == node[2]:
            n += node[1]
        else:
            return None
    return n


def _emit(nodes: list, wide: bool) -> bytes:
    out = []
    for node in nodes:
        kind = node[0]
        if kind == "lit":
            out.append(_lit(node[1], wide))
        elif kind == "class":
            out.append(_cls(node[1]) + (b"\\x00" if wide else b""))
        elif kind == "gap":
            lo, hi = node[1], node[2]
            if hi is None:
                out.append(b".{%d,}?" % lo)
            elif lo == hi:
                out.append(b"." if lo == 1 else b".{%d}" % lo)
            else:
                out.append(b".{%d,%d}?" % (lo, hi))
        elif kind == "alt":
            alts, neg = node[1], node[2]
            if not neg:
                out.append(b"(?:" + b"|".join(_emit(a, wide) for a in alts) + b")")
                continue
            lens = {_fixed_len(a) for a in alts}
            if len(lens) != 1 or None in lens:
                raise SignatureError("a negated alternative must have members of one fixed length")
            n = lens.pop()
            if n == 1 and all(len(a) == 1 and a[0][0] in ("lit", "class") for a in alts):
                members = set()
                for a in alts:
                    members.update(a[0][1] if a[0][0] == "class" else a[0][1])
                out.append(_cls(members, negate=True) + (b"\\x00" if wide else b""))
            else:
                out.append(b"(?!(?:" + b"|".join(_emit(a, wide) for a in alts) + b"))"
                           + b".{%d}" % (n * (2 if wide else 1)))
        else:
            raise SignatureError(f"internal: unexpected node {kind}")
    return b"".join(out)


def _boundary(kind: str, left: bool, neg: bool) -> bytes:
    if kind == "B":
        pos = (b"(?:\\A|(?<=" + _cls(_B_LEFT) + b"))") if left else (b"(?=" + _cls(_B_RIGHT) + b"|\\Z)")
    elif kind == "L":
        pos = b"(?:\\A|(?<=\\n))" if left else b"(?=\\n|\\r\\n|\\Z)"
    else:
        pos = b"(?:\\A|(?<![A-Za-z0-9]))" if left else b"(?![A-Za-z0-9])"
    return b"(?!" + pos + b")" if neg else pos


def hex_to_regex(hexsig: str, *, wide: bool = False, fullword: bool = False) -> _Parsed:
    """Compile a ClamAV hex signature into regex parts (bytes, for ``re`` with DOTALL).

    The parts are the pieces between top-level ``*``; they must match in order.
    Raises ``SignatureError`` with the reason when the signature is not supported.
    """
    hexsig = hexsig.strip()
    if not hexsig:
        raise SignatureError("empty hex signature")
    p = _HexParser(hexsig, wide)
    nodes = p.seq()
    # (B)/(L)/(W) only at the two ends
    left = right = b""
    if nodes and nodes[0][0] == "anchor":
        left = _boundary(nodes[0][1], True, nodes[0][2])
        nodes = nodes[1:]
    if nodes and nodes[-1][0] == "anchor":
        right = _boundary(nodes[-1][1], False, nodes[-1][2])
        nodes = nodes[:-1]
    if any(n[0] == "anchor" for n in nodes):
        raise SignatureError("(B), (L) and (W) are supported only at the start or end of a signature")
    if not nodes:
        raise SignatureError("signature has no content")
    if nodes[0][0] == "star" or nodes[-1][0] == "star":
        raise SignatureError("a signature cannot start or end with '*'")
    if nodes[0][0] == "gap" or nodes[-1][0] == "gap":
        raise SignatureError("a signature cannot start or end with a wildcard range")
    pieces: list[list] = [[]]
    for n in nodes:
        if n[0] == "star":
            if not pieces[-1]:
                raise SignatureError("'**' is not a signature")
            pieces.append([])
        else:
            pieces[-1].append(n)
    if fullword:
        left = left or _boundary("W", True, False)
        right = right or _boundary("W", False, False)
    parts = [_emit(piece, wide) for piece in pieces]
    parts[0] = left + parts[0]
    parts[-1] = parts[-1] + right
    anchor = max(p.literals, key=len, default=b"")
    if len(anchor) < 2:
        raise SignatureError("a signature needs at least two fixed bytes in a row")
    if wide:
        anchor = b"".join(bytes([b]) + b"\x00" for b in anchor)
    return _Parsed(parts=parts, anchor=anchor)


# ---------------------------------------------------------------- offsets

@dataclass(frozen=True)
class _Offset:
    kind: str            # "any", "abs", "eof"
    n: int = 0
    shift: int = 0

    def window(self, size: int) -> tuple[int, int] | None:
        """(first, last) allowed start of the match, None for anywhere, or (-1, -1)
        when the offset lies outside the data."""
        if self.kind == "any":
            return None
        start = self.n if self.kind == "abs" else size - self.n
        if start < 0 or start > size:
            return (-1, -1)
        return (start, start + self.shift)

    def __str__(self) -> str:
        if self.kind == "any":
            return "*"
        base = str(self.n) if self.kind == "abs" else f"EOF-{self.n}"
        return f"{base},{self.shift}" if self.shift else base


_OFFSET = re.compile(r"(?:(\d+)|EOF-(\d+))(?:,(\d+))?")


def _parse_offset(text: str) -> _Offset:
    text = text.strip()
    if text == "*":
        return _Offset("any")
    m = _OFFSET.fullmatch(text)
    if not m:
        if re.match(r"(EP|S\d+|SE\d+|SL|VI|\$)", text):
            raise SignatureError(f"offset {text!r} applies to executables, which this matcher does not parse")
        raise SignatureError(f"offset {text!r} is not *, n, EOF-n or one of those with ,maxshift")
    shift = int(m.group(3) or 0)
    if m.group(1) is not None:
        return _Offset("abs", int(m.group(1)), shift)
    return _Offset("eof", int(m.group(2)), shift)


# ---------------------------------------------------------------- compiled body patterns

class _Body:
    """A compiled hex (sub)signature: ordered regex parts with an offset."""

    __slots__ = ("parts", "anchor", "offset", "nocase", "variants")

    def __init__(self, hexsig: str, offset: _Offset, *, nocase=False, wide=False, ascii=True,
                 fullword=False):
        self.offset = offset
        self.nocase = nocase
        flags = re.DOTALL | (re.IGNORECASE if nocase else 0)
        self.variants = []            # (parts, anchor): ascii and/or wide forms
        forms = ([False] if ascii or not wide else []) + ([True] if wide else [])
        for w in forms:
            parsed = hex_to_regex(hexsig, wide=w, fullword=fullword)
            try:
                parts = [re.compile(p, flags) for p in parsed.parts]
            except re.error as e:     # pragma: no cover - the emitter escapes everything
                raise SignatureError(f"internal regex error: {e}") from None
            self.variants.append((parts, parsed.anchor.lower()))

    @property
    def anchors(self) -> list[bytes]:
        return [a for _, a in self.variants]

    def _match_from(self, parts, data: bytes, first: int, last: int | None) -> tuple[int, int] | None:
        """Match the parts in order with the first one starting in [first, last]
        (last None: anywhere from ``first``); (start, end) or None."""
        m = parts[0].search(data, first)
        if m is None or (last is not None and m.start() > last):
            return None
        start, pos = m.start(), m.end()
        for part in parts[1:]:
            m = part.search(data, pos)
            if m is None:
                return None
            pos = m.end()
        return start, pos

    def find(self, data: bytes) -> tuple[int, int] | None:
        win = self.offset.window(len(data))
        if win == (-1, -1):
            return None
        first, last = (0, None) if win is None else win
        for parts, _ in self.variants:
            got = self._match_from(parts, data, first, last)
            if got:
                return got
        return None

    def count(self, data: bytes, limit: int = MAX_COUNT) -> tuple[int, int | None]:
        """(occurrences, first offset): distinct start offsets, up to ``limit``."""
        win = self.offset.window(len(data))
        if win == (-1, -1):
            return 0, None
        first, last = (0, None) if win is None else win
        n, where = 0, None
        for parts, _ in self.variants:
            pos = first
            while n < limit and pos <= len(data):
                got = self._match_from(parts, data, pos, last)
                if got is None:
                    break
                n += 1
                where = got[0] if where is None else min(where, got[0])
                pos = got[0] + 1
        return n, where


# ---------------------------------------------------------------- signatures

@dataclass(frozen=True)
class HashSignature:
    name: str
    algorithm: str          # md5, sha1, sha256
    digest: str             # lower-case hex
    size: int | None        # None: any size
    source: str


@dataclass
class BodySignature:
    name: str
    target: int
    body: _Body
    source: str


@dataclass
class _PcreSub:
    trigger: "_Expr"
    regex: re.Pattern
    offset: _Offset
    global_: bool
    rolling: bool
    encompass: bool
    anchored: bool

    def count(self, data: bytes) -> tuple[int, int | None]:
        win = self.offset.window(len(data))
        if win == (-1, -1):
            return 0, None
        if win is None:
            first, last, end = 0, None, len(data)
        else:
            first, last = win
            end = last if (self.encompass and self.offset.shift) else len(data)
            if not self.offset.shift and not self.rolling:
                last = first                   # auto-anchored at the offset
        if self.anchored:
            last = first
        n, where, pos = 0, None, first
        while pos <= end:
            m = self.regex.search(data, pos, end)
            if m is None or (last is not None and m.start() > last):
                break
            n += 1
            where = m.start() if where is None else where
            if not self.global_ or n >= MAX_COUNT:
                break
            pos = m.end() if m.end() > m.start() else m.start() + 1
        return n, where


@dataclass
class LogicalSignature:
    name: str
    target: int
    expr: "_Expr"
    subs: list                  # _Body or _PcreSub, by index
    file_size: tuple[int, int] | None
    source: str

    def evaluate(self, data: bytes, counts: dict[int, tuple[int, int | None]]) -> bool:
        """``counts`` holds the hex subsignatures' counts; PCRE ones run here, after
        their trigger, as ClamAV runs them last."""
        if self.file_size and not self.file_size[0] <= len(data) <= self.file_size[1]:
            return False
        vals = {i: counts.get(i, (0, None))[0] for i, s in enumerate(self.subs) if isinstance(s, _Body)}
        for i, sub in enumerate(self.subs):
            if isinstance(sub, _PcreSub):
                vals[i] = sub.count(data)[0] if sub.trigger.eval(vals)[0] else 0
        return self.expr.eval(vals)[0]


# ---------------------------------------------------------------- logical expressions

class _Expr:
    """A node of a LogicalExpression: a subsignature index or an operator, with an
    optional count modifier. ``eval`` returns (true?, match count, distinct ids)."""

    def __init__(self, op: str, left=None, right=None, index: int | None = None):
        self.op, self.left, self.right, self.index = op, left, right, index
        self.mod: tuple[str, int, int | None] | None = None

    def indexes(self) -> set[int]:
        if self.op == "id":
            return {self.index}
        return self.left.indexes() | self.right.indexes() if self.op in "&|" else self.left.indexes()

    def eval(self, vals: dict[int, int]) -> tuple[bool, int, set[int]]:
        if self.op == "id":
            n = vals.get(self.index, 0)
            ok, cnt, ids = n > 0, n, ({self.index} if n else set())
        elif self.op == "()":
            ok, cnt, ids = self.left.eval(vals)
        else:
            lok, lc, lids = self.left.eval(vals)
            rok, rc, rids = self.right.eval(vals)
            ok = (lok and rok) if self.op == "&" else (lok or rok)
            cnt, ids = lc + rc, lids | rids
        if self.mod:
            sym, x, y = self.mod
            ok = {"=": cnt == x, ">": cnt > x, "<": cnt < x}[sym]
            if y is not None:
                ok = ok and len(ids) >= y
        return ok, cnt, ids


def _parse_expr(text: str, nsubs: int | None = None) -> _Expr:
    s = text.replace(" ", "")
    pos = 0

    def err(msg):
        return SignatureError(f"logical expression {text!r}: {msg} at character {pos}")

    def number() -> int:
        nonlocal pos
        j = pos
        while pos < len(s) and s[pos].isdigit():
            pos += 1
        if j == pos:
            raise err("number expected")
        return int(s[j:pos])

    def primary() -> _Expr:
        nonlocal pos
        if pos < len(s) and s[pos] == "(":
            pos += 1
            inner = expr()
            if pos >= len(s) or s[pos] != ")":
                raise err("')' expected")
            pos += 1
            node = _Expr("()", inner)
        else:
            idx = number()
            if nsubs is not None and idx >= nsubs:
                raise err(f"subsignature {idx} does not exist")
            node = _Expr("id", index=idx)
        if pos < len(s) and s[pos] in "=<>":
            sym = s[pos]
            pos += 1
            x = number()
            y = None
            if pos < len(s) and s[pos] == ",":
                pos += 1
                y = number()
            node.mod = (sym, x, y)
        return node

    def expr() -> _Expr:
        nonlocal pos
        left = primary()
        if pos < len(s) and s[pos] in "&|":
            op = s[pos]
            pos += 1
            return _Expr(op, left, expr())    # ClamAV splits at the first operator
        return left

    node = expr()
    if pos != len(s):
        raise err("unexpected text")
    return node


# ---------------------------------------------------------------- line parsers

def _check_name(name: str) -> str:
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise SignatureError(f"bad signature name {name!r}")
    return name


def parse_hash(line: str, source: str = "") -> HashSignature:
    """One .hdb/.hsb line: ``HashString:FileSize:MalwareName[:min_flevel[:max_flevel]]``."""
    fields = line.strip().split(":")
    if not 3 <= len(fields) <= 5:
        raise SignatureError(f"expected HashString:FileSize:Name[:min_flevel[:max_flevel]], got {len(fields)} fields")
    digest, size, name = fields[0].strip().lower(), fields[1].strip(), _check_name(fields[2])
    algo = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(digest))
    if algo is None or any(c not in "0123456789abcdef" for c in digest):
        raise SignatureError("hash must be 32 (MD5), 40 (SHA1) or 64 (SHA256) hex digits")
    if size == "*":
        if len(fields) < 4 or not fields[3].strip().isdigit() or int(fields[3]) < 73:
            raise SignatureError("size '*' needs min_flevel 73 or higher (as ClamAV requires)")
        nsize = None
    elif size.isdigit():
        nsize = int(size)
    else:
        raise SignatureError(f"size {size!r} is not a number or '*'")
    return HashSignature(name, algo, digest, nsize, source)


def parse_ndb(line: str, source: str = "") -> BodySignature:
    """One .ndb line: ``MalwareName:TargetType:Offset:HexSignature[:min_flevel[:max_flevel]]``."""
    fields = line.strip().split(":")
    if not 4 <= len(fields) <= 6:
        raise SignatureError(f"expected Name:TargetType:Offset:HexSignature[:min_flevel[:max_flevel]], "
                             f"got {len(fields)} fields")
    name = _check_name(fields[0])
    if not fields[1].strip().isdigit():
        raise SignatureError(f"target type {fields[1]!r} is not a number")
    target = int(fields[1])
    if target not in SUPPORTED_TARGETS:
        raise SignatureError(f"target type {target} is not scanned here (supported: "
                             + ", ".join(f"{k} {v}" for k, v in SUPPORTED_TARGETS.items()) + ")")
    for fl in fields[4:]:
        if fl.strip() and not fl.strip().isdigit():
            raise SignatureError(f"functionality level {fl!r} is not a number")
    body = _Body(fields[3], _parse_offset(fields[2]))
    return BodySignature(name, target, body, source)


def _parse_subsig(text: str, index: int, nsubs: int):
    text = text.strip()
    if text.startswith("$") or "${" in text:
        raise SignatureError(f"subsignature {index}: macro subsignatures are not supported")
    if "#" in text and "(" in text and "/" not in text:
        raise SignatureError(f"subsignature {index}: byte-compare subsignatures are not supported")
    if "/" in text:
        return _parse_pcre(text, index, nsubs)
    mods = ""
    if "::" in text:
        text, mods = text.split("::", 1)
        if set(mods) - set("iwfa"):
            raise SignatureError(f"subsignature {index}: unknown modifier(s) {mods!r} (i, w, f, a)")
    offset = _Offset("any")
    if ":" in text:
        off, text = text.split(":", 1)
        offset = _parse_offset(off)
    wide = "w" in mods
    return _Body(text, offset, nocase="i" in mods, wide=wide, ascii="a" in mods or not wide,
                 fullword="f" in mods)


_PCRE_FLAGS = {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE, "x": re.VERBOSE}


def _parse_pcre(text: str, index: int, nsubs: int) -> _PcreSub:
    first = text.index("/")
    head, rest = text[:first], text[first + 1:]
    last = rest.rfind("/")
    if last < 0:
        raise SignatureError(f"subsignature {index}: PCRE must be written Trigger/regex/flags")
    regex, flags = rest[:last], rest[last + 1:]
    offset = _Offset("any")
    if ":" in head:
        off, head = head.rsplit(":", 1)
        offset = _parse_offset(off)
    if not head:
        raise SignatureError(f"subsignature {index}: PCRE needs a trigger expression")
    trigger = _parse_expr(head, nsubs)
    if any(i >= index for i in trigger.indexes()):
        raise SignatureError(f"subsignature {index}: a PCRE trigger may only name earlier subsignatures")
    bad = set(flags) - set("ismxAEgre")
    if bad or "U" in flags:
        raise SignatureError(f"subsignature {index}: PCRE flag(s) {''.join(sorted(bad))!r} not supported")
    if not regex:
        raise SignatureError(f"subsignature {index}: empty PCRE")
    # PCRE's named groups in Python's spelling
    regex = re.sub(r"\(\?<(?![=!])", "(?P<", regex)
    reflags = 0
    for f in flags:
        reflags |= _PCRE_FLAGS.get(f, 0)
    try:
        compiled = re.compile(regex.encode("latin-1"), reflags)
    except (re.error, UnicodeEncodeError, OverflowError, RecursionError) as e:
        raise SignatureError(f"subsignature {index}: PCRE does not compile with Python re: {e}") from None
    return _PcreSub(trigger, compiled, offset, "g" in flags, "r" in flags, "e" in flags, "A" in flags)


def parse_ldb(line: str, source: str = "") -> LogicalSignature:
    """One .ldb line (the documented subset, see the module docstring)."""
    fields = line.strip().split(";")
    if len(fields) < 4:
        raise SignatureError("expected Name;TargetDescriptionBlock;LogicalExpression;Subsig0[;...]")
    name = _check_name(fields[0])
    target, file_size = 0, None
    for item in fields[1].split(","):
        if not item.strip():
            continue
        key, _, val = item.partition(":")
        key = key.strip()
        if key == "Engine":
            continue
        if key == "Target":
            if not val.strip().isdigit():
                raise SignatureError(f"Target {val!r} is not a number")
            target = int(val)
            if target not in SUPPORTED_TARGETS:
                raise SignatureError(f"target type {target} is not scanned here")
        elif key == "FileSize":
            lo, _, hi = val.partition("-")
            if not (lo.strip().isdigit() and hi.strip().isdigit()):
                raise SignatureError(f"FileSize {val!r} is not min-max")
            file_size = (int(lo), int(hi))
        else:
            raise SignatureError(f"target description key {key!r} is not supported")
    subs_text = fields[3:]
    if len(subs_text) > 64:
        raise SignatureError("more than 64 subsignatures")
    expr = _parse_expr(fields[2], len(subs_text))
    subs = [_parse_subsig(t, i, len(subs_text)) for i, t in enumerate(subs_text)]
    if not any(isinstance(s, _Body) for s in subs):
        raise SignatureError("needs at least one hex subsignature (to trigger the others)")
    return LogicalSignature(name, target, expr, subs, file_size, source)


# ---------------------------------------------------------------- what a message is made of

@dataclass
class _File:
    where: str               # "message", "part 2 (image/gif 'x.gif')"
    data: bytes
    types: tuple[int, ...]   # target types scanned on this data
    hashed: bool             # hash signatures apply (the file as it is, not a normalisation)


_TEXTNORM_TABLE = bytearray(range(256))
for _b in b"\t\n\x0b\x0c\r":
    _TEXTNORM_TABLE[_b] = 0x20
for _b in range(0x41, 0x5B):
    _TEXTNORM_TABLE[_b] = _b + 32
_TEXTNORM_TABLE = bytes(_TEXTNORM_TABLE)
_TEXTNORM_DELETE = bytes([b for b in range(0x20) if b not in b"\t\n\x0b\x0c\r"] + list(range(0x80, 0x100)))
_SPACES = re.compile(rb" {2,}")
# ClamAV's built-in HTML magic (libclamav/filetypes_int.h, "HTML data"): any of these
# anywhere in a file makes it HTML
_HTML_MAGIC = re.compile(rb"<(?:HEAD>|HTML>|Head>|Html>|IFRAME|IMG|Img|OBJECT|Object|SCRIPT|Script|TABLE"
                         rb"|head>|html>|iframe|img|object|script|table)|<[Aa] .*?[hH][rR](?:EF|ef)", re.DOTALL)
_HTML_COMMENT = re.compile(rb"<!--.*?(?:-->|\Z)", re.DOTALL)
_HTML_TAG = re.compile(rb"<[^<>]*>")
# bytes that do not occur in text (ClamAV types a file as text by the bytes it holds)
_NOT_TEXT = re.compile(rb"[\x00-\x06\x0e-\x1a\x1c-\x1f\x7f]")


def text_normalise(data: bytes) -> bytes:
    """ClamAV's text normaliser (libclamav/textnorm.c): ASCII letters lower-cased,
    every run of white space one space, other control bytes and bytes >= 0x80 dropped."""
    return _SPACES.sub(b" ", data.translate(_TEXTNORM_TABLE, _TEXTNORM_DELETE))


def html_normalise(data: bytes) -> tuple[bytes, bytes]:
    """(HTML with comments dropped, its text without tags), lower-cased with white space
    collapsed: an approximation of ClamAV's HTML normaliser (which also decodes
    entities and normalises scripts)."""
    nocomment = _SPACES.sub(b" ", _HTML_COMMENT.sub(b"", data).lower().translate(_TEXTNORM_TABLE))
    notags = _SPACES.sub(b" ", _HTML_TAG.sub(b"", nocomment))
    return nocomment, notags


def _is_text(data: bytes) -> bool:
    head = data[:4096]
    if _NOT_TEXT.search(head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3       # only a character cut at the end
    return True


def _files(raw: bytes, max_scan: int) -> list[_File]:
    """The message and what ClamAV would make of it: every decoded leaf part, and the
    normalised forms of the parts that are HTML (by ClamAV's HTML magic, whatever
    their Content-Type says) or text."""
    files = [_File("message", raw[:max_scan], (0, 4), True)]
    try:
        msg = email.message_from_bytes(raw[:max_scan], policy=email.policy.compat32)
    except Exception:          # a message the stdlib cannot parse is still scanned whole
        return files
    n = walked = 0
    for part in msg.walk():
        walked += 1
        if walked > MAX_PARTS:
            break
        if part.is_multipart():
            continue
        n += 1                     # leaf parts are numbered from 1, in document order
        try:
            payload = part.get_payload(decode=True)
        except Exception:
            continue
        if not isinstance(payload, bytes) or not payload:
            continue
        try:
            ctype = part.get_content_type()
            fname = part.get_filename() or ""
        except Exception:
            ctype, fname = "application/octet-stream", ""
        label = f"part {n} ({ctype}" + (f" {fname!r})" if fname else ")")
        data = payload[:max_scan]
        files.append(_File(label, data, (0,), True))
        if _HTML_MAGIC.search(data):
            nocomment, notags = html_normalise(data)
            files.append(_File(label + " normalised HTML", nocomment, (0, 3), False))
            files.append(_File(label + " normalised HTML text", notags, (0, 3), False))
        elif _is_text(data):
            files.append(_File(label + " normalised text", text_normalise(data), (0, 7), False))
    return files


# ---------------------------------------------------------------- the set

@dataclass(frozen=True)
class Match:
    """One signature that matched, and where."""

    name: str
    where: str


@dataclass
class SignatureSet:
    """Loaded signatures; ``skipped`` lists (where, reason) of the lines not used."""

    hashes: dict[str, list[HashSignature]] = field(default_factory=dict)
    body: list[BodySignature] = field(default_factory=list)
    logical: list[LogicalSignature] = field(default_factory=list)
    allow_hashes: set[str] = field(default_factory=set)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    max_scan: int = MAX_SCAN
    _automaton: object = field(default=None, repr=False)
    _algos: frozenset = field(default=frozenset(), repr=False)

    def __len__(self) -> int:
        return sum(len(v) for v in self.hashes.values()) + len(self.body) + len(self.logical)

    # -- building

    def add(self, sig) -> None:
        if isinstance(sig, HashSignature):
            self.hashes.setdefault(sig.digest, []).append(sig)
        elif isinstance(sig, BodySignature):
            self.body.append(sig)
        elif isinstance(sig, LogicalSignature):
            self.logical.append(sig)
        else:
            raise TypeError(type(sig))
        self._automaton = None

    def drop(self, names: set[str]) -> int:
        """Remove signatures by name (.ign2); returns how many went."""
        before = len(self)
        for k in list(self.hashes):
            self.hashes[k] = [h for h in self.hashes[k] if h.name not in names]
            if not self.hashes[k]:
                del self.hashes[k]
        self.body = [s for s in self.body if s.name not in names]
        self.logical = [s for s in self.logical if s.name not in names]
        self._automaton = None
        return before - len(self)

    def _index(self):
        """Anchor -> [(kind, signature number, subsignature number)] and the automaton."""
        if self._automaton is not None:
            return self._automaton
        index: dict[bytes, list] = {}
        for i, sig in enumerate(self.body):
            for a in sig.body.anchors:
                index.setdefault(a, []).append(("b", i, 0))
        for i, sig in enumerate(self.logical):
            for j, sub in enumerate(sig.subs):
                if isinstance(sub, _Body):
                    for a in sub.anchors:
                        index.setdefault(a, []).append(("l", i, j))
        try:
            import ahocorasick
        except ImportError:     # the slow path: one substring test per anchor
            auto = ("scan", index)
        else:
            a = ahocorasick.Automaton()
            for anchor, refs in index.items():
                a.add_word(anchor.decode("latin-1"), refs)
            if index:
                a.make_automaton()
            auto = ("ac", a if index else None)
        self._algos = frozenset(h[0].algorithm for h in self.hashes.values())
        self._automaton = auto
        return auto

    def _candidates(self, data: bytes) -> set:
        kind, auto = self._index()
        low = data.lower()
        found: set = set()
        if kind == "ac":
            if auto is not None:
                for _, refs in auto.iter(low.decode("latin-1")):
                    found.update(refs)
        else:
            for anchor, refs in auto.items():
                if anchor in low:
                    found.update(refs)
        return found

    # -- matching

    def matches(self, raw: bytes, first_only: bool = False) -> list[Match]:
        """Every signature matching the message (or the first one), in the order: hash
        signatures (MD5, SHA1, SHA256), body signatures, logical signatures; within
        each, by file (the message, then its parts) and then in load order."""
        raw = message_bytes(raw)
        self._index()
        out: list[Match] = []
        seen: set[str] = set()

        def hit(name: str, where: str) -> bool:
            if name not in seen:
                seen.add(name)
                out.append(Match(name, where))
            return first_only

        files = _files(raw, self.max_scan)
        clean: set[str] = set()       # files whose hash is allowlisted (.fp)
        for f in files:
            if not f.hashed or not (self.hashes or self.allow_hashes):
                continue
            wanted = self._algos | ({"md5", "sha1", "sha256"} if self.allow_hashes else set())
            digests = {alg: getattr(hashlib, alg)(f.data).hexdigest()
                       for alg in ("md5", "sha1", "sha256") if alg in wanted}
            if self.allow_hashes and set(digests.values()) & self.allow_hashes:
                clean.add(f.where)
                continue
            for digest in digests.values():
                for sig in self.hashes.get(digest, ()):
                    if sig.size is None or sig.size == len(f.data):
                        if hit(sig.name, f"{sig.algorithm} hash of {f.where}"):
                            return out
        if not (self.body or self.logical):
            return out
        per_file = []
        for f in files:
            if f.where.split(" normalised")[0] in clean:
                continue
            per_file.append((f, self._candidates(f.data)))
        for f, cands in per_file:
            for kind, i, _ in sorted(c for c in cands if c[0] == "b"):
                sig = self.body[i]
                if sig.target not in f.types:
                    continue
                got = sig.body.find(f.data)
                if got and hit(sig.name, f"{f.where} at offset {got[0]}"):
                    return out
        for f, cands in per_file:
            by_lsig: dict[int, set[int]] = {}
            for kind, i, j in cands:
                if kind == "l":
                    by_lsig.setdefault(i, set()).add(j)
            for i in sorted(by_lsig):
                sig = self.logical[i]
                if sig.target not in f.types:
                    continue
                counts = {j: sig.subs[j].count(f.data) for j in by_lsig[i]}
                if sig.evaluate(f.data, counts):
                    where = min((c[1] for c in counts.values() if c[1] is not None), default=None)
                    if hit(sig.name, f"{f.where}" + (f" at offset {where}" if where is not None else "")):
                        return out
        return out


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def load_signatures(paths: Iterable[str | os.PathLike], *, max_scan: int = MAX_SCAN) -> SignatureSet:
    """Load ClamAV-format signature files (a directory means the files in it, in name
    order). Lines that cannot be used are skipped, each logged with its reason; a file
    that cannot be read or is of an unsupported type is skipped with one log line.
    Raises ``Disabled`` when nothing at all could be loaded from the paths given.
    """
    files: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            files.extend(os.path.join(p, f) for f in sorted(os.listdir(p)))
        else:
            files.append(p)
    sigs = SignatureSet(max_scan=max_scan)
    ignored: set[str] = set()
    loaded_files = 0
    for path in files:
        ext = _ext(path)
        base = os.path.basename(path)
        if ext not in _HASH_EXT + _FP_EXT + _NDB_EXT + _LDB_EXT + _IGN_EXT:
            sigs.skipped.append((base, f"file type {ext or '(none)'} is not read by this matcher"))
            log_event(log, "signature_file_unsupported", level=logging.WARNING, file=path,
                      reason=f"file type {ext or '(none)'} is not read by this matcher (clamd reads it)")
            continue
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode("utf-8", errors="replace")
        except OSError as e:
            sigs.skipped.append((base, f"cannot read: {e}"))
            log_event(log, "signature_file_unreadable", level=logging.WARNING, file=path, reason=str(e))
            continue
        loaded_files += 1
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.rstrip("\r")
            if not line.strip() or line.startswith("#"):
                continue
            where = f"{base}:{lineno}"
            try:
                if ext in _IGN_EXT:
                    ignored.add(line.split(":", 1)[0].strip())
                elif ext in _FP_EXT:
                    sigs.allow_hashes.add(parse_hash(line, where).digest)
                elif ext in _HASH_EXT:
                    sigs.add(parse_hash(line, where))
                elif ext in _NDB_EXT:
                    sigs.add(parse_ndb(line, where))
                else:
                    sigs.add(parse_ldb(line, where))
            except SignatureError as e:
                sigs.skipped.append((where, str(e)))
                log_event(log, "signature_skipped", level=logging.WARNING, where=where, reason=str(e))
    if ignored:
        sigs.drop(ignored)
    if files and not loaded_files:
        reason = "no signature file could be read: " + "; ".join(f"{w}: {r}" for w, r in sigs.skipped[:5])
        disabled(CLASSIFICATION, reason)
        raise Disabled(reason)
    sigs._index()
    log_event(log, "signatures_loaded", files=loaded_files, hashes=sum(map(len, sigs.hashes.values())),
              body=len(sigs.body), logical=len(sigs.logical), skipped=len(sigs.skipped))
    return sigs


# ---------------------------------------------------------------- clamd

class ClamdError(OSError):
    """clamd could not be reached, timed out or answered an error."""


class ClamdScanner:
    """A client of clamd's INSTREAM command, as an alternative engine to ``SignatureSet``.

    ``address`` is a unix socket path (``/run/clamav/clamd.ctl``, ``unix:/path``) or
    ``host:port`` (``127.0.0.1:3310``, ``[::1]:3310``, ``tcp://host:port``). Every call
    has ``timeout`` seconds in all (connect, send, scan, reply). Messages longer than
    ``max_bytes`` are sent truncated (clamd's own StreamMaxLength defaults to 25 MB
    and would answer an error instead).
    """

    def __init__(self, address: str, timeout: float = 10.0, max_bytes: int = 24 * 1024 * 1024,
                 chunk: int = 64 * 1024):
        self.address = address
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self.chunk = int(chunk)
        self._family, self._addr = self._parse(address)

    def __repr__(self) -> str:
        return f"ClamdScanner({self.address!r}, timeout={self.timeout})"

    @staticmethod
    def _parse(address: str):
        a = address.strip()
        if a.startswith("unix:"):
            return socket.AF_UNIX, a[5:]
        if a.startswith("/") or a.startswith("."):
            return socket.AF_UNIX, a
        a = a.removeprefix("tcp://")
        m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", a)
        if not m:
            raise ValueError(f"clamd address {address!r}: expected a socket path or host:port")
        if m.group(1):
            return socket.AF_INET6, (m.group(1), int(m.group(2)))
        return socket.AF_INET, (m.group(3), int(m.group(4)))

    def _connect(self, deadline: float) -> socket.socket:
        if self._family == socket.AF_INET:
            host, port = self._addr
            try:
                s = socket.create_connection((host, port), timeout=max(0.01, deadline - time.monotonic()))
            except OSError as e:
                raise ClamdError(f"clamd at {self.address}: {e}") from None
            return s
        s = socket.socket(self._family, socket.SOCK_STREAM)
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            s.connect(self._addr)
        except OSError as e:
            s.close()
            raise ClamdError(f"clamd at {self.address}: {e}") from None
        return s

    def _call(self, command: bytes, payload: bytes | None = None) -> str:
        deadline = time.monotonic() + self.timeout
        s = self._connect(deadline)
        try:
            def remaining() -> float:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("deadline passed")
                return left

            s.settimeout(remaining())
            s.sendall(b"z" + command + b"\0")
            if payload is not None:
                view = memoryview(payload)[: self.max_bytes]
                for i in range(0, len(view), self.chunk):
                    piece = view[i:i + self.chunk]
                    s.settimeout(remaining())
                    s.sendall(struct.pack("!I", len(piece)) + piece)
                s.settimeout(remaining())
                s.sendall(struct.pack("!I", 0))
            reply = bytearray()
            while not reply.endswith(b"\0"):
                s.settimeout(remaining())
                got = s.recv(4096)
                if not got:
                    break
                reply += got
                if len(reply) > 65536:
                    raise ClamdError(f"clamd at {self.address}: reply too long")
        except (socket.timeout, TimeoutError):
            raise ClamdError(f"clamd at {self.address}: no answer within {self.timeout:g} s") from None
        except OSError as e:
            raise ClamdError(f"clamd at {self.address}: {e}") from None
        finally:
            s.close()
        return reply.rstrip(b"\0").decode("utf-8", errors="replace").strip()

    def ping(self) -> bool:
        try:
            return self._call(b"PING") == "PONG"
        except ClamdError:
            return False

    def version(self) -> str:
        return self._call(b"VERSION")

    def check(self) -> str:
        """At load time: clamd's version, or ``Disabled`` with the reason."""
        try:
            if self._call(b"PING") != "PONG":
                raise ClamdError(f"clamd at {self.address} did not answer PONG")
            return self.version()
        except ClamdError as e:
            disabled(CLASSIFICATION, str(e))
            raise Disabled(str(e)) from None

    def matches(self, raw: bytes, first_only: bool = True) -> list[Match]:
        """The signature clamd finds in the message (clamd reports one), as ``Match``.
        Raises ``ClamdError`` when clamd cannot be asked; the scorer then scores the
        message without this check and says why."""
        reply = self._call(b"INSTREAM", message_bytes(raw))
        # "stream: OK", "stream: Name FOUND", "INSTREAM size limit exceeded. ERROR"
        if reply.endswith("ERROR") or not reply.startswith("stream:"):
            raise ClamdError(f"clamd at {self.address}: {reply}")
        body = reply[len("stream:"):].strip()
        if body == "OK":
            return []
        if body.endswith(" FOUND"):
            name = body[: -len(" FOUND")].strip()
            return [Match(name, f"the message (clamd at {self.address})")]
        raise ClamdError(f"clamd at {self.address}: unexpected reply {reply!r}")


# ---------------------------------------------------------------- the check

def signature_match(message: bytes | MessageFeatures, sigs: SignatureSet | ClamdScanner) -> Signal | None:
    """The signature_match signal of a message, or None.

    ``message`` should be the raw bytes: hashes and offsets are of the message as
    received, and attachments are decoded from it. Given only ``MessageFeatures``, the
    check can see just their first bytes (``head``) and decoded text, which it scans as
    the message; hash signatures of the whole message then cannot match.

    A match decides; ``strength`` is the number of signatures that matched;
    ``reply_args["signature"]`` is the first one's name, without the ``.UNOFFICIAL``
    suffix clamd adds to third-party signatures (the evidence keeps clamd's name).
    """
    if isinstance(message, MessageFeatures):
        raw = message.head + b"\n\n" + message.text.encode("utf-8", errors="replace")
    else:
        raw = message
    found = sigs.matches(raw, first_only=isinstance(sigs, ClamdScanner))
    if not found:
        return None
    evidence = tuple(f"signature {m.name} matched {m.where}" for m in found[:5])
    first = found[0].name.removesuffix(".UNOFFICIAL")
    return Signal(CLASSIFICATION, strength=float(len(found)), decides=True, evidence=evidence,
                  reply_args={"signature": first})
