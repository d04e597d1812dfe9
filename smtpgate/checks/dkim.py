"""DKIM (RFC 6376) verification of every DKIM-Signature, with keys from our resolver.

Not a verdict on its own: the results feed DMARC, Authentication-Results and the
combined score.

How dkimpy is made to use our resolver: dkimpy takes the key lookup as a parameter
(``dnsfunc``) but calls it synchronously, and its ``dkim.asyncsupport`` needs aiodns
and its own resolver. So the work is split in three: (1) in a worker thread, dkimpy
parses the message and each signature's tags (no DNS); (2) on the event loop, all key
records ``<s>._domainkey.<d>`` are fetched concurrently through our ``Resolver``, so a
DNS timeout is known as such; (3) in a worker thread, dkimpy verifies each signature
with a ``dnsfunc`` that only reads the keys fetched in (2). The threads keep body
hashing of a large message off the event loop; dkimpy never does DNS itself.

Results follow RFC 8601 section 2.7.1: "pass"; "fail" (the signature or body hash
does not verify); "neutral" (the signature is malformed or unusable: bad tags, expired,
bad canonicalisation); "permerror" (the key is missing, revoked, malformed or too
small, or the algorithm is one RFC 8301 forbids); "temperror" (DNS trouble fetching
the key).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dkim
import dkim.util

from smtpgate.dns import BaseResolver

# More signatures than this are not verified: each costs a DNS lookup and a body hash,
# and a legitimate message carries one to three (author, ESP, mailing list).
MAX_SIGNATURES = 5
# RFC 8301 section 3.2: keys under 1024 bits MUST NOT be considered valid.
MIN_KEY_BITS = 1024
# RFC 8301 section 3.1: rsa-sha1 MUST NOT be used for verifying.
FORBIDDEN_ALGORITHMS = frozenset({b"rsa-sha1"})


@dataclass(frozen=True, slots=True)
class DkimResult:
    """One signature's result; ``b`` is the start of b= (RFC 6008 header.b)."""

    domain: str | None          # d=
    selector: str | None        # s=
    result: str                 # pass, fail, neutral, temperror, permerror
    reason: str = ""
    b: str | None = None


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace").strip().lower() or None


@dataclass
class _Signature:
    idx: int
    domain: str | None
    selector: str | None
    b: str | None
    key_name: str | None = None     # set when the signature is usable
    result: DkimResult | None = None  # set when decided before verification


def _prepare(message: bytes, cap: int):
    """Step (1), in a thread: parse the message and every signature (dkimpy, no DNS)."""
    try:
        signer = dkim.DKIM(message, minkey=MIN_KEY_BITS)
    except Exception:        # dkimpy's parser is not hardened: garbage raises anything
        return None
    values = [v for k, v in signer.headers if k.lower() == b"dkim-signature"]
    signatures = []
    for idx, value in enumerate(values[:cap]):
        try:
            loose = dkim.util.parse_tag_value(value)
        except Exception:
            loose = {}
        sig = _Signature(idx, _text(loose.get(b"d")), _text(loose.get(b"s")),
                         _b_prefix(loose.get(b"b")))
        try:
            tags = signer.verify_headerprep(idx)[0]
        except Exception as e:
            sig.result = _result(sig, "neutral", f"malformed signature: {e}")
        else:
            if tags.get(b"a") in FORBIDDEN_ALGORITHMS:
                sig.result = _result(sig, "permerror",
                                     f"algorithm {tags[b'a'].decode()} not acceptable (RFC 8301)")
            elif sig.domain and sig.selector:
                sig.key_name = f"{sig.selector}._domainkey.{sig.domain}"
            else:
                sig.result = _result(sig, "neutral", "signature has no usable d= or s=")
        signatures.append(sig)
    return signer, signatures


def _b_prefix(value: bytes | None) -> str | None:
    if not value:
        return None
    compact = b"".join(value.split())
    return compact[:8].decode("ascii", "replace") or None


def _result(sig: _Signature, result: str, reason: str) -> DkimResult:
    return DkimResult(sig.domain, sig.selector, result, reason[:300], sig.b)


def _verify(signer, signatures, keys: dict[str, str]) -> list[DkimResult]:
    """Step (3), in a thread: verify each usable signature against its fetched key."""
    results = []
    for sig in signatures:
        if sig.result is None:
            key = keys[sig.key_name]

            def dnsfunc(name, timeout=5, _key=key.encode("utf-8", "replace")):
                return _key

            try:
                ok = signer.verify(sig.idx, dnsfunc=dnsfunc)
            except dkim.KeyFormatError as e:        # e.g. key shorter than MIN_KEY_BITS
                sig.result = _result(sig, "permerror", f"unusable key: {e}")
            except dkim.ValidationError as e:       # body hash mismatch, bad tags
                reason = str(e)
                verdict = "fail" if "body hash mismatch" in reason else "neutral"
                sig.result = _result(sig, verdict, reason)
            except Exception as e:                  # MessageFormatError and dkimpy bugs
                sig.result = _result(sig, "neutral", f"cannot verify: {e}")
            else:
                sig.result = (_result(sig, "pass", "signature verified") if ok
                              else _result(sig, "fail", "signature did not verify"))
        results.append(sig.result)
    return results


async def verify(resolver: BaseResolver, message: bytes, *,
                 max_signatures: int = MAX_SIGNATURES) -> list[DkimResult]:
    """One result per DKIM-Signature (the first ``max_signatures``); [] when unsigned.

    Never raises on a malformed message or signature: that is a result ("neutral").
    """
    prepared = await asyncio.to_thread(_prepare, message, max_signatures)
    if prepared is None:
        return []                          # no parseable header, so no signature to judge
    signer, signatures = prepared
    names = sorted({s.key_name for s in signatures if s.key_name})
    answers = dict(zip(names, await asyncio.gather(*(resolver.txt(n) for n in names))))
    keys: dict[str, str] = {}
    for sig in signatures:
        if sig.result is not None:
            continue
        answer = answers[sig.key_name]
        if answer.temporary:
            sig.result = _result(sig, "temperror", f"DNS {answer.status} for {sig.key_name}")
            continue
        if not answer.ok:
            sig.result = _result(sig, "permerror", f"no key at {sig.key_name} ({answer.status})")
            continue
        # RFC 6376 section 3.6.2.2: several records at the name are ambiguous; like
        # dkimpy we use the first.
        record = answer.records[0]
        try:
            dkim.evaluate_pk(sig.key_name.encode(), record.encode("utf-8", "replace"))
        except Exception as e:             # KeyFormatError and friends: revoked (p=), junk
            sig.result = _result(sig, "permerror", f"bad key at {sig.key_name}: {e}")
            continue
        keys[sig.key_name] = record
    return await asyncio.to_thread(_verify, signer, signatures, keys)
