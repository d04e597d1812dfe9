"""The near-duplicate index of reported spam (``content_spam``): campaigns that vary
words are found, unrelated mail is not, the index survives a reopen and stays bounded."""
from __future__ import annotations

import random
import re
import sqlite3

import numpy as np
import pytest

import mailgen
from classifier.features import extract
from classifier.reputation.base import Signal
from classifier.reputation.neardup import Match, NearDupIndex, minhash, neardup, normalise_words, shingle_hashes

BASE = ("Dear friend we are pleased to tell you that your address was selected in our annual"
        " draw and you have won a cash prize of one million dollars which is waiting for you"
        " to claim it before the end of this month all you need to do is reply with your full"
        " name your bank details and a copy of your passport so that our agents can transfer"
        " the money to your account without delay this offer is strictly confidential and"
        " must not be shared with anyone else because of the security procedures of our"
        " international lottery commission please act now").split()
SYNONYMS = {"friend": "customer", "pleased": "happy", "cash": "money", "dollars": "euros",
            "month": "week", "agents": "officers", "delay": "fees", "confidential": "private",
            "anyone": "others", "international": "global", "annual": "yearly", "draw": "lottery"}


def campaign_copy(i: int, changes: int = 4) -> bytes:
    """One copy of the campaign: a few words swapped, its own number, link and address."""
    rng = random.Random(i)
    words = list(BASE)
    swap = rng.sample([k for k, w in enumerate(words) if w in SYNONYMS], changes)
    for k in swap:
        words[k] = SYNONYMS[words[k]]
    body = (f"Ref {rng.randint(10000, 99999)}: " + " ".join(words)
            + f"\nhttp://claim{i}.example/{rng.randint(1, 10**6)}\nagent{i}@lottery{i}.example\n")
    return (f"From: agent{i}@lottery{i}.example\nTo: you@example.com\nSubject: Winner {i}\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}").encode()


def close_copy(i: int) -> bytes:
    """A copy with one word swapped: similarity 0.8 or more to every other close copy."""
    return campaign_copy(i, changes=1)


def ham(n: int) -> list[bytes]:
    rng = random.Random(7)
    return [mailgen.make_message("ham", rng, i) for i in range(n)]


def test_a_campaign_with_words_varied_is_found():
    index = NearDupIndex(None)
    assert index.add(campaign_copy(0), "report-0")
    for i in range(1, 8):
        found = index.query(campaign_copy(i))
        assert found is not None, i
        similarity, label = found
        assert label == "report-0"
        assert 0.5 <= similarity < 1.0      # not identical: words were changed


def test_unrelated_messages_are_not_matched():
    index = NearDupIndex(None)
    for i in range(5):
        index.add(campaign_copy(i), f"report-{i}")
    rng = random.Random(3)
    others = ham(30) + [mailgen.make_message("spam", rng, i) for i in range(30)]
    assert [m for m in others if index.query(m) is not None] == []


def test_the_signal_carries_similarity_and_decides_only_when_close():
    index = NearDupIndex(None)
    index.add(extract(close_copy(0)), "q-123", who="admin", trusted=True)
    sig = neardup(extract(close_copy(1)), index)
    assert isinstance(sig, Signal) and sig.classification == "content_spam"
    assert sig.strength >= 0.8 and sig.decides
    assert sig.evidence == (f"similar ({sig.strength:.2f}) to reported spam q-123, a trusted report",)
    far = neardup(extract(campaign_copy(2, changes=8)), index, decide_at=0.99)
    assert far is not None and not far.decides
    assert far.evidence == (f"similar ({far.strength:.2f}) to reported spam q-123",)
    assert neardup(extract(ham(1)[0]), index) is None


def test_one_ordinary_report_pulls_without_deciding():
    index = NearDupIndex(None)
    index.add(close_copy(0), "q-1", who="alice@example.com")     # untrusted by default
    sig = neardup(close_copy(1), index)
    assert sig is not None and not sig.decides
    similarity = float(re.match(r"similar \((0\.\d\d)\)", sig.evidence[0]).group(1))
    assert similarity >= 0.8                                      # as close as a trusted match that decides
    # short of the quorum it pulls with an eighth of a ruling's strength (reported.below_quorum)
    assert sig.strength == pytest.approx(similarity * 0.125, abs=0.002)
    assert sig.evidence == (f"similar ({similarity:.2f}) to reported spam q-1, 1 reporter (2 needed to decide)",)


def test_two_distinct_ordinary_reporters_decide_and_a_respelling_is_one():
    index = NearDupIndex(None)
    index.add(close_copy(0), "q-1", who="alice@example.com")
    index.add(close_copy(2), "q-2", who=" <Alice@Example.COM> ")   # alice again
    probe = close_copy(1)
    assert index.match(probe, 0.8).reporters == 1
    assert not neardup(probe, index).decides
    index.add(close_copy(3), "q-3", who="bob@example.com")
    sig = neardup(probe, index)
    assert sig.decides and sig.evidence[0].endswith(", 2 reporters")
    assert not neardup(probe, index, min_reporters=3).decides
    # only reports at decide_at or more count: far copies do not add reporters
    assert neardup(probe, index, decide_at=0.999) is not None
    assert not neardup(probe, index, decide_at=0.999).decides


def test_a_trusted_report_decides_alone_among_ordinary_ones():
    index = NearDupIndex(None)
    index.add(close_copy(0), "q-1", who="alice")
    index.add(close_copy(2), "q-2", who="postmaster", trusted=True)
    m = index.match(close_copy(1), 0.8)
    assert m.trusted and m.reporters == 1
    assert neardup(close_copy(1), index, min_reporters=5).decides


def test_an_index_from_before_reporters_opens_and_its_entries_are_trusted(tmp_path):
    path = tmp_path / "neardup.sqlite"
    old = NearDupIndex(path)
    old.add(close_copy(0), "report-0")
    old.close()
    with sqlite3.connect(path) as db:      # the entries table as it was before who/trusted
        db.execute("ALTER TABLE entries DROP COLUMN who")
        db.execute("ALTER TABLE entries DROP COLUMN trusted")
        assert {r[1] for r in db.execute("PRAGMA table_info(entries)")} == {"id", "label", "added",
                                                                         "shingles", "sig"}
    db.close()
    index = NearDupIndex(path)
    sig = neardup(close_copy(1), index)
    assert sig.decides and sig.evidence[0].endswith("a trusted report")
    index.add(campaign_copy(3), "report-3", who="carol")       # new entries keep their reporter
    index.close()
    again = NearDupIndex(path)
    assert again.match(campaign_copy(3), 0.99) == Match(1.0, "report-3", trusted=False, reporters=1)
    again.close()


def test_masking_makes_numbers_links_and_addresses_irrelevant():
    a = "Call 555-0100 or see http://a.example/x?id=1 or write to bob@a.example " + " ".join(BASE)
    b = "Call 555-9999 or see https://b.example/y or write to eve@b.example " + " ".join(BASE)
    assert normalise_words(a) == normalise_words(b)


def test_too_little_text_is_never_indexed_nor_matched():
    index = NearDupIndex(None, min_shingles=30)
    short = b"Subject: hi\n\nclick here now to win a prize today friend\n"   # 10 words, 6 shingles
    assert index.add(short, "short") is False
    assert len(index) == 0
    index.add(campaign_copy(0), "long")
    assert index.query(short) is None
    assert index.signature(short) is None


def test_raw_bytes_and_features_give_the_same_answer():
    index = NearDupIndex(None)
    index.add(campaign_copy(0), "r")
    assert index.query(campaign_copy(3)) == index.query(extract(campaign_copy(3)))


def test_readding_a_label_replaces_it():
    index = NearDupIndex(None)
    index.add(campaign_copy(0), "r")
    index.add(ham(1)[0] + b" padding words so that the ham is long enough to be indexed" * 3, "r")
    assert len(index) == 1
    assert index.query(campaign_copy(1)) is None


def test_a_released_report_is_forgotten():
    index = NearDupIndex(None)
    index.add(campaign_copy(0), "q-1")
    index.add(campaign_copy(2), "q-2", who="admin", trusted=True)
    assert index.remove("q-1") is True
    assert index.remove("q-1") is False
    assert index.remove("q-2") is True       # whoever reported it
    assert index.query(campaign_copy(1)) is None


def test_the_index_survives_a_reopen(tmp_path):
    path = tmp_path / "neardup.sqlite"
    index = NearDupIndex(path)
    index.add(campaign_copy(0), "report-0")
    index.close()
    again = NearDupIndex(path)
    assert again.query(campaign_copy(1))[1] == "report-0"
    again.close()
    with pytest.raises(ValueError, match="cannot be compared"):
        NearDupIndex(path, num_perm=64, bands=16)


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


def test_entries_expire_after_max_age():
    clock = Clock()
    index = NearDupIndex(None, max_age_days=30, clock=clock)
    index.add(campaign_copy(0), "old")
    clock.t += 31 * 86400
    assert index.query(campaign_copy(1)) is None        # not matched once expired
    assert index.purge() == 1
    assert len(index) == 0


def test_max_entries_evicts_the_oldest():
    clock = Clock()
    index = NearDupIndex(None, max_entries=3, clock=clock)
    # five unrelated long messages, one a second
    msgs = [ham(5)[i] + (f" unique text block {i} " * 40).encode() for i in range(5)]
    for i, m in enumerate(msgs):
        clock.t += 1
        index.add(m, f"m{i}")
    assert len(index) == 3
    assert index.query(msgs[0]) is None
    assert index.query(msgs[1]) is None
    assert index.query(msgs[4]) == (1.0, "m4")


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    universe = rng.integers(0, 2**63, size=3000, dtype=np.uint64)
    a, b = universe[:2000], universe[1000:3000]        # Jaccard 1000 / 3000
    index = NearDupIndex(None)
    sa, sb = minhash(np.unique(a), index._a, index._b), minhash(np.unique(b), index._a, index._b)
    assert abs((sa == sb).mean() - 1 / 3) < 0.15
    assert (minhash(np.unique(a), index._a, index._b) == sa).all()       # deterministic


def test_shingles_are_stable_and_distinct():
    words = "a b c d e f g a b c d e".split()
    assert len(shingle_hashes(words, 5)) == 7            # 8 five-grams, one repeated
    assert len(shingle_hashes(words, 3)) == 7            # 10 three-grams, three repeated
    assert (shingle_hashes(words) == shingle_hashes(list(words))).all()
    assert len(shingle_hashes(words[:2])) == 0
