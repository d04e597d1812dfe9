"""The standard DNS data of the gate's tests, served by ``tests/dnsserver.py`` (fixture
``dns_server`` in ``tests/gate_fixtures.py``).

Everything lives under ``.test`` (RFC 2606) and ``in-addr.arpa``. Client addresses are
in 127.0.0.0/8 because the SMTP tests connect *from* them; hosts that are only DNS data
(MX targets, forged PTR targets) use 192.0.2.0/24 and 2001:db8::/32 (RFC 5737, 3849),
which are never contacted. DNSBL lookups of 127.0.0.x need ``skip_private=False``.

Anything at or under ``slow.test`` (and the PTR of ``IP_PTR_SLOW``) is never answered:
lookups there time out, after the resolver's timeout (the tests use ``TEST_TIMEOUT``).

Client addresses
================

| constant          | address     | DNSBL / DNSWL                                        | PTR fact |
|-------------------|-------------|------------------------------------------------------|----------|
| IP_GOOD           | 127.0.0.10  | none                                                 | match: mail.good.test |
| IP_LISTED_TWICE   | 127.0.0.2   | bl1.test 127.0.0.2, bl2.test 127.0.0.3 -> dnsbl_multiple | missing |
| IP_LISTED_ONCE    | 127.0.0.3   | bl1.test 127.0.0.2 (one list: no verdict)            | missing |
| IP_WHITELISTED    | 127.0.0.4   | wl.test 127.0.10.2 -> dnswl                          | match: wl-client.test |
| IP_ERROR_CODE     | 127.0.0.5   | bl1.test answers 127.255.255.254 (an error code, not a listing), bl2.test 127.0.0.2: one listing | missing |
| IP_PTR_MISMATCH   | 127.0.0.11  | none                                                 | mismatch: forged.test has A 192.0.2.11 |
| IP_NO_PTR         | 127.0.0.12  | none                                                 | missing |
| IP_PTR_SLOW       | 127.0.0.13  | none                                                 | unknown: its PTR query times out |
| IPV6_LISTED       | 2001:db8::2 | bl1.test 127.0.0.2 (IPv6 nibble name)               | - |

``BLOCKLISTS`` = bl1.test (with Spamhaus-style codes 127.0.0.2-11) and bl2.test (any
127/8 answer); ``ALLOWLISTS`` = wl.test; ``SLOW_BLOCKLIST`` = bl.slow.test (times out).

URL blocklists (the scorer's urlbl check): ``URL_BLOCKLISTS`` = uribl-a.test and
uribl-b.test. ``spam-link.test`` is listed on both (127.0.0.2), ``grey-link.test`` on
uribl-a.test only; nothing else is listed.

Sender domains (MAIL FROM) and their SPF
========================================
Unless said otherwise a domain has ``MX 10 mx.good.test`` (A 192.0.2.25), so it passes
sender_missing_dns, and its SPF allows all of 127.0.0.0/8.

| domain              | SPF record                                         | result from 127.0.0.x |
|---------------------|----------------------------------------------------|------------------------|
| good.test           | v=spf1 ip4:127.0.0.0/8 -all (+DKIM key, DMARC p=reject) | pass: the well-configured sender |
| spf-pass.test       | v=spf1 ip4:127.0.0.0/8 -all                        | pass |
| spf-fail.test       | v=spf1 ip4:192.0.2.0/24 -all exp=explain.spf-fail.test | fail, explanation "<ip> is not a mail server of spf-fail.test" |
| spf-softfail.test   | v=spf1 ip4:192.0.2.0/24 ~all                       | softfail |
| spf-neutral.test    | v=spf1 ?all                                        | neutral |
| spf-none.test       | (only a non-SPF TXT record)                        | none |
| spf-permerror.test  | v=spf1 ip4:127.0.0.0/8 frobnicate -all             | permerror (unknown mechanism) |
| spf-mx.test         | v=spf1 mx -all; MX mx.spf-mx.test A 127.0.0.10      | pass from IP_GOOD only, fail from others |
| spf-include.test    | v=spf1 include:spf-pass.test -all                  | pass |
| spf-temperror.test  | v=spf1 include:spf.slow.test -all                  | temperror (the include times out) |
| helo-pass.test      | v=spf1 ip4:127.0.0.0/8 -all; A 127.0.0.10           | HELO identity for <>: pass |
| helo-fail.test      | v=spf1 -all                                        | HELO identity for <>: fail |

sender_missing_dns
==================
| domain               | records                      | expected |
|----------------------|------------------------------|----------|
| mx-present.test      | MX 10 mx.good.test           | None (fine) |
| a-only.test          | A 192.0.2.26, no MX          | None (implicit MX) |
| aaaa-only.test       | AAAA 2001:db8::26, no MX     | None (implicit MX) |
| no-mail-records.test | TXT only                     | sender_missing_dns (no MX/A/AAAA) |
| null-mx.test         | MX 0 . and A 192.0.2.27      | sender_missing_dns (RFC 7505 null MX) |
| no-such-domain.test  | nothing (NXDOMAIN)           | sender_missing_dns |
| anything.slow.test   | (times out)                  | internal_error (tempfail) |

DKIM
====
The fixture ``dkim_key`` makes an RSA-2048 key per session; its public key is published
as ``sel._domainkey.<d>`` (``SELECTOR``) for every d in ``DKIM_DOMAINS``; the record is
longer than 255 bytes, so it is served as several TXT strings. Also:
``revoked._domainkey.dkim.test`` (empty p=: permerror), no ``nokey._domainkey.dkim.test``
(permerror), and ``sel._domainkey.dkim.slow.test`` times out (temperror).

DMARC (From header domains)
===========================
Each also has the SPF-pass record, MX and DKIM key above, so it can be the MAIL FROM
domain (SPF alignment) or the d= of a signature (DKIM alignment).

| From domain             | _dmarc record                                   | exercises |
|-------------------------|-------------------------------------------------|-----------|
| dmarc-reject.test       | v=DMARC1; p=reject                              | dmarc_reject; mail.dmarc-reject.test (SPF pass) aligns relaxed |
| dmarc-quarantine.test   | v=DMARC1; p=quarantine                          | dmarc_quarantine |
| dmarc-none.test         | v=DMARC1; p=none                                | fail without verdict |
| dmarc-absent.test       | (none)                                          | result none |
| dmarc-strict.test       | v=DMARC1; p=reject; adkim=s; aspf=s             | mail.dmarc-strict.test does not align |
| orgdomain.test          | v=DMARC1; p=none; sp=reject                     | From mail.sub.orgdomain.test falls back here and gets sp=reject |
| dmarc-pct0.test         | v=DMARC1; p=quarantine; pct=0                   | sampled out: no verdict |
| dmarc-reject-pct0.test  | v=DMARC1; p=reject; pct=0                       | sampled out: quarantine (RFC 7489 6.6.4) |
| dmarc-multi.test        | two v=DMARC1 records                            | result none |
| dmarc.slow.test         | (times out)                                     | temperror, no verdict |
"""
from __future__ import annotations

from smtpgate.checks.dnsbl import Zone, query_name

# The timeout the tests give the resolver: long for loopback, short for the slow zones.
TEST_TIMEOUT = 0.5

IP_GOOD = "127.0.0.10"
IP_LISTED_TWICE = "127.0.0.2"
IP_LISTED_ONCE = "127.0.0.3"
IP_WHITELISTED = "127.0.0.4"
IP_ERROR_CODE = "127.0.0.5"
IP_PTR_MISMATCH = "127.0.0.11"
IP_NO_PTR = "127.0.0.12"
IP_PTR_SLOW = "127.0.0.13"
IPV6_LISTED = "2001:db8::2"

# Spamhaus ZEN-style listing codes: 127.0.0.2 to 127.0.0.11.
LISTING_CODES = frozenset(f"127.0.0.{n}" for n in range(2, 12))
BLOCKLISTS = (Zone("bl1.test", codes=LISTING_CODES), Zone("bl2.test"))
URL_BLOCKLISTS = ("uribl-a.test", "uribl-b.test")
ALLOWLISTS = (Zone("wl.test"),)
SLOW_BLOCKLIST = Zone("bl.slow.test")

SLOW_DOMAINS = ("slow.test", "13.0.0.127.in-addr.arpa")

SELECTOR = "sel"
DMARC_DOMAINS = {
    "good.test": "v=DMARC1; p=reject",
    "dmarc-reject.test": "v=DMARC1; p=reject",
    "dmarc-quarantine.test": "v=DMARC1; p=quarantine",
    "dmarc-none.test": "v=DMARC1; p=none",
    "dmarc-absent.test": None,
    "dmarc-strict.test": "v=DMARC1; p=reject; adkim=s; aspf=s",
    "orgdomain.test": "v=DMARC1; p=none; sp=reject",
    "dmarc-pct0.test": "v=DMARC1; p=quarantine; pct=0",
    "dmarc-reject-pct0.test": "v=DMARC1; p=reject; pct=0",
}
DKIM_DOMAINS = ("dkim.test", *DMARC_DOMAINS, "dmarc-multi.test")

SPF_ALL_LOOPBACK = "v=spf1 ip4:127.0.0.0/8 -all"
MX_GOOD = [(10, "mx.good.test")]


def _listing(ip: str, zone: str, code: str, reason: str | None = None) -> tuple[str, dict]:
    entry: dict = {"A": [code]}
    if reason:
        entry["TXT"] = [reason]
    return query_name(ip, zone), entry


def records(dkim_public_key: str) -> dict[str, dict[str, list]]:
    """The zone data for ``DnsServer``, with ``dkim_public_key`` (base64 DER) published."""
    key_record = f"v=DKIM1; k=rsa; p={dkim_public_key}"
    r: dict[str, dict[str, list]] = {}

    def add(name: str, rtype: str, *values) -> None:
        r.setdefault(name, {}).setdefault(rtype, []).extend(values)

    def mail_domain(name: str, spf: str | None = SPF_ALL_LOOPBACK) -> None:
        add(name, "MX", *MX_GOOD)
        if spf:
            add(name, "TXT", spf)

    add("mx.good.test", "A", "192.0.2.25")

    # SPF
    for name in ("spf-pass.test",):
        mail_domain(name)
    mail_domain("spf-fail.test", "v=spf1 ip4:192.0.2.0/24 -all exp=explain.spf-fail.test")
    add("explain.spf-fail.test", "TXT", "%{i} is not a mail server of %{d}")
    mail_domain("spf-softfail.test", "v=spf1 ip4:192.0.2.0/24 ~all")
    mail_domain("spf-neutral.test", "v=spf1 ?all")
    mail_domain("spf-none.test", "example-site-verification=0123456789")
    mail_domain("spf-permerror.test", "v=spf1 ip4:127.0.0.0/8 frobnicate -all")
    add("spf-mx.test", "MX", (10, "mx.spf-mx.test"))
    add("spf-mx.test", "TXT", "v=spf1 mx -all")
    add("mx.spf-mx.test", "A", IP_GOOD)
    mail_domain("spf-include.test", "v=spf1 include:spf-pass.test -all")
    mail_domain("spf-temperror.test", "v=spf1 include:spf.slow.test -all")
    add("helo-pass.test", "TXT", SPF_ALL_LOOPBACK)
    add("helo-pass.test", "A", IP_GOOD)
    add("helo-fail.test", "TXT", "v=spf1 -all")

    # sender_missing_dns
    add("mx-present.test", "MX", *MX_GOOD)
    add("a-only.test", "A", "192.0.2.26")
    add("aaaa-only.test", "AAAA", "2001:db8::26")
    add("no-mail-records.test", "TXT", "nothing to see")
    add("null-mx.test", "MX", (0, "."))
    add("null-mx.test", "A", "192.0.2.27")

    # DKIM keys
    for domain in DKIM_DOMAINS:
        add(f"{SELECTOR}._domainkey.{domain}", "TXT", key_record)
    add("revoked._domainkey.dkim.test", "TXT", "v=DKIM1; k=rsa; p=")
    mail_domain("dkim.test")

    # DMARC
    for domain, policy in DMARC_DOMAINS.items():
        mail_domain(domain)
        if policy:
            add(f"_dmarc.{domain}", "TXT", policy)
    add("_dmarc.dmarc-multi.test", "TXT", "v=DMARC1; p=reject", "v=DMARC1; p=none")
    mail_domain("dmarc-multi.test")
    mail_domain("mail.dmarc-reject.test")
    mail_domain("mail.dmarc-strict.test")
    mail_domain("mail.sub.orgdomain.test")

    # URL blocklists
    for zone in URL_BLOCKLISTS:
        add(f"spam-link.test.{zone}", "A", "127.0.0.2")
    add("grey-link.test.uribl-a.test", "A", "127.0.0.2")

    # DNSBL / DNSWL
    for name, entry in (
        _listing(IP_LISTED_TWICE, "bl1.test", "127.0.0.2", "listed on bl1.test for testing"),
        _listing(IP_LISTED_TWICE, "bl2.test", "127.0.0.3", "listed on bl2.test for testing"),
        _listing(IP_LISTED_ONCE, "bl1.test", "127.0.0.2", "listed on bl1.test for testing"),
        _listing(IP_WHITELISTED, "wl.test", "127.0.10.2", "trusted sender for testing"),
        _listing(IP_ERROR_CODE, "bl1.test", "127.255.255.254"),
        _listing(IP_ERROR_CODE, "bl2.test", "127.0.0.2"),
        _listing(IPV6_LISTED, "bl1.test", "127.0.0.2"),
    ):
        for rtype, values in entry.items():
            add(name, rtype, *values)

    # PTR (forward-confirmed or not)
    add(IP_GOOD, "PTR", "mail.good.test")
    add("mail.good.test", "A", IP_GOOD)
    add(IP_WHITELISTED, "PTR", "wl-client.test")
    add("wl-client.test", "A", IP_WHITELISTED)
    add(IP_PTR_MISMATCH, "PTR", "forged.test")
    add("forged.test", "A", "192.0.2.11")
    return r
