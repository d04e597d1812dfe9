"""TLS for the listeners: the configured certificate, or one made on first start.

A gate configured without a certificate still offers STARTTLS and implicit TLS, with a
self-signed certificate created once in the state directory (as Postfix's "snakeoil"
does). Sending servers on port 25 do not verify certificates (RFC 7435 opportunistic
TLS), and submission clients can pin it; a real certificate is a [tls] setting away.
"""
from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path


def self_signed(state_dir: Path, hostname: str) -> tuple[Path, Path]:
    cert, key = state_dir / "tls" / "gate.crt", state_dir / "tls" / "gate.key"
    if cert.exists() and key.exists():
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert.parent.mkdir(parents=True, exist_ok=True)
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=3650))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
         .sign(k, hashes.SHA256()))
    fd = os.open(key.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    os.replace(key.with_suffix(".tmp"), key)
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
