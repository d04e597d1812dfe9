"""DSN bounces (smtpgate/dsn.py): every DSN is parsed back with the stdlib email parser
and its fields asserted; hostile originals and remote replies must not break its form."""
from __future__ import annotations

import re
from email import message_from_bytes
from email.parser import BytesParser
from email.policy import default
from email.utils import parsedate_to_datetime

import pytest

from smtpgate import dsn
from smtpgate.dsn import Failure, build_dsn, is_8bit, needs_smtputf8

ARRIVAL = 1767225600.0          # 2026-01-01 00:00:00 UTC
NOW = ARRIVAL + 3600
ORIGINAL = (b"From: Alice <alice@sender.example>\r\nTo: bob@rcpt.example\r\n"
            b"Subject: Quarterly numbers\r\nMessage-ID: <q1@sender.example>\r\n\r\n"
            b"Hello Bob,\r\nthe numbers are attached.\r\n")


def make(failures=None, *, original=ORIGINAL, mail_from="alice@sender.example", **kw) -> bytes:
    failures = failures or [Failure("bob@rcpt.example", "5.1.1", "550 5.1.1 No such user",
                                    "mx.rcpt.example", last_attempt=NOW - 60)]
    out = build_dsn(reporting_mta="gate.local.example", mail_from=mail_from, failures=failures,
                    original=original, queue_id="Q7ABC", arrival=ARRIVAL, now=NOW, **kw)
    assert out is not None
    assert_wire_form(out)
    return out


def assert_wire_form(raw: bytes) -> None:
    """CRLF line ends only, and every line within RFC 5322's 998 octets."""
    assert raw.endswith(b"\r\n")
    assert b"\r\n" in raw and not re.search(rb"\r(?!\n)|(?<!\r)\n", raw), "bare CR or LF on the wire"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def parse(raw: bytes):
    msg = BytesParser(policy=default).parsebytes(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert not msg.defects, msg.defects
    return msg


def groups(msg):
    """The per-message group and the per-recipient groups of the delivery-status part."""
    status = [p for p in msg.iter_parts() if p.get_content_type() == "message/delivery-status"]
    assert len(status) == 1
    blocks = status[0].get_payload()
    return blocks[0], blocks[1:]


def test_null_sender_gets_no_dsn():
    for null in ("", "<>", " <> "):
        assert build_dsn(reporting_mta="gate.local.example", mail_from=null,
                         failures=[Failure("bob@rcpt.example", "5.1.1", None, None)],
                         original=ORIGINAL, queue_id="Q", arrival=ARRIVAL, now=NOW) is None


def test_failed_dsn_has_every_required_field():
    raw = make(postmaster="postmaster@local.example")
    msg = parse(raw)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@gate.local.example>"
    assert msg["To"].addresses[0].addr_spec == "alice@sender.example"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    assert msg["Message-ID"].endswith("@gate.local.example>")
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "message/rfc822"]

    text = parts[0].get_content()
    for needle in ("bob@rcpt.example", "failed (5.1.1)", "550 5.1.1 No such user",
                   "mx.rcpt.example", "Q7ABC", "postmaster@local.example"):
        assert needle in text

    per_message, (rcpt,) = groups(msg)
    assert per_message["Reporting-MTA"] == "dns; gate.local.example"
    assert per_message["X-Mailsift-Queue-ID"] == "Q7ABC"
    assert parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVAL
    assert rcpt["Final-Recipient"] == "rfc822; bob@rcpt.example"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.rcpt.example"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
    assert parsedate_to_datetime(rcpt["Last-Attempt-Date"]).timestamp() == NOW - 60

    returned = parts[2].get_content()
    assert returned["Subject"] == "Quarterly numbers"
    assert returned.get_content() == "Hello Bob,\r\nthe numbers are attached.\r\n"
    assert b"Hello Bob,\r\nthe numbers are attached.\r\n" in raw
    assert not is_8bit(raw) and not needs_smtputf8("alice@sender.example")


def test_delayed_dsn_says_it_is_still_retried():
    msg = parse(make([Failure("bob@rcpt.example", "4.2.2", "452 4.2.2 Mailbox full",
                              "mx.rcpt.example", action="delayed")]))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    _, (rcpt,) = groups(msg)
    assert (rcpt["Action"], rcpt["Status"]) == ("delayed", "4.2.2")
    assert "still being retried" in next(msg.iter_parts()).get_content()


def test_one_group_per_recipient_with_only_what_is_known():
    failures = [
        Failure("a@rcpt.example", "5.1.1", "550 5.1.1 No such user", "mx1.rcpt.example", last_attempt=NOW),
        Failure("b@other.example", "5.4.4", "unrouteable: no MX or A for other.example", None),
        Failure("c@rcpt.example", "4.4.1", None, "mx2.rcpt.example", action="delayed"),
    ]
    raw = make(failures)
    msg = parse(raw)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"   # any failed one decides
    _, rcpts = groups(msg)
    assert [r["Final-Recipient"] for r in rcpts] == [
        "rfc822; a@rcpt.example", "rfc822; b@other.example", "rfc822; c@rcpt.example"]
    assert [r["Action"] for r in rcpts] == ["failed", "failed", "delayed"]
    assert [r["Status"] for r in rcpts] == ["5.1.1", "5.4.4", "4.4.1"]
    assert [r["Remote-MTA"] for r in rcpts] == ["dns; mx1.rcpt.example", None, "dns; mx2.rcpt.example"]
    assert rcpts[1]["Diagnostic-Code"] == "X-Mailsift; unrouteable: no MX or A for other.example"
    assert rcpts[2]["Diagnostic-Code"] is None
    assert [r["Last-Attempt-Date"] is not None for r in rcpts] == [True, False, False]
    # RFC 3464 2.1: the groups are separated by exactly one empty line.
    status = raw.split(b"Content-Type: message/delivery-status\r\n")[1]
    assert status.count(b"\r\n\r\nFinal-Recipient: ") == 3
    text = next(msg.iter_parts()).get_content()
    assert "<b@other.example>: failed (5.4.4)" in text and "<c@rcpt.example>: delayed (4.4.1)" in text


@pytest.mark.parametrize("status, diagnostic, action, expected", [
    ("5.1.1", "550 5.1.1 x", "failed", "5.1.1"),       # given and valid
    ("", "550 5.7.1 Relaying denied", "failed", "5.7.1"),   # enhanced code of the reply
    ("5.1", "554-5.7.1 Blocked\r\n554 5.7.1 See url", "failed", "5.7.1"),
    ("bogus", "550 Requested action not taken", "failed", "5.0.0"),   # class of the basic code
    ("", "550 4.1.1 mismatched", "failed", "5.0.0"),    # enhanced class must agree with the code
    ("", "connection refused", "failed", "5.0.0"),      # no reply at all: the action's default
    ("", None, "delayed", "4.0.0"),
    ("4.4.7", "451 4.4.7 expired", "failed", "4.4.7"),  # expired after tempfails keeps 4.x.x
    ("5.1.1", "550 5.1.1 x", "delayed", "4.0.0"),       # a delay cannot be permanent
    ("", "421 4.4.2 Timeout", "delayed", "4.4.2"),
    ("2.0.0", "250 2.0.0 OK", "failed", "5.0.0"),
])
def test_status_is_a_valid_rfc3463_code(status, diagnostic, action, expected):
    _, (rcpt,) = groups(parse(make([Failure("bob@rcpt.example", status, diagnostic, None, action=action)])))
    assert rcpt["Status"] == expected


def test_huge_original_returns_its_headers_only():
    body = b"".join(b"line %06d of a large attachment\r\n" % i for i in range(20000))
    raw = make(original=ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body, full_message_limit=64 * 1024)
    assert len(raw) < 8 * 1024 and b"large attachment" not in raw
    parts = list(parse(raw).iter_parts())
    assert parts[2].get_content_type() == "text/rfc822-headers"
    headers = message_from_bytes(parts[2].get_payload(decode=True))
    assert headers["Subject"] == "Quarterly numbers"
    assert "too large to return in full" in parts[0].get_content()


def test_header_block_beyond_the_limit_is_cut_at_a_whole_field():
    fields = b"".join(b"X-Filler-%d: %s\r\n\t%s\r\n" % (i, b"a" * 60, b"b" * 60) for i in range(200))
    raw = make(original=b"Subject: big headers\r\n" + fields + b"\r\nbody\r\n", full_message_limit=1000)
    headers = list(parse(raw).iter_parts())[2].get_payload(decode=True)
    assert 0 < len(headers) <= 1000
    assert headers.startswith(b"Subject: big headers\r\n")
    assert headers.endswith(b"b" * 60 + b"\r\n")   # the last field ends with its continuation


def test_bare_lf_and_8bit_original_travels_as_crlf_8bit():
    original = (b"From: J\xfcrgen <j@sender.example>\nSubject: caf\xc3\xa9\n\n"
                b"line one\nline two\rline three\r\nGr\xfc\xdfe\n")
    raw = make(original=original)
    assert is_8bit(raw)
    msg = parse(raw)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    part = list(msg.iter_parts())[2]
    assert part.get_content_type() == "message/rfc822"
    assert part["Content-Transfer-Encoding"] == "8bit"
    assert b"line one\r\nline two\r\nline three\r\nGr\xfc\xdfe\r\n" in raw
    assert list(msg.iter_parts())[1]["Content-Transfer-Encoding"] == "7bit"


@pytest.mark.parametrize("original, why", [
    (ORIGINAL + b"x" * 1200 + b"\r\n", "too long"),
    (ORIGINAL + b"nul\x00byte\r\n", "NUL"),
])
def test_original_mail_cannot_carry_is_returned_as_headers(original, why):
    parts = list(parse(make(original=original)).iter_parts())
    assert parts[2].get_content_type() == "text/rfc822-headers", why
    assert "its headers are attached" in parts[0].get_content()


def test_malformed_originals_still_make_a_valid_dsn():
    for original in (b"no headers at all, just text without a newline",
                     b": empty name\r\nSubject ok\r\n \tstray continuation\r\n",
                     b"\r\n\r\nbody after an empty header block\r\n",
                     b"Subject: unterminated multipart\r\nContent-Type: multipart/mixed; boundary=zz\r\n"
                     b"\r\n--zz\r\nContent-Type: text/plain\r\n\r\nnever closed\r\n"):
        parts = list(parse(make(original=original)).iter_parts())
        assert [p.get_content_type() for p in parts] == [
            "text/plain", "message/delivery-status", "message/rfc822"]
        _, (rcpt,) = groups(parse(make(original=original)))
        assert rcpt["Final-Recipient"] == "rfc822; bob@rcpt.example"
    assert len(list(parse(make(original=b"")).iter_parts())) == 2   # nothing to return


def test_crlf_in_remote_reply_and_addresses_cannot_inject_fields():
    evil = "550 5.1.1 gone\r\nX-Injected: yes\r\n\r\nFinal-Recipient: rfc822; forged@example\r\n--x"
    raw = make([Failure("bob@rcpt.example\r\nBcc: victim@example", "5.1.1", evil,
                        "mx.rcpt.example\r\nX-Host: injected")],
               mail_from="alice@sender.example\r\nBcc: victim@example")
    msg = parse(raw)
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert b"\r\nBcc:" not in raw and b"\r\nX-Injected" not in raw and b"\r\nX-Host" not in raw
    _, rcpts = groups(msg)
    assert len(rcpts) == 1
    assert rcpts[0]["Diagnostic-Code"].startswith("smtp; 550 5.1.1 gone X-Injected: yes Final-Recipient")
    assert rcpts[0]["Remote-MTA"] == "dns; mx.rcpt.example"
    assert "\n" not in rcpts[0]["Final-Recipient"]


def test_long_and_non_ascii_values_stay_within_line_limits():
    raw = make([Failure("\u00fc" * 3000 + "@rcpt.example", "", "550 " + "\u20ac" * 5000, "h" * 5000)],
               mail_from="\u00e9" * 3000 + "@sender.example", original=ORIGINAL)
    _, (rcpt,) = groups(parse(raw))   # assert_wire_form checked the 998 octets
    assert rcpt["Final-Recipient"].startswith("utf-8; \\x{FC}\\x{FC}")
    assert rcpt["Diagnostic-Code"].startswith("smtp; 550 \\x{20AC}")


def test_smtputf8_addresses_use_the_utf8_address_type():
    raw = make([Failure("j\u00fcrgen+tag@b\u00fccher.example", "5.1.1", "550 5.1.1 Unbekannt \u2013 sorry",
                        "mx.xn--bcher-kva.example")],
               mail_from="\u00e9lodie@exp\u00e9diteur.example")
    assert needs_smtputf8("\u00e9lodie@exp\u00e9diteur.example")
    assert "To: <\u00e9lodie@exp\u00e9diteur.example>\r\n".encode() in raw   # RFC 6532: raw UTF-8
    msg = parse(raw)
    _, (rcpt,) = groups(msg)
    # RFC 6533 utf-8-addr-xtext: non-ASCII and '+' as \x{HEX}, so the part stays 7-bit.
    assert rcpt["Final-Recipient"] == "utf-8; j\\x{FC}rgen\\x{2B}tag@b\\x{FC}cher.example"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 Unbekannt \\x{2013} sorry"
    status = raw.split(b"Content-Type: message/delivery-status\r\n")[1].split(b"\r\n--=_mailsift_")[0]
    assert status.isascii()
    text = next(msg.iter_parts()).get_content()
    assert "<j\u00fcrgen+tag@b\u00fccher.example>" in text and "Unbekannt \u2013 sorry" in text


def test_boundary_found_in_the_content_is_drawn_again(monkeypatch):
    taken = "a" * 32
    original = ORIGINAL + f"--=_mailsift_{taken}\r\nContent-Type: text/plain\r\n\r\nforged\r\n".encode()
    draws = iter([taken, "b" * 32])
    monkeypatch.setattr(dsn, "_token", lambda n: next(draws))
    msg = parse(make(original=original))
    assert msg.get_boundary() == "=_mailsift_" + "b" * 32
    parts = list(msg.iter_parts())
    assert len(parts) == 3 and b"forged" in parts[2].as_bytes()


def test_forged_report_inside_the_original_stays_inside():
    original = (b"Subject: fake bounce\r\nContent-Type: multipart/report; report-type=delivery-status;"
                b" boundary=\"fake\"\r\n\r\n--fake\r\nContent-Type: message/delivery-status\r\n\r\n"
                b"Reporting-MTA: dns; evil.example\r\n\r\nFinal-Recipient: rfc822; forged@example\r\n"
                b"Action: failed\r\nStatus: 5.0.0\r\n\r\n--fake--\r\n")
    msg = parse(make(original=original))
    per_message, rcpts = groups(msg)
    assert per_message["Reporting-MTA"] == "dns; gate.local.example"
    assert [r["Final-Recipient"] for r in rcpts] == ["rfc822; bob@rcpt.example"]


def test_original_declaring_a_prefix_of_our_boundary_is_returned_as_headers():
    """A parser matching delimiters by prefix would take our delimiter for the inner
    'boundary=_mailsift_' one: every draw collides, so only the header block goes back."""
    original = (b"Subject: hostile\r\nContent-Type: multipart/mixed; boundary=\"=_mailsift_\"\r\n\r\n"
                b"--=_mailsift_\r\nContent-Type: text/plain\r\n\r\nunterminated\r\n")
    parts = list(parse(make(original=original)).iter_parts())
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert b"unterminated" not in parts[2].as_bytes()


def test_caller_mistakes_are_errors():
    with pytest.raises(ValueError):
        build_dsn(reporting_mta="g", mail_from="a@b", failures=[], original=b"", queue_id="Q",
                  arrival=ARRIVAL, now=NOW)
    with pytest.raises(ValueError):
        make([Failure("bob@rcpt.example", "2.0.0", None, None, action="delivered")])
