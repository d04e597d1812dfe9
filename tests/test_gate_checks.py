"""The gate's checks that need no network, and the ``DataContext`` they read.

Each check is a pure function: a ``DataContext`` (or the SMTP values) in, ``None`` or a
``CheckResult`` out. Tests here check meaning (what fires, what does not, the boundary
of each limit, the evidence); they never assert timings. Hostile inputs (a 10 MB line,
100k header fields, a million MIME parts, nesting thousands deep) are big enough that
quadratic work would hang the run, so finishing at all is the linearity test.

Messages are built in the test, the way aiosmtpd hands them to the gate: dot-unstuffed,
CRLF line ends, the final "." line removed.
"""
from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import importlib
import string
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classifier.classifications import get
from smtpgate.checks.bad_header_count import bad_header_count
from smtpgate.checks.date_skew import date_skew, parse_date
from smtpgate.checks.header_too_long import header_too_long
from smtpgate.checks.invalid_helo import invalid_helo
from smtpgate.checks.line_too_long import line_too_long
from smtpgate.checks.message_partial import message_partial
from smtpgate.checks.restricted_address_chars import DEFAULT_ALLOWED, restricted_address_chars
from smtpgate.checks.subject_invalid_chars import subject_invalid_chars
from smtpgate.checks.too_many_mime_parts import too_many_mime_parts
from smtpgate.message import (MAX_HEADER_FIELDS, MIME_DEPTH_LIMIT, MIME_PART_CAP, DataContext,
                              HeaderField, shown)

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
DAY = 86400.0

DATA_CHECKS = (line_too_long, too_many_mime_parts, bad_header_count, date_skew,
               subject_invalid_chars, header_too_long, message_partial)

PROPERTY = settings(deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def mail(*fields: bytes | str, body: bytes = b"Hello.\r\n", from_: bool = True) -> bytes:
    """A message: the given header lines (with a From first unless ``from_`` is False),
    an empty line, the body."""
    lines = [b"From: alice@example.com"] if from_ else []
    lines += [f.encode() if isinstance(f, str) else f for f in fields]
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def context(raw: bytes, *, smtputf8: bool = False, now: float = NOW, **kw) -> DataContext:
    return DataContext.from_bytes(raw, smtputf8=smtputf8, now=now, **kw)


def multipart(parts: list[bytes], boundary: bytes = b"b", subtype: bytes = b"mixed",
              headers: tuple[bytes, ...] = ()) -> bytes:
    """A multipart entity (header block included) whose body parts are ``parts``."""
    head = b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\r\n'
    head += b"".join(h + b"\r\n" for h in headers)
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return head + b"\r\n" + body + b"--" + boundary + b"--\r\n"


TEXT_PART = b"Content-Type: text/plain\r\n\r\nhi"


def assert_result(result, classification: str) -> None:
    """The result is the contract row's, made by the check of the same name."""
    assert result is not None
    assert result.classification == classification
    assert result.check == classification
    assert result.reply() == get(classification).reply()
    assert result.evidence and "\n" not in result.evidence


# ============================================================ one check, one name

CHECK_MODULES = ("line_too_long", "too_many_mime_parts", "bad_header_count", "date_skew",
                 "subject_invalid_chars", "header_too_long", "message_partial",
                 "invalid_helo", "restricted_address_chars")


@pytest.mark.parametrize("name", CHECK_MODULES)
def test_module_function_and_classification_share_one_name(name):
    module = importlib.import_module(f"smtpgate.checks.{name}")
    assert callable(getattr(module, name))
    get(name)  # a row of the contract table


# ============================================================ DataContext

def test_headers_are_kept_in_order_unfolded_with_raw_lengths():
    raw = (b"Received: from a\r\n\tby b; Tue, 14 Nov 2023 10:00:00 +0000\r\n"
           b"Subject:   Hello  \r\n"
           b"To: bob@example.com,\r\n  carol@example.com\r\n"
           b"\r\nbody\r\n")
    ctx = context(raw)
    assert ctx.headers == (
        HeaderField(b"Received", b"from a\tby b; Tue, 14 Nov 2023 10:00:00 +0000",
                    len(b"Received: from a\r\n\tby b; Tue, 14 Nov 2023 10:00:00 +0000")),
        HeaderField(b"Subject", b"Hello", len(b"Subject:   Hello  ")),
        HeaderField(b"To", b"bob@example.com,  carol@example.com",
                    len(b"To: bob@example.com,\r\n  carol@example.com")),
    )
    assert ctx.has_separator
    assert raw[ctx.body_offset:] == b"body\r\n" == ctx.body
    assert raw[:ctx.header_end].endswith(b"carol@example.com\r\n")


def test_header_lookup_is_case_insensitive_and_keeps_every_occurrence():
    ctx = context(mail("Subject: one", "SUBJECT: two", "subject: three", "X-A: 1"))
    assert ctx.header("Subject") == [b"one", b"two", b"three"]
    assert ctx.header("sUbJeCt") == ctx.header("subject")
    assert ctx.header_count("SUBJECT") == 3
    assert ctx.header("x-missing") == [] and ctx.header_count("x-missing") == 0
    assert ctx.subject_raw == b"one"
    assert ctx.from_raw == b"alice@example.com"
    assert ctx.message_id is None


def test_header_text_decodes_leniently_and_keeps_encoded_words():
    ctx = context(mail(b"Subject: caf\xe9 =?UTF-8?B?w6k=?=", b"Message-ID: <a@b>"))
    assert ctx.header_text("subject") == "caf\ufffd =?UTF-8?B?w6k=?="
    assert ctx.header_text("x-missing") == ""
    assert ctx.message_id == "<a@b>"


def test_bare_lf_line_ends_are_tolerated():
    ctx = context(b"From: a@example.com\nSubject: x\n folded\n\nbody\n")
    assert [f.name for f in ctx.headers] == [b"From", b"Subject"]
    assert ctx.header("subject") == [b"x folded"]
    assert ctx.body == b"body\n"


def test_no_separator_makes_everything_header():
    raw = b"From: a@example.com\r\nSubject: no body"
    ctx = context(raw)
    assert ctx.header("subject") == [b"no body"]
    assert not ctx.has_separator
    assert ctx.header_end == ctx.body_offset == len(raw)


def test_first_line_that_is_not_a_header_starts_the_body():
    # As Postfix and the email package read it: no empty line, the body starts there.
    raw = b"From: a@example.com\r\nthis is body text\r\nSubject: not a header\r\n"
    ctx = context(raw)
    assert ctx.header("subject") == []
    assert not ctx.has_separator
    assert raw[ctx.body_offset:].startswith(b"this is body text")


def test_obsolete_whitespace_before_colon_and_leading_continuation():
    ctx = context(b" orphan continuation\r\nSubject\t : spaced\r\n\r\n")
    assert ctx.headers == (HeaderField(b"Subject", b"spaced", 17),)


@pytest.mark.parametrize("raw", [b"", b"\r\n", b"\x00" * 100, bytes(range(256)) * 4,
                                 b"\xff\xfe\r\n\r\n", b"\r" * 1000, b":\r\n\r\n"])
def test_garbage_parses_to_no_headers(raw):
    ctx = context(raw)
    assert ctx.header("from") == []
    assert 0 <= ctx.header_end <= ctx.body_offset <= len(raw)
    assert bad_header_count(ctx) is not None  # no From
    for check in DATA_CHECKS:
        check(ctx)


def test_nul_and_bare_cr_stay_in_values():
    ctx = context(mail(b"Subject: a\x00b\rc"))
    assert ctx.header("subject") == [b"a\x00b\rc"]


def test_longest_line_excludes_the_line_end():
    ctx = context(b"a\r\n" + b"x" * 50 + b"\r\n" + b"y" * 50 + b"\n" + b"z" * 10)
    assert (ctx.longest_line, ctx.longest_line_number) == (50, 2)


def test_bare_cr_is_part_of_the_line():
    ctx = context(b"ab\rcd\r\n")
    assert ctx.longest_line == 5


def test_longest_line_number_across_chunks():
    # More than one 1 MiB chunk: the numbering must carry over.
    raw = b"short\r\n" * 200_000 + b"L" * 2000 + b"\r\n" + b"short\r\n" * 10
    ctx = context(raw)
    assert (ctx.longest_line, ctx.longest_line_number) == (2000, 200_001)


def test_max_line_seen_by_the_gate_wins_when_larger():
    ctx = context(mail(), max_line_seen=5000)
    assert (ctx.longest_line, ctx.longest_line_number) == (5000, None)
    ctx = context(mail(body=b"x" * 40 + b"\r\n"), max_line_seen=10)
    assert ctx.longest_line == 40


def test_header_fields_past_the_cap_are_not_kept():
    raw = b"".join(b"X-N-%d: v\r\n" % i for i in range(100_000)) + b"Subject: late\r\n\r\nbody\r\n"
    ctx = context(raw)
    assert len(ctx.headers) == MAX_HEADER_FIELDS
    assert ctx.headers_truncated
    assert raw[ctx.body_offset:] == b"body\r\n"  # the block's end is still found


def test_shown_escapes_what_is_not_printable_and_cuts():
    assert shown("foo\x00bar\udcff") == "foo\\x00bar\\udcff"
    assert shown(b"caf\xe9") == "caf\ufffd"
    assert shown("x" * 500, 10) == "x" * 10 + "..."


# ============================================================ line_too_long

def test_line_of_exactly_998_bytes_passes_and_999_fails():
    ok = context(mail(body=b"x" * 998 + b"\r\n"))
    assert line_too_long(ok) is None
    long = context(mail("Subject: s", body=b"first\r\n" + b"x" * 999 + b"\r\n"))
    result = line_too_long(long)
    assert_result(result, "line_too_long")
    assert result.evidence == "line 5 is 999 bytes (maximum 998)"
    assert result.details == {"line": 5, "length": 999, "max_length": 998}


def test_line_too_long_limit_is_a_parameter():
    ctx = context(mail(body=b"x" * 100 + b"\r\n"))
    assert line_too_long(ctx, max_length=100) is None
    assert line_too_long(ctx, max_length=99).evidence == "line 3 is 100 bytes (maximum 99)"


def test_line_too_long_counts_header_lines_too():
    ctx = context(mail("Subject: " + "s" * 1200))
    assert line_too_long(ctx).details["line"] == 2


def test_line_too_long_with_the_gates_measurement():
    result = line_too_long(context(mail(), max_line_seen=4000))
    assert result.evidence == "a line is 4000 bytes (maximum 998)"


# ============================================================ too_many_mime_parts

def test_a_plain_message_is_one_part():
    assert context(mail()).mime.parts == 1
    assert too_many_mime_parts(context(mail())) is None


def test_parts_count_containers_and_nested_parts():
    inner = multipart([TEXT_PART, TEXT_PART], boundary=b"inner", subtype=b"alternative")
    outer = multipart([TEXT_PART, inner, TEXT_PART], boundary=b"outer")
    ctx = context(b"From: a@example.com\r\n" + outer)
    # message + outer parts (3) + the inner container's parts (2)
    assert ctx.mime.parts == 6
    assert ctx.mime.max_depth == 2
    assert ctx.mime.complete


def _n_part_message(n: int) -> bytes:
    return b"From: a@example.com\r\n" + multipart([TEXT_PART] * n)


def test_exactly_the_maximum_passes_and_one_more_fails():
    assert too_many_mime_parts(context(_n_part_message(99))) is None   # 100 with the container
    result = too_many_mime_parts(context(_n_part_message(100)))
    assert_result(result, "too_many_mime_parts")
    assert result.evidence == "101 MIME parts (maximum 100)"
    assert too_many_mime_parts(context(_n_part_message(100)), max_parts=101) is None


def test_message_rfc822_counts_the_part_and_the_message_inside():
    attached = b"Content-Type: message/rfc822\r\n\r\n" + multipart([TEXT_PART, TEXT_PART], b"in")
    ctx = context(b"From: a@example.com\r\n" + multipart([TEXT_PART, attached], b"out"))
    # message, text, message/rfc822, the message inside (a multipart), its two parts
    assert ctx.mime.parts == 6


def test_digest_parts_default_to_message_rfc822():
    raw = (b'Content-Type: multipart/digest; boundary="d"\r\n\r\n'
           b"--d\r\n\r\nSubject: one\r\n\r\nbody\r\n--d\r\n\r\nSubject: two\r\n\r\nbody\r\n--d--\r\n")
    assert context(raw).mime.parts == 5 == len(list(email.message_from_bytes(raw).walk()))


def test_multipart_without_boundary_or_delimiters_is_one_opaque_part():
    no_param = b"Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n"
    no_delimiter = b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--b\r\n\r\nx\r\n'
    assert context(no_param).mime.parts == 1
    assert context(no_delimiter).mime.parts == 1


def test_delimiter_lines_must_match_exactly():
    body = (b"--bX\r\n\r\nnot a delimiter\r\n"   # a longer boundary
            b"  --b\r\n"                        # not at the line start
            b"--b \t\r\n\r\npart one\r\n"       # trailing whitespace is allowed (RFC 2046)
            b"--b--\r\n\r\n--b\r\n\r\nepilogue, not a part\r\n")
    ctx = context(b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + body)
    assert ctx.mime.parts == 2


def test_rfc2231_boundary_and_quoted_semicolons():
    split = (b"Content-Type: multipart/mixed; boundary*0=\"ab\"; boundary*1=\"cd\"\r\n\r\n"
             b"--abcd\r\n\r\nx\r\n--abcd--\r\n")
    extended = (b"Content-Type: multipart/mixed; boundary*=us-ascii''a%2Db\r\n\r\n"
                b"--a-b\r\n\r\nx\r\n--a-b--\r\n")
    quoted = (b'Content-Type: multipart/mixed; foo="x;boundary=no"; boundary="a;b"\r\n\r\n'
              b"--a;b\r\n\r\nx\r\n--a;b\r\n\r\ny\r\n--a;b--\r\n")
    assert context(split).mime.parts == 2
    assert context(extended).mime.parts == 2
    assert context(quoted).mime.parts == 3 == len(list(email.message_from_bytes(quoted).walk()))


def test_delivery_status_is_one_part():
    # walk() would yield each block of status fields as a message: 5, not 4.
    dsn = multipart([TEXT_PART,
                     b"Content-Type: message/delivery-status\r\n\r\n"
                     b"Reporting-MTA: dns; mx.example.com\r\n\r\n"
                     b"Final-Recipient: rfc822; bob@example.com\r\nAction: failed\r\n",
                     b"Content-Type: text/rfc822-headers\r\n\r\nSubject: x"], subtype=b"report")
    assert context(dsn).mime.parts == 4


def test_a_million_part_bomb_stops_counting_at_the_cap():
    bomb = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            + b"--b\r\n\r\n" * 1_000_000 + b"--b--\r\n")
    ctx = context(bomb)
    assert ctx.mime.parts == MIME_PART_CAP + 1
    assert ctx.mime.stopped == "parts"
    result = too_many_mime_parts(ctx)
    assert_result(result, "too_many_mime_parts")
    assert result.evidence == f"more than {MIME_PART_CAP} MIME parts (maximum 100)"
    # Past the cap the count is unknown: even a larger maximum judges it too many.
    assert too_many_mime_parts(ctx, max_parts=5000) is not None


def test_mime_part_cap_is_a_parameter():
    ctx = context(_n_part_message(20), mime_part_cap=10)
    assert ctx.mime.stopped == "parts" and ctx.mime.parts == 11


def test_nesting_deeper_than_the_limit_is_too_many_parts():
    entity = b"Content-Type: text/plain\r\n\r\nx"
    for i in range(2000):
        entity = multipart([entity], boundary=b"n%d" % i)
    ctx = context(entity)
    assert ctx.mime.stopped == "depth"
    assert ctx.mime.max_depth == MIME_DEPTH_LIMIT
    result = too_many_mime_parts(ctx)
    assert result.evidence == f"MIME parts nested more than {MIME_DEPTH_LIMIT} deep"


def test_near_miss_delimiters_and_huge_parameter_lists_stay_cheap():
    near = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + b"--bX\r\n" * 300_000
            + b"\n--" * 300_000)
    assert context(near).mime.parts == 1
    # The email package's parameter splitter is quadratic in ";": this must not be.
    semis = b"Content-Type: multipart/mixed" + b";" * 2_000_000 + b"; boundary=b\r\n\r\n--b\r\n\r\nx\r\n"
    assert context(semis).mime.parts >= 1


# The walk agrees with email.message.Message.walk() on well-formed MIME.

_leaf = st.one_of(
    st.text(alphabet=string.ascii_letters + " -\n", max_size=40).map(MIMEText),
    st.binary(max_size=40).map(MIMEApplication),
)


def _container(children):
    def multi(args):
        subtype, kids = args
        m = MIMEMultipart(subtype)
        for kid in kids:
            m.attach(kid)
        return m
    return st.one_of(
        st.tuples(st.sampled_from(["mixed", "alternative", "related"]),
                  st.lists(children, min_size=1, max_size=4)).map(multi),
        children.map(MIMEMessage),
    )


@settings(PROPERTY, max_examples=30)
@given(tree=st.recursive(_leaf, _container, max_leaves=12),
       policy=st.sampled_from([email.policy.compat32, email.policy.SMTP]))
def test_part_count_matches_email_walk(tree, policy):
    raw = tree.as_bytes(policy=policy)
    assert context(raw).mime.parts == len(list(email.message_from_bytes(raw).walk()))


# ============================================================ bad_header_count

def test_duplicate_subject_differing_in_case():
    result = bad_header_count(context(mail("Subject: a", "subject: b")))
    assert_result(result, "bad_header_count")
    assert result.evidence == "Subject appears 2 times"
    assert result.details["counts"] == {"Subject": 2}


def test_every_offending_field_is_named():
    result = bad_header_count(context(mail("To: a@x", "TO: b@x", "To: c@x", "Message-ID: <1@x>",
                                           "message-id: <2@x>", "Date: x", "date: y")))
    assert result.evidence == "Date appears 2 times, To appears 3 times, Message-ID appears 2 times"


def test_missing_from_is_bad_and_missing_date_is_not():
    assert bad_header_count(context(mail("Subject: s", from_=False))).evidence == \
        "From appears 0 times"
    assert bad_header_count(context(mail("Subject: s"))) is None  # no Date


def test_repeatable_fields_are_not_counted():
    raw = mail("Received: a", "Received: b", "Resent-From: x@y", "Resent-From: z@y",
               "Comments: 1", "Comments: 2", "Keywords: k", "Keywords: l", "X-Dup: 1", "X-Dup: 2")
    assert bad_header_count(context(raw)) is None


def test_too_many_header_fields_is_a_bad_header_count():
    raw = mail(*[b"X-N: v"] * (MAX_HEADER_FIELDS + 5))
    result = bad_header_count(context(raw))
    assert result.evidence == f"more than {MAX_HEADER_FIELDS} header fields"


# ============================================================ date_skew

def _dated(seconds_from_now: float) -> bytes:
    date = email.utils.format_datetime(dt.datetime.fromtimestamp(NOW + seconds_from_now, dt.timezone.utc))
    return mail(f"Date: {date}")


@pytest.mark.parametrize("offset", [0, -7 * DAY, 7 * DAY, -3 * DAY, 6.9 * DAY])
def test_dates_within_the_window_pass(offset):
    assert date_skew(context(_dated(offset))) is None


def test_date_in_the_past():
    result = date_skew(context(_dated(-8 * DAY)))
    assert_result(result, "date_skew")
    assert result.evidence == "Date 'Mon, 06 Nov 2023 22:13:20 +0000' is 8.0 days in the past (maximum 7)"
    assert result.details["skew_days"] == -8.0


def test_date_in_the_future():
    result = date_skew(context(_dated(7 * DAY + 3600)))
    assert "in the future" in result.evidence
    assert result.details["skew_days"] == pytest.approx(7.042, abs=1e-3)


def test_window_is_a_parameter():
    ctx = context(_dated(-2 * DAY))
    assert date_skew(ctx, max_skew_days=1) is not None
    assert date_skew(ctx, max_skew_days=2) is None


@pytest.mark.parametrize("value", ["not a date", "Tue, 32 Foo 2023 99:99:99 +0000", "", "0",
                                   "Mon, 01 Jan 10000 00:00:00 +0000", "x" * 1000])
def test_unparseable_date_is_not_judged(value):
    assert date_skew(context(mail(f"Date: {value}"))) is None


def test_missing_date_is_not_judged():
    assert date_skew(context(mail())) is None


@pytest.mark.parametrize("value,expected", [
    ("Tue, 14 Nov 2023 22:13:20 +0000", "2023-11-14T22:13:20+00:00"),
    ("14 Nov 23 22:13:20 GMT", "2023-11-14T22:13:20+00:00"),             # obsolete 2-digit year
    ("Tue, 14 Nov 2023 23:13:20 +0100 (CET)", "2023-11-14T23:13:20+01:00"),
    ("Tue, 14 Nov 2023 22:13:20", "2023-11-14T22:13:20+00:00"),           # no zone: UTC
    ("2023-11-14T22:13:20Z", "2023-11-14T22:13:20+00:00"),                # ISO 8601 fallback
])
def test_lenient_date_parsing(value, expected):
    assert parse_date(value).isoformat() == expected


def test_first_of_two_dates_is_judged():
    date = email.utils.format_datetime(dt.datetime.fromtimestamp(NOW, dt.timezone.utc))
    assert date_skew(context(mail(f"Date: {date}", "Date: Mon, 1 Jan 1990 00:00:00 +0000"))) is None


# ============================================================ subject_invalid_chars

@pytest.mark.parametrize("subject", [b"Plain ASCII", b"=?UTF-8?B?w6nDqcOp?= encoded", b"tab\there",
                                     b"=?ISO-8859-1?Q?caf=E9?=", b""])
def test_valid_subjects(subject):
    assert subject_invalid_chars(context(mail(b"Subject: " + subject))) is None


def test_folded_subject_is_valid():
    assert subject_invalid_chars(context(mail(b"Subject: part one\r\n part two"))) is None


def test_8bit_subject_without_smtputf8():
    result = subject_invalid_chars(context(mail("Subject: café".encode())))
    assert_result(result, "subject_invalid_chars")
    assert result.evidence == "Badly formed Subject header"
    assert result.details["offset"] == 3 and result.details["byte"] == "0xc3"
    assert result.details["reason"] == "8-bit byte without SMTPUTF8"


def test_utf8_subject_with_smtputf8_is_valid():
    assert subject_invalid_chars(context(mail("Subject: café ☕".encode()), smtputf8=True)) is None


@pytest.mark.parametrize("subject,offset", [
    (b"caf\xe9", 3),                 # Latin-1, not UTF-8
    (b"ok \xc3", 3),                 # truncated sequence
    (b"\xc0\xaf overlong", 0),       # overlong "/"
    (b"\xed\xa0\x80 surrogate", 0),  # an encoded surrogate
])
def test_invalid_utf8_with_smtputf8(subject, offset):
    result = subject_invalid_chars(context(mail(b"Subject: " + subject), smtputf8=True))
    assert result.details["reason"] == "invalid UTF-8"
    assert result.details["offset"] == offset


@pytest.mark.parametrize("subject,byte", [(b"a\x00b", "0x00"), (b"a\rb", "0x0d"), (b"a\x1bb", "0x1b"),
                                          (b"a\x7fb", "0x7f")])
def test_control_characters_are_invalid_even_with_smtputf8(subject, byte):
    result = subject_invalid_chars(context(mail(b"Subject: " + subject), smtputf8=True))
    assert result.details["reason"] == "control character"
    assert result.details["byte"] == byte and result.details["offset"] == 1


def test_the_first_problem_is_reported():
    result = subject_invalid_chars(context(mail(b"Subject: \xff then \x00")))
    assert result.details["offset"] == 0 and result.details["reason"] == "8-bit byte without SMTPUTF8"


def test_every_subject_field_is_looked_at():
    result = subject_invalid_chars(context(mail(b"Subject: fine", b"Subject: \xff")))
    assert result.details["field"] == 2


def test_no_subject_is_not_invalid():
    assert subject_invalid_chars(context(mail())) is None


# ============================================================ header_too_long

def test_field_of_exactly_the_maximum_passes():
    field = b"X-Big: " + b"v" * (100 - 7)
    assert len(field) == 100
    assert header_too_long(context(mail(field)), max_length=100) is None
    result = header_too_long(context(mail(field + b"v")), max_length=100)
    assert_result(result, "header_too_long")
    assert result.evidence == "X-Big header field is 101 bytes (maximum 100)"


def test_folded_field_is_measured_as_received():
    folded = b"To: " + b",\r\n ".join(b"user%d@example.com" % i for i in range(2000))
    ctx = context(mail(folded))
    result = header_too_long(ctx)
    assert result.details["field"] == "To"
    assert result.details["length"] == len(folded)


def test_default_field_limit():
    assert header_too_long(context(mail(b"X-A: " + b"a" * 16000))) is None
    assert header_too_long(context(mail(b"X-A: " + b"a" * 17000))) is not None


def test_header_block_limit():
    raw = mail(*[b"X-Line: " + b"a" * 900] * 80)  # 80 fields of 908 bytes: 72 KiB in all
    result = header_too_long(context(raw))
    assert result.evidence.startswith("header is ") and result.evidence.endswith("(maximum 65536)")
    assert header_too_long(context(raw), max_total_length=None) is None


# ============================================================ message_partial

PARTIAL = b'Content-Type: message/partial; id="abc@example.com"; number=1; total=2'


def test_top_level_message_partial():
    result = message_partial(context(mail(PARTIAL)))
    assert_result(result, "message_partial")
    assert result.evidence == "message/partial at top level"


def test_message_partial_in_a_nested_part():
    inner = multipart([TEXT_PART, PARTIAL + b"\r\n\r\nSubject: frag\r\n\r\nx"], boundary=b"in")
    raw = b"From: a@example.com\r\n" + multipart([TEXT_PART, inner], boundary=b"out")
    assert message_partial(context(raw)).evidence == "message/partial in part 2.2"


def test_message_partial_inside_an_attached_message():
    attached = b"Content-Type: message/rfc822\r\n\r\nSubject: fwd\r\n" + PARTIAL + b"\r\n\r\nfrag"
    raw = b"From: a@example.com\r\n" + multipart([TEXT_PART, attached])
    assert message_partial(context(raw)).evidence == "message/partial in part 2"


def test_message_partial_type_is_case_insensitive_folded_or_commented():
    assert message_partial(context(mail(b"Content-Type: Message/\r\n Partial; id=1"))) is not None
    assert message_partial(context(mail(b"Content-Type: message/partial (part 1 of 2); id=1"))) is not None


def test_mentions_of_message_partial_are_not_message_partial():
    raw = mail(b"Content-Type: text/plain", b"X-Note: message/partial",
               body=b"Content-Type: message/partial\r\n")
    assert message_partial(context(raw)) is None


# ============================================================ invalid_helo

OWN_NAMES = {"mx.example.net", "Gate.Example.NET."}
OWN_IPS = {"192.0.2.10", "2001:db8::10"}
CLIENT = "198.51.100.7"


@pytest.mark.parametrize("helo,client", [
    ("mail.example.com", CLIENT),
    ("MAIL.Example.COM", CLIENT),
    ("a-b.example.co.uk", CLIENT),
    ("xn--bcher-kva.example", CLIENT),      # IDN as an A-label
    ("[198.51.100.7]", CLIENT),
    ("[203.0.113.1]", CLIENT),              # a literal that is not the client: not judged
    ("[IPv6:2001:db8::1]", CLIENT),
    ("[ipv6:2001:DB8::1]", CLIENT),         # the tag is case-insensitive (RFC 5234)
    ("[IPv6:::ffff:198.51.100.7]", CLIENT),
    ("localhost", "127.0.0.1"),             # from a loopback client
    ("localhost.localdomain", "::1"),
    ("[127.0.0.1]", "127.0.0.1"),
    ("mx.example.net", "192.0.2.10"),       # our own name, from our own address
    ("mx.example.net", "127.0.0.1"),
    ("[192.0.2.10]", "192.0.2.10"),
    ("a" * 63 + ".example.com", CLIENT),
])
def test_valid_greetings(helo, client):
    assert invalid_helo(helo, client, OWN_NAMES, OWN_IPS) is None


@pytest.mark.parametrize("helo,reason,evidence", [
    ("", "empty", "HELO is empty"),
    ("   ", "empty", "HELO is empty"),
    ("foo bar", "syntax", "HELO 'foo bar' is not a valid hostname"),
    ("foo_bar.example.com", "syntax", "HELO 'foo_bar.example.com' is not a valid hostname"),
    ("example.com.", "syntax", "HELO 'example.com.' is not a valid hostname"),
    ("-a.example.com", "syntax", "HELO '-a.example.com' is not a valid hostname"),
    ("a-.example.com", "syntax", "HELO 'a-.example.com' is not a valid hostname"),
    ("a..example.com", "syntax", "HELO 'a..example.com' is not a valid hostname"),
    ("a" * 64 + ".com", "syntax", None),
    ("bücher.example", "syntax", "HELO 'bücher.example' is not a valid hostname"),
    ("foo\x00.com", "syntax", "HELO 'foo\\x00.com' is not a valid hostname"),
    (("a" * 60 + ".") * 5 + "com", "too_long", None),
    ("host.123", "numeric_tld", "HELO 'host.123' has a numeric top-level domain"),
    ("256.1.2.3", "numeric_tld", None),
    ("192.0.2.1", "bare_ip", "HELO '192.0.2.1' is an IP address without brackets (RFC 5321 4.1.3)"),
    ("2001:db8::1", "bare_ip", None),
    ("[300.1.2.3]", "bad_literal", "HELO '[300.1.2.3]' is not a valid address literal"),
    ("[mail.example.com]", "bad_literal", None),
    ("[IPv6:fe80::1%eth0]", "bad_literal", None),
    ("[IPv6:1.2.3.4]", "bad_literal", None),
    ("[X-tag:abc]", "bad_literal", None),
    ("localhost", "loopback", "HELO 'localhost' is a loopback name from client 198.51.100.7"),
    ("LocalHost.localdomain", "loopback", None),
    ("box.localhost", "loopback", None),
    ("[127.0.0.1]", "loopback", "HELO '[127.0.0.1]' is a loopback address from client 198.51.100.7"),
    ("[IPv6:::1]", "loopback", None),
    ("mx.example.net", "own_name", "HELO 'mx.example.net' is one of our own names"),
    ("gate.example.net", "own_name", None),
    ("[192.0.2.10]", "own_ip", "HELO '[192.0.2.10]' is one of our own addresses"),
    ("192.0.2.10", "own_ip", None),
    ("[IPv6:2001:db8:0::10]", "own_ip", None),
    ("[IPv6:::ffff:192.0.2.10]", "own_ip", None),
    ("mailserver", "not_fqdn", "HELO 'mailserver' is not a fully qualified domain name"),
])
def test_invalid_greetings(helo, reason, evidence):
    result = invalid_helo(helo, CLIENT, OWN_NAMES, OWN_IPS)
    assert_result(result, "invalid_helo")
    assert result.details["reason"] == reason
    if evidence is not None:
        assert result.evidence == evidence


def test_address_literals_can_be_refused():
    result = invalid_helo("[198.51.100.7]", CLIENT, set(), set(), allow_address_literals=False)
    assert result.details["reason"] == "address_literal"


def test_unparseable_client_address_is_not_loopback():
    assert invalid_helo("localhost", "", set(), set()).details["reason"] == "loopback"
    assert invalid_helo("mail.example.com", "unix:/socket", set(), {"not an ip"}) is None


# ============================================================ restricted_address_chars

@pytest.mark.parametrize("address", [
    "john.doe@example.com", "first_last-1+tag=x@example.com", "Postmaster",
    "pelé@example.com", "e\u0301@example.com", "用户@例子.广告", "Δοκιμή@example.com",
    "prvs=1234=user@example.com", "@example.com",
])
def test_allowed_addresses(address):
    assert restricted_address_chars(address) is None


@pytest.mark.parametrize("address,char,evidence", [
    ("a&b@example.com", "&", "character '&' not allowed in local part of 'a&b@example.com'"),
    ("o'brien@example.com", "'", "character \"'\" not allowed in local part of 'o'brien@example.com'"),
    ('"john doe"@example.com', '"', None),
    ("a b@example.com", " ", None),
    ("user%other@example.com", "%", None),
    ("a|b@example.com", "|", None),
    ("a\x00b@example.com", "\\x00", "character '\\x00' not allowed in local part of 'a\\x00b@example.com'"),
    ("a\udce9b@example.com", "\\udce9", None),   # invalid UTF-8 via aiosmtpd's surrogateescape
    ("a\u2019b@example.com", "\u2019", None),      # non-ASCII punctuation
    ('"a@b"@example.com', '"', None),
])
def test_restricted_addresses(address, char, evidence):
    result = restricted_address_chars(address)
    assert_result(result, "restricted_address_chars")
    assert result.details["character"] == char
    if evidence is not None:
        assert result.evidence == evidence


def test_only_the_local_part_is_checked():
    assert restricted_address_chars("user@exa&mple.com") is None


def test_allowed_set_is_per_domain():
    assert restricted_address_chars("o'brien@example.com", DEFAULT_ALLOWED + "'") is None
    assert restricted_address_chars("a&b@example.com", "&") is None
    # The domain's set replaces the default, letters and digits stay allowed.
    assert restricted_address_chars("a.b@example.com", "&").details["character"] == "."
    assert restricted_address_chars("ab12@example.com", "") is None


# ============================================================ robustness

def _run_data_checks(ctx: DataContext) -> None:
    for check in DATA_CHECKS:
        result = check(ctx)
        assert result is None or result.classification == check.__name__


def _invariants(raw: bytes, ctx: DataContext) -> None:
    assert 0 <= ctx.header_end <= ctx.body_offset <= len(raw)
    assert 0 <= ctx.longest_line <= len(raw)
    assert len(ctx.headers) <= MAX_HEADER_FIELDS
    for name, value, raw_length in ctx.headers:
        assert name and all(0x21 <= c <= 0x7E and c != 0x3A for c in name)
        assert b"\n" not in value
        assert raw_length >= len(name) + 1
    assert 1 <= ctx.mime.parts <= MIME_PART_CAP + 1


@settings(PROPERTY, max_examples=200)
@given(raw=st.binary(max_size=2000), smtputf8=st.booleans())
def test_arbitrary_bytes_never_raise(raw, smtputf8):
    ctx = context(raw, smtputf8=smtputf8)
    _invariants(raw, ctx)
    _run_data_checks(ctx)


_MAIL_LINES = st.sampled_from([
    b"From: a@example.com", b"Subject: hi", b"subject: \xff\xfe", b"Date: Tue, 14 Nov 2023 22:13:20 +0000",
    b"Date: garbage", b"Date: 1 Jan 10000", b" folded", b"\tfolded", b"", b"", b"\r", b"body text",
    b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: multipart/mixed; boundary*0=b",
    b'Content-Type: multipart/digest; boundary="b"', b"Content-Type: message/rfc822",
    b"Content-Type: message/partial; id=1", b"Content-Type: text/plain", b"--b", b"--b--", b"--b  ",
    b"--bb", b"X-Long: " + b"x" * 1200, b"Message-ID: <1@x>", b"\x00", b"a:", b":", b"no colon",
])


@settings(PROPERTY, max_examples=80)
@given(lines=st.lists(_MAIL_LINES, max_size=60),
       ends=st.lists(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"]), min_size=60, max_size=60),
       smtputf8=st.booleans())
def test_mail_like_bytes_never_raise(lines, ends, smtputf8):
    raw = b"".join(line + end for line, end in zip(lines, ends))
    ctx = context(raw, smtputf8=smtputf8)
    _invariants(raw, ctx)
    _run_data_checks(ctx)


_NAMES = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
_VALUES = st.text(alphabet=string.ascii_letters + string.digits + " <>@.,;=?", max_size=40).map(str.strip)


@settings(PROPERTY, max_examples=50)
@given(fields=st.lists(st.tuples(_NAMES, _VALUES, st.integers(0, 3)), max_size=30))
def test_header_fields_round_trip(fields):
    lines = []
    for name, value, folds in fields:
        words = value.split(" ") if value else [""]
        step = max(1, len(words) // (folds + 1))
        chunks = [" ".join(words[i:i + step]) for i in range(0, len(words), step)]
        lines.append(f"{name}: " + "\r\n ".join(chunks))
    raw = "".join(line + "\r\n" for line in lines).encode() + b"\r\nbody\r\n"
    ctx = context(raw)
    assert [f.name.decode() for f in ctx.headers] == [name for name, _, _ in fields]
    assert [f.value.decode() for f in ctx.headers] == [value for _, value, _ in fields]
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert [f.name.decode() for f in ctx.headers] == parsed.keys()
    assert ctx.body == b"body\r\n"


@settings(PROPERTY, max_examples=80)
@given(helo=st.text(max_size=80), client=st.one_of(st.text(max_size=40), st.ip_addresses().map(str)))
def test_invalid_helo_never_raises(helo, client):
    result = invalid_helo(helo, client, {"mx.example.net"}, {"192.0.2.10", "2001:db8::10"})
    assert result is None or result.classification == "invalid_helo"


@settings(PROPERTY, max_examples=120)
@given(address=st.text(max_size=80), allowed=st.one_of(st.none(), st.text(max_size=10)))
def test_restricted_address_chars_never_raises(address, allowed):
    result = restricted_address_chars(address, allowed)
    assert result is None or result.details["character"]


@settings(PROPERTY, max_examples=60)
@given(value=st.one_of(st.text(max_size=60),
                       st.datetimes(timezones=st.timezones()).map(email.utils.format_datetime)))
def test_date_parsing_never_raises(value):
    raw = mail(b"Date: " + value.encode("utf-8", "surrogateescape").replace(b"\r", b"").replace(b"\n", b""))
    result = date_skew(context(raw))
    assert result is None or result.classification == "date_skew"


# Hostile sizes. Quadratic work on any of these would not finish; nothing is timed.

@pytest.mark.parametrize("raw", [
    pytest.param(b"x" * 10_000_000, id="10 MB single line"),
    pytest.param(b"Subject: " + b"x" * 5_000_000 + b"\r\n\r\nbody", id="5 MB header field"),
    pytest.param(b"".join(b"X-H-%d: v\r\n" % i for i in range(100_000)) + b"\r\nb", id="100k headers"),
    pytest.param(b"a:\n" * 500_000, id="500k tiny header lines, no body"),
    pytest.param(b"\r\n" * 1_000_000, id="1M empty lines"),
    pytest.param(b"\x00" * 5_000_000, id="5 MB of NUL"),
    pytest.param(b"From: a@x\r\n" + b" " * 5_000_000, id="5 MB continuation line"),
    pytest.param(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n" * 1_000_000,
                 id="1M delimiters without part headers"),
    pytest.param(b"Content-Type: message/rfc822\r\n\r\n" * 100_000, id="100k nested rfc822"),
])
def test_hostile_sizes_are_handled(raw):
    ctx = context(raw)
    _invariants(raw, ctx)
    _run_data_checks(ctx)
