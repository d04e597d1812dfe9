"""The gate's DNS-based checks against a real DNS server (dnsmasq on loopback, zones in
``tests/gate_zones.py``), plus unit tests with ``FakeResolver``.

Timeouts are real: names under slow.test are never answered, and the resolver's
timeout is ``gate_zones.TEST_TIMEOUT`` (0.5 s).
"""
from __future__ import annotations

import asyncio
import random
import time

import dns.message
import dns.rrset
import pytest

import gate_zones as z
from smtpgate import psl
from smtpgate.authresults import authentication_results, quote
from smtpgate.checks import dkim as dkim_check
from smtpgate.checks import dmarc as dmarc_check
from smtpgate.checks.dnsbl import Listing, Zone, dnsbl_multiple, dnswl, lookup, query_name
from smtpgate.checks.ptr import ptr_fact
from smtpgate.checks.sender_missing_dns import sender_missing_dns
from smtpgate.checks.spf_fail import SpfOutcome, evaluate as spf_evaluate, spf_fail
from smtpgate.dns import TIMEOUT, Answer, FakeResolver, Resolver, TTLCache, negative_ttl

run = asyncio.run


def message(from_header: str = "Alice <alice@good.test>", body: str = "Hello.\r\n",
            extra: str = "") -> bytes:
    return (f"From: {from_header}\r\nTo: bob@example.test\r\nSubject: test\r\n"
            f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@good.test>\r\n{extra}"
            f"\r\n{body}").encode()


# -- Resolver ---------------------------------------------------------------------------

def test_resolver_statuses(gate_resolver):
    async def go():
        return await asyncio.gather(
            gate_resolver.mx("good.test"), gate_resolver.mx("no-such-domain.test"),
            gate_resolver.a("no-mail-records.test"), gate_resolver.a("anything.slow.test"),
            gate_resolver.a("outside.invalid"))
    ok, nx, nodata, timeout, servfail = run(go())
    assert ok == Answer("ok", ("10 mx.good.test.",), ok.ttl) and 0 < ok.ttl <= 300
    assert nx.status == "nxdomain"
    assert nodata.status == "nodata"
    assert timeout.status == "timeout" and timeout.temporary
    assert servfail.status == "servfail" and servfail.temporary   # REFUSED outside the zones


def test_timeout_is_the_whole_lifetime(gate_resolver):
    # A hang would be the bug; the bound is loose on purpose (not a speed test).
    start = time.monotonic()
    assert run(gate_resolver.txt("x.slow.test")).status == "timeout"
    assert time.monotonic() - start < 4 * z.TEST_TIMEOUT


def test_resolver_record_shapes(gate_resolver, dkim_key):
    async def go():
        return await asyncio.gather(
            gate_resolver.txt("sel._domainkey.dkim.test"), gate_resolver.mx("null-mx.test"),
            gate_resolver.aaaa("aaaa-only.test"), gate_resolver.ptr(z.IP_GOOD))
    key, null_mx, aaaa, ptr = run(go())
    # The key record is served as several 255-byte strings and comes back joined.
    assert key.records == (f"v=DKIM1; k=rsa; p={dkim_key.public_b64}",)
    assert len(key.records[0]) > 255
    assert null_mx.records == ("0 .",)
    assert aaaa.records == ("2001:db8::26",)
    assert ptr.records == ("mail.good.test.",)


def test_resolver_caches_answers(gate_resolver):
    first = run(gate_resolver.txt("spf-pass.test"))
    second = run(gate_resolver.txt("SPF-PASS.test."))        # same key: case, final dot
    assert second.records == first.records
    assert gate_resolver.cache.hits == 1 and gate_resolver.cache.misses == 1
    # Without an SOA a negative answer must not be cached (RFC 2308 section 5).
    run(gate_resolver.mx("no-such-domain.test"))
    run(gate_resolver.mx("no-such-domain.test"))
    assert gate_resolver.cache.hits == 1


def test_invalid_name_is_nxdomain_without_asking():
    resolver = Resolver(["192.0.2.1"], timeout=0.1)       # never reached
    assert run(resolver.a("bad..name.test")).status == "nxdomain"
    assert run(resolver.a("x" * 64 + ".test")).status == "nxdomain"


def test_ttl_cache_expires_and_evicts_least_recent():
    now = [0.0]
    cache = TTLCache(maxsize=2, clock=lambda: now[0])
    cache.put(("a", "A"), Answer("ok", ("192.0.2.1",), 10))
    cache.put(("b", "A"), Answer("nxdomain", (), 100))
    cache.put(("zero", "A"), Answer("ok", ("192.0.2.3",), 0))     # TTL 0: not stored
    assert cache.get(("zero", "A")) is None
    assert cache.get(("a", "A")).ttl == 10                      # "a" is now most recent
    cache.put(("c", "A"), Answer("ok", ("192.0.2.2",), 100))    # evicts "b"
    assert cache.get(("b", "A")) is None and cache.get(("a", "A")) is not None
    now[0] = 7.5
    assert cache.get(("a", "A")).ttl == 2                        # remaining TTL
    now[0] = 10.0
    assert cache.get(("a", "A")) is None


def test_negative_ttl_comes_from_the_soa():
    response = dns.message.make_response(dns.message.make_query("x.example.", "A"))
    response.authority.append(dns.rrset.from_text(
        "example.", 3600, "IN", "SOA", "ns.example. host.example. 1 7200 900 1209600 300"))
    assert negative_ttl(response) == 300                 # min(SOA TTL, MINIMUM)
    assert negative_ttl(dns.message.make_response(dns.message.make_query("x.", "A"))) == 0


# -- FakeResolver -----------------------------------------------------------------------

def test_fake_resolver_fails_on_unexpected_lookups():
    fake = FakeResolver({("example.test", "MX"): ["10 mx.example.test."],
                         ("slow.example", "A"): TIMEOUT, ("empty.example", "A"): []})
    assert run(fake.mx("Example.Test.")).records == ("10 mx.example.test.",)
    assert run(fake.a("slow.example")).status == "timeout"
    assert run(fake.a("empty.example")).status == "nodata"
    with pytest.raises(AssertionError, match="unexpected DNS lookup: example.test A"):
        run(fake.a("example.test"))
    assert fake.calls[-1] == ("example.test", "A")
    with pytest.raises(TypeError):
        FakeResolver({("x.test", "TXT"): "v=spf1 -all"})           # a bare string is a typo


def test_fake_resolver_failure_reaches_the_test_through_pyspf_thread():
    fake = FakeResolver({})
    with pytest.raises(AssertionError, match="spf-pass.test TXT"):
        run(spf_evaluate(fake, "192.0.2.1", "mx.example", "a@spf-pass.test"))


def test_blocking_facade_refuses_its_own_loop():
    async def go():
        fake = FakeResolver({("x.test", "A"): ["192.0.2.1"]})
        blocking = fake.blocking()
        with pytest.raises(RuntimeError, match="deadlock"):
            blocking.query("x.test", "A")
        return await asyncio.to_thread(blocking.query, "x.test", "A")
    assert run(go()).records == ("192.0.2.1",)


# -- SPF --------------------------------------------------------------------------------

@pytest.mark.parametrize("mail_from, ip, expected", [
    ("a@spf-pass.test", z.IP_GOOD, "pass"),
    ("<a@spf-fail.test>", z.IP_GOOD, "fail"),
    ("a@spf-softfail.test", z.IP_GOOD, "softfail"),
    ("a@spf-neutral.test", z.IP_GOOD, "neutral"),
    ("a@spf-none.test", z.IP_GOOD, "none"),
    ("a@no-such-domain.test", z.IP_GOOD, "none"),
    ("a@spf-permerror.test", z.IP_GOOD, "permerror"),
    ("a@spf-include.test", z.IP_LISTED_ONCE, "pass"),
    ("a@spf-mx.test", z.IP_GOOD, "pass"),
    ("a@spf-mx.test", z.IP_PTR_MISMATCH, "fail"),
    ("a@spf-temperror.test", z.IP_GOOD, "temperror"),
])
def test_spf_results(gate_resolver, mail_from, ip, expected):
    outcome = run(spf_evaluate(gate_resolver, ip, "mail.good.test", mail_from))
    assert outcome.result == expected, outcome
    assert outcome.identity == "mailfrom"
    assert outcome.domain == mail_from.strip("<>").split("@")[1]


def test_spf_fail_is_the_only_verdict(gate_resolver):
    fail = run(spf_evaluate(gate_resolver, z.IP_GOOD, "mail.good.test", "a@spf-fail.test"))
    result = spf_fail(fail)
    assert result.classification == "spf_fail" and result.check == "spf_fail"
    # The explanation is the domain's exp= text, macro-expanded, fetched via our resolver.
    assert result.evidence == ("SPF fail for spf-fail.test from 127.0.0.10: "
                               "127.0.0.10 is not a mail server of spf-fail.test")
    assert result.reply() == "550 5.7.23 SPF failure"
    soft = run(spf_evaluate(gate_resolver, z.IP_GOOD, "mail.good.test", "a@spf-softfail.test"))
    assert spf_fail(soft) is None


@pytest.mark.parametrize("helo, expected", [("helo-pass.test", "pass"),
                                            ("helo-fail.test", "fail"),
                                            ("localhost", "none")])
def test_spf_null_sender_checks_the_helo_identity(gate_resolver, helo, expected):
    outcome = run(spf_evaluate(gate_resolver, z.IP_GOOD, helo, "<>"))
    assert (outcome.result, outcome.identity, outcome.domain) == (expected, "helo", helo)
    assert outcome.sender == f"postmaster@{helo}"


def test_spf_outcome_carries_the_header_comment(gate_resolver):
    outcome = run(spf_evaluate(gate_resolver, z.IP_GOOD, "mail.good.test", "a@spf-pass.test"))
    assert outcome.comment == "domain of spf-pass.test designates 127.0.0.10 as permitted sender"
    assert outcome.authenticated_domain == "spf-pass.test"


# -- sender_missing_dns -----------------------------------------------------------------

@pytest.mark.parametrize("mail_from", ["a@mx-present.test", "a@a-only.test",
                                       "a@aaaa-only.test", "<>", ""])
def test_sender_domain_that_can_receive_mail(gate_resolver, mail_from):
    assert run(sender_missing_dns(gate_resolver, mail_from)) is None


@pytest.mark.parametrize("domain, why", [
    ("no-mail-records.test", "no MX, A or AAAA record"),
    ("null-mx.test", "null MX (RFC 7505)"),
    ("no-such-domain.test", "does not exist (NXDOMAIN)"),
])
def test_sender_domain_missing_dns(gate_resolver, domain, why):
    result = run(sender_missing_dns(gate_resolver, f"<someone@{domain}>"))
    assert result.classification == "sender_missing_dns"
    assert domain in result.evidence and why in result.evidence
    assert result.reply() == "550 5.1.8 Sending server is missing DNS records"


def test_sender_domain_dns_timeout_tempfails(gate_resolver):
    result = run(sender_missing_dns(gate_resolver, "a@anything.slow.test"))
    assert (result.classification, result.check) == ("internal_error", "sender_missing_dns")
    assert result.evidence == "DNS timeout looking up MX/A of anything.slow.test"
    assert result.reply().startswith("451 4.3.0")


def test_null_sender_makes_no_lookup():
    assert run(sender_missing_dns(FakeResolver({}), "<>")) is None


# -- DNSBL / DNSWL ----------------------------------------------------------------------

def test_listed_on_two_blocklists(gate_resolver):
    listings = run(lookup(gate_resolver, z.IP_LISTED_TWICE, z.BLOCKLISTS, skip_private=False))
    assert listings == [Listing("bl1.test", ("127.0.0.2",), "listed on bl1.test for testing"),
                        Listing("bl2.test", ("127.0.0.3",), "listed on bl2.test for testing")]
    result = dnsbl_multiple(listings)
    assert result.classification == "dnsbl_multiple"
    assert result.evidence == "listed on bl1.test, bl2.test"
    assert result.details["codes"] == {"bl1.test": ["127.0.0.2"], "bl2.test": ["127.0.0.3"]}
    assert result.reply() == "554 5.7.1 Sending server listed on multiple DNSBL"


def test_listed_on_one_blocklist_is_no_verdict(gate_resolver):
    listings = run(lookup(gate_resolver, z.IP_LISTED_ONCE, z.BLOCKLISTS, skip_private=False))
    assert [l.zone for l in listings] == ["bl1.test"]
    assert dnsbl_multiple(listings) is None


def test_error_codes_are_not_listings(gate_resolver):
    # bl1 answers 127.255.255.254 for this address: a list error, not a listing.
    listings = run(lookup(gate_resolver, z.IP_ERROR_CODE, z.BLOCKLISTS, skip_private=False))
    assert listings == [Listing("bl2.test", ("127.0.0.2",), None)]
    assert dnsbl_multiple(listings) is None


def test_unlisted_and_timed_out_zones_list_nothing(gate_resolver):
    zones = (*z.BLOCKLISTS, z.SLOW_BLOCKLIST)
    assert run(lookup(gate_resolver, z.IP_GOOD, zones, skip_private=False)) == []
    listings = run(lookup(gate_resolver, z.IP_LISTED_TWICE, zones, skip_private=False))
    assert [l.zone for l in listings] == ["bl1.test", "bl2.test"]


def test_dnswl(gate_resolver):
    listings = run(lookup(gate_resolver, z.IP_WHITELISTED, z.ALLOWLISTS, skip_private=False))
    result = dnswl(listings)
    assert (result.classification, result.evidence) == ("dnswl", "listed on wl.test")
    assert result.reply() == "250 2.0.0 Message accepted for delivery"
    assert dnswl(run(lookup(gate_resolver, z.IP_GOOD, z.ALLOWLISTS, skip_private=False))) is None


def test_ipv6_uses_nibbles(gate_resolver):
    assert query_name("2001:db8::2", "bl1.test") == (
        "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl1.test")
    assert query_name("::ffff:192.0.2.1", "bl.test") == "1.2.0.192.bl.test"
    listings = run(lookup(gate_resolver, z.IPV6_LISTED, z.BLOCKLISTS, skip_private=False))
    assert [l.zone for l in listings] == ["bl1.test"]


def test_private_addresses_are_not_looked_up_by_default():
    fake = FakeResolver({})                                # any lookup would fail the test
    for ip in ("127.0.0.2", "10.1.2.3", "192.168.0.1", "::1", "fe80::1"):
        assert run(lookup(fake, ip, z.BLOCKLISTS)) == []
    assert fake.calls == []


def test_zone_codes_limit_what_counts():
    name = query_name("198.51.100.7", "bl.test")
    fake = FakeResolver({(name, "A"): ["127.0.0.12", "10.0.0.1"]})
    zone = Zone("bl.test", codes=z.LISTING_CODES)
    assert run(lookup(fake, "198.51.100.7", [zone], skip_private=False)) == []


# -- PTR --------------------------------------------------------------------------------

@pytest.mark.parametrize("ip, expected", [
    (z.IP_GOOD, ("match", "mail.good.test")),
    (z.IP_WHITELISTED, ("match", "wl-client.test")),
    (z.IP_PTR_MISMATCH, ("mismatch", "forged.test")),
    (z.IP_NO_PTR, ("missing", None)),
    (z.IP_PTR_SLOW, ("unknown", None)),
])
def test_ptr_fact(gate_resolver, ip, expected):
    assert run(ptr_fact(gate_resolver, ip)) == expected


# -- DKIM -------------------------------------------------------------------------------

def test_dkim_pass(gate_resolver, dkim_key):
    signed = dkim_key.sign(message(), "dkim.test")
    [result] = run(dkim_check.verify(gate_resolver, signed))
    assert (result.domain, result.selector, result.result) == ("dkim.test", "sel", "pass")
    assert result.b and len(result.b) == 8


def test_dkim_fail_when_the_body_changes(gate_resolver, dkim_key):
    signed = dkim_key.sign(message(body="Pay 10 EUR.\r\n"), "dkim.test")
    [result] = run(dkim_check.verify(gate_resolver, signed.replace(b"10 EUR", b"99 EUR")))
    assert result.result == "fail" and "body hash mismatch" in result.reason


def test_dkim_fail_when_a_signed_header_changes(gate_resolver, dkim_key):
    signed = dkim_key.sign(message(), "dkim.test")
    [result] = run(dkim_check.verify(gate_resolver, signed.replace(b"Subject: test",
                                                                  b"Subject: TEST")))
    assert result.result == "fail"


def test_dkim_none_when_unsigned(gate_resolver):
    assert run(dkim_check.verify(gate_resolver, message())) == []


@pytest.mark.parametrize("selector, domain, expected", [
    ("nokey", "dkim.test", "permerror"),
    ("revoked", "dkim.test", "permerror"),
    ("sel", "dkim.slow.test", "temperror"),
])
def test_dkim_key_problems(gate_resolver, dkim_key, selector, domain, expected):
    signed = dkim_key.sign(message(), domain, selector=selector)
    [result] = run(dkim_check.verify(gate_resolver, signed))
    assert (result.domain, result.selector, result.result) == (domain, selector, expected)


def test_dkim_caps_the_number_of_signatures(gate_resolver, dkim_key):
    signed = message()
    for _ in range(7):
        signed = dkim_key.sign(signed, "dkim.test")
    results = run(dkim_check.verify(gate_resolver, signed))
    assert len(results) == dkim_check.MAX_SIGNATURES
    assert {r.result for r in results} == {"pass"}


@pytest.mark.parametrize("garbage", [
    b"", b"\x00\xff garbage", b" continuation first\r\n\r\nbody",
    b"DKIM-Signature: v=1; a=rsa-sha256; nonsense\r\nFrom: a@b.test\r\n\r\nx",
    b"DKIM-Signature: v=1; a=rsa-sha1; d=dkim.test; s=sel; h=from; bh=AAAA; b=AAAA\r\n"
    b"From: a@b.test\r\n\r\nx",
])
def test_dkim_never_raises_on_garbage(garbage):
    results = run(dkim_check.verify(FakeResolver({}), garbage))
    assert all(r.result in ("neutral", "permerror") for r in results)


# -- DMARC ------------------------------------------------------------------------------

def dmarc_of(resolver, from_domain, mail_from, dkim_results=(), ip=z.IP_GOOD,
             helo="mail.good.test", **kw):
    async def go():
        spf = await spf_evaluate(resolver, ip, helo, mail_from)
        return await dmarc_check.evaluate(resolver, message(f"<a@{from_domain}>"), spf,
                                          list(dkim_results), mail_from, helo, **kw)
    return run(go())


def test_dmarc_reject(gate_resolver):
    outcome = dmarc_of(gate_resolver, "dmarc-reject.test", "x@spf-softfail.test")
    assert (outcome.result, outcome.policy, outcome.disposition) == ("fail", "reject", "reject")
    result = dmarc_check.dmarc(outcome)
    assert result.classification == "dmarc_reject"
    assert result.evidence == ("DMARC fail for dmarc-reject.test "
                               "(p=reject; SPF not aligned: softfail; DKIM: none)")
    assert result.reply() == "550 5.7.1 DMARC policy of sender domain is reject"


def test_dmarc_quarantine(gate_resolver):
    outcome = dmarc_of(gate_resolver, "dmarc-quarantine.test", "x@spf-pass.test")
    result = dmarc_check.dmarc(outcome)
    assert result.classification == "dmarc_quarantine"
    assert "SPF not aligned: pass for spf-pass.test" in result.evidence


def test_dmarc_p_none_and_no_record_give_no_verdict(gate_resolver):
    p_none = dmarc_of(gate_resolver, "dmarc-none.test", "x@spf-softfail.test")
    assert (p_none.result, p_none.policy) == ("fail", "none")
    assert dmarc_check.dmarc(p_none) is None
    absent = dmarc_of(gate_resolver, "dmarc-absent.test", "x@spf-softfail.test")
    assert absent.result == "none" and dmarc_check.dmarc(absent) is None
    multi = dmarc_of(gate_resolver, "dmarc-multi.test", "x@spf-softfail.test")
    assert multi.result == "none" and "2 DMARC records" in multi.reason


def test_dmarc_pass_by_spf_alignment(gate_resolver):
    outcome = dmarc_of(gate_resolver, "dmarc-reject.test", "bounce@dmarc-reject.test")
    assert (outcome.result, outcome.spf_aligned, outcome.dkim_aligned) == ("pass", True, False)
    assert dmarc_check.dmarc(outcome) is None


def test_dmarc_pass_by_dkim_alignment(gate_resolver, dkim_key):
    signed = dkim_key.sign(message("<a@dmarc-reject.test>"), "dmarc-reject.test")
    dkim_results = run(dkim_check.verify(gate_resolver, signed))
    outcome = dmarc_of(gate_resolver, "dmarc-reject.test", "x@spf-softfail.test", dkim_results)
    assert (outcome.result, outcome.spf_aligned, outcome.dkim_aligned) == ("pass", False, True)


def test_dmarc_unaligned_dkim_pass_fails(gate_resolver, dkim_key):
    signed = dkim_key.sign(message("<a@dmarc-reject.test>"), "dkim.test")
    dkim_results = run(dkim_check.verify(gate_resolver, signed))
    outcome = dmarc_of(gate_resolver, "dmarc-reject.test", "x@spf-softfail.test", dkim_results)
    assert outcome.result == "fail"
    assert "DKIM not aligned: pass for dkim.test" in outcome.reason


def test_dmarc_relaxed_and_strict_alignment(gate_resolver, dkim_key):
    relaxed = dmarc_of(gate_resolver, "dmarc-reject.test", "x@mail.dmarc-reject.test")
    assert relaxed.result == "pass" and relaxed.spf_aligned
    strict = dmarc_of(gate_resolver, "dmarc-strict.test", "x@mail.dmarc-strict.test")
    assert strict.result == "fail" and not strict.spf_aligned
    # adkim=s: a signature by the parent of the From domain does not align either.
    signed = dkim_key.sign(message("<a@mail.dmarc-strict.test>"), "dmarc-strict.test")
    dkim_results = run(dkim_check.verify(gate_resolver, signed))
    assert dkim_results[0].result == "pass"
    outcome = dmarc_of(gate_resolver, "mail.dmarc-strict.test", "x@spf-softfail.test",
                       dkim_results)
    assert outcome.result == "fail" and outcome.org_domain == "dmarc-strict.test"


def test_dmarc_org_domain_fallback_uses_sp(gate_resolver):
    sub = dmarc_of(gate_resolver, "mail.sub.orgdomain.test", "x@spf-softfail.test")
    assert (sub.result, sub.policy, sub.org_domain) == ("fail", "reject", "orgdomain.test")
    assert dmarc_check.dmarc(sub).classification == "dmarc_reject"
    org = dmarc_of(gate_resolver, "orgdomain.test", "x@spf-softfail.test")
    assert (org.result, org.policy) == ("fail", "none")


def test_dmarc_pct_zero_samples_the_policy_out(gate_resolver):
    quarantine = dmarc_of(gate_resolver, "dmarc-pct0.test", "x@spf-softfail.test")
    assert (quarantine.policy, quarantine.disposition, quarantine.pct) == ("quarantine", "none", 0)
    assert dmarc_check.dmarc(quarantine) is None
    # RFC 7489 6.6.4: a reject sampled out is treated as quarantine.
    reject = dmarc_of(gate_resolver, "dmarc-reject-pct0.test", "x@spf-softfail.test")
    result = dmarc_check.dmarc(reject)
    assert result.classification == "dmarc_quarantine"
    assert "pct=0 sampled out: quarantine" in result.evidence


def test_dmarc_pct_sampling_is_deterministic_with_an_injected_rng():
    fake = FakeResolver({("_dmarc.half.test", "TXT"): ["v=DMARC1; p=reject; pct=50"]})
    spf = SpfOutcome("fail", "other.test", "mailfrom", "x@other.test", "192.0.2.1", "h.test")

    def disposition(draw):
        return run(dmarc_check.evaluate(fake, message("<a@half.test>"), spf, [],
                                        "x@other.test", "h.test", rng=lambda: draw)).disposition
    assert disposition(0.49) == "reject"
    assert disposition(0.50) == "quarantine"
    seeded = {run(dmarc_check.evaluate(fake, message("<a@half.test>"), spf, [], "x@other.test",
                                       "h.test", rng=random.Random(7))).disposition
              for _ in range(3)}
    assert len(seeded) == 1


def test_dmarc_dns_timeout_is_temperror_without_verdict(gate_resolver):
    outcome = dmarc_of(gate_resolver, "dmarc.slow.test", "x@spf-softfail.test")
    assert outcome.result == "temperror"
    assert dmarc_check.dmarc(outcome) is None


@pytest.mark.parametrize("headers, why", [
    ("From: a@good.test\r\nFrom: b@good.test\r\n", "2 From header fields"),
    ("From: a@good.test, b@good.test\r\n", "2 addresses in From"),
    ("To: b@good.test\r\n", "0 From header fields"),
])
def test_dmarc_needs_exactly_one_from_address(headers, why):
    spf = SpfOutcome("pass", "good.test", "mailfrom", "x@good.test", "192.0.2.1", "h.test")
    outcome = run(dmarc_check.evaluate(FakeResolver({}), f"{headers}\r\nbody".encode(), spf,
                                       [], "x@good.test", "h.test"))
    assert (outcome.result, outcome.reason) == ("permerror", why)


def test_dmarc_record_parsing():
    parse = dmarc_check.parse_record
    assert parse("v=DMARC1; p=reject; sp=none; adkim=s; aspf=s; pct=20") == \
        dmarc_check.DmarcRecord("reject", "none", "s", "s", 20)
    assert parse("p=reject; v=DMARC1") is None                   # v= must come first
    assert parse("v=DMARC1; p=reject; adkim=x; pct=abc; foo=bar") == \
        dmarc_check.DmarcRecord("reject")                        # bad values: defaults
    assert parse("v=DMARC1; rua=mailto:d@example.test") == dmarc_check.DmarcRecord("none")
    assert parse("v=DMARC1; p=bogus") is None


def test_org_domain():
    assert psl.org_domain("Mail.Sub.Example.CO.UK.") == "example.co.uk"
    assert psl.org_domain("mail.sub.orgdomain.test") == "orgdomain.test"
    assert psl.registered_domain("co.uk") is None
    assert psl.registered_domain("192.0.2.1") is None
    assert psl.registered_domain("[192.0.2.1]") is None


# -- Authentication-Results -------------------------------------------------------------

def test_authentication_results_header(gate_resolver, dkim_key):
    signed = dkim_key.sign(message(), "good.test")

    async def go():
        spf = await spf_evaluate(gate_resolver, z.IP_GOOD, "mail.good.test", "alice@good.test")
        dkim_results = await dkim_check.verify(gate_resolver, signed)
        dmarc = await dmarc_check.evaluate(gate_resolver, signed, spf, dkim_results,
                                           "alice@good.test", "mail.good.test")
        iprev = await ptr_fact(gate_resolver, z.IP_GOOD)
        return spf, dkim_results, dmarc, iprev
    spf, dkim_results, dmarc, iprev = run(go())
    value = authentication_results("mx.mailsift.test", spf, dkim_results, dmarc, iprev)
    assert all(len(line) <= 78 for line in ("Authentication-Results: " + value).split("\r\n"))
    unfolded = value.replace(";\r\n\t", "; ")
    b = dkim_results[0].b
    assert unfolded == (
        "mx.mailsift.test; iprev=pass policy.iprev=127.0.0.10 (mail.good.test); "
        "spf=pass smtp.mailfrom=good.test; "
        f"dkim=pass header.d=good.test header.s=sel header.b={quote(b)}; "
        "dmarc=pass (p=reject dis=none) header.from=good.test")


def test_authentication_results_quoting_and_helo_identity():
    spf = SpfOutcome("none", "localhost", "helo", "postmaster@localhost", "192.0.2.1",
                     "localhost")
    fail = dkim_check.DkimResult("example.test", "s1", "fail", 'said "no"')
    value = authentication_results("mx example", spf, [fail], linesep="\n")
    unfolded = value.replace(";\n\t", "; ")
    assert unfolded == ('"mx example"; spf=none smtp.helo=localhost; '
                        'dkim=fail reason="said \\"no\\"" header.d=example.test header.s=s1')
    assert authentication_results("mx.example", dkim_results=[]) == "mx.example; dkim=none"
    assert authentication_results("mx.example") == "mx.example; none"
