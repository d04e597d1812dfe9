"""safebrowsing: Safe Browsing v4 canonicalisation and expressions, the threat list file
(format, prefix and full-hash matching, reload, failure) and the Signal."""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
from email.message import EmailMessage

import pytest

from classifier.classifications import get
from classifier.features import extract
from classifier.reputation import safebrowsing as sbmod
from classifier.reputation.base import Disabled
from classifier.reputation.safebrowsing import (
    Match, SafeBrowsingList, canonicalize, expressions, parse_ipv4, safebrowsing)

EXAMPLE = pathlib.Path(__file__).parent / "data" / "safebrowsing.example.txt"


def sha(expression: str) -> str:
    return hashlib.sha256(expression.encode()).hexdigest()


# -- canonicalisation ---------------------------------------------------------------------

# Every example of https://developers.google.com/safe-browsing/v4/urls-hashing
# ("Canonicalization"), in the document's order. The spec's C string "http://\x01\x80.com/"
# is bytes that are not UTF-8, so it is given as bytes.
SPEC_EXAMPLES = [
    ("http://host/%25%32%35", "http://host/%25"),
    ("http://host/%25%32%35%25%32%35", "http://host/%25%25"),
    ("http://host/%2525252525252525", "http://host/%25"),
    ("http://host/asdf%25%32%35asd", "http://host/asdf%25asd"),
    ("http://host/%%%25%32%35asd%%", "http://host/%25%25%25asd%25%25"),
    ("http://www.google.com/", "http://www.google.com/"),
    ("http://%31%36%38%2e%31%38%38%2e%39%39%2e%32%36/%2E%73%65%63%75%72%65/%77%77%77%2E%65%62%61%79%2E%63%6F%6D/",
     "http://168.188.99.26/.secure/www.ebay.com/"),
    ("http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
     "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/"),
    ("http://host%23.com/%257Ea%2521b%2540c%2523d%2524e%25f%255E00%252611%252A22%252833%252944_55%252B",
     "http://host%23.com/~a!b@c%23d$e%25f^00&11*22(33)44_55+"),
    ("http://3279880203/blah", "http://195.127.0.11/blah"),
    ("http://www.google.com/blah/..", "http://www.google.com/"),
    ("www.google.com/", "http://www.google.com/"),
    ("www.google.com", "http://www.google.com/"),
    ("http://www.evil.com/blah#frag", "http://www.evil.com/blah"),
    ("http://www.GOOgle.com/", "http://www.google.com/"),
    ("http://www.google.com.../", "http://www.google.com/"),
    ("http://www.google.com/foo\tbar\rbaz\n2", "http://www.google.com/foobarbaz2"),
    ("http://www.google.com/q?", "http://www.google.com/q?"),
    ("http://www.google.com/q?r?", "http://www.google.com/q?r?"),
    ("http://www.google.com/q?r?s", "http://www.google.com/q?r?s"),
    ("http://evil.com/foo#bar#baz", "http://evil.com/foo"),
    ("http://evil.com/foo;", "http://evil.com/foo;"),
    ("http://evil.com/foo?bar;", "http://evil.com/foo?bar;"),
    (b"http://\x01\x80.com/", "http://%01%80.com/"),
    ("http://notrailingslash.com", "http://notrailingslash.com/"),
    ("http://www.gotaport.com:1234/", "http://www.gotaport.com/"),
    ("  http://www.google.com/  ", "http://www.google.com/"),
    ("http:// leadingspace.com/", "http://%20leadingspace.com/"),
    ("http://%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("https://www.securesite.com/", "https://www.securesite.com/"),
    ("http://host.com/ab%23cd", "http://host.com/ab%23cd"),
    ("http://host.com//twoslashes?more//slashes", "http://host.com/twoslashes?more//slashes"),
]


@pytest.mark.parametrize("url, canonical", SPEC_EXAMPLES, ids=range(len(SPEC_EXAMPLES)))
def test_canonicalize_spec_examples(url, canonical):
    assert canonicalize(url) == canonical


@pytest.mark.parametrize("url, canonical", [
    ("http://www.\u00fcmlat.com/", "http://www.xn--mlat-zra.com/"),          # IDN to punycode
    ("http%3A%2F%2Fwackyurl.com:80/", "http://wackyurl.com/"),               # escaped scheme
    ("http://user:secret@Host.TEST:8080/a/./b/../c", "http://host.test/a/c"),
    ("http://[2001:0470:1:18::0114]:80/a", "http://[2001:470:1:18::114]/a"),
    ("http://a.test/x/y/..", "http://a.test/x/"),                            # RFC 3986 dot segments
    ("http://a.test/%0a%09", "http://a.test/%0A%09"),                        # escapes kept, upper case
    ("HTTP://A.TEST/Path", "http://a.test/Path"),                            # path case kept
    ("www.a.test:80/x", "http://www.a.test/x"),                              # a port, not a scheme
])
def test_canonicalize_more(url, canonical):
    assert canonicalize(url) == canonical


@pytest.mark.parametrize("url", ["mailto:someone@example.com", "cid:part1@x", "/relative/path",
                                 "#top", "", "http://", "http:///path"])
def test_not_web_urls_have_no_canonical_form(url):
    assert canonicalize(url) is None
    assert expressions(url) == []


@pytest.mark.parametrize("host, ip", [
    ("3279880203", "195.127.0.11"),
    ("12.0x12.01234", "12.18.2.156"),
    ("012.034.01.055", "10.28.1.45"),
    ("0x12.0x43.0x44.0x01", "18.67.68.1"),
    ("167838211", "10.1.2.3"),
    ("4294967295", "255.255.255.255"),
    ("1.2.3.4", "1.2.3.4"),
    ("123.123.0.0.1", None),          # five parts
    ("1.2.3.00x0", None),
    ("4294967296", None),             # more than 32 bits
    ("276.2.3", None),                # inet_aton: out of range is a name (the Go client wraps)
    ("08.1.1.1", None),               # not octal
    ("example.test", None),
])
def test_ipv4_spellings(host, ip):
    assert parse_ipv4(host) == ip


# -- expressions ------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    # the examples of the spec's "Suffix/Prefix Expressions"
    ("http://a.b.c/1/2.html?param=1",
     {"a.b.c/1/2.html?param=1", "a.b.c/1/2.html", "a.b.c/", "a.b.c/1/",
      "b.c/1/2.html?param=1", "b.c/1/2.html", "b.c/", "b.c/1/"}),
    ("http://a.b.c.d.e.f.g/1.html",
     {"a.b.c.d.e.f.g/1.html", "a.b.c.d.e.f.g/", "c.d.e.f.g/1.html", "c.d.e.f.g/",
      "d.e.f.g/1.html", "d.e.f.g/", "e.f.g/1.html", "e.f.g/", "f.g/1.html", "f.g/"}),
    ("http://1.2.3.4/1/", {"1.2.3.4/1/", "1.2.3.4/"}),
    ("http://a.b/?", {"a.b/"}),
    ("http://[2001:470:1:18::114]/a/b",
     {"[2001:470:1:18::114]/a/b", "[2001:470:1:18::114]/a/", "[2001:470:1:18::114]/"}),
])
def test_expressions_spec_examples(url, expected):
    got = expressions(url)
    assert set(got) == expected and len(got) == len(expected)


def test_expressions_are_at_most_five_hosts_by_six_paths():
    got = expressions("http://a.b.c.d.e.f.g/1/2/3/4/5.html?x=1")
    assert len(got) == 30
    hosts = {e.split("/", 1)[0] for e in got}
    assert hosts == {"a.b.c.d.e.f.g", "c.d.e.f.g", "d.e.f.g", "e.f.g", "f.g"}
    paths = {"/" + e.split("/", 1)[1] for e in got if e.startswith("f.g/")}
    assert paths == {"/1/2/3/4/5.html?x=1", "/1/2/3/4/5.html", "/", "/1/", "/1/2/", "/1/2/3/"}


# -- the list file ------------------------------------------------------------------------

def test_example_file_loads_and_matches():
    sb = SafeBrowsingList.load(EXAMPLE)
    assert len(sb) == 5
    got = sb.check(["http://www.malware.test/anything?x=1", "http://phish.test/login/form.php",
                    "http://evil.test/download/setup.exe", "https://PHISH-KIT.test/a/b",
                    "http://innocent.test/"])
    assert [(m.url, m.expression, m.threat_type, m.full_hash) for m in got] == [
        ("http://www.malware.test/anything?x=1", "malware.test/", "MALWARE", True),
        ("http://phish.test/login/form.php", "phish.test/login/", "SOCIAL_ENGINEERING", False),
        ("http://evil.test/download/setup.exe", "evil.test/download/", "UNWANTED_SOFTWARE", True),
        ("https://PHISH-KIT.test/a/b", "phish-kit.test/", "SOCIAL_ENGINEERING", True),
    ]
    assert got[1].entry == "022f5711"


def write(path: pathlib.Path, text: str, mtime: int | None = None) -> None:
    path.write_text(text)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


def prefix_colliding_with(full: str, length: int, *, avoid: str) -> str:
    """A full hash that shares ``full``'s first ``length`` bytes but is not ``avoid``."""
    assert full == avoid
    return full[: 2 * length] + ("0" if full[2 * length] != "0" else "1") + full[2 * length + 1:]


def test_prefix_confirmed_by_full_hashes_decides_only_through_them(tmp_path):
    target = sha("confirmed.test/")
    other_full = prefix_colliding_with(target, 4, avoid=target)
    lst = tmp_path / "list.txt"
    # The 4-byte prefix of target is listed, and so is a different full hash under it:
    # the prefix is then "confirmed" only for that full hash, not for target.
    write(lst, f"{target[:8]} MALWARE\n{other_full} MALWARE\n")
    sb = SafeBrowsingList.load(lst)
    assert sb.check(["http://confirmed.test/"]) == []
    write(lst, f"{target[:8]} MALWARE\n{other_full} MALWARE\n{target} MALWARE\n", mtime=2_000_000_000 * 10**9)
    assert [m.entry for m in sb.check(["http://confirmed.test/"])] == [target]


def test_one_hash_with_two_threat_types(tmp_path):
    lst = tmp_path / "list.txt"
    write(lst, "expr:both.test/ MALWARE\nexpr:both.test/ social_engineering\nexpr:both.test MALWARE\n")
    sb = SafeBrowsingList.load(lst)
    assert len(sb) == 1
    assert [m.threat_type for m in sb.check(["http://both.test/x"])] == ["MALWARE", "SOCIAL_ENGINEERING"]


def test_reload_when_the_file_changes_and_keep_the_last_good_list(tmp_path, caplog, monkeypatch):
    lst = tmp_path / "list.txt"
    write(lst, "# empty for now\n", mtime=1_000_000_000 * 10**9)
    sb = SafeBrowsingList.load(lst)
    assert len(sb) == 0 and sb.check(["http://new.test/"]) == []
    write(lst, "expr:new.test/ MALWARE\n", mtime=1_000_000_100 * 10**9)
    assert [m.expression for m in sb.check(["http://new.test/"])] == ["new.test/"]
    assert sb.refresh() is False                  # unchanged: not read again
    write(lst, "not a hash MALWARE\n", mtime=1_000_000_200 * 10**9)
    reads = []
    monkeypatch.setattr(sbmod, "_read", lambda path, real=sbmod._read: reads.append(path) or real(path))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert [m.expression for m in sb.check(["http://new.test/"])] == ["new.test/"]
    assert len(reads) == 1                        # the bad version is read once, not per message
    failures = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "list_reload_failed"]
    assert len(failures) == 1 and "line 1" in failures[0].fields["reason"]
    os.remove(lst)
    assert [m.expression for m in sb.check(["http://new.test/"])] == ["new.test/"]


@pytest.mark.parametrize("content, reason", [
    ("abc MALWARE\n", "8 to 64 hex digits"),                       # too short
    ("0123456789 MALWARE\n1234567 MALWARE\n", "line 2"),           # odd length
    ("00" * 33 + " MALWARE\n", "8 to 64 hex digits"),              # longer than 32 bytes
    ("deadbeef\n", "expected"),                                    # no threat type
    ("deadbeef MAL-WARE\n", "bad threat type"),
    ("expr:/no-host MALWARE\n", "bad expression"),
])
def test_bad_file_disables_the_check(tmp_path, caplog, content, reason):
    lst = tmp_path / "list.txt"
    write(lst, content)
    with caplog.at_level(logging.WARNING), pytest.raises(Disabled, match=reason):
        SafeBrowsingList.load(lst)
    logged = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "check_disabled"]
    assert logged and logged[0].fields["check"] == "safebrowsing"
    assert reason in logged[0].fields["reason"]


def test_missing_or_undecodable_file_disables_the_check(tmp_path):
    with pytest.raises(Disabled, match="No such file"):
        SafeBrowsingList.load(tmp_path / "absent.txt")
    lst = tmp_path / "latin1.txt"
    lst.write_bytes(b"expr:caf\xe9.test/ MALWARE\n")
    with pytest.raises(Disabled, match="utf-8"):
        SafeBrowsingList.load(lst)


# -- the Signal ---------------------------------------------------------------------------

def message(html: str, text: str = "Hello") -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@example.org"
    msg["To"] = "rcpt@example.com"
    msg["Subject"] = "links"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return bytes(msg)


def test_signal_names_url_and_threat(tmp_path):
    copy = tmp_path / "list.txt"
    shutil.copy(EXAMPLE, copy)
    sb = SafeBrowsingList.load(copy)
    feats = extract(message('<p><a href="http://cdn.malware.test/x.js">update</a></p>',
                            text="see also www.example.org/about"))
    signal = safebrowsing(feats, sb)
    assert (signal.classification, signal.decides, signal.strength) == ("safebrowsing", True, 1.0)
    assert get(signal.classification).reply() == "550 5.7.1 Message contains a URL listed by safebrowsing"
    assert signal.evidence == (
        "url http://cdn.malware.test/x.js matches malware.test/ (MALWARE, full hash)",)


def test_clean_message_and_disabled_check_give_no_signal():
    sb = SafeBrowsingList.load(EXAMPLE)
    feats = extract(message('<a href="https://www.example.org/">home</a>'))
    assert safebrowsing(feats, sb) is None
    assert safebrowsing(feats, None) is None


def test_match_is_plain_data():
    m = Match("http://x.test/", "x.test/", "MALWARE", "ab" * 32)
    assert m.full_hash and not Match("u", "e", "T", "abcdef01").full_hash
