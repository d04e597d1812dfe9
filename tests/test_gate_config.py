"""The gate's configuration: every mistake is named by its key, settings layer per
domain and recipient, and equal settings have equal ids."""
from __future__ import annotations

import subprocess
import sys

import pytest

from smtpgate.auth import hash_password, verify_password
from smtpgate.config import DEFAULT_CONFIG, ConfigError, address_matches, load, parse

BASE = {"listeners": {"inbound": {"bind": "127.0.0.1:2525"}}}


def cfg(**tables):
    return parse({**BASE, **tables})


@pytest.mark.parametrize("tables,message", [
    ({"gate": {"hostnmae": "x"}}, "gate.hostnmae: unknown key"),
    ({"gate": {"max_recipients": "100"}}, "gate.max_recipients: must be an integer"),
    ({"gate": {"max_recipients": True}}, "gate.max_recipients: must be an integer"),
    ({"filtering": {"threshold": 1.5}}, "filtering.threshold: must be between 0.0 and 1.0"),
    ({"domains": {"a.test": {"route": "127.0.0.1:25", "filtering": {"threshold": -1}}}},
     'domains."a.test".filtering.threshold: must be between'),
    ({"domains": {"a.test": {"route": "host-without-port:x"}}}, 'domains."a.test".route: must be host:port'),
    ({"domains": {"a.test": {"route": "127.0.0.1:25", "recipients": {"bob@b.test": {}}}}},
     'domains."a.test".recipients."bob@b.test": not an address of a.test'),
    ({"domains": {"nodot": {}}}, 'domains.nodot: not a domain name'),
    ({"domains": {"a.test": {}}}, 'domains."a.test".route: required'),
    ({"listeners": {"submission": {"bind": "127.0.0.1:1"}}}, "outgoing.relay: required when a submission"),
    ({"filtering": {"checks": {"spf": False}}}, "filtering.checks.spf: unknown key"),
    ({"blacklists": {"ips": ["300.1.1.1"]}}, "blacklists.ips: not an IP address or network"),
    ({"dnsbl": {"zones": [{"name": "bl.test", "codes": ["nope"]}]}}, "dnsbl.zones[0].codes: not an IP address"),
    ({"resolver": {"nameservers": ["dns.example"]}}, "resolver.nameservers[0]: not an IP address"),
    ({"outgoing": {"users": {"bob": {"password_hash": "hunter2"}}}},
     "outgoing.users.bob.password_hash: must be a scrypt hash"),
    ({"listeners": {"smtps": {"bind": "127.0.0.1:1"}}}, "listeners.smtps: unknown listener"),
    ({"listeners": {"inbound": {"bind": "127.0.0.1:1", "enabled": False}}},
     "listeners: at least one listener must be enabled"),
    ({"tls": {"cert": "a.pem"}}, "tls: cert and key go together"),
    ({"gate": {"postmaster": "pm@elsewhere.test"}}, "gate.postmaster: must be an address of a filtered domain"),
])
def test_errors_name_the_key(tables, message):
    with pytest.raises(ConfigError) as e:
        parse({**BASE, **tables})
    assert str(e.value).startswith(message), str(e.value)


def test_settings_layer_and_ids_are_stable():
    c = cfg(filtering={"threshold": 0.91, "sender_whitelist": ["a@b.test"]},
            domains={"one.test": {"route": "127.0.0.1:25"},
                     "two.test": {"route": "127.0.0.1:25", "filtering": {"max_line_length": 2000}},
                     "three.test": {"route": "127.0.0.1:25",
                                    "recipients": {"ceo@three.test": {"threshold": 0.5,
                                                                       "checks": {"date_skew": False}}}}})
    one, two, three = (c.domains[d] for d in ("one.test", "two.test", "three.test"))
    assert one.settings.threshold == two.settings.threshold == 0.91
    assert two.settings.max_line_length == 2000 and two.settings.sender_whitelist == ("a@b.test",)
    assert one.settings.id == three.settings.id != two.settings.id      # equal settings, equal id
    ceo = three.settings_for("CEO@three.test")
    assert ceo.threshold == 0.5 and not ceo.enabled("date_skew") and ceo.id != three.settings.id
    assert three.settings_for("other@three.test") is three.settings
    assert cfg(filtering={"threshold": 0.91, "sender_whitelist": ["a@b.test"]}).filtering.id == one.settings.id
    assert three.route == one.route == ("127.0.0.1", 25)


@pytest.mark.parametrize("address,patterns,hit", [
    ("Bob@Example.test", ("bob@example.test",), "bob@example.test"),
    ("bob@example.test", ("@example.test",), "@example.test"),
    ("bob@example.test", ("example.test",), "example.test"),
    ("bob@sub.example.test", ("example.test",), None),
    ("bob@sub.example.test", ("*.example.test",), "*.example.test"),
    ("news-1@x.test", ("news-*@*",), "news-*@*"),
    ("bob@x.test", ("alice@x.test", "*@y.test"), None),
])
def test_address_patterns(address, patterns, hit):
    assert address_matches(address, patterns) == hit


def test_the_shipped_default_config_loads():
    c = load(DEFAULT_CONFIG)
    assert {x.kind for x in c.listeners} == {"inbound", "submission", "submissions"}
    assert c.filtering.threshold == 0.9 and c.dnsbl_min_hits == 2 and c.scorer_spawn


def test_passwords_are_hashed_and_checked():
    h = hash_password("s3cret", log2_n=10)
    assert h.startswith("scrypt$10$") and "s3cret" not in h
    assert verify_password("s3cret", h) and not verify_password("s3cret!", h)
    assert not verify_password("s3cret", "scrypt$garbage")


def test_cli_check_config_and_passwd(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[listeners.inbound]\nbind = "127.0.0.1:2525"\n[gate]\nmax_message_size = -1\n')
    run = [sys.executable, "-m", "classifier.cli", "gate"]
    r = subprocess.run(run + ["check-config", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "gate.max_message_size: must be between" in r.stderr
    r = subprocess.run(run + ["check-config"], capture_output=True, text=True)
    assert r.returncode == 0 and "3 listeners" in r.stdout
    r = subprocess.run(run + ["passwd"], input="pw\n", capture_output=True, text=True)
    assert r.returncode == 0 and verify_password("pw", r.stdout.strip())
