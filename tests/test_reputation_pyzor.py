"""The ``pyzor`` check: our digest against the reference package's, the digest stores
(our SQLite one and a real pyzord on loopback), and SpamAssassin's hit rules.

Needs the ``pyzor`` package (pip; the reference digest and client) and, for the
pyzord tests, a pyzord whose Python has ``dbm.gnu`` (Debian: ``pyzor`` and
``python3-gdbm``); without them these tests skip, which fails in CI.
"""
from __future__ import annotations

import base64
import email
import math
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from classifier.reputation.base import Signal
from classifier.reputation.pyzor import (EMPTY_DIGEST, DigestCounts, DigestStoreError,
                                         DigestStoreTimeout, PyzordStore, SqliteDigestStore,
                                         pyzor, pyzor_digest)

reference = pytest.importorskip("pyzor.digest", reason="pip install pyzor (the reference digest)")


def reference_digest(raw: bytes) -> str | None:
    """What ``pyzor digest`` prints, with its no-digest cases as None (as ours)."""
    try:
        value = reference.DataDigester(email.message_from_bytes(raw)).value
    except Exception:
        return None
    return None if value == EMPTY_DIGEST else value


# ---------------------------------------------------------------- tricky messages

_RNG = random.Random(4)
LINES = [f"Line number {i} of a longer message with words in it, and more words." for i in range(40)]
LONG_BODY = "\n".join(LINES) + "\n"


def _plain(body: str, charset: str = "utf-8", cte: str | None = None) -> bytes:
    m = MIMEText(body, "plain", charset)
    if cte == "base64":
        del m["Content-Transfer-Encoding"]
        m.set_payload(base64.encodebytes(body.encode(charset)).decode())
        m["Content-Transfer-Encoding"] = "base64"
    m["Subject"] = "test"
    return m.as_bytes()


def _raw(headers: str, body: bytes) -> bytes:
    return headers.replace("\n", "\r\n").encode() + b"\r\n" + body


def _tricky() -> dict[str, bytes]:
    msgs = {}
    msgs["short"] = b"Subject: hi\n\nhello there my friend, how are you today?\n"
    msgs["four lines"] = b"Subject: x\n\n" + b"\n".join(f"this is line {i} here".encode() for i in range(4))
    msgs["long lines selection"] = b"Subject: x\n\n" + LONG_BODY.encode()
    msgs["seven lines"] = b"Subject: x\n\n" + "\n".join(LINES[:7]).encode()
    msgs["short lines dropped"] = b"Subject: x\n\nok\nyes\nno way\n" + LONG_BODY.encode()
    msgs["urls emails long tokens"] = (
        b"Subject: x\n\nVisit http://example.com/a?b=c now, mail me at bob@example.com today\n"
        b"mailto:alice@example.org or HTTPS://EXAMPLE.NET/X please\n"
        b"an identifier 0123456789abcdef in the middle of the line\n" + LONG_BODY.encode())
    msgs["crlf"] = b"Subject: x\r\n\r\n" + LONG_BODY.replace("\n", "\r\n").encode()
    msgs["nul and odd line breaks"] = (b"Subject: x\n\nnul\x00 inside this line here\n"
                                       b"form\x0cfeed splits this line too ok\nvertical\x0btab line split\n"
                                       + LONG_BODY.encode())
    msgs["base64 text"] = _plain(LONG_BODY, "utf-8", "base64")
    msgs["quoted-printable latin-1"] = _plain(
        "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, s'il vous pla\u00eet!\n" * 12, "iso-8859-1")
    msgs["koi8-r"] = _plain("\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! "
                            "\u042d\u0442\u043e \u0442\u0435\u0441\u0442\u043e\u0432\u043e\u0435 "
                            "\u043f\u0438\u0441\u044c\u043c\u043e.\n" * 9, "koi8-r")
    msgs["shift_jis"] = _plain("\u3053\u3093\u306b\u3061\u306f\u4e16\u754c\u3001\u3053\u308c\u306f"
                               "\u30c6\u30b9\u30c8\u3067\u3059\u3002\n" * 6, "shift_jis")
    msgs["utf-16"] = _raw("Subject: x\nContent-Type: text/plain; charset=utf-16",
                          ("Unicode sixteen text here and there\n" * 6).encode("utf-16"))
    msgs["unknown charset"] = _raw("Subject: x\nContent-Type: text/plain; charset=x-no-such-charset",
                                   "na\u00efve bytes in an unknown charset\n".encode("utf-8") * 6)
    msgs["8bit without charset"] = _raw(
        "Subject: x\nContent-Type: text/plain",
        "r\u00e9sum\u00e9 of the candidate attached here\n".encode("utf-8") * 6)
    msgs["charset named quoted-printable (strict)"] = _raw(
        "Subject: x\nContent-Type: text/plain; charset=quoted-printable",
        b"plain ascii that is fine to decode\n" * 6)
    msgs["charset rfc2231"] = _raw(
        "Subject: x\nContent-Type: text/plain; charset*=us-ascii''utf-8",
        "encoded charset parameter works \u2713\n".encode("utf-8") * 6)
    msgs["unicode line separators"] = _plain("first part\u2028second part of it\u2029third part here\n" * 5)
    html = ("<html><head><style>p {color: red}</style><script>var x = 'hidden text';</script></head>"
            "<body><p>Hello <b>friend</b>, this &amp; that &eacute;t&eacute;</p>\n"
            + "".join(f"<div>Offer number {i} is valid today only</div>\n" for i in range(12))
            + "<br/><script/>after the self-closed script tag text\n</body></html>")
    msgs["html only"] = _raw("Subject: x\nContent-Type: text/html; charset=utf-8", html.encode())
    alt = MIMEMultipart("alternative")
    alt.attach(MIMEText(LONG_BODY, "plain"))
    alt.attach(MIMEText(html, "html"))
    msgs["multipart alternative"] = alt.as_bytes()
    msgs["html unfinished charref at end"] = _raw(
        "Subject: x\nContent-Type: text/html",
        b"<p>" + b"<br>".join(b"a line of html text number %d" % i for i in range(8)) + b"<p>Ask AT&T now")
    msgs["html unclosed tag at end"] = _raw(
        "Subject: x\nContent-Type: text/html",
        b"<p>some paragraph text that counts</p>\n<p>another paragraph text</p><a href='x")
    # html.parser raises on this marked section: the reference dies, ours gives None
    msgs["html the reference cannot parse"] = _raw(
        "Subject: x\nContent-Type: text/html", b"<p>text before it all</p><![foo[ bar ]]> and after it\n")
    mixed = MIMEMultipart("mixed")
    mixed.attach(MIMEText("See the attachment, it has the details you wanted.\n" * 3))
    mixed.attach(MIMEApplication(_RNG.randbytes(600), "octet-stream"))
    att = MIMEApplication(b"short\nlines in an\nattachment are kept as they are here\n", "x-custom")
    att.replace_header("Content-Transfer-Encoding", "7bit")
    att.set_payload("short lines\nin an attachment are\nkept as they are here\n")
    mixed.attach(att)
    msgs["attachments (non-text parts pass through)"] = mixed.as_bytes()
    no_text = MIMEMultipart("mixed")
    # 57 * 35 bytes: 35 base64 lines of 76 characters, each one "long token"
    no_text.attach(MIMEApplication(_RNG.randbytes(57 * 35), "pdf"))
    msgs["no text part"] = no_text.as_bytes()
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("forwarded message body line one\nforwarded message body line two\n")
    outer = EmailMessage()
    outer["Subject"] = "fwd"
    outer.set_content("Forwarding this to you, please read it carefully.\n")
    outer.add_attachment(inner)
    msgs["message/rfc822 attached"] = outer.as_bytes()
    msgs["broken boundary"] = _raw(
        "Subject: x\nContent-Type: multipart/mixed; boundary=\"nope\"",
        b"--other\nContent-Type: text/plain\n\nthe text of a part whose boundary is wrong\n--other--\n")
    msgs["bad base64"] = _raw("Subject: x\nContent-Type: text/plain\nContent-Transfer-Encoding: base64",
                              b"!!!not base64 at all, is it now?!!!\n" * 5)
    msgs["headers only"] = b"Subject: nothing\nFrom: a@b.example\n"
    msgs["empty"] = b""
    msgs["not a message"] = _RNG.randbytes(3000)
    return msgs


TRICKY = _tricky()


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_digest_equals_the_reference(name):
    raw = TRICKY[name]
    assert pyzor_digest(raw) == reference_digest(raw)


def test_tricky_messages_mostly_have_digests():
    """The comparison above means something: most of these messages have a digest."""
    have = {n for n, raw in TRICKY.items() if pyzor_digest(raw)}
    assert len(have) >= len(TRICKY) - 6
    # CJK text has no blanks: every line is one "long token" the reference removes
    for n in ("headers only", "empty", "no text part", "shift_jis"):
        assert n not in have


def test_no_digest_where_the_reference_has_none():
    # nothing to digest: the reference answers the SHA-1 of nothing
    assert reference.DataDigester(email.message_from_bytes(TRICKY["empty"])).value == EMPTY_DIGEST
    assert pyzor_digest(TRICKY["empty"]) is None
    # the reference dies on this HTML (it names html.parser.HTMLParseError, gone in Python 3)
    with pytest.raises(Exception):
        reference.DataDigester(email.message_from_bytes(TRICKY["html the reference cannot parse"]))
    assert pyzor_digest(TRICKY["html the reference cannot parse"]) is None


_TEXT = st.text(alphabet=st.sampled_from(list("abcXYZ019 \t\n\r@:/.<>&;=-_\x00\x0c\u00e9\u2028\u4e16")),
                max_size=400)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_TEXT,
       ctype=st.sampled_from(["text/plain", "text/html", "application/octet-stream", "text/enriched"]),
       charset=st.sampled_from(["", "utf-8", "latin-1", "ascii", "bogus", "quoted-printable"]),
       cte=st.sampled_from(["", "8bit", "base64", "quoted-printable"]))
def test_digest_equals_the_reference_on_generated_bodies(body, ctype, charset, cte):
    head = f"Subject: x\nContent-Type: {ctype}" + (f"; charset={charset}" if charset else "")
    if cte:
        head += f"\nContent-Transfer-Encoding: {cte}"
    data = body.encode("utf-8")
    if cte == "base64":
        data = base64.encodebytes(data)
    raw = head.encode() + b"\n\n" + data
    assert pyzor_digest(raw) == reference_digest(raw)


# ---------------------------------------------------------------- SqliteDigestStore

D1 = "1" * 40
D2 = "2" * 40


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_sqlite_store_counts_reports_and_whitelistings(tmp_path):
    store = SqliteDigestStore(tmp_path / "d.sqlite")
    assert store.check(D1) == DigestCounts(0, 0)
    store.report(D1)
    store.report(D1)
    store.whitelist(D1)
    store.report(D2)
    assert store.check(D1) == DigestCounts(reports=2, whitelisted=1)
    assert store.check(D2) == DigestCounts(1, 0)
    info = store.info(D1)
    assert info["reports"] == 2 and info["first_seen"] <= info["last_seen"]
    store.close()
    again = SqliteDigestStore(tmp_path / "d.sqlite")   # survives a restart
    assert again.check(D1) == DigestCounts(2, 1)


def test_sqlite_store_expires_entries_after_max_age():
    clock = Clock()
    store = SqliteDigestStore(":memory:", max_age_days=30, clock=clock)
    store.report(D1)
    clock.t += 20 * 86400
    store.report(D2)
    clock.t += 15 * 86400            # D1 last seen 35 days ago, D2 15
    assert store.check(D1) == DigestCounts(0, 0)
    assert store.check(D2) == DigestCounts(1, 0)
    assert len(store) == 1
    assert store.purge() == 1
    store.report(D1)                 # an expired digest starts again from zero
    assert store.check(D1) == DigestCounts(1, 0)
    clock.t += 10 * 86400            # D2 is 25 days old: a new report keeps it alive
    store.report(D2)
    clock.t += 20 * 86400
    assert store.check(D2) == DigestCounts(2, 0)


def test_stores_refuse_what_is_not_a_digest():
    with pytest.raises(ValueError):
        SqliteDigestStore(":memory:").report("not a digest")


# ---------------------------------------------------------------- the check's rules

class FakeStore:
    """Answers only for the digests it was given; any other call fails the test."""

    def __init__(self, counts: dict[str, DigestCounts]):
        self.counts = counts

    def check(self, digest):
        assert digest in self.counts, f"unexpected check of {digest}"
        return self.counts[digest]

    def report(self, digest):
        raise AssertionError("the check must not report")

    whitelist = report


MSG = TRICKY["long lines selection"]
DIG = pyzor_digest(MSG)


@pytest.mark.parametrize("reports, wl, decides", [
    (5, 0, True),        # pyzor_count_min 5
    (50, 9, True),       # fewer than pyzor_welcomelist_min 10: whitelistings ignored
    (60, 10, True),      # 10 < 60 * 0.2
    (4, 0, False),       # reported, below the hit criteria: evidence only
    (1, 0, False),
])
def test_pyzor_signal(reports, wl, decides):
    sig = pyzor(MSG, FakeStore({DIG: DigestCounts(reports, wl)}))
    assert isinstance(sig, Signal) and sig.classification == "pyzor"
    assert sig.decides is decides
    assert sig.strength == pytest.approx(math.log1p(reports))
    assert sig.evidence == (f"digest {DIG} reported {reports} times, whitelisted {wl} times",)


@pytest.mark.parametrize("reports, wl", [
    (0, 0),                  # never reported
    (50, 10),                # whitelisted: 10 >= 10 and 10 >= 50 * 0.2
    (10, 10),
    (1_000_000, 0),          # absurd counts: the digest of a boilerplate
    (100, 10_000),
])
def test_pyzor_no_signal(reports, wl):
    assert pyzor(MSG, FakeStore({DIG: DigestCounts(reports, wl)})) is None


def test_pyzor_thresholds_are_parameters():
    store = FakeStore({DIG: DigestCounts(2, 0)})
    assert pyzor(MSG, store, min_reports=2).decides
    assert pyzor(MSG, FakeStore({DIG: DigestCounts(5, 1)}), whitelist_min=1, whitelist_factor=0.2) is None


def test_pyzor_without_digest_asks_no_store():
    assert pyzor(TRICKY["headers only"], FakeStore({})) is None
    assert pyzor(b"Subject: x\n\n" + b"big enough line\n" * 10, FakeStore({}), max_bytes=100) is None


def test_pyzor_store_failure_is_raised_for_the_caller():
    class Down:
        def check(self, digest):
            raise DigestStoreTimeout("pyzord 127.0.0.1:1: no answer to check within 1 s")

    with pytest.raises(DigestStoreError, match="no answer"):
        pyzor(MSG, Down())


def test_sqlite_store_through_the_check():
    store = SqliteDigestStore(":memory:")
    assert pyzor(MSG, store) is None
    for _ in range(5):
        store.report(DIG)
    assert pyzor(MSG, store).decides
    for _ in range(10):          # released ten times: whitelisted
        store.whitelist(DIG)
    assert pyzor(MSG, store) is None


# ---------------------------------------------------------------- PyzordStore

def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pyzord_with_gdbm() -> list[str] | None:
    """A pyzord command whose interpreter has pyzor and dbm.gnu, or None."""
    for path in dict.fromkeys(p for p in (shutil.which("pyzord"), "/usr/bin/pyzord") if p):
        try:
            with open(path, "rb") as f:
                first = f.readline().decode(errors="replace").strip()
        except OSError:
            continue
        interp = first[2:].split() if first.startswith("#!") else []
        if len(interp) == 2 and os.path.basename(interp[0]) == "env":
            interp = [shutil.which(interp[1]) or interp[1]]
        if len(interp) != 1 or not os.path.basename(interp[0]).startswith("python"):
            continue        # e.g. pyenv's shell shim: its Python is found via the other path
        try:
            ok = subprocess.run([*interp, "-c", "import pyzor, dbm.gnu"], capture_output=True,
                                timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return [*interp, path]
    return None


USER, KEY = "mailsift", "b2c1f4a3d5e6"


@pytest.fixture(scope="module")
def pyzord(tmp_path_factory):
    """A real pyzord (gdbm engine) on a loopback port, with an account allowed to
    whitelist; yields its port."""
    cmd = _pyzord_with_gdbm()
    if cmd is None:
        pytest.skip("no pyzord with a gdbm engine (Debian: apt-get install pyzor python3-gdbm)")
    home = tmp_path_factory.mktemp("pyzord")
    (home / "pyzord.passwd").write_text(f"{USER} : {KEY}\n")
    (home / "pyzord.access").write_text(f"check report ping pong info whitelist : {USER} : allow\n"
                                        "check report ping pong info : anonymous : allow\n")
    port = _free_udp_port()
    log = open(home / "log", "wb")
    proc = subprocess.Popen([*cmd, "--homedir", str(home), "-a", "127.0.0.1", "-p", str(port),
                             "-e", "gdbm", "--dsn", str(home / "digests.db")],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    probe = PyzordStore("127.0.0.1", port, timeout=0.2)
    deadline = time.monotonic() + 15
    try:
        while True:
            try:
                probe.check("0" * 40)
                break
            except DigestStoreError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"pyzord did not start: {(home / 'log').read_text(errors='replace')}")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_pyzord_report_and_whitelist_counts(pyzord):
    digest = pyzor_digest(TRICKY["multipart alternative"])
    anon = PyzordStore("127.0.0.1", pyzord, timeout=2)
    account = PyzordStore("127.0.0.1", pyzord, timeout=2, user=USER, key=KEY)
    assert anon.check(digest) == DigestCounts(0, 0)
    anon.report(digest)
    anon.report(digest)
    assert anon.check(digest) == DigestCounts(2, 0)
    account.whitelist(digest)            # a signed request: pyzord verified our signature
    assert account.check(digest) == DigestCounts(2, 1)
    assert anon.check(digest) == DigestCounts(2, 1)
    # the reference client reads the same counts: we spoke the same protocol
    import pyzor.client
    reply = pyzor.client.Client(timeout=2).check(digest, ("127.0.0.1", pyzord))
    assert (int(reply["Count"]), int(reply["WL-Count"])) == (2, 1)


def test_pyzord_through_the_check(pyzord):
    raw = TRICKY["koi8-r"]
    store = PyzordStore("127.0.0.1", pyzord, timeout=2)
    assert pyzor(raw, store) is None
    for _ in range(5):
        store.report(pyzor_digest(raw))
    sig = pyzor(raw, store)
    assert sig.decides and "reported 5 times" in sig.evidence[0]


def test_pyzord_refusals_are_errors(pyzord):
    digest = "3" * 40
    with pytest.raises(DigestStoreError, match="403"):       # anonymous may not whitelist
        PyzordStore("127.0.0.1", pyzord, timeout=2).whitelist(digest)
    with pytest.raises(DigestStoreError, match="401"):       # a wrong key: bad signature
        PyzordStore("127.0.0.1", pyzord, timeout=2, user=USER, key="00ff").check(digest)


def test_repr_hides_the_key():
    assert KEY not in repr(PyzordStore("127.0.0.1", 24441, user=USER, key=KEY))


class SilentServer:
    """A UDP socket on loopback that reads requests and answers with ``reply(request)``
    (None: never answers)."""

    def __init__(self, reply=lambda request: None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        self._stop = threading.Event()
        self._reply = reply
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(8192)
            except socket.timeout:
                continue
            self.requests.append(data)
            answer = self._reply(data)
            if answer is not None:
                self.sock.sendto(answer, addr)

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_pyzord_timeout_never_hangs():
    server = SilentServer()
    try:
        store = PyzordStore("127.0.0.1", server.port, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(DigestStoreTimeout, match="no answer to check within 0.3 s"):
            store.check("4" * 40)
        assert time.monotonic() - start < 2
        assert server.requests and server.requests[0].startswith(b"Op: check\n")
    finally:
        server.close()


def test_a_reply_to_another_request_is_not_taken():
    def wrong_thread(request: bytes) -> bytes:
        return b"Code: 200\nDiag: OK\nPV: 2.1\nThread: 1\nCount: 99\nWL-Count: 0\n\n"

    server = SilentServer(wrong_thread)
    try:
        with pytest.raises(DigestStoreTimeout):
            PyzordStore("127.0.0.1", server.port, timeout=0.3).check("5" * 40)
    finally:
        server.close()


def test_nobody_listening_is_an_error():
    port = _free_udp_port()
    with pytest.raises(DigestStoreError):
        PyzordStore("127.0.0.1", port, timeout=0.5).check("6" * 40)
