"""Fixtures for the gate's DNS-based tests: a real DNS server with the standard test
zones (``tests/gate_zones.py``), a resolver pointed at it, and a DKIM signing key.

Import these into conftest (``from gate_fixtures import dkim_key, dns_server,
gate_resolver``) or into a test module. Without dnsmasq the tests that use
``dns_server`` skip with the reason, which CI (CI=true) turns into a failure.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

import gate_zones
from dnsserver import DnsServer, find_dnsmasq


@dataclass(frozen=True)
class DkimKey:
    """An RSA key for signing test messages; the zones publish ``public_b64``."""

    private_pem: bytes          # PKCS#1 PEM, as dkimpy reads it
    public_b64: str             # base64 DER SubjectPublicKeyInfo, the DKIM p= value
    selector: str = gate_zones.SELECTOR

    def sign(self, message: bytes, domain: str, selector: str | None = None,
             **kwargs) -> bytes:
        """``message`` with a DKIM-Signature (d=``domain``) prepended, as a signer sends it."""
        import dkim

        signature = dkim.sign(message, (selector or self.selector).encode(), domain.encode(),
                              self.private_pem, **kwargs)
        return signature + message


def make_dkim_key(bits: int = 2048) -> DkimKey:
    """A fresh RSA key (2048 bits: RFC 8301 section 3.2 has verifiers accept 1024-4096)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    public_der = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return DkimKey(private_pem, base64.b64encode(public_der).decode("ascii"))


@pytest.fixture(scope="session")
def dkim_key() -> DkimKey:
    return make_dkim_key()


@pytest.fixture(scope="session")
def dns_server(dkim_key):
    """dnsmasq on 127.0.0.1 (``.address``, ``.port``) serving ``gate_zones``."""
    if find_dnsmasq() is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base): the gate's "
                    "DNS tests need a real DNS server")
    server = DnsServer(gate_zones.records(dkim_key.public_b64),
                       slow_domains=gate_zones.SLOW_DOMAINS)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gate_resolver(dns_server):
    """A fresh ``smtpgate.dns.Resolver`` (empty cache) on the test server, timeout 0.5 s."""
    from smtpgate.dns import Resolver

    return Resolver([dns_server.address], port=dns_server.port, timeout=gate_zones.TEST_TIMEOUT)
