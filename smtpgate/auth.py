"""Submission users' passwords: scrypt hashes, checked off the event loop.

Stored as ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``. scrypt (RFC 7914) is in
the standard library (hashlib.scrypt), memory-hard, and its cost is in the string, so
the cost can be raised later without invalidating stored hashes. n=2**15, r=8, p=1 is
the RFC 7914 section 2 interactive-login recommendation (about 32 MiB, ~0.1 s here).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_LOG2_N, _R, _P = 15, 8, 1


def hash_password(password: str, *, log2_n: int = _LOG2_N) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode(), salt, log2_n, _R, _P)
    b64 = base64.b64encode
    return f"scrypt${log2_n}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def _scrypt(pw: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(pw, salt=salt, n=1 << log2_n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def verify_password(password: str | bytes, stored: str) -> bool:
    """Constant-time comparison; a malformed stored hash never matches."""
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        salt_b, digest_b = base64.b64decode(salt), base64.b64decode(digest)
        pw = password if isinstance(password, bytes) else password.encode()
        return hmac.compare_digest(_scrypt(pw, salt_b, int(log2_n), int(r), int(p)), digest_b)
    except (ValueError, TypeError):
        return False
