"""The reputation checks through the scorer: configured from one file, each decides with
its own classification and reply text, feedback teaches the stores, a check that
cannot load is disabled with its reason and the scorer goes on; URLBL against the real
DNS server; release/report end to end through the gRPC service."""
from __future__ import annotations

import asyncio
import shutil

import pytest

import gate_zones as z
from classifier.classifications import get
from classifier.features import extract
from classifier.reputation.suite import Reputation, ReputationConfig, load_config
from classifier.scorer import Scorer
from mailgen import simple_message
from smtpgate.config import ConfigError

DATA = __import__("pathlib").Path(__file__).with_name("data")

NEWSLETTER = ("Dear reader, this week in the garden club we planted tulips along the north fence, "
              "repaired the old greenhouse door, discussed the compost rota for the spring, and "
              "agreed that the annual plant swap will be held in the village hall on the second "
              "Saturday of May. Bring labelled cuttings and seedlings, and a dish for the shared "
              "lunch if you can. Minutes of the meeting and the treasurer's report follow below.")


@pytest.fixture(scope="module")
def scorer(fitted_bundle):
    return Scorer.load(fitted_bundle)


def score(scorer, rep, raw, recipients=("user@home.test",)):
    f = extract(raw)
    findings, _ = asyncio.run(rep.evaluate(raw, f, list(recipients)))
    return scorer.score(f, findings=findings)


def test_defaults_need_no_lists_and_say_which_checks_are_off(tmp_path):
    rep = Reputation(load_config(None), tmp_path)
    status = rep.status()
    assert {c for c, s in status.items() if s == "enabled"} == {"pyzor", "neardup", "ucepp", "phishing", "reported"}
    assert status["urlbl"].startswith("disabled: not configured")


def test_a_bad_key_is_named(tmp_path):
    (tmp_path / "r.toml").write_text("[urlbl]\nzone = ['x']\n")
    with pytest.raises(ConfigError, match=r"urlbl\.zone: unknown key"):
        load_config(tmp_path / "r.toml")


def test_a_list_that_fails_to_load_disables_its_check_only(tmp_path, scorer):
    (tmp_path / "sb.txt").write_text("this is not a hash list\n")
    (tmp_path / "r.toml").write_text('[safebrowsing]\nfile = "sb.txt"\n[external_pattern]\nfiles = ["missing.toml"]\n')
    rep = Reputation(load_config(tmp_path / "r.toml"), tmp_path / "state")
    assert rep.status()["safebrowsing"].startswith("disabled: ")
    assert rep.status()["pyzor"] == "enabled"
    v = score(scorer, rep, simple_message("see http://evil.test/login"))
    assert v.classification in ("not_spam", "combined_score", "crm114", "global_tokens", "content_spam")


@pytest.fixture
def listed(tmp_path):
    """A reputation config with a Safe Browsing list, a pattern list and signatures."""
    shutil.copy(DATA / "safebrowsing.example.txt", tmp_path / "sb.txt")
    with open(tmp_path / "sb.txt", "a") as fh:
        fh.write("expr:malware-host.test/ MALWARE\n")
    (tmp_path / "patterns.toml").write_text(
        'list = "acme-layout"\n[[pattern]]\nname = "acme-invoice"\ntarget = "body"\n'
        'regex = "ACME-INVOICE-[0-9]{6}"\n')
    (tmp_path / "sigs.ndb").write_text("Mailsift.Test.Sig-1:0:*:4d41494c534946542d544553542d5349474e4154555245\n")
    (tmp_path / "r.toml").write_text('[safebrowsing]\nfile = "sb.txt"\n'
                                     '[external_pattern]\nfiles = ["patterns.toml"]\n'
                                     '[signature_match]\nfiles = ["sigs.ndb"]\n')
    rep = Reputation(load_config(tmp_path / "r.toml"), tmp_path / "state")
    assert all(rep.status()[c] == "enabled" for c in ("safebrowsing", "external_pattern", "signature_match"))
    return rep


@pytest.mark.parametrize("body,cid,reply", [
    ("Download the update from http://malware-host.test/setup.exe today.", "safebrowsing",
     "550 5.7.1 Message contains a URL listed by safebrowsing"),
    ("Your statement ACME-INVOICE-123456 is attached.", "external_pattern",
     "550 5.7.1 Message matches a known spam pattern (acme-layout)"),
    ("payload MAILSIFT-TEST-SIGNATURE here", "signature_match",
     "550 5.7.1 Message matched signature Mailsift.Test.Sig-1"),
])
def test_list_checks_decide_with_their_own_reply(scorer, listed, body, cid, reply):
    v = score(scorer, listed, simple_message(body))
    assert (v.verdict, v.classification, v.reply()) == ("quarantine", cid, reply)
    found = [r for r in v.reputation if r.classification == cid]
    assert found and found[0].decides_alone and found[0].evidence


def test_report_then_release_teaches_the_stores(tmp_path, scorer):
    rep = Reputation(load_config(None), tmp_path)
    campaign = simple_message(NEWSLETTER + " Order now at +1 800 555 0199.", subject="Garden club news")
    variant = simple_message(NEWSLETTER.replace("tulips", "daffodils") + " Order now at +1 800 555 0199.",
                             subject="Garden club news!")
    before = score(scorer, rep, variant)
    assert not any(r.decides_alone for r in before.reputation)
    done = rep.learn(campaign, "spam", who="admin", trusted=True)
    assert done["neardup"] == "added (trusted)" and done["pyzor"].startswith("reported")
    after = score(scorer, rep, variant)
    near = [r for r in after.reputation if r.check == "neardup"]
    assert near and near[0].decides_alone and "similar" in near[0].evidence[0]
    assert after.verdict == "quarantine" and after.classification == "content_spam"
    assert after.reply() == get("content_spam").reply()
    # the admin releases it: a mistake, the index forgets it
    rep.learn(variant, "ham")
    again = score(scorer, rep, variant)
    assert not any(r.check == "neardup" and r.decides_alone for r in again.reputation)


def test_ordinary_reports_of_near_copies_decide_from_min_reporters(tmp_path, scorer):
    """neardup counts reporters as the reported check does: one user's report of a
    newsletter is evidence, not a ruling; two users' reports of its copies decide; an
    admin's release forgets the copy it matches best."""
    (tmp_path / "r.toml").write_text("[neardup]\nmin_reporters = 2\n")
    rep = Reputation(load_config(tmp_path / "r.toml"), tmp_path / "state")
    assert rep.cfg.neardup["min_reporters"] == 2

    def copy(word, n):
        return simple_message(NEWSLETTER.replace("tulips", word) + " Order now at +1 800 555 0199.",
                              subject=f"Garden club news {n}")

    variant = copy("daffodils", 0)
    done = rep.learn(copy("tulips", 1), "spam", who="alice@home.test")
    assert done["neardup"] == "added"
    v = score(scorer, rep, variant)
    near = [r for r in v.reputation if r.check == "neardup"]
    assert near and 0 < near[0].strength <= 0.25 and not near[0].decides_alone   # a pull short of the quorum
    assert near[0].evidence[0].endswith("1 reporter (2 needed to decide)")
    assert near[0].contribution > 0                       # it still pulls the combined score
    rep.learn(copy("roses", 2), "spam", who="  ALICE@home.test")       # the same reporter, respelt
    assert not any(r.check == "neardup" and r.decides_alone for r in score(scorer, rep, variant).reputation)
    rep.learn(copy("lilies", 3), "spam", who="bob@home.test")
    v = score(scorer, rep, variant)
    near = [r for r in v.reputation if r.check == "neardup"]
    assert near and near[0].decides_alone and near[0].evidence[0].endswith(", 2 reporters")
    assert v.verdict == "quarantine" and v.classification == "content_spam"
    rep.learn(variant, "ham", who="admin", trusted=True)      # removes the best match: one reporter left
    assert not any(r.check == "neardup" and r.decides_alone for r in score(scorer, rep, variant).reputation)
    rep.learn(copy("lilies", 3), "spam", who="bob@home.test")     # reported again: two reporters
    assert any(r.check == "neardup" and r.decides_alone for r in score(scorer, rep, variant).reputation)
    strict = Reputation(ReputationConfig(neardup={"enabled": True, "min_reporters": 3}), tmp_path / "state")
    assert not any(r.check == "neardup" and r.decides_alone for r in score(scorer, strict, variant).reputation)


def test_pyzor_decides_once_reported_often_enough(tmp_path, scorer):
    # without the reported check, which would name the same local reports considered_spam
    rep = Reputation(ReputationConfig(reported={"enabled": False}), tmp_path)
    msg = simple_message(NEWSLETTER, subject="club")
    for _ in range(5):
        rep.learn(msg, "spam")
    v = score(scorer, rep, msg)
    assert v.classification == "pyzor"      # before content_spam in the specificity order
    assert v.reply() == get("pyzor").reply()
    pz = next(r for r in v.reputation if r.check == "pyzor")
    assert pz.decides_alone and "5" in pz.evidence[0]


def test_urlbl_against_the_real_dns_server(tmp_path, scorer, dns_server):
    (tmp_path / "r.toml").write_text(
        f'[resolver]\nnameservers = ["127.0.0.1"]\nport = {dns_server.port}\ntimeout = 0.5\n'
        f'[urlbl]\nzones = {list(z.URL_BLOCKLISTS)!r}\nmin_lists = 2\n'.replace("'", '"'))
    rep = Reputation(load_config(tmp_path / "r.toml"), tmp_path / "state")
    v = score(scorer, rep, simple_message("Cheap watches at http://spam-link.test/buy now"))
    assert (v.classification, v.reply()) == (
        "urlbl", "550 5.7.1 Message contains a URL listed on URL blacklists (uribl-a.test, uribl-b.test)")
    once = score(scorer, rep, simple_message("See http://grey-link.test/page"))
    u = next(r for r in once.reputation if r.check == "urlbl")
    assert u.strength == 1 and not u.decides_alone and u.weight > 0 and u.contribution > 0


def test_the_documented_example_config_loads_every_check(tmp_path):
    rep = Reputation(load_config(DATA / "reputation.example.toml"), tmp_path)
    assert set(rep.status().values()) == {"enabled"}, rep.status()


def test_ucepp_decides_on_a_token_of_recent_spam(tmp_path, scorer):
    rep = Reputation(load_config(None), tmp_path)
    for i, topic in enumerate(("watches", "pills", "loans", "casino")):   # 3 decay a hair below 3
        rep.learn(simple_message(f"Best {topic} deal {i}, call +1 415 555 0142 today.", subject=topic), "spam")
    v = score(scorer, rep, simple_message("Hello, about the meeting: call me at +1 415 555 0142.",
                                          subject="meeting"))
    u = next(r for r in v.reputation if r.check == "ucepp")
    assert u.decides_alone and "14155550142" in u.evidence[0]
    assert (v.classification, v.reply()) == ("ucepp", get("ucepp").reply())


def test_phishing_lookalike_link_and_a_password_form_posting_away(tmp_path, scorer):
    (tmp_path / "r.toml").write_text('[phishing.brands]\nexamplebank = ["examplebank.test"]\n')
    rep = Reputation(load_config(tmp_path / "r.toml"), tmp_path / "state")
    html = ('<p>Your account is locked. Sign in at <a href="http://examp1ebank-secure.test/login">'
            'www.examplebank.test</a></p><form action="http://collect.test/p.php">'
            '<input name=u><input type="password" name=p></form>')
    raw = simple_message("Your account is locked.", frm="Example Bank <alerts@examp1ebank-secure.test>",
                         subject="Account locked", html=html)
    v = score(scorer, rep, raw)
    p = next(r for r in v.reputation if r.check == "phishing")
    assert p.decides_alone and p.strength >= 3
    assert any("examplebank" in e for e in p.evidence)
    assert (v.classification, v.reply()) == ("phishing", "550 5.7.1 Phishing attempt detected")
    plain = score(scorer, rep, simple_message("Lunch on Friday? See https://www.examplebank.test/hours",
                                              frm="Sam <sam@friends.test>", subject="lunch"))
    assert not any(r.check == "phishing" and r.decides_alone for r in plain.reputation)
