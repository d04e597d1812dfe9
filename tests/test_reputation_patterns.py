"""external_pattern: the TOML list format, its targets, and lists that fail to load."""
from __future__ import annotations

import logging
import pathlib
from email.message import EmailMessage

import pytest

from classifier.classifications import get as classification
from classifier.features import extract
from mailgen import simple_message
from classifier.reputation.external_pattern import PatternSet, external_pattern, load_patterns

EXAMPLE = pathlib.Path(__file__).parent / "data" / "patterns.example.toml"


def message(body: str = "hello", *, subject: str = "hi", headers: dict[str, str] | None = None,
            html: str | None = None) -> bytes:
    return simple_message(body, subject=subject, headers=headers, html=html)


def write(tmp_path, name: str, text: str) -> pathlib.Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def one(tmp_path, target: str, regex: str, **extra) -> PatternSet:
    keys = "".join(f"{k} = {v!r}\n" if isinstance(v, str) else f"{k} = {str(v).lower()}\n"
                   for k, v in extra.items())
    p = write(tmp_path, "p.toml", f"[[pattern]]\nlist = \"t\"\nname = \"p\"\ntarget = {target!r}\n"
                                  f"regex = '''{regex}'''\n{keys}")
    ps = load_patterns([p])
    assert not ps.disabled, ps.disabled
    return ps


# ---------------------------------------------------------------- the example file

def test_example_file_loads_and_documents_two_lists():
    ps = load_patterns([EXAMPLE])
    assert ps.disabled == {}
    assert ps.lists() == ["example-layout", "example-phish"]
    assert len(ps.patterns) == 6


def test_example_patterns_match_what_they_describe():
    ps = load_patterns([EXAMPLE])
    sig = external_pattern(extract(message(subject="Invoice No. 8812345 attached")), ps)
    assert sig.decides and sig.reply_args == {"list": "example-layout"}
    assert "pattern subject-invoice-number" in sig.evidence[0]
    sig = external_pattern(extract(message(html='<a href="http://203.0.113.9/secure/login.php">PayPal</a>')), ps)
    assert sig.reply_args == {"list": "example-phish"}
    assert external_pattern(extract(message("Hello, lunch tomorrow?")), ps) is None


# ---------------------------------------------------------------- targets

def test_header_target_reads_each_decoded_value(tmp_path):
    ps = one(tmp_path, "header:x-campaign", r"^spring-\d+$")
    raw = message(headers={"X-Campaign": "=?utf-8?q?spring-42?="})
    sig = external_pattern(extract(raw), ps)
    assert sig.evidence == ("list t pattern p matched header:x-campaign: 'spring-42'",)
    assert external_pattern(extract(message(headers={"X-Other": "spring-42"})), ps) is None


def test_headers_target_sees_all_fields_as_lines(tmp_path):
    ps = one(tmp_path, "headers", r"(?m)^X-Mailer: Bulk", flags="")
    assert external_pattern(extract(message(headers={"X-Mailer": "Bulk Mailer Pro"})), ps).decides


def test_body_target_is_the_decoded_text_with_html_as_text(tmp_path):
    ps = one(tmp_path, "body", r"verify your account", flags="i")
    raw = message("plain part", html="<p>Please <b>VERIFY</b> your account</p>")
    assert external_pattern(extract(raw), ps) is not None


def test_urls_target_is_each_link(tmp_path):
    ps = one(tmp_path, "urls", r"^https?://[^/]*\.zip/")
    assert external_pattern(extract(message("get http://files.example.zip/x now")), ps) is not None


def test_raw_target_reads_the_bytes_as_received(tmp_path):
    ps = one(tmp_path, "raw", r"Content-Transfer-Encoding: base64\n")
    m = EmailMessage()
    m["Subject"] = "x"
    m.set_content("Hello world\n", cte="base64")
    assert external_pattern(m.as_bytes(), ps) is not None       # bytes in: raw is known


def test_raw_target_without_raw_bytes_sees_only_the_first_bytes(tmp_path):
    ps = one(tmp_path, "raw", r"TRAILER-\d+")
    raw = message("filler line\n" * 400 + "TRAILER-42\n")
    assert external_pattern(raw, ps) is not None
    assert external_pattern(extract(raw), ps, raw=raw) is not None
    assert external_pattern(extract(raw), ps) is None           # features.head is 3000 bytes


def test_decides_false_only_feeds_the_score_and_strength_counts_matches(tmp_path):
    p = write(tmp_path, "w.toml", """
list = "weak"
decides = false
[[pattern]]
name = "a"
target = "body"
regex = 'cheap'
[[pattern]]
name = "b"
target = "header:Subject"
regex = 'deal'
""")
    sig = external_pattern(extract(message("cheap stuff", subject="a deal")), load_patterns([p]))
    assert not sig.decides and sig.strength == 2.0 and sig.reply_args == {"list": "weak"}


def test_the_reply_names_the_list_of_the_deciding_match(tmp_path):
    p = write(tmp_path, "two.toml", """
[[pattern]]
list = "weak-list"
name = "w"
target = "body"
regex = 'cheap'
decides = false
[[pattern]]
list = "strong-list"
name = "s"
target = "body"
regex = 'pills'
""")
    sig = external_pattern(extract(message("cheap pills")), load_patterns([p]))
    assert sig.decides and sig.reply_args == {"list": "strong-list"}
    assert sig.evidence[0].startswith("list strong-list pattern s matched body: 'pills'")
    assert classification("external_pattern").reply(**sig.reply_args) == \
        "550 5.7.1 Message matches a known spam pattern (strong-list)"


def test_each_target_is_capped(tmp_path):
    ps = one(tmp_path, "body", r"needle")
    capped = PatternSet(patterns=ps.patterns, max_input=1000)
    feats = extract(message("x" * 5000 + " needle"))
    assert external_pattern(feats, ps) is not None
    assert external_pattern(feats, capped) is None


# ---------------------------------------------------------------- load failures

def test_a_file_that_is_not_toml_disables_its_list_and_not_the_others(tmp_path, caplog):
    bad = write(tmp_path, "broken-list.toml", "[[pattern]\nname = 'x'")
    good = write(tmp_path, "good.toml", "list = 'good'\n[[pattern]]\nname='g'\ntarget='body'\nregex='pills'\n")
    with caplog.at_level(logging.WARNING, logger="mailsift.reputation"):
        ps = load_patterns([bad, good])
    assert list(ps.disabled) == ["broken-list"]
    assert "not valid TOML" in ps.disabled["broken-list"]
    assert ps.lists() == ["good"]
    assert any(r.fields["event"] == "check_disabled" and "broken-list" in r.fields["reason"]
               for r in caplog.records if hasattr(r, "fields"))


def test_a_missing_file_disables_its_list(tmp_path):
    ps = load_patterns([tmp_path / "nowhere.toml"])
    assert "cannot read" in ps.disabled["nowhere"] and ps.patterns == ()


@pytest.mark.parametrize("spec, reason", [
    ("target='body'\nregex='(unclosed'", "does not compile"),
    ("target='body'\nregex='(a+)+b'", "exponential"),
    ("target='body'\nregex='(\\w+\\s?)*!'", "exponential"),
    ("target='body'\nregex='x*'", "empty string"),
    ("target='envelope'\nregex='x'", "target 'envelope'"),
    ("target='body'\nregex='x'\nflags='g'", "flags"),
    ("target='body'\nregex='x'\ncolour='red'", "unknown key"),
    ("target='body'\nregex='x'\ndecides='yes'", "decides"),
    ("regex='x'", "target is required"),
])
def test_a_bad_pattern_disables_its_whole_list(tmp_path, spec, reason):
    p = write(tmp_path, "l.toml", f"""
[[pattern]]
list = "mixed"
name = "fine"
target = "body"
regex = 'pills'
[[pattern]]
list = "mixed"
name = "bad"
{spec}
[[pattern]]
list = "other"
name = "fine2"
target = "body"
regex = 'casino'
""")
    ps = load_patterns([p])
    assert list(ps.disabled) == ["mixed"] and reason in ps.disabled["mixed"]
    assert "l.toml pattern 2" in ps.disabled["mixed"]
    assert ps.lists() == ["other"]


def test_atomic_groups_and_possessive_quantifiers_are_allowed(tmp_path):
    ps = one(tmp_path, "body", r"(?>[a-z]+ )*+done")
    assert external_pattern(extract(message("all is done")), ps) is not None


def test_duplicate_names_in_a_list_disable_it(tmp_path):
    p = write(tmp_path, "d.toml", "list='d'\n" + "[[pattern]]\nname='x'\ntarget='body'\nregex='a1'\n" * 2)
    assert "used twice" in load_patterns([p]).disabled["d"]


def test_a_directory_loads_its_toml_files_in_name_order(tmp_path):
    write(tmp_path, "b.toml", "list='b'\n[[pattern]]\nname='x'\ntarget='body'\nregex='bb'\n")
    write(tmp_path, "a.toml", "list='a'\n[[pattern]]\nname='x'\ntarget='body'\nregex='aa'\n")
    write(tmp_path, "notes.txt", "not a pattern file")
    assert load_patterns([tmp_path]).lists() == ["a", "b"]


def test_a_slow_pattern_is_switched_off_after_one_slow_search(tmp_path, caplog):
    ticks = iter(range(0, 10_000, 1))
    ps = one(tmp_path, "body", r"slow")
    slow = PatternSet(patterns=ps.patterns, slow_ms=100, timer=lambda: next(ticks))  # 1 s per call
    feats = extract(message("slow"))
    with caplog.at_level(logging.WARNING, logger="mailsift.reputation"):
        assert external_pattern(feats, slow) is not None       # this search still counts
    assert external_pattern(feats, slow) is None
    assert any("switched off" in r.fields.get("reason", "") for r in caplog.records if hasattr(r, "fields"))
