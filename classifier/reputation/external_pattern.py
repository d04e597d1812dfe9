"""External pattern lists: regular expressions an administrator loads, with list names.

Layout and format patterns that a statistical model learns slowly or not at all (a
campaign's Subject template, a header a spam tool always writes, a phrase a phishing
kit never changes) are kept as named lists in TOML files. A match is the classification
``external_pattern``, whose reply names the list ("Message matches a known spam
pattern (LIST)").

File format (see ``tests/data/patterns.example.toml`` for a commented example)::

    list = "local-layout"          # optional: the list of every pattern in this file
    decides = true                 # optional: the default of every pattern in this file

    [[pattern]]
    name = "invoice-subject"       # required, unique within its list
    list = "local-phish"           # required unless the file has a top-level list
    target = "header:Subject"      # required, see below
    regex = '''invoice\\s+#?\\d{6,}''' # required; Python ``re`` syntax
    flags = "i"                    # optional: any of i (ignore case), m (multiline),
                                   #   s (dot matches newline), x (verbose)
    decides = true                 # optional (default true): a match quarantines on its
                                   #   own; false only feeds the combined score
    description = "..."            # optional, for the admin

Targets:

    header:<Name>   each value of that header field (any case), RFC 2047-decoded, unfolded
    headers         all header fields, one "Name: value" line each, decoded and unfolded
    body            the decoded text of the text parts, HTML as text (what the
                    classifiers read: ``MessageFeatures.text``)
    urls            each link target, one at a time
    raw             the message as received, bytes read as Latin-1 so any byte matches
                    (``\\xNN`` in the regex); without the raw bytes, its first 3000 bytes

Load errors never stop the scorer: a file that cannot be read or parsed disables the
lists it holds (or, when it cannot be parsed at all, a list named after the file); a
pattern with a bad key, a bad target or a regex that does not compile disables its
whole list, with the reason logged once. A list is all or nothing because a half-loaded
list silently catches less than its author expects; the reason in the log tells which
line to fix.

ReDoS. Python's ``re`` backtracks, and a search cannot be interrupted. Three guards:
each target is capped (``max_input``, 256 KiB by default: the body of a normal message
is far smaller, and a regex's work is bounded by its input); patterns that nest an
unbounded quantifier inside another repetition, the classic catastrophic shape
(``(a+)+``, ``(\\w+\\s?)*``, ``(.*,){20}``), are refused at load time with a reason;
and a pattern whose search takes longer than ``slow_ms`` once is switched off for the
rest of the process and logged. The static check does not catch every slow pattern
(overlapping alternatives such as ``(a|a)*`` pass it): write patterns anchored on
literal text, and use atomic groups ``(?>...)`` or possessive quantifiers ``*+``
(Python 3.11) where a repetition must not backtrack.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field
from typing import Callable, Iterable

from classifier.features import MessageFeatures, extract, message_bytes
from classifier.logs import log_event

from .base import Signal, disabled

__all__ = ["Pattern", "PatternSet", "load_patterns", "parse_patterns", "external_pattern",
           "MAX_INPUT", "SLOW_MS"]

log = logging.getLogger("mailsift.reputation.external_pattern")

CLASSIFICATION = "external_pattern"
MAX_INPUT = 256 * 1024   # characters of one target a pattern is run on
SLOW_MS = 200.0          # one search slower than this switches the pattern off
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_PATTERN_KEYS = {"name", "list", "target", "regex", "flags", "decides", "description"}
_FILE_KEYS = {"list", "decides", "pattern"}
_UNFOLD = re.compile(r"\r?\n[ \t]+")
_MAX_REGEX_CHARS = 8192
_SNIPPET = 80


@dataclass(frozen=True)
class Pattern:
    list: str
    name: str
    target: str             # "header:subject" (lower case name), "headers", "body", "urls", "raw"
    regex: re.Pattern
    decides: bool
    source: str             # "file.toml pattern 3", for the log and the evidence


@dataclass
class PatternSet:
    """The loaded patterns, and the lists that could not be loaded with their reasons."""

    patterns: tuple[Pattern, ...] = ()
    disabled: dict[str, str] = field(default_factory=dict)
    max_input: int = MAX_INPUT
    slow_ms: float = SLOW_MS
    timer: Callable[[], float] = time.perf_counter
    _tripped: set = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def lists(self) -> list[str]:
        """The names of the lists in use, in load order."""
        return list(dict.fromkeys(p.list for p in self.patterns))

    def _trip(self, pattern: Pattern, ms: float) -> None:
        with self._lock:
            if (pattern.list, pattern.name) in self._tripped:
                return
            self._tripped.add((pattern.list, pattern.name))
        disabled(CLASSIFICATION, f"list {pattern.list}: pattern {pattern.name} ({pattern.source}) "
                                 f"took {ms:.0f} ms on one message (limit {self.slow_ms:.0f} ms); "
                                 "switched off until the lists are reloaded")

    def active(self, pattern: Pattern) -> bool:
        return (pattern.list, pattern.name) not in self._tripped


class _PatternError(ValueError):
    pass


# ---------------------------------------------------------------- the static ReDoS check

def _nested_quantifier(regex: str, flags: int) -> str | None:
    """A description of the first unbounded repetition nested in another repetition,
    or None. Atomic groups and possessive repeats cut backtracking, so what is inside
    them starts afresh."""
    try:
        from re import _constants as c, _parser as sre_parse
    except ImportError:          # a Python without the 3.11 layout: skip the check
        return None
    repeats = (c.MAX_REPEAT, c.MIN_REPEAT)

    def walk(items, outer: bool) -> str | None:
        for op, av in items:
            if op in repeats:
                lo, hi, sub = av
                if outer and hi == c.MAXREPEAT:
                    return "an unbounded repetition inside another repetition"
                found = walk(sub, outer or hi > 1)
            elif op == c.POSSESSIVE_REPEAT:
                found = walk(av[2], False)
            elif op == c.ATOMIC_GROUP:
                found = walk(av, False)
            elif op == c.SUBPATTERN:
                found = walk(av[-1], outer)
            elif op == c.BRANCH:
                found = next((f for f in (walk(b, outer) for b in av[1]) if f), None)
            elif op in (c.ASSERT, c.ASSERT_NOT):
                found = walk(av[1], outer)
            elif op == c.GROUPREF_EXISTS:
                found = walk(av[1], outer) or (walk(av[2], outer) if av[2] else None)
            else:
                found = None
            if found:
                return found
        return None

    return walk(sre_parse.parse(regex, flags), False)


# ---------------------------------------------------------------- loading

def _target(value) -> str:
    if not isinstance(value, str):
        raise _PatternError("target must be a string")
    t = value.strip()
    low = t.lower()
    if low in ("headers", "body", "urls", "raw"):
        return low
    if low.startswith("header:") and t[7:].strip():
        name = t[7:].strip()
        if not re.fullmatch(r"[!-9;-~]+", name):
            raise _PatternError(f"target {value!r}: not a header field name")
        return "header:" + name.lower()
    raise _PatternError(f"target {value!r}: expected header:<Name>, headers, body, urls or raw")


def _compile(spec: dict, source: str, default_list: str | None, default_decides: bool) -> Pattern:
    unknown = set(spec) - _PATTERN_KEYS
    if unknown:
        raise _PatternError(f"unknown key(s) {', '.join(sorted(unknown))}")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _PatternError("name is required")
    lst = spec.get("list", default_list)
    if not isinstance(lst, str) or not lst.strip():
        raise _PatternError("list is required (in the pattern or at the top of the file)")
    if "target" not in spec:
        raise _PatternError("target is required")
    target = _target(spec["target"])
    regex = spec.get("regex")
    if not isinstance(regex, str) or not regex:
        raise _PatternError("regex is required")
    if len(regex) > _MAX_REGEX_CHARS:
        raise _PatternError(f"regex longer than {_MAX_REGEX_CHARS} characters")
    flags_s = spec.get("flags", "")
    if not isinstance(flags_s, str) or set(flags_s) - set(_FLAGS):
        raise _PatternError(f"flags {flags_s!r}: only i, m, s, x")
    flags = 0
    for f in flags_s:
        flags |= _FLAGS[f]
    decides = spec.get("decides", default_decides)
    if not isinstance(decides, bool):
        raise _PatternError("decides must be true or false")
    try:
        compiled = re.compile(regex, flags)
    except (re.error, OverflowError, RecursionError) as e:
        raise _PatternError(f"regex does not compile: {e}") from None
    if compiled.search(""):
        raise _PatternError("regex matches the empty string, so it would match every message")
    nested = _nested_quantifier(regex, flags)
    if nested:
        raise _PatternError(f"regex refused: {nested} can take exponential time "
                            "(rewrite it, or use an atomic group (?>...) or a possessive quantifier)")
    return Pattern(list=lst.strip(), name=name.strip(), target=target, regex=compiled,
                   decides=decides, source=source)


def parse_patterns(text: str, source: str = "<string>") -> tuple[list[Pattern], dict[str, str]]:
    """Patterns from one file's text: (patterns of the lists that loaded, {list: reason}
    for those that did not). Never raises on bad input."""
    stem = os.path.splitext(os.path.basename(source))[0] or source
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [], {stem: f"{source}: not valid TOML: {e}"}
    unknown = set(doc) - _FILE_KEYS
    default_list = doc.get("list")
    lists_named = {p.get("list", default_list) for p in doc.get("pattern", []) if isinstance(p, dict)}
    lists_named = {str(x) for x in lists_named if isinstance(x, str) and x.strip()} or {stem}
    if unknown:
        reason = f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}"
        return [], {name: reason for name in lists_named}
    if default_list is not None and (not isinstance(default_list, str) or not default_list.strip()):
        return [], {stem: f"{source}: top-level list must be a non-empty string"}
    default_decides = doc.get("decides", True)
    if not isinstance(default_decides, bool):
        return [], {name: f"{source}: top-level decides must be true or false" for name in lists_named}
    specs = doc.get("pattern", [])
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        return [], {name: f"{source}: 'pattern' must be an array of tables ([[pattern]])"
                    for name in lists_named}
    patterns: list[Pattern] = []
    failed: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for i, spec in enumerate(specs, 1):
        where = f"{os.path.basename(source)} pattern {i}"
        lst = spec.get("list", default_list)
        lst = lst.strip() if isinstance(lst, str) and lst.strip() else stem
        try:
            p = _compile(spec, where, default_list, default_decides)
        except _PatternError as e:
            failed.setdefault(lst, f"{where} ({spec.get('name', '?')}): {e}")
            continue
        if (p.list, p.name) in seen:
            failed.setdefault(p.list, f"{where}: pattern name {p.name!r} used twice in list {p.list}")
            continue
        seen.add((p.list, p.name))
        patterns.append(p)
    return [p for p in patterns if p.list not in failed], failed


def load_patterns(paths: Iterable[str | os.PathLike], *, max_input: int = MAX_INPUT,
                  slow_ms: float = SLOW_MS, timer: Callable[[], float] = time.perf_counter) -> PatternSet:
    """Load pattern files (a directory means its ``*.toml`` files, in name order).

    A list defined in several files is one list; if any part of it fails, all of it is
    disabled. Each disabled list is logged once with its reason.
    """
    files: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            files.extend(os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".toml"))
        else:
            files.append(p)
    patterns: list[Pattern] = []
    failed: dict[str, str] = {}
    for path in files:
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            stem = os.path.splitext(os.path.basename(path))[0]
            failed.setdefault(stem, f"{path}: cannot read: {e}")
            continue
        got, bad = parse_patterns(text, path)
        patterns.extend(got)
        for k, v in bad.items():
            failed.setdefault(k, v)
    kept = tuple(p for p in patterns if p.list not in failed)
    for name, reason in failed.items():
        disabled(CLASSIFICATION, f"list {name}: {reason}")
    log_event(log, "patterns_loaded", files=len(files), patterns=len(kept),
              lists=len({p.list for p in kept}), disabled=sorted(failed))
    return PatternSet(patterns=kept, disabled=failed, max_input=max_input, slow_ms=slow_ms, timer=timer)


# ---------------------------------------------------------------- matching

def _targets(features: MessageFeatures, raw: bytes | None, target: str, cap: int,
             cache: dict) -> list[str]:
    got = cache.get(target)
    if got is not None:
        return got
    if target == "body":
        got = [features.text[:cap]]
    elif target == "headers":
        got = ["\n".join(f"{n}: {_UNFOLD.sub(' ', v)}" for n, v in features.headers)[:cap]]
    elif target == "urls":
        got = [u[:cap] for u in features.urls]
    elif target == "raw":
        data = raw if raw is not None else features.head
        got = [data[:cap].decode("latin-1")]
    else:
        name = target[7:]
        got = [_UNFOLD.sub(" ", v)[:cap] for n, v in features.headers if n.lower() == name]
    cache[target] = got
    return got


def _snippet(text: str) -> str:
    s = " ".join(text.split())
    return s if len(s) <= _SNIPPET else s[: _SNIPPET - 3] + "..."


def external_pattern(features: MessageFeatures | bytes, patterns: PatternSet, *,
                     raw: bytes | None = None) -> Signal | None:
    """The external_pattern signal of a message, or None when no pattern matches.

    ``features`` may be raw message bytes (they are then parsed, and also used for the
    ``raw`` target). ``strength`` is the number of patterns that matched;
    ``decides`` is true when one of them is a deciding pattern; ``reply_args["list"]``
    is the list of the first deciding match (else the first match), for the reply text.
    """
    if not isinstance(features, MessageFeatures):
        raw = message_bytes(features)
        features = extract(raw)
    elif raw is not None:
        raw = message_bytes(raw)
    if not patterns.patterns:
        return None
    cache: dict[str, list[str]] = {}
    hits: list[tuple[Pattern, str]] = []
    for p in patterns.patterns:
        if not patterns.active(p):
            continue
        for value in _targets(features, raw, p.target, patterns.max_input, cache):
            t0 = patterns.timer()
            m = p.regex.search(value)
            ms = (patterns.timer() - t0) * 1000.0
            if ms > patterns.slow_ms:
                patterns._trip(p, ms)
            if m:
                hits.append((p, m.group()))
                break
    if not hits:
        return None
    deciding = [h for h in hits if h[0].decides]
    first = (deciding or hits)[0][0]
    where = {"raw": "raw" if raw is not None else "raw (first bytes)"}
    evidence = tuple(f"list {p.list} pattern {p.name} matched {where.get(p.target, p.target)}: "
                     f"{_snippet(text)!r}" for p, text in (deciding + [h for h in hits if not h[0].decides])[:5])
    return Signal(CLASSIFICATION, strength=float(len(hits)), decides=bool(deciding), evidence=evidence,
                  reply_args={"list": first.list})
