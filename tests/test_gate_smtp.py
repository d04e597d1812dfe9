"""The gate through real SMTP conversations on loopback: one test per contract row the
gate decides, asserting the exact reply (code, enhanced code, text) and the decision
log line with its evidence; then the protocol itself (pipelining, garbage, a client
that disconnects mid-DATA, SIZE, TLS and AUTH, timeouts).

Peers: dnsmasq serving tests/gate_zones.py, an SMTP sink standing for the domains'
mail servers, and the Scorer gRPC service scripted by a header (gate_harness.py).
Clients connect *from* 127.0.0.x addresses, which the DNS zones give reputations.
"""
from __future__ import annotations

import datetime
import email.utils
import smtplib
import ssl
import time

import pytest

import gate_zones as z
from classifier.classifications import get
from gate_harness import GateThread, RawClient, ScriptedScorer, Sink, free_port
from smtpgate.auth import hash_password

IP_BLACKLISTED = "127.0.0.66"
PASSWORD = "correct horse battery staple"


def reply(cid: str, **kw) -> str:
    return get(cid).reply(**kw)


def split(r: str) -> tuple[int, str]:
    return int(r[:3]), r[4:]


@pytest.fixture(scope="module")
def peers():
    sink, scorer = Sink().start(), ScriptedScorer().start()
    yield sink, scorer
    sink.stop()
    scorer.stop()


def gate_config(dns_server, sink, scorer, overrides=None) -> dict:
    cfg = {
        "gate": {"hostname": "mx.gate.test", "max_message_size": 200_000, "max_recipients": 5,
                 "postmaster": "postmaster@example.test"},
        "listeners": {"inbound": {"bind": f"127.0.0.1:{free_port()}"},
                      "submission": {"bind": f"127.0.0.1:{free_port()}"},
                      "submissions": {"bind": f"127.0.0.1:{free_port()}"}},
        "resolver": {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": z.TEST_TIMEOUT},
        "scorer": {"addresses": [scorer.address], "deadline": 1.0},
        "blacklists": {"ips": [f"{IP_BLACKLISTED}/32"], "senders": ["evil@good.test"]},
        "dnsbl": {"zones": [{"name": "bl1.test", "codes": sorted(z.LISTING_CODES)}, "bl2.test"],
                  "min_hits": 2, "check_private": True},
        "dnswl": {"zones": ["wl.test"]},
        "domains": {
            "example.test": {
                "route": f"127.0.0.1:{sink.port}",
                "recipients": {"strict@example.test": {"threshold": 0.5}},
            },
            "local.test": {
                "route": f"127.0.0.1:{sink.port}",
                "local_recipients": ["alice", "void", "carol"],
                "filtering": {"blackhole": ["void@local.test"],
                              "sender_blacklist": ["spammer@good.test"],
                              "sender_whitelist": ["friend@good.test", "*@spf-fail.test",
                                                   "*@spf-pass.test"]},
            },
        },
        "outgoing": {"relay": f"127.0.0.1:{sink.port}",
                     "users": {"alice@example.test": {"password_hash": hash_password(PASSWORD, log2_n=10)}}},
    }
    for k, v in (overrides or {}).items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


@pytest.fixture(scope="module")
def gate(dns_server, peers, tmp_path_factory):
    sink, scorer = peers
    d = tmp_path_factory.mktemp("gate")
    g = GateThread(gate_config(dns_server, sink, scorer, {"gate": {"state_dir": str(d)}}), d).start()
    yield g
    g.stop()


@pytest.fixture
def sink(peers):
    peers[0].clear()
    return peers[0]


def message(frm="sender@good.test", to="alice@local.test", subject="Hello", body="Hi there.\r\n",
            verdict=None, date=None, extra=b"", msgid=None) -> bytes:
    msgid = msgid or email.utils.make_msgid(domain="good.test")
    date = date or email.utils.formatdate(localtime=True)
    head = (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: {msgid}\r\n").encode()
    if verdict:
        head += f"X-Test-Verdict: {verdict}\r\n".encode()
    return head + extra + b"\r\n" + body.encode()


def send(gate, msg: bytes, mail_from="sender@good.test", rcpts=("alice@local.test",),
         source=z.IP_GOOD, helo="mail.good.test", mail_options=()):
    """One SMTP transaction with smtplib; returns the replies (mail, rcpts, data)."""
    with smtplib.SMTP("127.0.0.1", gate.port(), source_address=(source, 0), timeout=20) as s:
        s.ehlo(helo)
        mail = s.mail(mail_from, list(mail_options))
        if mail[0] != 250:
            return mail, [], None
        rr = [s.rcpt(r) for r in rcpts]
        if not any(code == 250 for code, _ in rr):
            return mail, rr, None
        code, text = s.data(msg)
    if code == 250:
        gate.settle()   # the queue has delivered what it accepted
    return mail, rr, (code, text.decode())


def decision(gate, msgid=None, rcpt=None, classification=None, client_ip=None, delivery=False) -> dict:
    """The decision log line that matches; waits briefly for it to be written. The
    gate's own decisions, or with ``delivery`` the queue's delivery outcomes."""
    for _ in range(50):
        for d in reversed(gate.decisions()):
            if ((d.get("phase") == "delivery") == delivery
                    and (msgid is None or d.get("message_id") == msgid) and (rcpt is None or d.get("rcpt") == rcpt)
                    and (classification is None or d["classification"] == classification)
                    and (client_ip is None or d.get("client_ip") == client_ip)):
                return d
        time.sleep(0.02)
    raise AssertionError(f"no decision for {msgid} {rcpt} {classification}")


def assert_logged(d: dict, cid: str) -> None:
    assert d["classification"] == cid and d["name"] == get(cid).name
    assert d["reply"].startswith(str(get(cid).code))
    assert d["evidence"] and d["evidence"][0]["evidence"], d


# ======================================================================================
# connect and HELO
# ======================================================================================
def test_ip_blacklisted_554_at_greeting_then_503_until_quit(gate):
    c = RawClient(gate.port(), source=IP_BLACKLISTED)
    assert c.reply() == split(reply("ip_blacklisted"))
    assert c.cmd("EHLO mail.good.test")[0] == 503
    assert c.cmd("MAIL FROM:<a@good.test>")[0] == 503
    assert c.cmd("QUIT")[0] == 221
    c.close()
    d = decision(gate, classification="ip_blacklisted", client_ip=IP_BLACKLISTED)
    assert_logged(d, "ip_blacklisted")
    assert d["phase"] == "connect" and f"{IP_BLACKLISTED}/32" in d["evidence"][0]["evidence"]


def test_dnsbl_multiple_rejected_at_rcpt(gate):
    mail, rr, _ = send(gate, message(), source=z.IP_LISTED_TWICE)
    code, text = rr[0]
    assert (code, text.decode()) == split(reply("dnsbl_multiple"))
    d = decision(gate, rcpt="alice@local.test", classification="dnsbl_multiple", client_ip=z.IP_LISTED_TWICE)
    assert_logged(d, "dnsbl_multiple")
    assert "bl1.test" in d["evidence"][0]["evidence"] and "bl2.test" in d["evidence"][0]["evidence"]


def test_one_dnsbl_listing_is_not_multiple_but_the_scorer_hears_of_it(gate, sink, peers):
    msg = message()
    _, rr, data = send(gate, msg, source=z.IP_LISTED_ONCE)
    assert data[0] == 250
    assert len(sink.messages) == 1
    assert list(peers[1].requests[-1].facts.dnsbl) == ["bl1.test"]


def test_dnsbl_multiple_bypassed_by_the_recipients_sender_whitelist(gate, sink):
    msg = message(frm="friend@good.test", verdict="crm114 0.99", msgid="<wl-dnsbl@good.test>")
    _, rr, data = send(gate, msg, mail_from="friend@good.test", source=z.IP_LISTED_TWICE)
    assert data == split(reply("whitelisted"))
    d = decision(gate, msgid="<wl-dnsbl@good.test>")
    assert_logged(d, "whitelisted")
    assert any(b["classification"] == "dnsbl_multiple" for b in d.get("bypassed", []))


def test_dnswl_accepts_and_says_so(gate, sink, peers):
    msg = message(msgid="<dnswl@good.test>")
    _, _, data = send(gate, msg, source=z.IP_WHITELISTED, helo="wl-client.test")
    assert data == split(reply("dnswl"))
    d = decision(gate, msgid="<dnswl@good.test>")
    assert_logged(d, "dnswl")
    assert "wl.test" in d["evidence"][0]["evidence"]
    assert list(peers[1].requests[-1].facts.dnswl) == ["wl.test"]   # and the scorer knew


def test_invalid_helo_rejected_at_rcpt_with_its_evidence(gate):
    _, rr, _ = send(gate, message(), helo="bad_name!")
    assert (rr[0][0], rr[0][1].decode()) == split(reply("invalid_helo"))
    d = decision(gate, rcpt="alice@local.test", classification="invalid_helo")
    assert_logged(d, "invalid_helo")
    assert "bad_name!" in d["evidence"][0]["evidence"]


# ======================================================================================
# MAIL
# ======================================================================================
def test_submission_auth_required(gate):
    with smtplib.SMTP("127.0.0.1", gate.port("submission"), timeout=10) as s:
        s.ehlo("laptop")
        s.starttls(context=_client_tls())
        s.ehlo("laptop")
        assert s.mail("alice@example.test") == (530, reply("submission_auth_required")[4:].encode())
    d = decision(gate, classification="submission_auth_required")
    assert_logged(d, "submission_auth_required")
    assert d["listener"] == "submission"


def test_sender_blacklisted_by_the_administrator(gate):
    mail, _, _ = send(gate, message(frm="evil@good.test"), mail_from="evil@good.test")
    assert (mail[0], mail[1].decode()) == split(reply("sender_blacklisted"))
    d = decision(gate, classification="sender_blacklisted")
    assert_logged(d, "sender_blacklisted")
    assert d["mail_from"] == "evil@good.test" and "evil@good.test" in d["evidence"][0]["evidence"]


@pytest.mark.parametrize("domain,cid", [("spf-fail.test", "spf_fail"),
                                        ("no-such-domain.test", "sender_missing_dns")])
def test_mail_phase_rejections_answered_at_rcpt(gate, domain, cid):
    # decided at MAIL, answered at RCPT where the recipient's whitelist is known
    _, rr, _ = send(gate, message(frm=f"x@{domain}"), mail_from=f"x@{domain}", rcpts=("bob@example.test",))
    assert (rr[0][0], rr[0][1].decode()) == split(reply(cid))
    d = decision(gate, rcpt="bob@example.test", classification=cid)
    assert_logged(d, cid)
    assert domain in d["evidence"][0]["evidence"]


def test_spf_fail_bypassed_by_whitelist(gate, sink):
    msg = message(frm="x@spf-fail.test", msgid="<spfwl@spf-fail.test>")
    _, rr, data = send(gate, msg, mail_from="x@spf-fail.test", rcpts=("alice@local.test",))
    assert data == split(reply("whitelisted"))
    assert len(sink.messages) == 1


def test_softfail_is_a_fact_not_a_reject(gate, sink, peers):
    msg = message(frm="x@spf-softfail.test")
    _, _, data = send(gate, msg, mail_from="x@spf-softfail.test", rcpts=("bob@example.test",))
    assert data[0] == 250
    assert peers[1].requests[-1].facts.spf == "softfail"


def test_sender_dns_timeout_tempfails_at_mail(gate):
    # internal_error is not a row the whitelist bypasses, so it is answered at once
    mail, _, _ = send(gate, message(frm="x@anything.slow.test"), mail_from="x@anything.slow.test",
                      rcpts=("bob@example.test",))
    assert (mail[0], mail[1].decode()) == split(reply("internal_error"))
    d = decision(gate, classification="internal_error")
    assert d["mail_from"] == "x@anything.slow.test" and d["phase"] == "mail"
    assert "timeout" in d["evidence"][0]["evidence"].lower()


# ======================================================================================
# RCPT
# ======================================================================================
@pytest.mark.parametrize("rcpt,cid", [
    ("a&b@example.test", "restricted_address_chars"),
    ("someone@elsewhere.test", "relay_not_permitted"),
    ("bob@local.test", "destination_not_configured"),
])
def test_rcpt_rejections(gate, rcpt, cid):
    _, rr, _ = send(gate, message(), rcpts=(rcpt,))
    assert (rr[0][0], rr[0][1].decode()) == split(reply(cid))
    d = decision(gate, rcpt=rcpt, classification=cid)
    assert_logged(d, cid)
    assert d["phase"] == "rcpt"


def test_null_sender_multiple_rcpt(gate, sink):
    _, rr, data = send(gate, message(frm="MAILER-DAEMON@helo-pass.test"), mail_from="",
                       rcpts=("alice@local.test", "carol@local.test"), helo="helo-pass.test")
    assert rr[0][0] == 250
    assert (rr[1][0], rr[1][1].decode()) == split(reply("null_sender_multiple_rcpt"))
    assert data[0] == 250 and sink.messages[0]["rcpts"] == ["alice@local.test"]
    assert_logged(decision(gate, rcpt="carol@local.test", classification="null_sender_multiple_rcpt"),
                  "null_sender_multiple_rcpt")


def test_split_delivery_then_the_retry_in_its_own_transaction(gate, sink):
    msg = message(to="bob@example.test, strict@example.test", verdict="combined_score 0.7")
    _, rr, data = send(gate, msg, rcpts=("bob@example.test", "strict@example.test"))
    assert rr[0][0] == 250
    assert (rr[1][0], rr[1][1].decode()) == split(reply("split_delivery"))
    assert data[0] == 250            # bob's settings: threshold 0.9, so 0.7 passes
    d = decision(gate, rcpt="strict@example.test", classification="split_delivery")
    assert_logged(d, "split_delivery")
    # the client retries strict@ alone: its own threshold (0.5) quarantines 0.7
    _, rr, data = send(gate, msg, rcpts=("strict@example.test",))
    assert data == split(reply("combined_score"))
    assert [m["rcpts"] for m in sink.messages] == [["bob@example.test"]]


def test_recipients_sharing_settings_are_accepted_together(gate, sink):
    _, rr, data = send(gate, message(), rcpts=("bob@example.test", "carol@example.test"))
    assert [c for c, _ in rr] == [250, 250] and data[0] == 250
    assert sink.messages[0]["rcpts"] == ["bob@example.test", "carol@example.test"]


def test_domain_sender_blacklisted(gate):
    _, rr, _ = send(gate, message(frm="spammer@good.test"), mail_from="spammer@good.test")
    assert (rr[0][0], rr[0][1].decode()) == split(reply("domain_sender_blacklisted"))
    assert_logged(decision(gate, classification="domain_sender_blacklisted"), "domain_sender_blacklisted")


def test_blackhole_says_ok_and_delivers_nowhere(gate, sink):
    msg = message(to="void@local.test", msgid="<bh@good.test>")
    _, rr, data = send(gate, msg, rcpts=("void@local.test",))
    assert (rr[0][0], rr[0][1].decode()) == split(reply("blackhole"))
    assert data[0] == 250
    assert sink.messages == []
    assert_logged(decision(gate, rcpt="void@local.test", msgid="<bh@good.test>", classification="blackhole"),
                  "blackhole")


def test_too_many_recipients_452(gate):
    rcpts = tuple(f"r{i}@example.test" for i in range(6))
    _, rr, _ = send(gate, message(), rcpts=rcpts)
    assert [c for c, _ in rr] == [250] * 5 + [452]
    assert rr[5][1].startswith(b"4.5.3")


# ======================================================================================
# DATA: format checks, DMARC, whitelist
# ======================================================================================
def _data_case(gate, msg, cid, quarantined: bool, mail_from="sender@good.test", **kw):
    msgid = email.utils.make_msgid(domain="good.test")
    msg = msg.replace(b"Message-ID: <", b"X-Old-Id: <", 1)
    msg = f"Message-ID: {msgid}\r\n".encode() + msg
    _, _, data = send(gate, msg, mail_from=mail_from, **kw)
    assert data == split(reply(cid)), data
    d = decision(gate, msgid=msgid, classification=cid)
    assert_logged(d, cid)
    q = [x for x in gate.quarantined() if x.get("message_id") == msgid]
    assert bool(q) == quarantined
    if q:
        assert q[0]["classification"] == cid and q[0]["evidence"]
    return d


def test_line_too_long_is_quarantined_with_the_exact_bytes(gate, sink):
    msg = message(body="x" * 1500 + "\r\nend\r\n")
    d = _data_case(gate, msg, "line_too_long", quarantined=True)
    assert "1500" in d["evidence"][0]["evidence"]
    assert sink.messages == []
    q = [x for x in gate.quarantined() if x["id"] == d["queue_id"]][0]
    stored = next((gate.cfg.state_dir / "quarantine").glob(f"*/{q['id']}.eml")).read_bytes()
    assert b"x" * 1500 in stored


def test_too_many_mime_parts(gate):
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(101))
    msg = message(extra=b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n",
                  body=parts + "--b--\r\n")
    _data_case(gate, msg, "too_many_mime_parts", quarantined=True)


def test_bad_header_count(gate):
    d = _data_case(gate, message(extra=b"Subject: again\r\n"), "bad_header_count", quarantined=True)
    assert "Subject" in d["evidence"][0]["evidence"]


def test_date_skew(gate):
    old = email.utils.format_datetime(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30))
    _data_case(gate, message(date=old), "date_skew", quarantined=True)


def test_subject_invalid_chars_without_smtputf8(gate):
    msg = message().replace(b"Subject: Hello", b"Subject: Gr\xfc\xdfe")
    d = _data_case(gate, msg, "subject_invalid_chars", quarantined=True)
    assert d["evidence"][0]["evidence"] == "Badly formed Subject header"


def test_utf8_subject_with_smtputf8_is_fine(gate, sink):
    msg = message().replace(b"Subject: Hello", "Subject: Grüße".encode())
    with smtplib.SMTP("127.0.0.1", gate.port(), source_address=(z.IP_GOOD, 0)) as s:
        s.ehlo("mail.good.test")
        assert s.mail("sender@good.test", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert s.rcpt("alice@local.test")[0] == 250
        assert s.data(msg)[0] == 250
    gate.settle()
    assert "Grüße".encode() in sink.messages[0]["data"]


def test_header_too_long(gate):
    folded = b"X-Junk: start" + b"".join(b"\r\n\t" + b"a" * 76 for _ in range(250)) + b"\r\n"
    _data_case(gate, message(extra=folded), "header_too_long", quarantined=True)


def test_message_partial_rejected_not_kept(gate):
    msg = message(extra=b"MIME-Version: 1.0\r\nContent-Type: message/partial; id=\"abc\"; number=1; total=2\r\n")
    _data_case(gate, msg, "message_partial", quarantined=False)


def test_dmarc_reject_not_kept(gate):
    # SPF passes for spf-pass.test, but the From domain is dmarc-reject.test: not aligned
    msg = message(frm="boss@dmarc-reject.test")
    d = _data_case(gate, msg, "dmarc_reject", quarantined=False, mail_from="x@spf-pass.test",
                   rcpts=("bob@example.test",))
    assert "dmarc-reject.test" in d["evidence"][0]["evidence"]


def test_dmarc_quarantine_kept(gate):
    msg = message(frm="boss@dmarc-quarantine.test")
    _data_case(gate, msg, "dmarc_quarantine", quarantined=True, mail_from="x@spf-pass.test",
               rcpts=("bob@example.test",))


def test_dmarc_is_never_bypassed_by_the_whitelist(gate):
    # *@spf-pass.test is on local.test's sender whitelist
    msg = message(frm="boss@dmarc-reject.test")
    _data_case(gate, msg, "dmarc_reject", quarantined=False, mail_from="x@spf-pass.test")


def test_dkim_signed_mail_passes_dmarc(gate, sink, dkim_key):
    msg = dkim_key.sign(message(frm="boss@dmarc-reject.test"), "dmarc-reject.test")
    _, _, data = send(gate, msg, mail_from="x@spf-pass.test", rcpts=("bob@example.test",))
    assert data[0] == 250
    delivered = sink.messages[0]["data"]
    assert b"dkim=pass header.d=dmarc-reject.test" in delivered
    assert b"dmarc=pass" in delivered


def test_whitelist_bypasses_format_checks_and_the_scorer(gate, sink):
    msg = message(frm="friend@good.test", extra=b"Subject: twice\r\n", verdict="crm114 0.999",
                  msgid="<wl-format@good.test>")
    _, _, data = send(gate, msg, mail_from="friend@good.test")
    assert data == split(reply("whitelisted"))
    d = decision(gate, msgid="<wl-format@good.test>")
    assert [b["classification"] for b in d["bypassed"]] == ["bad_header_count"]
    assert len(sink.messages) == 1
    assert b"X-Mailsift-Classification: whitelisted" in sink.messages[0]["data"]


# ======================================================================================
# DATA: the scorer
# ======================================================================================
@pytest.mark.parametrize("cid", ["combined_score", "crm114", "global_tokens", "cluster_tokens", "content_spam"])
def test_scorer_classifications_decide_the_reply(gate, sink, cid):
    d = _data_case(gate, message(verdict=f"{cid} 0.97"), cid, quarantined=True)
    assert d["score"] == pytest.approx(0.97) and d["model_version"] == "scripted-1"
    assert sink.messages == []


def test_not_spam_is_delivered_with_trace_headers_and_forged_ones_removed(gate, sink, peers):
    forged = (b"X-Mailsift-Score: 0.0000; forged\r\n"
              b"Authentication-Results: mx.gate.test; spf=pass smtp.mailfrom=forged.test\r\n"
              # the variants a review found getting through: folded, versioned,
              # behind a comment, with a trailing dot
              b"Authentication-Results:\r\n mx.gate.test; spf=pass (forged)\r\n"
              b"Authentication-Results: mx.gate.test 1; dkim=pass (forged)\r\n"
              b"Authentication-Results: (c) mx.gate.test; dkim=pass (forged)\r\n"
              b"Authentication-Results: MX.Gate.Test.; dkim=pass (forged)\r\n"
              b"Authentication-Results: other.example; spf=fail\r\n")
    msg = b" X-Mailsift-Classification: whitelisted (forged)\r\n" + message(extra=forged, msgid="<ok@good.test>")
    _, _, data = send(gate, msg)
    assert data == split(reply("not_spam"))
    out = sink.messages[0]["data"]
    head = out.split(b"\r\n\r\n")[0]
    assert head.startswith(b"Received: from mail.good.test (mail.good.test [127.0.0.10])")
    assert b"forged" not in head and b"Authentication-Results: other.example; spf=fail" in head
    assert b"Authentication-Results: mx.gate.test;" in head and b"spf=pass smtp.mailfrom=good.test" in head
    assert b"X-Mailsift-Classification: not_spam" in head
    d = decision(gate, msgid="<ok@good.test>")
    assert_logged(d, "not_spam")
    assert d["size"] == len(msg) and d["queue_id"] in out.decode()
    assert b"(forged)" not in head
    req = peers[1].requests[-1]
    assert req.facts.spf == "pass" and req.facts.ptr == "match" and req.envelope.mail_from == "sender@good.test"
    assert req.settings_id == d["settings_id"] and req.threshold == pytest.approx(0.9)


def test_scorer_past_its_deadline_tempfails(gate, sink):
    _data_case(gate, message(verdict="not_spam 0.01 sleep=2"), "internal_error", quarantined=False)
    assert sink.messages == []


def test_scorer_unreachable_tempfails(dns_server, peers, tmp_path):
    sink, scorer = peers
    sink.clear()
    cfg = gate_config(dns_server, sink, scorer, {"gate": {"state_dir": str(tmp_path)},
                      "scorer": {"addresses": [f"127.0.0.1:{free_port()}"], "deadline": 0.5}})
    g = GateThread(cfg, tmp_path).start()
    try:
        _, _, data = send(g, message())
        assert data == split(reply("internal_error"))
        assert "scorer unavailable" in decision(g, classification="internal_error")["evidence"][0]["evidence"]
        assert sink.messages == []
    finally:
        g.stop()


@pytest.fixture(scope="module")
def sync_gate(dns_server, peers, tmp_path_factory):
    """A gate with ``[queue] enabled = false``: it relays while the sender waits (the
    queued behaviour of the same cases is tests/test_gate_queue.py)."""
    sink, scorer = peers
    d = tmp_path_factory.mktemp("sync-gate")
    g = GateThread(gate_config(dns_server, sink, scorer, {"gate": {"state_dir": str(d)},
                                                          "queue": {"enabled": False}}), d).start()
    yield g
    g.stop()


@pytest.mark.parametrize("rcpt,cid", [("tempfail@example.test", "destination_unverified"),
                                      ("reject@example.test", "destination_does_not_exist")])
def test_without_the_queue_the_route_refusing_is_passed_back(sync_gate, sink, rcpt, cid):
    _, _, data = send(sync_gate, message(to=rcpt), rcpts=(rcpt,))
    assert data == split(reply(cid))
    d = decision(sync_gate, rcpt=rcpt, classification=cid)
    assert_logged(d, cid)
    assert sink.messages == []
    assert sync_gate.queue.counts() == dict.fromkeys(("queued", "deferred", "delivered", "bounced", "deleted"), 0)


def test_without_the_queue_ham_is_relayed_before_the_250(sync_gate, sink):
    _, _, data = send(sync_gate, message(to="bob@example.test"), rcpts=("bob@example.test",))
    assert data[0] == 250
    assert [m["rcpts"] for m in sink.messages] == [["bob@example.test"]]
    assert sync_gate.queue.list() == []


# ======================================================================================
# The protocol
# ======================================================================================
def test_ehlo_advertises_what_real_servers_expect(gate):
    c = RawClient(gate.port())
    c.reply()
    c.send("EHLO mail.good.test\r\n")
    lines = []
    while True:
        line = c._line().decode()
        lines.append(line[4:])
        if line[3] == " ":
            break
    for ext in ("SIZE 200000", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"):
        assert ext in lines
    assert not any(x.startswith("AUTH") for x in lines)   # never on the inbound port
    c.close()


def test_pipelined_session(gate, sink):
    c = RawClient(gate.port())
    c.reply()
    c.cmd("EHLO mail.good.test")
    c.send("MAIL FROM:<sender@good.test>\r\nRCPT TO:<alice@local.test>\r\n"
           "RCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<carol@local.test>\r\nDATA\r\n")
    assert [c.reply()[0] for _ in range(5)] == [250, 250, 550, 250, 354]
    c.send(message(to="alice@local.test") + b".\r\n")
    assert c.reply()[0] == 250
    assert c.cmd("QUIT")[0] == 221
    gate.settle()
    assert sink.messages[0]["rcpts"] == ["alice@local.test", "carol@local.test"]


def test_non_ascii_addresses_need_smtputf8(gate):
    """RFC 6531 3.4: an internationalised address only in a transaction that asked for
    SMTPUTF8. Accepted without it, the message could be delivered nowhere."""
    c = RawClient(gate.port())
    c.reply()
    c.cmd("EHLO mail.good.test")
    assert c.cmd("MAIL FROM:<jörg@good.test>") == (553, "5.6.7 Non-ASCII sender address requires SMTPUTF8 (RFC 6531)")
    assert c.cmd("MAIL FROM:<sender@good.test>")[0] == 250
    assert c.cmd("RCPT TO:<jörg@example.test>") == split(reply("restricted_address_chars"))
    d = decision(gate, classification="restricted_address_chars")
    assert "without SMTPUTF8" in d["evidence"][0]["evidence"]
    assert c.cmd("RSET")[0] == 250
    assert c.cmd("MAIL FROM:<jörg@good.test> SMTPUTF8")[0] == 250
    assert c.cmd("RCPT TO:<jörg@example.test>")[0] == 250
    c.cmd("QUIT")
    c.close()

def test_garbage_commands_get_answers_then_the_door(gate):
    c = RawClient(gate.port())
    c.reply()
    assert c.cmd("EHLO mail.good.test")[0] == 250
    code, text = c.cmd("RCPT TO:<a@local.test>")
    assert code == 503 and text.startswith("5.5.1")     # enhanced code on aiosmtpd's reply too
    c.send(b"\x00\xff\xfe garbage\r\n")
    assert c.reply()[0] == 500
    assert c.cmd("X" * 5000)[0] == 500                        # overlong command line
    for _ in range(5):                                       # aiosmtpd's budget: 5 unknown commands
        code, text = c.cmd("FROBNICATE")
    assert code == 502 and text.startswith("5.5.1")
    assert c.closed()


def _in_data(port: int) -> RawClient:
    """A raw session that has just been told 354."""
    c = RawClient(port)
    c.reply()
    c.cmd("EHLO mail.good.test")
    c.cmd("MAIL FROM:<sender@good.test>")
    c.cmd("RCPT TO:<alice@local.test>")
    assert c.cmd("DATA")[0] == 354
    return c


def test_disconnect_mid_data_delivers_nothing(gate, sink):
    c = _in_data(gate.port())
    c.send(message()[:60])
    c.close()
    time.sleep(0.3)
    assert sink.messages == []
    _, _, data = send(gate, message())     # and the gate still serves
    assert data[0] == 250


def test_rset_mid_transaction_then_a_new_one(gate, sink):
    c = RawClient(gate.port())
    c.reply()
    c.cmd("EHLO mail.good.test")
    c.cmd("MAIL FROM:<sender@good.test>")
    c.cmd("RCPT TO:<alice@local.test>")
    assert c.cmd("RSET") == (250, "2.0.0 OK")
    assert c.cmd("RCPT TO:<alice@local.test>")[0] == 503          # the transaction is gone
    assert c.cmd("MAIL FROM:<sender@good.test>")[0] == 250
    assert c.cmd("RCPT TO:<carol@local.test>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(message(to="carol@local.test") + b".\r\n")
    assert c.reply()[0] == 250
    gate.settle()
    assert [m["rcpts"] for m in sink.messages] == [["carol@local.test"]]


def test_no_smuggling_when_an_oversized_line_ends_in_a_dot(gate, sink):
    """Regression (review of issue 5): over SIZE, the rest of a long line was dropped
    and its last byte '.', followed by CRLF, ended DATA in the middle of a line; what
    followed was read as commands and delivered."""
    c = _in_data(gate.port())
    c.send(message(to="alice@local.test") + (b"A" * 998 + b"\r\n") * 210)   # over SIZE
    time.sleep(0.2)
    c.send(b"B" * 1100 + b".")            # a long line that ends in '.' at a read boundary
    time.sleep(0.2)
    c.send(b"\r\nMAIL FROM:<ceo@good.test>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n"
           + message(frm="ceo@good.test", subject="smuggled") + b".\r\n")
    code, text = c.reply()                # the real CRLF.CRLF ends the one DATA
    assert code == 552 and text.startswith("5.3.4")
    assert c.cmd("NOOP")[0] == 250         # and nothing else was answered in between
    time.sleep(0.2)
    assert sink.messages == []


def test_message_over_size(gate, sink):
    with smtplib.SMTP("127.0.0.1", gate.port(), source_address=(z.IP_GOOD, 0)) as s:
        s.ehlo("mail.good.test")
        code, text = s.mail("sender@good.test", ["SIZE=300000"])
        assert code == 552 and text.startswith(b"5.3.4")
        assert s.mail("sender@good.test")[0] == 250
        assert s.rcpt("alice@local.test")[0] == 250
        code, text = s.data(message(body="z" * 990 + "\r\n") * 250)
        assert code == 552 and text.startswith(b"5.3.4")
        assert s.noop()[0] == 250     # the session goes on
    assert sink.messages == []


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_auth_only_after_starttls_then_outgoing_mail_is_scored_and_relayed(gate, sink, peers):
    with smtplib.SMTP("127.0.0.1", gate.port("submission"), timeout=10) as s:
        s.ehlo("laptop")
        assert not s.has_extn("auth")
        assert s.mail("alice@example.test")[0] == 530          # STARTTLS first
        assert s.rset()[0] == 530        # before TLS: only EHLO, NOOP, STARTTLS, QUIT
        s.starttls(context=_client_tls())
        s.ehlo("laptop")
        assert "PLAIN" in s.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
            s.login("alice@example.test", "wrong")
        assert bad.value.smtp_code == 535
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["someone@far-away.test"],
                   message(frm="alice@example.test", to="someone@far-away.test"))
    gate.settle()
    assert sink.messages[0]["rcpts"] == ["someone@far-away.test"]
    assert b"with ESMTPSA" in sink.messages[0]["data"]
    assert peers[1].requests[-1].envelope.authenticated


def test_implicit_tls_submission(gate, sink):
    with smtplib.SMTP_SSL("127.0.0.1", gate.port("submissions"), context=_client_tls(), timeout=10) as s:
        s.ehlo("laptop")
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["x@far-away.test"], message(frm="alice@example.test", to="x@far-away.test"))
    gate.settle()
    assert sink.messages[0]["rcpts"] == ["x@far-away.test"]


def test_idle_and_trickling_clients_time_out_with_421(dns_server, peers, tmp_path):
    sink, scorer = peers
    sink.clear()
    cfg = gate_config(dns_server, sink, scorer, {"gate": {"state_dir": str(tmp_path), "command_timeout": 1.0}})
    g = GateThread(cfg, tmp_path).start()
    try:
        c = RawClient(g.port())
        c.reply()
        c.cmd("EHLO mail.good.test")
        code, text = c.reply()          # say nothing: the gate gives up
        assert code == 421 and text.startswith("4.4.2")
        # a client that trickles its DATA never gets more than the timeout for it
        c = _in_data(g.port())
        for chunk in [message()[i:i + 10] for i in range(0, 100, 10)]:
            try:
                c.send(chunk)
            except OSError:
                break
            time.sleep(0.25)
        assert c.reply()[0] == 421
        assert sink.messages == []
    finally:
        g.stop()


def test_hostile_message_bodies_get_an_answer_and_lose_nothing(gate, sink):
    big_line = message(body="q" * 150_000 + "\r\n")                   # under SIZE, one line
    _, _, data = send(gate, big_line)
    assert data == split(reply("line_too_long"))
    garbage = bytes(range(256)) * 200                                     # binary, NULs, no headers
    _, _, data = send(gate, garbage.replace(b"\r\n.", b"\r\n,"))
    assert data[0] in (250, 550), data
    bare_lf = message().replace(b"\r\n", b"\n")
    _, _, data = send(gate, bare_lf)
    assert data[0] in (250, 550), data
    broken_mime = message(extra=b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"\r\n"
                                b"Content-Transfer-Encoding: base64\r\n", body="--\r\n=?x?=\r\n" * 50)
    _, _, data = send(gate, broken_mime)
    assert data[0] in (250, 550), data
    # whatever was answered 250 reached the sink, and nothing else did
    answered = [d for d in gate.decisions() if d.get("phase") != "delivery"][-4:]
    accepted = [d for d in answered if d["reply"].startswith("250")]
    assert len(sink.messages) == len(accepted)
    assert not any(d["classification"] == "internal_error" for d in answered)


def test_without_the_queue_a_recipient_the_route_puts_off_puts_off_the_transaction(sync_gate, sink):
    """Regression (review of issue 5): the route took bob and put off tempfail-carol, and
    the gate said 250 for both; carol's copy was held by nobody. (With the queue, carol
    alone is retried: tests/test_gate_queue.py.)"""
    _, rr, data = send(sync_gate, message(to="bob@example.test"),
                       rcpts=("bob@example.test", "tempfail-carol@example.test"))
    assert [c for c, _ in rr] == [250, 250]
    assert data == split(reply("destination_unverified"))
    d = decision(sync_gate, rcpt="tempfail-carol@example.test", classification="destination_unverified")
    assert "tempfail-carol@example.test: 451" in d["evidence"][0]["evidence"]


def test_outgoing_user_sends_only_as_the_configured_senders(dns_server, peers, tmp_path):
    sink, scorer = peers
    sink.clear()
    cfg = gate_config(dns_server, sink, scorer, {"gate": {"state_dir": str(tmp_path)}})
    cfg["outgoing"]["users"]["alice@example.test"]["senders"] = ["alice@example.test", "*@lists.example.test"]
    g = GateThread(cfg, tmp_path).start()
    try:
        with smtplib.SMTP_SSL("127.0.0.1", g.port("submissions"), context=_client_tls(), timeout=10) as s:
            s.ehlo("laptop")
            s.login("alice@example.test", PASSWORD)
            code, text = s.mail("ceo@bank.test")
            assert code == 553 and text.startswith(b"5.7.1")
            s.rset()
            assert s.mail("news@lists.example.test")[0] == 250
            s.rset()
            s.sendmail("Alice@Example.test", ["Bob.Smith@Far-Away.test"], message(frm="alice@example.test"))
        g.settle()
        # delivered to the address as written: local parts keep their case (RFC 5321 2.4)
        assert sink.messages[0]["rcpts"] == ["Bob.Smith@Far-Away.test"]
    finally:
        g.stop()


def test_postmaster_without_a_domain_is_accepted(gate, sink):
    """RFC 5321 4.5.1: RCPT TO:<postmaster> must be accepted (review of issue 5)."""
    c = RawClient(gate.port())
    c.reply()
    c.cmd("EHLO mail.good.test")
    c.cmd("MAIL FROM:<sender@good.test>")
    assert c.cmd("RCPT TO:<Postmaster>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(message(to="postmaster") + b".\r\n")
    assert c.reply()[0] == 250
    gate.settle()
    assert sink.messages[0]["rcpts"] == ["postmaster@example.test"]
