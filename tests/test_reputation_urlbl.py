"""urlbl: URL hosts and registered domains on DNS URL blocklists.

The lookups run against a real DNS server on loopback (dnsmasq, ``tests/dnsserver.py``)
serving this module's own zones; the unit tests use ``FakeResolver``, which fails on
any lookup it was not given.

| zone             | reads answers as                      | hostnames |
|------------------|---------------------------------------|-----------|
| dbl.test         | codes 127.0.1.2-106 (Spamhaus DBL)    | yes       |
| multi.test       | bitmask 8|16|64|128 (SURBL multi)     | no        |
| uribl.slow.test  | never answers                         | no        |

| name in a URL          | dbl.test                 | multi.test               |
|------------------------|--------------------------|--------------------------|
| evil.test              | 127.0.1.2                | 127.0.0.24 (bits 8, 16)  |
| once.test              | 127.0.1.4                | -                        |
| error.test             | 127.255.255.254 (error)  | 127.0.0.8                |
| grey.test              | -                        | 127.0.0.2 (bit not in mask) |
| bad-host.shared.test   | 127.0.1.5 (the host)     | 127.0.0.8 (never asked: no hostnames) |
| 198.51.100.7           | 127.0.1.255 (no IPs)     | 127.0.0.16               |
"""
from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage

import pytest

from classifier.classifications import get
from classifier.features import extract
from classifier.reputation.urlbl import (
    Listings, UrlblZone, UrlListing, lookup, lookup_names, url_host, urlbl)
from dnsserver import DnsServer, find_dnsmasq
from smtpgate.dns import NXDOMAIN, SERVFAIL, TIMEOUT, FakeResolver, Resolver

DBL = UrlblZone("dbl.test", codes=frozenset(f"127.0.1.{i}" for i in range(2, 107)))
MULTI = UrlblZone("multi.test", bitmask=0b1101_1000, hostnames=False)
SLOW = UrlblZone("uribl.slow.test", hostnames=False)
ZONES = (DBL, MULTI)

RECORDS = {
    "evil.test.dbl.test": {"A": ["127.0.1.2"]},
    "evil.test.multi.test": {"A": ["127.0.0.24"]},
    "once.test.dbl.test": {"A": ["127.0.1.4"]},
    "error.test.dbl.test": {"A": ["127.255.255.254"]},
    "error.test.multi.test": {"A": ["127.0.0.8"]},
    "grey.test.multi.test": {"A": ["127.0.0.2"]},
    "bad-host.shared.test.dbl.test": {"A": ["127.0.1.5"]},
    "bad-host.shared.test.multi.test": {"A": ["127.0.0.8"]},
    "7.100.51.198.dbl.test": {"A": ["127.0.1.255"]},
    "7.100.51.198.multi.test": {"A": ["127.0.0.16"]},
}


@pytest.fixture(scope="module")
def url_dns():
    if find_dnsmasq() is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
    with DnsServer(RECORDS, slow_domains=["slow.test"]) as server:
        yield server


@pytest.fixture
def resolver(url_dns):
    return Resolver([url_dns.address], port=url_dns.port, timeout=2.0)


def message(*, html: str = "", text: str = "Hello") -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@example.org"
    msg["To"] = "rcpt@example.com"
    msg["Subject"] = "links"
    msg.set_content(text)
    if html:
        msg.add_alternative(html, subtype="html")
    return bytes(msg)


def links(*urls: str) -> object:
    return extract(message(html="".join(f'<p><a href="{u}">here</a></p>' for u in urls)))


def run(coro):
    return asyncio.run(coro)


# -- against the DNS server --------------------------------------------------------------

def test_url_on_two_lists_decides(resolver):
    listings = run(lookup(resolver, links("http://www.evil.test/win"), ZONES))
    assert listings == [UrlListing("evil.test", "dbl.test", ("127.0.1.2",)),
                        UrlListing("evil.test", "multi.test", ("127.0.0.24",))]
    signal = urlbl(listings)
    assert (signal.classification, signal.strength, signal.decides) == ("urlbl", 2.0, True)
    assert signal.evidence == (
        "url domain evil.test on dbl.test (127.0.1.2), multi.test (127.0.0.24)",)
    assert signal.reply_args == {"lists": "dbl.test, multi.test"}
    assert get(signal.classification).reply(**signal.reply_args) == (
        "550 5.7.1 Message contains a URL listed on URL blacklists (dbl.test, multi.test)")


def test_url_on_one_list_does_not_decide(resolver):
    listings = run(lookup(resolver, links("https://once.test/"), ZONES))
    assert listings == [UrlListing("once.test", "dbl.test", ("127.0.1.4",))]
    signal = urlbl(listings)
    assert (signal.strength, signal.decides) == (1.0, False)
    assert signal.reply_args == {"lists": "dbl.test"}
    assert urlbl(listings, min_lists=1).decides


def test_error_code_is_not_a_listing(resolver):
    listings = run(lookup(resolver, links("http://error.test/"), ZONES))
    assert listings == [UrlListing("error.test", "multi.test", ("127.0.0.8",))]


def test_bitmask_bits_outside_the_mask_are_not_listings(resolver):
    assert run(lookup(resolver, links("http://grey.test/"), ZONES)) == []


def test_full_host_is_asked_only_of_zones_listing_hosts(resolver):
    listings = run(lookup(resolver, links("http://bad-host.shared.test/x"), ZONES))
    assert listings == [UrlListing("bad-host.shared.test", "dbl.test", ("127.0.1.5",))]


def test_ip_literal_urls_are_looked_up_by_reversed_octets(resolver):
    # 3325256711 is 198.51.100.7 written as one number, as browsers accept it
    for url in ("http://198.51.100.7/login", "http://3325256711/login"):
        listings = run(lookup(resolver, links(url), ZONES, skip_private=False))
        assert listings == [UrlListing("198.51.100.7", "multi.test", ("127.0.0.16",))]
    assert urlbl(listings).evidence == ("url ip 198.51.100.7 on multi.test (127.0.0.16)",)


def test_slow_list_is_cut_at_the_deadline_and_counts_as_not_listed(resolver):
    feats = links("http://www.evil.test/", "http://once.test/")
    start = time.monotonic()
    listings = run(lookup(resolver, feats, (*ZONES, SLOW), timeout=0.3))
    elapsed = time.monotonic() - start
    assert elapsed < 0.3 + 0.5           # the resolver alone would wait 2 s
    assert [(l.domain, l.zone) for l in listings] == [
        ("evil.test", "dbl.test"), ("once.test", "dbl.test"), ("evil.test", "multi.test")]
    assert set(listings.unanswered) == {("uribl.slow.test", "deadline")}
    signal = urlbl(listings)
    assert signal.decides
    assert signal.evidence[-1] == "no answer within 0.3 s from uribl.slow.test (counted as not listed)"


def test_answers_are_cached(resolver):
    feats = links("http://www.evil.test/")
    first = run(lookup(resolver, feats, ZONES))
    hits = resolver.cache.hits
    assert run(lookup(resolver, feats, ZONES)) == first
    # the two listings come from the cache; the test server's NXDOMAIN for
    # www.evil.test.dbl.test carries no SOA, so it may not be cached (RFC 2308)
    assert resolver.cache.hits == hits + 2


def test_clean_message_has_no_signal(resolver):
    feats = extract(message(html='<a href="https://www.clean.test/">clean</a>',
                            text="write to info@clean.test"))
    listings = run(lookup(resolver, feats, ZONES))
    assert listings == [] and urlbl(listings) is None


# -- unit tests: which names are asked -------------------------------------------------

@pytest.mark.parametrize("url, host", [
    ("http://user:pw@WWW.Evil.TEST:8080/x?y#z", "www.evil.test"),
    ("HTTPS://evil.test./", "evil.test"),
    ("http://%65vil.test/", "evil.test"),
    ("http://a..b.evil.test/", "a.b.evil.test"),
    ("www.b\u00fccher.test/path", "www.xn--bcher-kva.test"),
    ("http://0xC6.0x33.0x64.7/", "198.51.100.7"),
    ("http://[2001:db8::1]/", "2001:db8::1"),
    ("ftp://files.evil.test/a", "files.evil.test"),
    ("mailto:someone@evil.test", None),
    ("javascript:alert(1)", None),
    ("/relative/link", None),
    ("images/logo.gif", None),
    ("http://bad name.test/", None),
])
def test_url_host(url, host):
    assert url_host(url) == host


def test_each_name_once_and_only_web_urls():
    feats = extract(message(
        html='<a href="http://a.evil.test/1">x</a><a href="https://b.evil.test/2">y</a>'
             '<a href="mailto:x@other.test">m</a><img src="cid:logo@x">',
        text="see http://evil.test/3 and www.evil.test"))
    assert lookup_names(feats) == (["evil.test"], ["a.evil.test", "b.evil.test", "www.evil.test"])
    fake = FakeResolver({
        ("evil.test.dbl.test", "A"): NXDOMAIN,
        ("a.evil.test.dbl.test", "A"): NXDOMAIN,
        ("b.evil.test.dbl.test", "A"): ["127.0.1.3"],
        ("www.evil.test.dbl.test", "A"): NXDOMAIN,
        ("evil.test.multi.test", "A"): NXDOMAIN,
    })
    listings = run(lookup(fake, feats, ZONES))
    assert listings == [UrlListing("b.evil.test", "dbl.test", ("127.0.1.3",))]
    assert len(fake.calls) == 5


def test_domains_per_message_are_capped_linked_and_frequent_first():
    pads = [f"http://pad{i:02}.test/" for i in range(25)]
    feats = links(*pads, "http://bad.test/a", "http://bad.test/b", "http://bad.test/c")
    domains, hosts = lookup_names(feats, max_domains=20)
    assert domains == ["bad.test"] + [f"pad{i:02}.test" for i in range(19)]
    assert hosts == []
    table = {(f"{d}.multi.test", "A"): NXDOMAIN for d in domains}
    table[("bad.test.multi.test", "A")] = ["127.0.0.8"]
    fake = FakeResolver(table)
    assert run(lookup(fake, feats, (MULTI,))) == [UrlListing("bad.test", "multi.test", ("127.0.0.8",))]
    assert len(fake.calls) == 20
    # links written in the HTML come before those only written out in the text
    feats = extract(message(html='<a href="http://linked.test/">x</a>',
                            text=" ".join(f"http://t{i}.test/" for i in range(5))))
    assert lookup_names(feats, max_domains=2)[0] == ["linked.test", "t0.test"]


def test_private_addresses_are_not_looked_up_by_default():
    feats = links("http://10.1.2.3/", "http://127.0.0.1/", "http://192.168.1.1/")
    assert run(lookup(FakeResolver({}), feats, ZONES)) == []


def test_dns_trouble_counts_as_not_listed_and_is_said():
    fake = FakeResolver({("evil.test.dbl.test", "A"): ["127.0.1.2"],
                         ("evil.test.multi.test", "A"): SERVFAIL,
                         ("other.test.dbl.test", "A"): TIMEOUT,
                         ("other.test.multi.test", "A"): NXDOMAIN})
    listings = run(lookup(fake, links("http://evil.test/", "http://other.test/"), ZONES))
    assert listings == [UrlListing("evil.test", "dbl.test", ("127.0.1.2",))]
    assert set(listings.unanswered) == {("multi.test", "servfail"), ("dbl.test", "timeout")}
    assert urlbl(listings).evidence[-1] == "DNS trouble on dbl.test, multi.test (counted as not listed)"


def test_no_urls_no_lookups():
    assert run(lookup(FakeResolver({}), extract(message(text="no links here")), ZONES)) == []


# -- unit tests: zones and the Signal -----------------------------------------------------

@pytest.mark.parametrize("zone, records, codes", [
    (UrlblZone("z.test"), ["127.0.0.2", "127.0.1.9"], ("127.0.0.2", "127.0.1.9")),
    (UrlblZone("z.test"), ["127.255.255.254", "10.0.0.1", "not-an-ip"], ()),
    (UrlblZone("z.test", codes=["127.0.1.2"]), ["127.0.1.2", "127.0.1.3"], ("127.0.1.2",)),
    (UrlblZone("z.test", codes=["127.255.255.254"]), ["127.255.255.254"], ()),  # errors never
    (UrlblZone("z.test", bitmask=8), ["127.0.0.8"], ("127.0.0.8",)),
    (UrlblZone("z.test", bitmask=8), ["127.0.0.14"], ("127.0.0.14",)),
    (UrlblZone("z.test", bitmask=8), ["127.0.0.6", "127.0.0.1"], ()),
    (UrlblZone("z.test", bitmask=8), ["127.0.1.8"], ()),            # not 127.0.0.x
])
def test_return_codes(zone, records, codes):
    assert zone.listing_codes(records) == codes


def test_zone_settings_are_checked():
    with pytest.raises(ValueError, match="not both"):
        UrlblZone("z.test", codes=["127.0.0.2"], bitmask=2)
    with pytest.raises(ValueError, match="1..255"):
        UrlblZone("z.test", bitmask=256)
    assert UrlblZone(" Multi.Test. ").name == "multi.test"


def test_lists_count_once_however_many_domains_they_list():
    listings = Listings([UrlListing("a.test", "dbl.test", ("127.0.1.2",)),
                         UrlListing("b.test", "dbl.test", ("127.0.1.2",)),
                         UrlListing("b.test", "multi.test", ("127.0.0.8",))])
    signal = urlbl(listings, min_lists=3)
    assert (signal.strength, signal.decides) == (2.0, False)
    assert signal.evidence == ("url domain a.test on dbl.test (127.0.1.2)",
                               "url domain b.test on dbl.test (127.0.1.2), multi.test (127.0.0.8)")
    assert urlbl([]) is None
