"""UCEPP: token extraction, the decayed SQLite store, and the decision rule.

Accuracy on a corpus is measured outside the unit tests (the numbers that chose the
defaults are in ``classifier/reputation/ucepp.py``, ``Defaults``).
"""
from __future__ import annotations

import logging
import math
import sqlite3

import pytest

from classifier.classifications import get as classification
from classifier.features import extract
from mailgen import simple_message
from classifier.reputation.ucepp import (BUILTIN_ALLOW, DAY, UceppStore, find_phones, find_wallets,
                                         keccak256, ucepp, ucepp_tokens, valid_btc, valid_eth, valid_xmr)

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def message(body: str, *, subject: str = "offer", to: str = "victim@home.test",
            headers: dict[str, str] | None = None, html: str | None = None) -> bytes:
    return simple_message(body, frm="Sender <sender@mailer.test>", to=to, subject=subject,
                          headers=headers, html=html)


def tokens_of(body: str, **kw) -> list[str]:
    return ucepp_tokens(extract(message(body, **kw)))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = UceppStore(tmp_path / "ucepp.sqlite", clock=clock, purge_every=0)
    yield s
    s.close()


# ---------------------------------------------------------------- extraction

def test_link_hosts_become_their_registered_domain():
    toks = tokens_of("Buy at http://a.b.cheap-pills.test/x and www.shop.example.co.uk/buy now")
    assert "domain:cheap-pills.test" in toks
    assert "domain:example.co.uk" in toks
    assert not any(t.startswith("domain:a.b.") or t == "domain:co.uk" for t in toks)


def test_html_link_targets_are_read():
    toks = tokens_of("see the html part", html='<a href="https://track.spammy.test/c?id=1">Click</a>')
    assert "domain:spammy.test" in toks


def test_builtin_and_configured_allowlists_are_never_tokens():
    feats = extract(message("Docs: https://www.w3.org/TR/html4 and http://mail.google.com/ "
                            "and https://intranet.corp.test/wiki"))
    assert not any(t in ("domain:w3.org", "domain:google.com") for t in ucepp_tokens(feats))
    assert "domain:corp.test" in ucepp_tokens(feats)
    assert "domain:corp.test" not in ucepp_tokens(feats, allow_domains=["corp.test"])
    assert {"w3.org", "gmail.com", "paypal.com"} <= BUILTIN_ALLOW


def test_an_address_at_a_provider_is_a_token_but_the_provider_is_not():
    toks = tokens_of("Write to lottery.claims2024@gmail.com to claim")
    assert "email:lottery.claims2024@gmail.com" in toks
    assert "domain:gmail.com" not in toks


def test_shorteners_and_path_hosting_give_the_link_not_the_domain():
    toks = tokens_of("go to https://bit.ly/3xYzAbc or http://www.geocities.com/Area51/1234/")
    assert "url:bit.ly/3xYzAbc" in toks
    assert "url:geocities.com/Area51/1234" in toks
    assert not any(t in ("domain:bit.ly", "domain:geocities.com") for t in toks)


def test_only_public_ips_including_disguised_link_hosts():
    toks = tokens_of("servers 10.1.2.3 and 192.168.0.1 and 8.8.4.4; login at http://3232235777/x "
                     "and http://93.184.216.34/login")
    assert "ip:8.8.4.4" in toks and "ip:93.184.216.34" in toks
    assert not any(t in ("ip:10.1.2.3", "ip:192.168.0.1") for t in toks)
    assert "ip:192.168.1.1" not in toks          # 3232235777 is private: not a token


def test_phone_numbers_in_e164_and_not_dates_or_addresses():
    text = ("Call 1-888-763-2497 or (620) 235-4545 or +44 (0)20 7946 0958 or 0044 20 7946 0959. "
            "Not 2002-09-18 13:00, not 202.101.163.34, not 0.569    0.896, not 01 8832041.")
    assert find_phones(text) == ["+442079460958", "+442079460959", "+18887632497", "+16202354545"]
    assert "phone:+18887632497" in tokens_of(text)


def test_reply_to_address_is_a_token_and_recipients_are_not():
    toks = tokens_of("You, victim@home.test, won. Reply to claims@prize-desk.test",
                     headers={"Reply-To": "Agent <agent@prize-desk.test>", "Cc": "boss@home.test"})
    assert "email:agent@prize-desk.test" in toks and "email:claims@prize-desk.test" in toks
    assert "domain:prize-desk.test" in toks
    assert not any("home.test" in t for t in toks)


def test_what_a_mailing_list_appends_is_the_lists_not_the_authors():
    body = ("I found this offer at http://real-author-link.test/page\n\n"
            "_______________________________________________\n"
            "Fork mailing list\nfork@xent.test\nhttp://xent.test/mailman/listinfo/fork\n"
            "Sponsored by http://sponsor-ad.test/x\n")
    headers = {"List-Id": "<fork.xent.test>", "List-Post": "<mailto:fork@xent.test>"}
    toks = tokens_of(body, headers=headers)
    assert "domain:real-author-link.test" in toks
    assert not any(x in t for t in toks for x in ("xent.test", "sponsor-ad.test"))
    # the same text in a message no list relayed is the author's own
    assert "domain:sponsor-ad.test" in tokens_of(body)


def test_quoted_lines_are_someone_elses_unless_the_author_repeats_them():
    body = ("> Buy now at http://quoted-spam.test/offer\n"
            "> From: spammer@quoted-spam.test\n"
            "This is spam, do not buy.\n")
    assert tokens_of(body) == []
    assert "domain:quoted-spam.test" in tokens_of(body + "I checked http://quoted-spam.test myself.\n")


def test_tokens_are_unique_and_capped():
    body = " ".join(f"http://site{i}.test/" for i in range(100)) + " http://site1.test/again"
    toks = ucepp_tokens(extract(message(body)), limit=64)
    assert len(toks) == 64 == len(set(toks))


# ---------------------------------------------------------------- wallets

BTC_P2PKH = "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"
BTC_P2SH = "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"
BTC_BECH32 = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
BTC_TAPROOT = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"   # BIP 350 vector
ETH_EIP55 = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"                         # EIP-55 vector
XMR = ("44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A")


def _flip(addr: str, i: int) -> str:
    c = addr[i]
    alphabet = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    return addr[:i] + (alphabet[(alphabet.index(c) + 1) % len(alphabet)] if c in alphabet else "2") + addr[i + 1:]


def test_keccak256_is_the_original_keccak_not_sha3():
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


@pytest.mark.parametrize("addr", [BTC_P2PKH, BTC_P2SH, BTC_BECH32, BTC_TAPROOT, BTC_BECH32.upper()])
def test_valid_bitcoin_addresses(addr):
    assert valid_btc(addr)


@pytest.mark.parametrize("addr", [_flip(BTC_P2PKH, 10), _flip(BTC_P2SH, 20), BTC_BECH32[:-1] + "p",
                                  BTC_TAPROOT[:-1] + "1", "bc1Qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
                                  "1" + "A" * 33, "bc1" + "q" * 39])
def test_bitcoin_checksums_reject_near_misses_and_random_strings(addr):
    assert not valid_btc(addr)


def test_ethereum_mixed_case_needs_its_eip55_checksum():
    assert valid_eth(ETH_EIP55)
    assert valid_eth(ETH_EIP55.lower()) and valid_eth("0x" + ETH_EIP55[2:].upper())
    assert not valid_eth(ETH_EIP55[:-1] + "D")             # one letter's case changed
    assert not valid_eth("0x" + "0" * 40)


def test_monero_checksum():
    assert valid_xmr(XMR)
    assert not valid_xmr(_flip(XMR, 50))


def test_find_wallets_keeps_only_addresses_whose_checksum_holds():
    text = (f"Send 0.1 BTC to {BTC_P2PKH} or {_flip(BTC_P2PKH, 5)}, ETH to {ETH_EIP55}, "
            f"XMR to {XMR}; ref 1QwErTyUiOpAsDfGhJkLzXcVbNm12345 and {BTC_BECH32}")
    assert find_wallets(text) == [f"btc:{BTC_P2PKH}", f"btc:{BTC_BECH32}",
                                  f"eth:{ETH_EIP55.lower()}", f"xmr:{XMR}"]
    assert f"btc:{BTC_P2PKH}" in tokens_of(text)


# ---------------------------------------------------------------- the store

def test_counts_decay_with_the_half_life(store, clock):
    store.learn_tokens(["domain:x.test"], "spam")
    assert store.counts(["domain:x.test"]) == {"domain:x.test": (1.0, 0.0)}
    clock.t += 7 * DAY
    assert store.counts(["domain:x.test"])["domain:x.test"][0] == pytest.approx(0.5)
    store.learn_tokens(["domain:x.test"], "spam")
    store.learn_tokens(["domain:x.test"], "ham")
    clock.t += 14 * DAY
    s, h = store.counts(["domain:x.test"])["domain:x.test"]
    assert s == pytest.approx(1.5 / 4) and h == pytest.approx(0.25)


def test_now_overrides_the_clock(store):
    store.learn_tokens(["ip:8.8.8.8"], "spam", now=T0 + DAY)
    assert store.counts(["ip:8.8.8.8"], now=T0 + 8 * DAY)["ip:8.8.8.8"][0] == pytest.approx(0.5)


def test_learn_counts_each_token_once_per_message(store):
    feats = extract(message("http://dup.test/a http://dup.test/b http://www.dup.test/c"))
    assert store.learn(feats, "spam") == ["domain:dup.test"]
    assert store.counts(["domain:dup.test"])["domain:dup.test"] == (1.0, 0.0)


def test_label_must_be_spam_or_ham(store):
    with pytest.raises(ValueError):
        store.learn_tokens(["domain:x.test"], "junk")


def test_store_survives_a_restart_in_wal_mode(tmp_path, clock):
    path = tmp_path / "u.sqlite"
    with UceppStore(path, clock=clock) as s:
        s.learn_tokens(["phone:+18005551234"], "spam")
    with UceppStore(path, clock=clock) as s:
        assert s.counts(["phone:+18005551234"]) == {"phone:+18005551234": (1.0, 0.0)}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_changing_the_half_life_keeps_todays_counts(tmp_path, clock):
    path = tmp_path / "u.sqlite"
    with UceppStore(path, clock=clock, half_life_days=7) as s:
        s.learn_tokens(["domain:x.test"], "spam")
    clock.t += 7 * DAY
    with UceppStore(path, clock=clock, half_life_days=1) as s:
        assert s.counts(["domain:x.test"])["domain:x.test"][0] == pytest.approx(0.5)
        clock.t += DAY
        assert s.counts(["domain:x.test"])["domain:x.test"][0] == pytest.approx(0.25)


def test_purge_drops_what_decayed_below_the_floor(store, clock):
    store.learn_tokens(["domain:old.test"], "spam")
    clock.t += 30 * DAY
    for _ in range(3):
        store.learn_tokens(["domain:new.test"], "spam")
    clock.t += 5 * DAY                 # old: 2**(-35/7) = 0.03 < 0.05; new: 3 * 0.6
    assert store.purge() == 1
    assert set(store.counts(["domain:old.test", "domain:new.test"])) == {"domain:new.test"}


def test_row_cap_evicts_the_weakest(tmp_path, clock):
    with UceppStore(tmp_path / "u.sqlite", clock=clock, max_rows=10, purge_every=0) as s:
        s.learn_tokens(["domain:strong.test"] * 1, "spam")
        s.learn_tokens(["domain:strong.test"], "spam")
        s.learn_tokens([f"domain:weak{i}.test" for i in range(20)], "spam")
        s.purge()
        assert len(s) == 9
        assert "domain:strong.test" in s.counts(["domain:strong.test"])


def test_purge_runs_by_itself_every_n_learns(tmp_path, clock):
    with UceppStore(tmp_path / "u.sqlite", clock=clock, max_rows=5, purge_every=2) as s:
        s.learn_tokens([f"domain:w{i}.test" for i in range(8)], "spam")
        assert len(s) == 8
        s.learn_tokens(["domain:z.test"], "spam")
        assert len(s) <= 5


def test_a_clock_far_ahead_moves_the_epoch_without_overflow(store, clock):
    store.learn_tokens(["domain:x.test"], "spam")
    clock.t += 7 * DAY * 300                 # 300 half-lives: 2**300 would overflow a count
    store.learn_tokens(["domain:y.test"], "spam")
    c = store.counts(["domain:x.test", "domain:y.test"])
    assert c["domain:y.test"] == (1.0, 0.0)
    assert c.get("domain:x.test", (0.0, 0.0))[0] < 1e-60


def test_a_new_store_replaying_old_dates_starts_its_epoch_there(tmp_path):
    with UceppStore(tmp_path / "u.sqlite", clock=Clock(T0)) as s:      # created "today"
        s.learn_tokens(["domain:x.test"], "spam", now=T0 - 3650 * DAY)   # a corpus of 10 years ago
        assert s.counts(["domain:x.test"], now=T0 - 3643 * DAY)["domain:x.test"][0] == pytest.approx(0.5)


# ---------------------------------------------------------------- the decision rule

def spam_msg(n: int = 0) -> bytes:
    return message(f"Offer {n}! Call 1-800-555-0199 or visit http://pills-{n}.test/buy", subject=f"Offer {n}")


def test_three_spam_reports_decide_with_evidence(store):
    feats = extract(spam_msg(0))
    assert ucepp(feats, store) is None
    for n in range(1, 4):
        store.learn(extract(spam_msg(n)), "spam")
    sig = ucepp(feats, store)
    assert sig.classification == "ucepp" and sig.decides
    assert sig.strength == pytest.approx(math.log2(1 + 3))
    assert sig.evidence == ("phone:+18005550199 seen in 3 spam, 0 ham (half-life 7 d)",)
    assert sig.reply_args == {}
    assert classification(sig.classification).reply() == \
        "550 5.7.1 Message contains a token seen in recent spam"


def test_fewer_reports_give_a_weak_signal_that_does_not_decide(store):
    for n in range(1, 3):
        store.learn(extract(spam_msg(n)), "spam")
    sig = ucepp(extract(spam_msg(0)), store)
    assert sig is not None and not sig.decides
    assert sig.evidence[0].startswith("phone:+18005550199 seen in 2 spam")


def test_decayed_reports_stop_deciding(store, clock):
    for n in range(1, 4):
        store.learn(extract(spam_msg(n)), "spam")
    clock.t += 7 * DAY
    sig = ucepp(extract(spam_msg(0)), store)
    assert not sig.decides and "seen in 1.5 spam" in sig.evidence[0]


def test_one_ham_report_vetoes_a_token(store):
    for n in range(1, 6):
        store.learn(extract(spam_msg(n)), "spam")
    store.learn(extract(message("Our support line is 1-800-555-0199.")), "ham")
    assert ucepp(extract(spam_msg(0)), store) is None


def test_an_allowlisted_domain_cannot_be_poisoned(store):
    msgs = [extract(message(f"Claim at http://paypal.com/x and write to claim{n}@gmail.com")) for n in range(5)]
    for f in msgs:
        store.learn(f, "spam")
    assert ucepp(extract(message("Your receipt: http://paypal.com/receipt")), store) is None
    assert "domain:paypal.com" not in store.counts(["domain:paypal.com"])


def test_thresholds_are_parameters(store):
    store.learn(extract(spam_msg(1)), "spam")
    assert ucepp(extract(spam_msg(0)), store, min_spam=1.0).decides
    assert ucepp(extract(spam_msg(0)), store, weak_spam=2.0) is None


def test_mailto_and_tel_links_are_an_address_and_a_phone():
    toks = tokens_of("html part", html='<a href="mailto:Orders@Shop-Now.test?subject=buy">mail us</a> '
                                       '<a href="tel:+1-800-555-0142">call</a>')
    assert "email:orders@shop-now.test" in toks and "domain:shop-now.test" in toks
    assert "phone:+18005550142" in toks


def test_a_store_that_cannot_be_opened_disables_the_check(tmp_path, caplog):
    from classifier.reputation.base import Disabled

    (tmp_path / "bad.sqlite").write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="mailsift.reputation"), pytest.raises(Disabled, match="bad.sqlite"):
        UceppStore(tmp_path / "bad.sqlite")
    assert any(getattr(r, "fields", {}).get("check") == "ucepp" for r in caplog.records)


def test_a_store_made_today_takes_mail_dated_decades_back(tmp_path):
    """Regression (bench/reputation_bench.py replaying the 2002 corpus): moving the
    epoch thirty years back overflowed the rescale factor."""
    store = UceppStore(tmp_path / "u.sqlite", clock=lambda: 1.8e9)
    f = extract(message("Call +1 415 555 0142 now"))
    store.learn(f, "spam", now=1.0e9)
    store.learn(f, "spam", now=0.9e9)
    assert store.counts(store.tokens(f), now=0.9e9)
