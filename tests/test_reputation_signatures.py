"""signature_match: ClamAV hash, body and logical signatures, and clamd over its socket.

The clamd tests start a real clamd (Debian package clamav-daemon) on a unix socket in a
temporary directory, whose database directory holds only the signatures written here
and the example files; no official database is needed or downloaded.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
from email.message import EmailMessage

import pytest

from classifier.classifications import get as classification
from classifier.features import extract
from classifier.reputation.base import Disabled
from classifier.reputation.signature_match import (ClamdError, ClamdScanner, SignatureError, hex_to_regex,
                                                   load_signatures, parse_ldb, parse_ndb, signature_match,
                                                   text_normalise)

DATA = pathlib.Path(__file__).parent / "data"
EXAMPLES = [DATA / "signatures.example.ndb", DATA / "signatures.example.hdb"]
ATTACHMENT = b"mailsift example attachment: a file any test or admin can rebuild\n"


def h(text: str | bytes) -> str:
    return (text.encode() if isinstance(text, str) else text).hex()


def message(body: str = "hello", *, html: str | None = None, attachment: bytes | None = None,
            filename: str = "a.bin", b64: bool = False, subject: str = "hi") -> bytes:
    m = EmailMessage()
    m["From"] = "a@sender.test"
    m["To"] = "b@rcpt.test"
    m["Subject"] = subject
    m.set_content(body, cte="base64" if b64 else None)
    if html is not None:
        m.add_alternative(html, subtype="html")
    if attachment is not None:
        m.add_attachment(attachment, maintype="application", subtype="octet-stream", filename=filename)
    return m.as_bytes()


def sigset(tmp_path, **files: str):
    for name, text in files.items():
        (tmp_path / name.replace("_", ".")).write_text(text)
    return load_signatures([tmp_path])


def names(sigs, raw: bytes) -> list[str]:
    return [m.name for m in sigs.matches(raw)]


def body_hit(hexsig: str, data: bytes, offset: str = "*") -> bool:
    sig = parse_ndb(f"T:0:{offset}:{hexsig}")
    return sig.body.find(data) is not None


# ---------------------------------------------------------------- body signature syntax

@pytest.mark.parametrize("hexsig, data, hit", [
    (h("hello"), b"say hello", True),
    (h("HELLO"), b"say hello", False),                              # case matters
    (h("he") + "??" + h("lo"), b"hello", True),                     # ?? any byte
    (h("he") + "6?" + h("lo"), b"hello", True),                     # high nibble: 'l' is 0x6c
    (h("he") + "7?" + h("lo"), b"hello", False),
    (h("he") + "?c" + h("lo"), b"hello", True),                     # low nibble
    (h("he") + "?d" + h("lo"), b"hello", False),
    (h("hel") + "*" + h("world"), b"hello big world", True),        # * any number
    (h("world") + "*" + h("hel"), b"hello big world", False),       # ...in order
    (h("ab") + "{3}" + h("cd"), b"ab123cd", True),                  # {n} exactly
    (h("ab") + "{3}" + h("cd"), b"ab12cd", False),
    (h("ab") + "{-3}" + h("cd"), b"abcd", True),                    # {-n} at most
    (h("ab") + "{-3}" + h("cd"), b"ab1234cd", False),
    (h("ab") + "{3-}" + h("cd"), b"ab1234567cd", True),             # {n-} at least
    (h("ab") + "{3-}" + h("cd"), b"ab12cd", False),
    (h("ab") + "{2-4}" + h("cd"), b"ab123cd", True),                # {n-m}
    (h("ab") + "{2-4}" + h("cd"), b"ab12345cd", False),
    (h("ab") + "[1-2]" + h("c"), b"ab1c", True),                    # [x-y] before one byte
    (h("ab") + "(" + h("x") + "|" + h("yy") + ")" + h("cd"), b"abyycd", True),   # alternatives
    (h("ab") + "(" + h("x") + "|" + h("yy") + ")" + h("cd"), b"abzcd", False),
    (h("ab") + "(" + h("x") + "|6?)" + h("cd"), b"abmcd", True),      # generic: nibble inside
    (h("ab") + "!(" + h("x") + "|" + h("y") + ")" + h("cd"), b"abzcd", True),    # negated byte
    (h("ab") + "!(" + h("x") + "|" + h("y") + ")" + h("cd"), b"abxcd", False),
    (h("ab") + "!(" + h("xx") + "|" + h("yy") + ")" + h("cd"), b"abxycd", True),  # negated string
    (h("ab") + "!(" + h("xx") + "|" + h("yy") + ")" + h("cd"), b"abyycd", False),
    ("(B)" + h("cash"), b"get cash now", True),                    # boundaries at the ends
    ("(B)" + h("cash"), b"getcash", False),
    (h("cash") + "(B)", b"cash-now", True),
    (h("cash") + "(B)", b"cashnow", False),
    ("(L)" + h("cash") + "(L)", b"x\ncash\r\ny", True),
    ("(L)" + h("cash"), b"x cash", False),
    ("(W)" + h("cash") + "(W)", b"(cash)", True),
    ("!(B)" + h("cash"), b"getcash", True),
])
def test_hex_signature_forms(hexsig, data, hit):
    assert body_hit(hexsig, data) is hit


@pytest.mark.parametrize("offset, data, hit", [
    ("0", b"hello world", True),
    ("1", b"hello world", False),
    ("6", b"xxxxxxhello", True),
    ("3,3", b"xxxxxxhello", True),          # floating: start in 3..6
    ("3,2", b"xxxxxxhello", False),
    ("EOF-5", b"xx hello", True),
    ("EOF-5", b"xx hello!", False),
    ("EOF-6,1", b"xx hello!", True),
    ("EOF-50", b"hello", False),            # before the start of the file
])
def test_offsets(offset, data, hit):
    assert body_hit(h("hello"), data, offset) is hit


@pytest.mark.parametrize("hexsig, reason", [
    ("", "empty"),
    ("zz", "unexpected"),
    (h("a"), "two fixed bytes"),
    ("*" + h("abc"), "start or end"),
    ("??" + h("abc"), "start or end"),
    (h("ab") + "{5-2}" + h("cd"), "empty"),
    (h("ab") + "(B)" + h("cd"), "start or end"),
    (h("ab") + "!(" + h("x") + "|" + h("yy") + ")" + h("cd"), "fixed length"),
    (h("abc") + "{3", "'}' expected"),
])
def test_unsupported_or_malformed_hex_is_refused_with_a_reason(hexsig, reason):
    with pytest.raises(SignatureError, match=reason):
        hex_to_regex(hexsig)


def test_a_long_star_signature_is_matched_part_after_part_in_linear_time():
    sig = parse_ndb(f"T:0:*:{h('AB')}*{h('CD')}*{h('EF')}*{h('GH')}")
    data = b"AB" * 200_000 + b"CD EF"          # no GH: a backtracking regex would take hours
    t = time.perf_counter()
    assert sig.body.find(data) is None
    assert time.perf_counter() - t < 2.0


# ---------------------------------------------------------------- loading

def test_a_bad_line_is_skipped_with_a_logged_reason(tmp_path, caplog):
    text = "\n".join([
        f"Good.One:0:*:{h('good one')}",
        "Bad.Fields:0:*",
        f"Bad.Target:1:*:{h('pe only')}",
        f"Bad.Offset:0:EP+10:{h('entry point')}",
        f"Bad.Hex:0:*:{h('x')}zz",
        f"Good.Two:4:*:{h('good two')}",
    ])
    with caplog.at_level(logging.WARNING, logger="mailsift.reputation"):
        sigs = sigset(tmp_path, **{"s_ndb": text})
    assert [s.name for s in sigs.body] == ["Good.One", "Good.Two"]
    reasons = dict(sigs.skipped)
    assert set(reasons) == {"s.ndb:2", "s.ndb:3", "s.ndb:4", "s.ndb:5"}
    assert "4 fields" not in reasons["s.ndb:2"] and "got 3 fields" in reasons["s.ndb:2"]
    assert "target type 1" in reasons["s.ndb:3"]
    assert "executables" in reasons["s.ndb:4"]
    logged = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "signature_skipped"]
    assert [f["where"] for f in logged] == ["s.ndb:2", "s.ndb:3", "s.ndb:4", "s.ndb:5"]


def test_unsupported_files_are_skipped_and_nothing_readable_disables(tmp_path):
    (tmp_path / "x.cdb").write_text("whatever\n")
    with pytest.raises(Disabled):
        load_signatures([tmp_path])
    (tmp_path / "y.ndb").write_text(f"Y:0:*:{h('yyyy')}\n")
    sigs = load_signatures([tmp_path])
    assert len(sigs) == 1 and sigs.skipped[0][0] == "x.cdb"


def test_comments_are_skipped_and_example_files_load_cleanly():
    sigs = load_signatures(EXAMPLES)
    assert sigs.skipped == []
    assert len(sigs.body) == 5 and len(sigs.hashes) == 1


# ---------------------------------------------------------------- hash signatures

def test_hdb_matches_an_attachment_by_md5_and_size(tmp_path):
    raw = message("see attached", attachment=ATTACHMENT)
    sigs = sigset(tmp_path, a_hdb=f"{hashlib.md5(ATTACHMENT).hexdigest()}:{len(ATTACHMENT)}:Att.MD5\n"
                                  f"{hashlib.md5(ATTACHMENT).hexdigest()}:{len(ATTACHMENT) + 1}:Att.WrongSize\n")
    assert [(m.name, m.where) for m in sigs.matches(raw)] == \
        [("Att.MD5", "md5 hash of part 2 (application/octet-stream 'a.bin')")]
    assert names(sigs, message("see attached", attachment=ATTACHMENT + b"!")) == []


def test_hsb_matches_sha1_and_sha256_and_any_size_needs_flevel_73(tmp_path):
    raw = message("see attached", attachment=ATTACHMENT)
    sigs = sigset(tmp_path, a_hsb="\n".join([
        f"{hashlib.sha1(ATTACHMENT).hexdigest()}:{len(ATTACHMENT)}:Att.SHA1",
        f"{hashlib.sha256(ATTACHMENT).hexdigest()}:*:Att.SHA256:73",
        f"{hashlib.sha256(ATTACHMENT).hexdigest()}:*:Att.NoFlevel",
    ]))
    assert names(sigs, raw) == ["Att.SHA1", "Att.SHA256"]
    assert "min_flevel 73" in sigs.skipped[0][1]


def test_hash_of_the_whole_message(tmp_path):
    raw = message("a spam sent a thousand times, byte for byte")
    sigs = sigset(tmp_path, m_hdb=f"{hashlib.md5(raw).hexdigest()}:{len(raw)}:Whole.Message\n")
    assert [(m.name, m.where) for m in sigs.matches(raw)] == [("Whole.Message", "md5 hash of message")]
    assert names(sigs, b"From someone@x Mon Jan  1 00:00:00 2024\n" + raw) == ["Whole.Message"]  # mbox line


def test_fp_allowlist_and_ign2_drop_matches(tmp_path):
    raw = message("see attached", attachment=ATTACHMENT)
    md5 = hashlib.md5(ATTACHMENT).hexdigest()
    sigs = sigset(tmp_path, a_hdb=f"{md5}:{len(ATTACHMENT)}:Att.MD5\n",
                  b_ndb=f"Att.Body:0:*:{h('any test or admin')}\nOther.Body:0:*:{h('see attached')}\n")
    assert set(names(sigs, raw)) == {"Att.MD5", "Att.Body", "Other.Body"}
    (tmp_path / "c.fp").write_text(f"{md5}:{len(ATTACHMENT)}:Known.Clean\n")
    (tmp_path / "d.ign2").write_text("Other.Body\n")
    assert names(load_signatures([tmp_path]), raw) == []


# ---------------------------------------------------------------- what is scanned

def test_target_types_mail_versus_decoded_parts(tmp_path):
    sigs = sigset(tmp_path, t_ndb="\n".join([
        f"Any.Secret:0:*:{h('SECRET-MARK')}",
        f"Mail.Secret:4:*:{h('SECRET-MARK')}",
        f"Mail.Header:4:*:{h('Subject: hi')}",
    ]))
    assert set(names(sigs, message("SECRET-MARK", b64=True))) == {"Any.Secret", "Mail.Header"}  # decoded part
    assert set(names(sigs, message("SECRET-MARK"))) == {"Any.Secret", "Mail.Secret", "Mail.Header"}


def test_text_parts_are_also_scanned_normalised():
    assert text_normalise(b"ACT \t NOW\r\n\x01Before\xe9 Midnight") == b"act now before midnight"
    sigs = load_signatures(EXAMPLES)
    got = sigs.matches(message("ACT   NOW\n  Before Midnight!"))
    assert [m.name for m in got] == ["Mailsift.Example.Text"]
    assert got[0].where == "part 1 (text/plain) normalised text at offset 0"


def test_html_parts_are_scanned_normalised_with_and_without_tags(tmp_path):
    sigs = sigset(tmp_path, h_ndb="\n".join([
        f"Html.Tags:3:*:{h('<b>bold move</b>')}",
        f"Html.Text:3:*:{h('italic words here')}",
        f"Text.Only:7:*:{h('italic words here')}",
    ]))
    html = "<html><body><p><B>Bold  Move</B> <!-- x --><i>italic</i> words HERE</p></body></html>"
    assert names(sigs, message("plain", html=html)) == ["Html.Tags", "Html.Text"]


def test_example_signatures_match_as_documented():
    sigs = load_signatures(EXAMPLES)
    cases = {
        "Mailsift.Example.Literal": message("xx MAILSIFT-EXAMPLE-SIGNATURE-1 yy", b64=True),
        "Mailsift.Example.Wildcards": message("please wire the money to our bitcoin  wallet"),
        "Mailsift.Example.Alternatives": message("your account has been locked; verify now"),
        "Mailsift.Example.Tail": message("filler\n" * 40 + "campaign ref: CMP-42\n"),
        "Mailsift.Example.Attachment": message("see attached", attachment=ATTACHMENT),
    }
    for name, raw in cases.items():
        assert names(sigs, raw) == [name]
    assert names(sigs, message("campaign ref: CMP-42\n" + "filler\n" * 40)) == []       # not in the tail
    assert names(sigs, message("your account has been closed; verify now")) == []


# ---------------------------------------------------------------- logical signatures

def test_ldb_expression_counts_and_modifiers(tmp_path):
    sigs = sigset(tmp_path, l_ldb="\n".join([
        f"L.And;Engine:81-255,Target:0;0&1;{h('casino')};{h('bonus')}",
        f"L.Count;Target:0;0>2;{h('click')}",
        f"L.Not;Target:0;0&1=0;{h('invoice')};{h('unsubscribe')}",
        f"L.Block;Target:0;(0|1|2)=2,2;{h('red')};{h('green')};{h('blue')}",
        f"L.Nocase;Engine:81-255,Target:0;0;{h('viagra')}::i",
        f"L.Wide;Engine:81-255,Target:0;0;{h('wide')}::w",
        f"L.Fullword;Engine:81-255,Target:0;0;{h('pill')}::f",
    ]))
    assert sigs.skipped == []
    assert "L.And" in names(sigs, b"casino and bonus")
    assert "L.And" not in names(sigs, b"casino only")
    assert "L.Count" in names(sigs, b"click click click") and "L.Count" not in names(sigs, b"click click")
    assert "L.Not" in names(sigs, b"invoice") and "L.Not" not in names(sigs, b"invoice unsubscribe")
    assert "L.Block" in names(sigs, b"red green") and "L.Block" not in names(sigs, b"red red")
    assert "L.Nocase" in names(sigs, b"VIAGRA")
    assert "L.Wide" in names(sigs, "wide".encode("utf-16-le")) and "L.Wide" not in names(sigs, b"wide")
    assert "L.Fullword" in names(sigs, b"a pill.") and "L.Fullword" not in names(sigs, b"pills")


def test_ldb_pcre_runs_after_its_trigger(tmp_path):
    pcre = "0/reset\\x3Bnow\\s+(?<n>\\d+)/i"       # ';' written \x3B, a PCRE named group
    sigs = sigset(tmp_path, p_ldb=f"L.Pcre;Engine:81-255,Target:0;0&1;{h('password')};{pcre}\n")
    assert sigs.skipped == []
    assert names(sigs, b"your password: RESET;NOW 42") == ["L.Pcre"]
    assert names(sigs, b"RESET;NOW 42") == []                        # trigger 0 not met


@pytest.mark.parametrize("line, reason", [
    (f"M;Target:0;0&1;{h('aaaa')};${{6-7}}12$", "macro"),
    (f"M;Target:1;0;{h('aaaa')}", "target type 1"),
    (f"M;Target:0,Container:CL_TYPE_ZIP;0;{h('aaaa')}", "Container"),
    (f"M;Target:0;0&2;{h('aaaa')};{h('bbbb')}", "does not exist"),
    ("M;Target:0;0;0/x/", "earlier subsignatures"),
    (f"M;Target:0;0;{h('aaaa')}::z", "modifier"),
    (f"M;Target:0;0&1;{h('aaaa')};0/[unclosed/", "does not compile"),
])
def test_unsupported_ldb_parts_are_refused_with_a_reason(line, reason):
    with pytest.raises(SignatureError, match=reason):
        parse_ldb(line)


# ---------------------------------------------------------------- the signal

def test_signal_names_the_signature_and_where_it_matched():
    sig = signature_match(message("see attached", attachment=ATTACHMENT), load_signatures(EXAMPLES))
    assert sig.classification == "signature_match" and sig.decides and sig.strength == 1.0
    assert sig.reply_args == {"signature": "Mailsift.Example.Attachment"}
    assert sig.evidence == ("signature Mailsift.Example.Attachment matched md5 hash of part 2 "
                            "(application/octet-stream 'a.bin')",)
    assert classification("signature_match").reply(**sig.reply_args) == \
        "550 5.7.1 Message matched signature Mailsift.Example.Attachment"
    assert signature_match(message("nothing here"), load_signatures(EXAMPLES)) is None


def test_features_alone_are_scanned_as_their_head_and_text():
    raw = message("xx MAILSIFT-EXAMPLE-SIGNATURE-1 yy", b64=True)
    sig = signature_match(extract(raw), load_signatures(EXAMPLES))
    assert sig.reply_args == {"signature": "Mailsift.Example.Literal"}


# ---------------------------------------------------------------- clamd

def _clamd_binary() -> str | None:
    return shutil.which("clamd") or next((p for p in ("/usr/sbin/clamd", "/usr/local/sbin/clamd")
                                          if os.access(p, os.X_OK)), None)


# Signatures only the clamd tests use, next to the example files in clamd's database.
CLAMD_NDB = "\n".join([
    f"Mailsift.Test.Html:3:*:{h('<b>bold move</b>')}",
    f"Mailsift.Test.Nibble:0:*:{h('order #')}3?3?{h('-ZX')}",
])


@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    """A real clamd on a unix socket whose database holds only our signatures."""
    binary = _clamd_binary()
    if binary is None:
        pytest.skip("clamd is not installed (Debian package clamav-daemon)")
    root = tmp_path_factory.mktemp("clamd")
    db = root / "db"
    db.mkdir()
    for p in EXAMPLES:
        shutil.copy(p, db / p.name)
    (db / "mailsift-test.ndb").write_text(CLAMD_NDB + "\n")
    (db / "mailsift-test.hsb").write_text(
        f"{hashlib.sha256(ATTACHMENT * 2).hexdigest()}:{len(ATTACHMENT) * 2}:Mailsift.Test.SHA256\n")
    sock = root / "clamd.sock"
    conf = root / "clamd.conf"
    conf.write_text("\n".join([
        f"LocalSocket {sock}", f"DatabaseDirectory {db}", "Foreground yes",
        f"LogFile {root / 'clamd.log'}", f"PidFile {root / 'clamd.pid'}",
        f"TemporaryDirectory {root}", "Bytecode no", "MaxThreads 2", ""]))
    started = time.monotonic()
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    scanner = ClamdScanner(str(sock), timeout=10)
    try:
        while not scanner.ping():
            if proc.poll() is not None:
                log = (root / "clamd.log").read_text() if (root / "clamd.log").exists() else ""
                pytest.fail(f"clamd exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
                            f"\n{log[-2000:]}")
            if time.monotonic() - started > 60:
                pytest.fail("clamd did not answer PING within 60 s")
            time.sleep(0.05)
        scanner.startup_seconds = time.monotonic() - started
        scanner.db = db
        yield scanner
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _allmatch(scanner: ClamdScanner, tmp_path, raw: bytes) -> set[str]:
    """Every signature clamd finds in ``raw`` (ALLMATCHSCAN of a file; INSTREAM reports one)."""
    p = tmp_path / f"m{time.monotonic_ns()}.eml"
    p.write_bytes(raw)
    reply = scanner._call(b"ALLMATCHSCAN " + str(p).encode())
    return {part.rsplit(": ", 1)[-1].removesuffix(" FOUND").removesuffix(".UNOFFICIAL")
            for part in reply.split("\0") if part.endswith("FOUND")}


def test_clamd_starts_with_only_our_signatures(clamd, record_property):
    record_property("clamd_startup_seconds", round(clamd.startup_seconds, 3))
    assert clamd.version().startswith("ClamAV ")
    assert clamd.check().startswith("ClamAV ")


def test_clamd_instream_found_and_ok(clamd):
    assert clamd.matches(message("nothing to see")) == []
    found = clamd.matches(message("see attached", attachment=ATTACHMENT))
    assert [m.name for m in found] == ["Mailsift.Example.Attachment.UNOFFICIAL"]
    sig = signature_match(message("see attached", attachment=ATTACHMENT), clamd)
    assert sig.decides and sig.reply_args == {"signature": "Mailsift.Example.Attachment"}
    assert "Mailsift.Example.Attachment.UNOFFICIAL" in sig.evidence[0]


PARITY = {
    "clean": message("nothing to see here"),
    "literal-base64": message("xx MAILSIFT-EXAMPLE-SIGNATURE-1 yy", b64=True),
    "wildcards-normalised": message("please wire the money to our bitcoin  wallet today"),
    "alternative-1": message("your account has been suspended. please verify now"),
    "alternative-2": message("your account has been locked, click and verify now"),
    "alternative-none": message("your account has been closed, verify now"),
    "tail": message("filler\n" * 40 + "campaign ref: CMP-42\n"),
    "tail-too-early": message("campaign ref: CMP-42\n" + "filler\n" * 40),
    "text-normalised": message("ACT   NOW\n  Before Midnight!"),
    "html-not-by-magic": message("plain", html="<p>ACT NOW before MIDNIGHT</p>"),
    "html-by-magic": message("plain", html="<html><body><B>Bold   Move</B></body></html>"),
    "nibbles": message("your order #42-ZX shipped"),
    "nibbles-miss": message("your order #4a-ZX shipped"),
    "md5-attachment": message("see attached", attachment=ATTACHMENT),
    "md5-near-miss": message("see attached", attachment=ATTACHMENT + b"!"),
    "sha256-attachment": message("see attached", attachment=ATTACHMENT * 2),
}


@pytest.mark.parametrize("case", sorted(PARITY))
def test_our_matcher_agrees_with_clamd(clamd, tmp_path, case):
    ours = load_signatures([clamd.db])
    raw = PARITY[case]
    assert set(names(ours, raw)) == _allmatch(clamd, tmp_path, raw)


def test_clamd_down_is_an_error_and_disables_at_load(tmp_path):
    scanner = ClamdScanner(str(tmp_path / "no.sock"), timeout=1)
    assert not scanner.ping()
    with pytest.raises(ClamdError):
        scanner.matches(message())
    with pytest.raises(Disabled):
        scanner.check()


def test_a_clamd_that_does_not_answer_times_out(tmp_path):
    server = socket.socket(socket.AF_UNIX)
    path = str(tmp_path / "mute.sock")
    server.bind(path)
    server.listen(1)
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    t = time.monotonic()
    with pytest.raises(ClamdError, match="no answer within 0.3 s"):
        ClamdScanner(path, timeout=0.3).matches(message())
    assert time.monotonic() - t < 2
    server.close()


def test_clamd_addresses():
    assert ClamdScanner("/run/clamav/clamd.ctl")._addr == "/run/clamav/clamd.ctl"
    assert ClamdScanner("unix:/x.sock")._addr == "/x.sock"
    assert ClamdScanner("127.0.0.1:3310")._addr == ("127.0.0.1", 3310)
    assert ClamdScanner("tcp://[::1]:3310")._addr == ("::1", 3310)
    with pytest.raises(ValueError):
        ClamdScanner("clamd")
