"""Labelled mail corpora: reading, online order, batch split and subsampling.

``read_corpus(source, fmt)`` reads one of:

    index     a TREC ``index`` file, lines ``spam|ham <path relative to its folder>``
    dirs      a folder with ``spam/`` and ``ham/`` folders of raw RFC 822 files
    mbox      one mbox file (every message gets ``label``), or a folder holding
              ``spam.mbox`` and/or ``ham.mbox``
    maildir   one Maildir (every message gets ``label``), or a folder whose ``spam/``
              and/or ``ham/`` are Maildirs

The online order of ``dirs``, the batch split and the stratified sample copy the anchors
benchmark harness (shared/bench/run.py, PROTOCOL.md A and B) line for line, so that our
numbers and the peers' come from exactly the same messages in the same order.
"""
from __future__ import annotations

import datetime
import email.utils
import mailbox
import os
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

LABELS = ("spam", "ham")
FORMATS = ("auto", "index", "dirs", "mbox", "maildir")

INDEX_ORDER = "TREC index order"
MBOX_ORDER = "mbox file order"
DATE_ORDER = "mbox From-line / Date header order (undated last)"

# The harness dates a message from this much of its start.
HEAD_BYTES = 65536

_FROM_LINE = re.compile(r"From \S+\s+(.*)")
_DATE_HEADER = re.compile(r"^Date:\s*(.*(?:\n[ \t].*)*)", re.M | re.I)
_INDEX_LINE = re.compile(rb"(?i)(spam|ham) \S")


class CorpusError(ValueError):
    """A corpus cannot be read as asked; the message names the file (and line)."""


class _MboxFile:
    """One mbox file, scanned once and shared by all its messages, so that a lazy
    ``Message.read()`` is a seek instead of a rescan of the whole file."""

    def __init__(self, path: str):
        self.path = path
        self._box: mailbox.mbox | None = None
        # mailbox reads by seek + read on one file object
        self._lock = threading.Lock()

    def _open(self) -> mailbox.mbox:
        if self._box is None:
            try:
                self._box = mailbox.mbox(self.path, factory=None, create=False)
            except (OSError, mailbox.Error) as e:
                raise CorpusError(f"{self.path}: cannot open mbox: {e}") from e
        return self._box

    def keys(self) -> list:
        with self._lock:
            return list(self._open().iterkeys())

    def get_bytes(self, key, from_: bool = False) -> bytes:
        with self._lock:
            return self._open().get_bytes(key, from_=from_)

    def __getstate__(self):
        # open files and locks do not pickle; a copy in another process reopens the file
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


@dataclass(frozen=True)
class Message:
    """One labelled message.

    ``id`` is stable across runs and unique within its corpus (path relative to the
    corpus root, ``file.mbox#N`` or a Maildir key); it defaults to ``path``.
    ``read()`` returns ``raw`` if set, else loads the bytes.
    """

    path: str
    label: str
    raw: bytes | None = field(default=None, repr=False, compare=False)
    id: str = ""
    _mbox: tuple[_MboxFile, object] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.label not in LABELS:
            raise ValueError(f"label must be 'spam' or 'ham', got {self.label!r}")
        if not self.id:
            object.__setattr__(self, "id", self.path)

    @property
    def is_spam(self) -> bool:
        return self.label == "spam"

    def read(self) -> bytes:
        """The message bytes; for mbox messages without the ``From `` separator line."""
        if self.raw is not None:
            return self.raw
        if self._mbox is not None:
            box, key = self._mbox
            return box.get_bytes(key)
        with open(self.path, "rb") as f:
            return f.read()


@dataclass
class Corpus:
    """Messages in online order (the order a live filter would have seen them)."""

    messages: list[Message]
    description: str
    source: str = ""

    def canonical(self) -> list[Message]:
        """Messages sorted by id: the order the batch split shuffles."""
        return sorted(self.messages, key=_by_id)

    def subset(self, keep: Iterable[Message]) -> Corpus:
        """The messages of ``keep`` (matched by id), still in online order."""
        ids = {m.id for m in keep}
        return Corpus([m for m in self.messages if m.id in ids], self.description, self.source)

    def counts(self) -> dict[str, int]:
        return {lab: sum(m.label == lab for m in self.messages) for lab in LABELS}

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)


def _by_id(m: Message) -> str:
    return m.id


# ------------------------------------------------------------------ online order
def message_time(head: bytes) -> float | None:
    """Receipt time of a message from its first bytes, as the harness computes it:
    the mbox ``From `` line, else the ``Date:`` header; None if neither parses."""
    text = head[:HEAD_BYTES].split(b"\n\n", 1)[0].decode("latin-1")
    m = _FROM_LINE.match(text)
    if m:
        try:
            # A naive datetime is local time; the harness does the same, and its order
            # is the one to reproduce.
            return datetime.datetime.strptime(m.group(1).strip(), "%a %b %d %H:%M:%S %Y").timestamp()
        except (ValueError, OverflowError, OSError):
            pass
    m = _DATE_HEADER.search(text)
    if m:
        try:
            d = email.utils.parsedate_to_datetime(re.sub(r"\s+", " ", m.group(1)).strip())
            if d is not None:
                return d.timestamp()
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            pass
    return None


def _file_head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def _date_ordered(msgs: list[Message], head) -> list[Message]:
    dated = [(message_time(head(m)), m) for m in msgs]
    dated.sort(key=lambda x: (x[0] is None, x[0] or 0, x[1].id))
    return [m for _, m in dated]


# ------------------------------------------------------------------ readers
def _read_index(source: str) -> list[Message]:
    path = os.path.join(source, "index") if os.path.isdir(source) else source
    if not os.path.isfile(path):
        raise CorpusError(f"{path}: index file not found")
    root = os.path.dirname(os.path.abspath(path))
    msgs = []
    # surrogateescape round-trips file names that are not UTF-8, as os functions do
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            # split on the first space only: file names may contain spaces
            lab, sep, rel = line.rstrip("\r\n").partition(" ")
            if not sep or not rel:
                raise CorpusError(f"{path}:{lineno}: expected 'spam|ham <path>', got {line.strip()!r}")
            lab = lab.lower()
            if lab not in LABELS:
                raise CorpusError(f"{path}:{lineno}: unknown label {lab!r} (expected spam or ham)")
            p = os.path.abspath(os.path.join(root, rel))
            if not os.path.isfile(p):
                raise CorpusError(f"{path}:{lineno}: message file not found: {p}")
            msgs.append(Message(p, lab, id=os.path.relpath(p, root)))
    return msgs


def _label_dirs(root: str) -> list[tuple[str, str]]:
    found = [(lab, os.path.join(root, lab)) for lab in LABELS if os.path.isdir(os.path.join(root, lab))]
    if not found:
        raise CorpusError(f"{root}: no spam/ or ham/ folder")
    return found


def _read_dirs(root: str) -> list[Message]:
    msgs = []
    for lab, d in _label_dirs(root):
        for fn in sorted(os.listdir(d)):
            p = os.path.join(d, fn)
            if os.path.isfile(p):
                msgs.append(Message(os.path.abspath(p), lab, id=os.path.relpath(p, root)))
    return _date_ordered(msgs, lambda m: _file_head(m.path))


def _mbox_messages(path: str, label: str, name: str) -> list[Message]:
    if not os.path.isfile(path):
        raise CorpusError(f"{path}: not an mbox file")
    box = _MboxFile(os.path.abspath(path))
    return [Message(box.path, label, id=f"{name}#{k}", _mbox=(box, k)) for k in box.keys()]


def _read_mbox_pair(root: str) -> list[Message]:
    found = [(lab, os.path.join(root, lab + ".mbox")) for lab in LABELS
             if os.path.isfile(os.path.join(root, lab + ".mbox"))]
    if not found:
        raise CorpusError(f"{root}: no spam.mbox or ham.mbox")
    msgs = []
    for lab, p in found:
        msgs += _mbox_messages(p, lab, os.path.basename(p))
    # the From line is where an mbox keeps its delivery time, so date with it
    return _date_ordered(msgs, lambda m: m._mbox[0].get_bytes(m._mbox[1], from_=True)[:HEAD_BYTES])


def _is_maildir(d: str) -> bool:
    return os.path.isdir(os.path.join(d, "cur")) and os.path.isdir(os.path.join(d, "new"))


def _maildir_messages(d: str, label: str, prefix: str) -> list[Message]:
    if not _is_maildir(d):
        raise CorpusError(f"{d}: not a Maildir (needs cur/ and new/)")
    try:
        box = mailbox.Maildir(d, factory=None, create=False)
        keys = sorted(box.iterkeys())
    except (OSError, mailbox.Error) as e:
        raise CorpusError(f"{d}: cannot read Maildir: {e}") from e
    # mailbox.Maildir has no public key -> file name mapping; rebuild it the way its
    # _refresh() does, so that Message.path is the real file a peer can be handed.
    files = {}
    for sub in ("cur", "new"):
        subdir = os.path.join(d, sub)
        for entry in os.listdir(subdir):
            p = os.path.join(subdir, entry)
            if not os.path.isdir(p):
                files[entry.split(box.colon)[0]] = os.path.abspath(p)
    msgs = []
    for key in keys:
        if key not in files:
            raise CorpusError(f"{d}: Maildir message {key} disappeared while reading")
        msgs.append(Message(files[key], label, id=prefix + key))
    return msgs


def _read_maildir(d: str, label: str) -> list[Message]:
    # Maildir names start with the delivery second only when delivered there; copied
    # or converted folders lose that, so date messages the same way as dirs.
    return _date_ordered(_maildir_messages(d, label, ""), lambda m: _file_head(m.path))


def _read_maildir_pair(root: str) -> list[Message]:
    msgs = []
    for lab, d in _label_dirs(root):
        msgs += _maildir_messages(d, lab, lab + "/")
    return _date_ordered(msgs, lambda m: _file_head(m.path))


def _looks_like_index(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"From "):
        return False
    first = next((ln for ln in head.splitlines() if ln.strip()), b"")
    return bool(_INDEX_LINE.match(first))


def _detect(source: str) -> str:
    if os.path.isfile(source):
        return "index" if _looks_like_index(source) else "mbox"
    if os.path.isfile(os.path.join(source, "index")):
        return "index"
    if any(os.path.isfile(os.path.join(source, lab + ".mbox")) for lab in LABELS):
        return "mbox-pair"
    subdirs = [d for d in (os.path.join(source, lab) for lab in LABELS) if os.path.isdir(d)]
    if subdirs and all(_is_maildir(d) for d in subdirs):
        return "maildir-pair"
    if subdirs:
        return "dirs"
    if _is_maildir(source):
        return "maildir"
    raise CorpusError(
        f"{source}: cannot tell the corpus format (no index file, spam.mbox/ham.mbox, "
        "spam/ or ham/ folder, and not a Maildir); pass fmt= explicitly")


def read_corpus(source: str | os.PathLike, fmt: str = "auto", label: str | None = None) -> Corpus:
    """Read a labelled corpus; see the module docstring for the formats.

    ``label`` ('spam' or 'ham') is required for a single mbox file or Maildir and
    refused for formats that carry their own labels.
    """
    source = os.fspath(source)
    if fmt not in FORMATS:
        raise CorpusError(f"unknown corpus format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if not os.path.exists(source):
        raise CorpusError(f"{source}: no such file or directory")
    if label is not None:
        label = label.lower()
        if label not in LABELS:
            raise CorpusError(f"label must be 'spam' or 'ham', got {label!r}")

    if fmt == "auto":
        kind = _detect(source)
    elif fmt == "mbox":
        kind = "mbox" if os.path.isfile(source) else "mbox-pair"
    elif fmt == "maildir":
        kind = "maildir" if _is_maildir(source) else "maildir-pair"
    else:
        kind = fmt
    if kind in ("dirs", "mbox-pair", "maildir-pair") and not os.path.isdir(source):
        raise CorpusError(f"{source}: not a directory, which the {kind} format needs")
    if kind in ("mbox", "maildir"):
        if label is None:
            raise CorpusError(f"{source}: a single {kind} has no labels; pass label='spam' or label='ham'")
    elif label is not None:
        raise CorpusError(f"{source}: label= only applies to a single mbox or Maildir; "
                          f"this {kind} corpus carries its own labels")

    if kind == "index":
        msgs, order = _read_index(source), INDEX_ORDER
    elif kind == "dirs":
        msgs, order = _read_dirs(source), DATE_ORDER
    elif kind == "mbox":
        msgs, order = _mbox_messages(source, label, os.path.basename(source)), MBOX_ORDER
    elif kind == "mbox-pair":
        msgs, order = _read_mbox_pair(source), DATE_ORDER
    elif kind == "maildir":
        msgs, order = _read_maildir(source, label), DATE_ORDER
    else:
        msgs, order = _read_maildir_pair(source), DATE_ORDER

    if not msgs:
        raise CorpusError(f"{source}: corpus is empty ({kind})")
    seen = set()
    for m in msgs:
        if m.id in seen:
            raise CorpusError(f"{source}: message {m.id!r} appears twice")
        seen.add(m.id)
    return Corpus(msgs, order, source)


# ------------------------------------------------------------------ splits
def batch_split(corpus: Corpus | Iterable[Message], train_fraction: float = 0.7,
                seed: int = 0) -> tuple[list[Message], list[Message]]:
    """The harness' batch split (PROTOCOL.md A): sort by id, shuffle with
    ``random.Random(seed)``, the first ``round(train_fraction * N)`` train."""
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    msgs = sorted(corpus, key=_by_id)
    random.Random(seed).shuffle(msgs)
    n_train = round(train_fraction * len(msgs))
    return msgs[:n_train], msgs[n_train:]


def stratified_sample(messages: Sequence[Message], n: int, seed: int = 0) -> list[Message]:
    """About ``n`` messages with the spam/ham ratio of ``messages``, in their order.

    Same draw as the harness' ``--limit``, which samples the canonical list: pass
    ``corpus.canonical()`` to get its messages, then ``corpus.subset()`` for online order.
    ``n`` of 0 or at least ``len(messages)`` keeps everything.
    """
    msgs = list(messages)
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    if not n or n >= len(msgs):
        return msgs
    rng = random.Random(seed)
    keep = set()
    for lab in LABELS:
        idx = [i for i, m in enumerate(msgs) if m.label == lab]
        keep.update(rng.sample(idx, round(n * len(idx) / len(msgs))))
    return [m for i, m in enumerate(msgs) if i in keep]
