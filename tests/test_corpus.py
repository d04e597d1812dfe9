"""Corpus readers, online order, batch split and sampling (training/corpus.py).

Every corpus here is written by the test into tmp_path.
"""
from __future__ import annotations

import email.message
import mailbox
import os
import pickle
import random

import pytest

from training.corpus import (
    DATE_ORDER,
    INDEX_ORDER,
    MBOX_ORDER,
    Corpus,
    CorpusError,
    Message,
    batch_split,
    message_time,
    read_corpus,
    stratified_sample,
)


def rfc822(subject: str, date: str | None = None, from_line: str | None = None, body: str = "hello\n") -> bytes:
    head = f"From {from_line}\n" if from_line else ""
    head += "From: a@example.com\nTo: b@example.com\n"
    if date:
        head += f"Date: {date}\n"
    return (head + f"Subject: {subject}\n\n{body}").encode()


def write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def ids(corpus) -> list[str]:
    return [m.id for m in corpus]


def email_msg(subject: str, date: str) -> email.message.Message:
    m = email.message.Message()
    m["From"] = "a@example.com"
    m["Date"] = date
    m["Subject"] = subject
    m.set_payload("body of " + subject + "\n")
    return m


# ------------------------------------------------------------------ index
def make_index_corpus(root):
    write(root / "data" / "a b.eml", rfc822("with space"))
    write(root / "data" / "c.eml", rfc822("plain"))
    write(root / "data" / "d.eml", rfc822("third"))
    # TREC order is the file order, whatever the dates say; labels are case-insensitive
    (root / "index").write_text("spam data/a b.eml\n\nHAM data/c.eml\nSpam ./data/d.eml\n")
    return root


def test_index_order_labels_and_paths_with_spaces(tmp_path):
    c = read_corpus(make_index_corpus(tmp_path), fmt="index")
    assert ids(c) == ["data/a b.eml", "data/c.eml", "data/d.eml"]
    assert [m.label for m in c] == ["spam", "ham", "spam"]
    assert c.description == INDEX_ORDER
    assert c.messages[0].read() == rfc822("with space")
    assert os.path.isabs(c.messages[0].path)


def test_index_file_itself_and_auto(tmp_path):
    make_index_corpus(tmp_path)
    by_file = read_corpus(tmp_path / "index", fmt="index")
    assert ids(by_file) == ids(read_corpus(tmp_path)) == ids(read_corpus(tmp_path / "index"))


def test_index_unknown_label_names_file_and_line(tmp_path):
    write(tmp_path / "x", rfc822("x"))
    (tmp_path / "index").write_text("spam x\nspma x\n")
    with pytest.raises(CorpusError, match=r"index:2: unknown label 'spma'"):
        read_corpus(tmp_path)


def test_index_line_without_path(tmp_path):
    (tmp_path / "index").write_text("spam\n")
    with pytest.raises(CorpusError, match=r"index:1: expected 'spam\|ham <path>'"):
        read_corpus(tmp_path, fmt="index")


def test_index_missing_message_file(tmp_path):
    (tmp_path / "index").write_text("ham nowhere.eml\n")
    with pytest.raises(CorpusError, match=r"index:1: message file not found"):
        read_corpus(tmp_path)


# ------------------------------------------------------------------ dirs
def test_message_time_sources():
    from_line = message_time(rfc822("x", date="Tue, 01 Jan 2002 00:00:00 +0000",
                                    from_line="x@y  Mon Aug 19 12:00:00 2002"))
    folded = message_time(b"Subject: x\nDate: Tue, 01 Jan 2002\n 10:00:00 +0000\n\nbody\n")
    assert from_line is not None and from_line > message_time(rfc822("x", date="Tue, 01 Jan 2002 00:00:00 +0000"))
    assert folded == message_time(rfc822("x", date="Tue, 01 Jan 2002 10:00:00 +0000"))
    assert message_time(rfc822("x", date="not a date")) is None
    assert message_time(rfc822("x")) is None
    # a Date: line in the body is not a header
    assert message_time(b"Subject: x\n\nDate: Tue, 01 Jan 2002 10:00:00 +0000\n") is None


def test_dirs_online_order(tmp_path):
    # the From line wins over a misleading Date header
    write(tmp_path / "spam" / "s1", rfc822("s1", date="Mon, 01 Jan 1990 00:00:00 +0000",
                                           from_line="x@y  Mon Aug 19 12:00:00 2002"))
    write(tmp_path / "ham" / "h1", rfc822("h1", date="Tue, 01 Jan 2002 10:00:00 +0000"))
    write(tmp_path / "spam" / "s2", b"Subject: s2\nDate: Wed, 01 May 2002\n 10:00:00 +0000\n\nfolded\n")
    write(tmp_path / "ham" / "h2", rfc822("h2"))
    write(tmp_path / "spam" / "s0", rfc822("s0", date="garbage"))
    os.makedirs(tmp_path / "ham" / "subfolder")  # only files count
    c = read_corpus(tmp_path)
    assert c.description == DATE_ORDER
    # dated by time, then undated ones by relative path
    assert ids(c) == ["ham/h1", "spam/s2", "spam/s1", "ham/h2", "spam/s0"]
    assert ids(c) == ids(read_corpus(tmp_path, fmt="dirs"))
    assert ids(Corpus(c.canonical(), "")) == sorted(ids(c))


def test_dirs_ties_broken_by_relative_path(tmp_path):
    same = "Tue, 01 Jan 2002 10:00:00 +0000"
    for rel in ("spam/b", "ham/z", "spam/a"):
        write(tmp_path / rel, rfc822(rel, date=same))
    assert ids(read_corpus(tmp_path)) == ["ham/z", "spam/a", "spam/b"]


def test_dirs_spam_only(tmp_path):
    write(tmp_path / "spam" / "s", rfc822("s"))
    c = read_corpus(tmp_path)
    assert c.counts() == {"spam": 1, "ham": 0}


# ------------------------------------------------------------------ mbox
MBOX_SPAM = (b"From s@x  Mon Aug 19 12:00:00 2002\nSubject: spam0\n\nbuy\n\n"
             b"From s@x  Wed Aug 21 12:00:00 2002\nSubject: spam1\n\nbuy more\n\n")
MBOX_HAM = b"From h@x  Tue Aug 20 12:00:00 2002\nSubject: ham0\n\nhi\n\n"


def test_mbox_pair_merged_by_from_line(tmp_path):
    write(tmp_path / "spam.mbox", MBOX_SPAM)
    write(tmp_path / "ham.mbox", MBOX_HAM)
    c = read_corpus(tmp_path)
    assert ids(c) == ["spam.mbox#0", "ham.mbox#0", "spam.mbox#1"]
    assert [m.label for m in c] == ["spam", "ham", "spam"]
    assert c.description == DATE_ORDER
    # read() gives the message without its From separator
    assert c.messages[1].read() == b"Subject: ham0\n\nhi\n"
    assert ids(read_corpus(tmp_path, fmt="mbox")) == ids(c)


def test_single_mbox_needs_label(tmp_path):
    write(tmp_path / "box", MBOX_SPAM)
    with pytest.raises(ValueError, match="label"):
        read_corpus(tmp_path / "box")
    c = read_corpus(tmp_path / "box", label="HAM")
    assert ids(c) == ["box#0", "box#1"]
    assert {m.label for m in c} == {"ham"}
    assert c.description == MBOX_ORDER


def test_mbox_message_survives_pickling(tmp_path):
    write(tmp_path / "box", MBOX_SPAM)
    m = read_corpus(tmp_path / "box", fmt="mbox", label="spam").messages[1]
    copy = pickle.loads(pickle.dumps(m))
    assert copy == m
    assert copy.read() == m.read() == b"Subject: spam1\n\nbuy more\n"


# ------------------------------------------------------------------ maildir
def make_maildir_pair(root):
    keys = {}
    for lab, subject, date in (("spam", "s-late", "Fri, 03 May 2002 10:00:00 +0000"),
                               ("ham", "h-mid", "Thu, 02 May 2002 10:00:00 +0000"),
                               ("spam", "s-early", "Wed, 01 May 2002 10:00:00 +0000")):
        box = mailbox.Maildir(root / lab, create=True)
        keys[subject] = f"{lab}/{box.add(email_msg(subject, date))}"
    return keys


def test_maildir_pair(tmp_path):
    keys = make_maildir_pair(tmp_path)
    c = read_corpus(tmp_path)
    assert ids(c) == [keys["s-early"], keys["h-mid"], keys["s-late"]]
    assert [m.label for m in c] == ["spam", "ham", "spam"]
    assert ids(read_corpus(tmp_path, fmt="maildir")) == ids(c)
    first = c.messages[0]
    assert os.path.isfile(first.path)
    assert b"Subject: s-early" in first.read()


def test_single_maildir(tmp_path):
    box = mailbox.Maildir(tmp_path / "md", create=True)
    key = box.add(email_msg("one", "Wed, 01 May 2002 10:00:00 +0000"))
    with pytest.raises(CorpusError, match="label"):
        read_corpus(tmp_path / "md")
    c = read_corpus(tmp_path / "md", label="spam")
    assert ids(c) == [key]
    assert c.messages[0].read() == box.get_bytes(key)


# ------------------------------------------------------------------ detection and errors
@pytest.mark.parametrize("layout,description", [
    ("index", INDEX_ORDER), ("mbox-pair", DATE_ORDER), ("maildir-pair", DATE_ORDER), ("dirs", DATE_ORDER),
])
def test_auto_detection(tmp_path, layout, description):
    if layout == "index":
        make_index_corpus(tmp_path)
        expect = "data/a b.eml"
    elif layout == "mbox-pair":
        write(tmp_path / "spam.mbox", MBOX_SPAM)
        expect = "spam.mbox#0"
    elif layout == "maildir-pair":
        expect = make_maildir_pair(tmp_path)["s-early"]
    else:
        write(tmp_path / "ham" / "h", rfc822("h"))
        expect = "ham/h"
    c = read_corpus(tmp_path)
    assert c.description == description
    assert c.messages[0].id == expect


def test_index_wins_over_folders(tmp_path):
    make_index_corpus(tmp_path)
    write(tmp_path / "spam" / "other", rfc822("other"))
    assert "spam/other" not in ids(read_corpus(tmp_path))


def test_missing_source(tmp_path):
    with pytest.raises(CorpusError, match="no such file or directory"):
        read_corpus(tmp_path / "absent")


def test_unknown_format(tmp_path):
    with pytest.raises(CorpusError, match="unknown corpus format 'eml'"):
        read_corpus(tmp_path, fmt="eml")


def test_undetectable_folder(tmp_path):
    with pytest.raises(CorpusError, match="cannot tell the corpus format"):
        read_corpus(tmp_path)


def test_empty_corpus(tmp_path):
    os.makedirs(tmp_path / "spam")
    os.makedirs(tmp_path / "ham")
    with pytest.raises(CorpusError, match="empty"):
        read_corpus(tmp_path)


def test_label_refused_for_labelled_corpus(tmp_path):
    write(tmp_path / "ham" / "h", rfc822("h"))
    with pytest.raises(CorpusError, match="carries its own labels"):
        read_corpus(tmp_path, label="spam")


def test_dirs_format_needs_label_folders(tmp_path):
    with pytest.raises(CorpusError, match="no spam/ or ham/ folder"):
        read_corpus(tmp_path, fmt="dirs")


# ------------------------------------------------------------------ Message / Corpus
def test_message_defaults_and_lazy_read(tmp_path):
    write(tmp_path / "m", b"bytes on disk")
    m = Message(str(tmp_path / "m"), "spam")
    assert m.id == m.path and m.is_spam
    assert m.read() == b"bytes on disk"
    assert Message("unused", "ham", b"in memory", id="x").read() == b"in memory"
    with pytest.raises(ValueError):
        Message("p", "junk")


def test_subset_keeps_online_order():
    msgs = [Message(f"p{i}", "spam", id=f"{9 - i}") for i in range(6)]
    c = Corpus(msgs, "test")
    keep = [msgs[4], msgs[1], msgs[3]]
    assert ids(c.subset(keep)) == ["8", "6", "5"]


# ------------------------------------------------------------------ splits
def synthetic(n_spam: int, n_ham: int) -> list[Message]:
    msgs = [Message(f"/x/spam/{i:03d}", "spam", id=f"spam/{i:03d}") for i in range(n_spam)]
    msgs += [Message(f"/x/ham/{i:03d}", "ham", id=f"ham/{i:03d}") for i in range(n_ham)]
    random.Random(42).shuffle(msgs)  # an online order unrelated to the ids
    return msgs


@pytest.mark.parametrize("fraction,seed", [(0.7, 0), (0.5, 3), (0.33, 11)])
def test_batch_split_reproduces_harness(fraction, seed):
    c = Corpus(synthetic(9, 14), "test")
    expect = sorted(m.id for m in c)
    random.Random(seed).shuffle(expect)
    n_train = round(fraction * len(expect))
    train, test = batch_split(c, train_fraction=fraction, seed=seed)
    assert [m.id for m in train] == expect[:n_train]
    assert [m.id for m in test] == expect[n_train:]
    # a plain list of messages splits the same way as the corpus
    assert batch_split(list(c), fraction, seed) == (train, test)


def test_batch_split_on_files(tmp_path):
    for i in range(7):
        write(tmp_path / ("spam" if i % 2 else "ham") / f"m{i}", rfc822(f"m{i}"))
    c = read_corpus(tmp_path)
    expect = sorted(ids(c))
    random.Random(0).shuffle(expect)
    train, test = batch_split(c)
    assert [m.id for m in train] == expect[:5] and [m.id for m in test] == expect[5:]


def test_stratified_sample_ratio_and_order():
    msgs = synthetic(30, 70)
    sample = stratified_sample(msgs, 20, seed=1)
    assert sum(m.is_spam for m in sample) == 6
    assert sum(not m.is_spam for m in sample) == 14
    pos = [msgs.index(m) for m in sample]
    assert pos == sorted(pos)
    assert stratified_sample(msgs, 20, seed=1) == sample


def test_stratified_sample_matches_direct_draw():
    msgs = synthetic(11, 26)
    rng = random.Random(4)
    keep = set()
    for lab in ("spam", "ham"):
        idx = [i for i, m in enumerate(msgs) if m.label == lab]
        keep.update(rng.sample(idx, round(15 * len(idx) / len(msgs))))
    assert stratified_sample(msgs, 15, seed=4) == [m for i, m in enumerate(msgs) if i in keep]


def test_stratified_sample_keeps_all_when_n_is_zero_or_large():
    msgs = synthetic(3, 4)
    assert stratified_sample(msgs, 0, seed=0) == msgs
    assert stratified_sample(msgs, 100, seed=0) == msgs
