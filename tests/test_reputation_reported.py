"""The ``reported`` check (classifier/reputation/reported.py): this installation's own
reports and releases, by body digest. A body reported as spam quarantines its copies
as ``considered_spam``; a released body's copies pass whatever the token classifiers
say (scorer rule 5), unless another check decides spam; a bundle made before the check
existed gets its prior weight and rank from the default recipe."""
from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import random
import shutil

import pytest

import mailgen
from classifier.bundle import load_bundle, sha256_bytes
from classifier.classifications import get
from classifier.features import extract
from classifier.reputation.reported import ReportedStore, body_digest, exact_digest, reported
from classifier.reputation.suite import Reputation, ReputationConfig, load_config
from classifier.scorer import Scorer
from mailgen import simple_message
from smtpgate.config import ConfigError

DAY = 86400.0
TEXT = ("Dear member, the committee met on Tuesday and agreed the new opening hours for the "
        "library: weekdays from nine until six, Saturdays until one. Volunteers for the book sale "
        "should write to the secretary before the end of the month, and bring boxes if they can.")


class Clock:
    def __init__(self, t: float = 1_767_225_600.0):    # 2026-01-01T00:00:00Z
        self.t = t

    def __call__(self) -> float:
        return self.t


def copy_of(raw: bytes, to: str, n: int = 1) -> bytes:
    """The same message to another recipient: its own To, Message-ID and Date."""
    m = email.message_from_bytes(raw, policy=email.policy.default)
    for name, value in (("To", to), ("Message-ID", f"<copy{n}.{to}>"), ("Date", f"Fri, 0{n} Jan 2026 10:00:00 +0000")):
        del m[name]
        m[name] = value
    return m.as_bytes()


# ---------------------------------------------------------------- the digest

def test_copies_to_other_recipients_share_the_body_digest_and_other_bodies_do_not():
    raw = simple_message(TEXT, to="a@rcpt.test", headers={"Message-ID": "<1@x>"})
    d = body_digest(raw)
    assert d.startswith("pyzor:") and len(d) == len("pyzor:") + 40
    assert body_digest(copy_of(raw, "b@rcpt.test")) == d
    assert body_digest(simple_message(TEXT.replace("nine", "ten"))) != d


def test_a_body_pyzor_cannot_digest_falls_back_to_its_bytes():
    picture = base64.encodebytes(bytes(random.Random(1).randrange(256) for _ in range(600))).decode()
    raw = (b"From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: pic\r\nContent-Type: image/png\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + picture.encode().replace(b"\n", b"\r\n"))
    d = body_digest(raw)
    assert d.startswith("body:")
    assert body_digest(raw.replace(b"To: b@rcpt.test", b"To: c@rcpt.test")) == d
    assert body_digest(raw.replace(b"\r\n", b"\n")) == d                 # line ends do not matter
    assert body_digest(b"Subject: nothing\r\n\r\n  \r\n") is None


# ---------------------------------------------------------------- the store

@pytest.fixture
def store(tmp_path):
    clock = Clock()
    s = ReportedStore(tmp_path / "reported.sqlite", clock=clock)
    s.clock_ = clock
    yield s
    s.close()


def standing(store, digest="pyzor:x"):
    s = store.standing(digest)
    return None if s is None else (s.label, s.reporters, s.trusted, s.against)


def test_untrusted_reporters_count_and_the_majority_holds(store):
    assert store.standing("pyzor:x") is None
    store.vote("pyzor:x", "spam", "alice")
    store.vote("pyzor:x", "spam", "bob")
    assert standing(store) == ("spam", 2, False, 0)
    store.vote("pyzor:x", "ham", "carol")             # the newest vote does not simply win
    assert standing(store) == ("spam", 2, False, 1)
    store.vote("pyzor:x", "ham", "alice")             # alice changed her mind
    assert standing(store) == ("ham", 2, False, 1)
    store.vote("pyzor:x", "spam", "dave")             # two each: no verdict
    assert store.standing("pyzor:x") is None
    with pytest.raises(ValueError):
        store.vote("pyzor:x", "maybe", "alice")


def test_the_latest_trusted_vote_decides_over_any_number_of_untrusted(store):
    for who in ("u1", "u2", "u3"):
        store.vote("pyzor:x", "spam", who)
    store.vote("pyzor:x", "ham", "admin", trusted=True)       # an admin's release
    assert standing(store) == ("ham", 1, True, 3)
    store.vote("pyzor:x", "spam", "u4")                       # one ordinary report does not undo it
    assert standing(store)[:3] == ("ham", 1, True)
    store.vote("pyzor:x", "spam", "root", trusted=True)       # another admin's report does
    assert standing(store) == ("spam", 5, True, 1)


def test_a_reporter_is_one_spelling(store):
    for who in ("bob", "Bob", " bob", "BOB ", "<bob>"):
        store.vote("pyzor:x", "spam", who)
    assert standing(store) == ("spam", 1, False, 0)


def test_one_report_does_not_decide_and_one_release_does_not_overrule(store):
    raw = simple_message(TEXT)
    d = exact_digest(raw)
    store.vote(d, "spam", "alice")
    s = reported(raw, store)                                   # default min_reporters = 2
    # short of the quorum: a pull, an eighth of a ruling's strength (below_quorum)
    assert (s.classification, s.decides, s.strength) == ("considered_spam", False, 0.125)
    store.vote(d, "spam", "bob")
    assert reported(raw, store).decides
    other = simple_message(TEXT + " And one more sentence about the library.")
    store.vote(exact_digest(other), "ham", "carol")
    h = reported(other, store)
    assert (h.classification, h.strength, h.decides) == ("not_spam", -0.5, False)
    store.vote(exact_digest(other), "ham", "admin", trusted=True)
    h = reported(other, store)
    assert (h.classification, h.strength, h.decides) == ("not_spam", pytest.approx(-1.6931, abs=1e-4), True)


def test_a_store_from_before_trusted_votes_is_read(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE votes (digest TEXT NOT NULL, who TEXT NOT NULL, label TEXT NOT NULL,"
                     " at REAL NOT NULL, UNIQUE (digest, who));")
    db.execute("INSERT INTO votes VALUES ('pyzor:x', 'alice', 'spam', ?)", (Clock()(),))
    db.commit()
    db.close()
    s = ReportedStore(path, clock=Clock())
    assert standing(s) == ("spam", 1, False, 0)
    s.close()


def test_votes_expire(store):
    store.vote("pyzor:old", "spam", "alice")
    store.clock_.t += 20 * DAY
    store.vote("pyzor:new", "spam", "alice")
    store.clock_.t += 11 * DAY
    assert store.standing("pyzor:old") is None and store.standing("pyzor:new") is not None
    assert len(store) == 1 and store.purge() == 1


def test_the_finding_names_how_many_and_when_but_nobody(store):
    raw = simple_message(TEXT)
    assert reported(raw, store) is None
    store.vote(exact_digest(raw), "spam", "alice@site.test")
    store.vote(exact_digest(raw), "spam", "bob@site.test")
    s = reported(raw, store)
    assert (s.classification, s.decides, s.evidence) == (
        "considered_spam", True, ("reported as spam by 2 reporters, last 2026-01-01",))
    assert s.strength == pytest.approx(1.69314718)
    assert not s.reply_args
    assert reported(raw, store, min_reporters=3).decides is False
    store.vote(exact_digest(raw), "ham", "admin@site.test", trusted=True)
    h = reported(raw, store)
    assert (h.classification, h.strength, h.decides, h.evidence) == (
        "not_spam", -1.0, True, ("released as not spam by 1 reporter, last 2026-01-01, an admin's decision",))


# ---------------------------------------------------------------- in the suite

def test_on_by_default_and_configurable(tmp_path):
    assert Reputation(load_config(None), tmp_path).status()["reported"] == "enabled"
    (tmp_path / "r.toml").write_text("[reported]\nmin_reporters = 2\nmax_age_days = 7\n")
    rep = Reputation(load_config(tmp_path / "r.toml"), tmp_path / "state")
    assert rep.cfg.reported == {"enabled": True, "min_reporters": 2, "max_age_days": 7}
    assert rep.checks["reported"].max_age_days == 7
    (tmp_path / "bad.toml").write_text("[reported]\nmin_reports = 2\n")
    with pytest.raises(ConfigError, match=r"reported\.min_reports: unknown key"):
        load_config(tmp_path / "bad.toml")


def test_the_pyzor_digest_is_computed_once_per_message(tmp_path, monkeypatch):
    from classifier.reputation import pyzor as pyzor_module

    calls = []
    real = pyzor_module.pyzor_digest
    monkeypatch.setattr(pyzor_module, "pyzor_digest", lambda raw: calls.append(1) or real(raw))
    rep = Reputation(load_config(None), tmp_path)
    raw = simple_message(TEXT)
    assert rep.learn(raw, "spam", who="alice")["reported"] == f"spam vote on {body_digest(raw)}"
    assert len(calls) == 1
    asyncio.run(rep.evaluate(raw, extract(raw)))
    assert len(calls) == 2


@pytest.fixture(scope="module")
def scorer(fitted_bundle):
    return Scorer.load(fitted_bundle)


def score(scorer, rep, raw):
    f = extract(raw)
    findings, _ = asyncio.run(rep.evaluate(raw, f, ["user@home.test"]))
    return scorer.score(f, findings=findings)


def spam_the_model_is_sure_of(scorer, rep):
    for i in range(50):
        raw = mailgen.make_message("spam", random.Random(700 + i), i)
        v = score(scorer, rep, raw)
        if v.verdict == "quarantine" and v.classification != "combined_score":
            return raw, v
    raise AssertionError("no generated spam that a classifier decides alone")


def test_a_reported_body_quarantines_its_copies_as_considered_spam(tmp_path, scorer):
    rep = Reputation(load_config(None), tmp_path)
    raw = simple_message(TEXT, to="alice@home.test")
    assert score(scorer, rep, raw).verdict == "accept"
    rep.learn(raw, "spam", who="alice@home.test")          # one user's report: a pull, not a ruling
    v = score(scorer, rep, copy_of(raw, "bob@home.test"))
    r = next(x for x in v.reputation if x.check == "reported")
    assert not r.decides_alone and v.classification != "considered_spam"
    rep.learn(raw, "spam", who="carol@home.test")          # a second reporter: it decides
    v = score(scorer, rep, copy_of(raw, "bob@home.test"))
    assert (v.verdict, v.classification) == ("quarantine", "considered_spam")
    assert v.reply() == get("considered_spam").reply() == "550 5.7.1 Message considered spam"
    r = next(x for x in v.reputation if x.check == "reported")
    assert r.decides_alone and r.evidence[0].startswith("reported as spam by 2 reporters, last ")
    assert r.weight == 5.0 and "alice" not in " ".join(r.evidence)


def test_a_released_body_passes_whatever_the_token_classifiers_say(tmp_path, scorer):
    rep = Reputation(load_config(None), tmp_path)
    raw, before = spam_the_model_is_sure_of(scorer, rep)
    assert any(c.decides_alone for c in before.classifiers)
    rep.learn(raw, "ham", who="user@home.test")            # one user's release overrules nothing
    v = score(scorer, rep, copy_of(raw, "bob@home.test"))
    assert v.verdict == "quarantine" and v.classification != "not_spam"
    r = next(x for x in v.reputation if x.check == "reported")
    assert (r.classification, r.strength, r.decides_alone) == ("not_spam", -0.5, False)
    rep.learn(raw, "ham", who="admin@home.test", trusted=True)
    v = score(scorer, rep, copy_of(raw, "bob@home.test"))
    assert (v.verdict, v.classification) == ("accept", "not_spam")
    r = next(x for x in v.reputation if x.check == "reported")
    assert (r.classification, r.decides_alone) == ("not_spam", True)
    assert r.strength == pytest.approx(-1.6931472)              # the admin and the user hold ham
    assert r.contribution == pytest.approx(5.0 * r.strength)
    assert v.score < before.score


def test_a_release_does_not_overrule_another_check_that_decides_spam(tmp_path, scorer):
    (tmp_path / "patterns.toml").write_text('list = "layouts"\n[[pattern]]\nname = "library"\n'
                                            'target = "body"\nregex = "opening hours for the library"\n')
    (tmp_path / "r.toml").write_text('[external_pattern]\nfiles = ["patterns.toml"]\n')
    rep = Reputation(load_config(tmp_path / "r.toml"), tmp_path / "state")
    raw = simple_message(TEXT)
    rep.learn(raw, "ham", who="admin@home.test", trusted=True)
    v = score(scorer, rep, copy_of(raw, "bob@home.test"))
    assert (v.verdict, v.classification) == ("quarantine", "external_pattern")


def test_a_bundle_older_than_the_check_gets_its_prior_and_rank_from_the_recipe(tmp_path, fitted_bundle):
    old = tmp_path / "old"
    shutil.copytree(fitted_bundle, old)
    doc = json.loads((old / "bundle.json").read_bytes())
    state, params = doc["combined"]["state"], doc["combined"]["params"]
    at = state["feature_names"].index("reported")
    assert at == len(state["feature_names"]) - 1
    del state["feature_names"][at], state["coef"][at], params["fact_weights"]["reported"]
    doc["specificity"].remove("considered_spam")
    raw = json.dumps(doc).encode()
    (old / "bundle.json").write_bytes(raw)
    manifest = json.loads((old / "manifest.json").read_bytes())
    manifest["files"]["bundle.json"] = {"sha256": sha256_bytes(raw), "bytes": len(raw)}
    (old / "manifest.json").write_text(json.dumps(manifest))

    b = load_bundle(old)
    assert dict(zip(b.model.feature_names(), b.model.coef_))["reported"] == 5.0
    assert b.specificity.index("considered_spam") == b.specificity.index("pyzor") - 1
    # and so a reported copy is named for the report, not for the near-duplicate index
    rep = Reputation(load_config(None), tmp_path / "state")
    raw = simple_message(TEXT)
    rep.learn(raw, "spam", who="alice", trusted=True)
    v = score(Scorer(b), rep, copy_of(raw, "bob@home.test"))
    assert v.classification == "considered_spam"
    assert {"content_spam", "considered_spam"} <= {r.classification for r in v.reputation if r.decides_alone}


def test_without_the_check_the_suite_learns_and_scores_as_before(tmp_path, scorer):
    rep = Reputation(ReputationConfig(reported={"enabled": False}), tmp_path)
    raw = simple_message(TEXT)
    assert "reported" not in rep.learn(raw, "spam", who="alice")
    assert not any(r.check == "reported" for r in score(scorer, rep, raw).reputation)


def test_only_the_exact_body_decides_a_body_alike_by_pyzor_pulls(store):
    """Pyzor drops URLs, long words and short lines: two list messages whose own text is
    a URL and a few code lines digest to their common footer. In the SpamAssassin
    corpus an admin's report of a spam sent through a list quarantined a ham of the
    same list that way. Votes are kept under the exact body and the Pyzor digest; only
    the exact body decides, a Pyzor-alike body gets a pull."""
    footer = ("\r\n-- \r\nIrish Linux Users' Group: ilug@linux.ie\r\n"
              "http://www.linux.ie/mailman/listinfo/ilug for (un)subscription information.\r\n"
              "List maintainer: listmaster@linux.ie\r\n")
    spam = simple_message("http://spam.example/buy-now-cheap-pills-online-today\r\n\r\nOK.\r\n" + footer)
    ham = simple_message("http://docs.freebsd.org/cgi/getmsg.cgi?fetch=394609+0+current\r\n\r\nDavid.\r\n" + footer)
    assert body_digest(spam) == body_digest(ham) and exact_digest(spam) != exact_digest(ham)
    for key in (exact_digest(spam), body_digest(spam)):            # as Reputation.learn votes
        store.vote(key, "spam", "admin", trusted=True)
    s = reported(spam, store)
    assert (s.classification, s.decides) == ("considered_spam", True)
    h = reported(ham, store)
    assert (h.classification, h.decides) == ("considered_spam", False)
    assert 0 < h.strength <= 0.25 and h.evidence[0].startswith("a body like one reported as spam by 1 reporter")
