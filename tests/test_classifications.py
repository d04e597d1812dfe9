"""The proto enum is the one copy of the contract table in code: check it against the
contract (vendored in tests/data/classifications.md, a copy of
../shared/spec/classifications.md so that tests need nothing outside the repo)."""
import pathlib
import re

import pytest

from classifier.classifications import BY_NUMBER, CLASSIFICATIONS, get

CONTRACT = pathlib.Path(__file__).parent / "data" / "classifications.md"


def contract_rows():
    rows = {}
    header = None
    for line in CONTRACT.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "id":
            header = cells
            continue
        if header and not set(cells[0]) <= set("-"):
            rows[cells[0]] = dict(zip(header, cells))
    return rows


ROWS = contract_rows()


def test_every_contract_row_exists_once_and_nothing_else():
    assert len(ROWS) == 50
    assert set(CLASSIFICATIONS) == set(ROWS)
    assert len(BY_NUMBER) == len(CLASSIFICATIONS)


@pytest.mark.parametrize("cid", sorted(ROWS))
def test_row_matches_contract(cid):
    row, c = ROWS[cid], get(cid)
    assert c.name == row["name"]
    assert c.phase == row["phase"]
    assert c.action == row["action"]
    reply = row["reply"].removeprefix("bounce to sender: ")
    # the contract writes placeholders in capitals (LISTS); the proto as {lists}
    expected = re.sub(r"\b(LISTS|LIST|SIGNATURE)\b", lambda m: "{" + m.group(1).lower() + "}", reply)
    assert f"{c.code} {c.enhanced} {c.text}" == expected
    if "release" in row:
        assert (c.release or "-") == row["release"]
    if "whitelist" in row:
        assert {"yes": True, "no": False, "-": None}[row["whitelist"]] == c.whitelist


def test_reply_fills_placeholders_from_evidence():
    assert get("urlbl").reply(lists="dbl.example, multi.uribl.example") == \
        "550 5.7.1 Message contains a URL listed on URL blacklists (dbl.example, multi.uribl.example)"
    assert get("signature_match").reply(signature="Sanesecurity.Phishing.1") == \
        "550 5.7.1 Message matched signature Sanesecurity.Phishing.1"
    # never a raw {placeholder} in front of a sending server
    assert "{" not in get("external_pattern").reply()
    assert get("combined_score").reply() == "550 5.7.1 High probability of spam"


def test_learning_on_release():
    assert get("combined_score").learns_on_release
    assert not get("date_skew").learns_on_release
    assert get("greylisted").release is None


def test_unknown_id_is_named():
    with pytest.raises(KeyError, match="no_such_thing"):
        get("no_such_thing")
