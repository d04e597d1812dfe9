"""Stable feature hashing, used only at the edge: by estimators with fixed-width vectors.

Python's ``hash()`` is salted per process, so a model trained in one process would
read garbage in the next; these hashes are stable across processes and machines. Like
scikit-learn's HashingVectorizer this is stateless: no vocabulary is stored, collisions
are accepted (at 2**22 buckets and a few thousand features per message they cost less
than the noise between runs), and the hashed model cannot name its features. Evidence
is therefore computed from the readable tokens of the message being explained.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xC2B2AE3D27D4EB4F)

# Tokens are hashed all at once, as a polynomial over their UTF-8 bytes mod 2**64:
# with H the prefix sums of b[k] * P**k, a token spanning bytes [s, e) hashes to
# (H[e] - H[s]) * P**-s, which needs only cumulative sums and precomputed powers (P is
# odd, so its inverse mod 2**64 exists). A dict-backed CRC-32 per token cost 100 ns of
# interpreter per token; this is about ten times cheaper per message and keeps no cache.
_P = 0x100000001B3  # the FNV-64 prime: odd, with well-spread bits
_P_INV = pow(_P, -1, 1 << 64)
_POW_LEN = 1 << 16


def _powers(base: int, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    out[0] = 1
    out[1:] = np.uint64(base)
    return np.cumprod(out, dtype=np.uint64)  # wraps mod 2**64, which is what we want


_POW = _powers(_P, _POW_LEN)
_POW_INV = _powers(_P_INV, _POW_LEN)


def _mix(h: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (murmur3's fmix64): every input bit moves every output bit."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def token_hashes(tokens) -> np.ndarray:
    """uint64 array of stable hashes of the tokens, in order."""
    if not tokens:
        return np.zeros(0, dtype=np.uint64)
    data = "\x00".join(tokens).encode("utf-8", "surrogatepass") + b"\x00"
    b = np.frombuffer(data, dtype=np.uint8)
    n = len(b)
    if n > _POW_LEN:
        pw, pwi = _powers(_P, n), _powers(_P_INV, n)
    else:
        pw, pwi = _POW[:n], _POW_INV[:n]
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(b.astype(np.uint64) * pw, dtype=np.uint64, out=prefix[1:])
    ends = np.flatnonzero(b == 0)           # the separator after each token
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    h = (prefix[ends] - prefix[starts]) * pwi[starts]
    # the length goes in too, so that tokens differing only by trailing NULs cannot
    # meet (tokens never hold NUL, but the hash should not depend on that)
    return _mix(h ^ (ends - starts).astype(np.uint64) * _GOLDEN)


def unique(idx: np.ndarray, return_first: bool = False):
    """Sorted unique bucket indices (and, for each, the position of one occurrence).

    By hand rather than ``np.unique``: numpy 2 takes a hash-based path for plain calls
    that is 6x slower on a few thousand ints than sorting (285 us vs 46 us here), and
    an unstable sort is enough because any occurrence of a duplicate will do (it is the
    same feature, or a rare bucket collision).
    """
    order = np.argsort(idx)
    s = idx[order]
    keep = np.empty(len(s), dtype=bool)
    if len(s):
        keep[0] = True
        np.not_equal(s[1:], s[:-1], out=keep[1:])
    return (s[keep], order[keep]) if return_first else s[keep]


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest |values|, largest first, without sorting them all."""
    if k <= 0 or len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    mag = np.abs(values)
    if len(values) > k:
        part = np.argpartition(-mag, k - 1)[:k]
    else:
        part = np.arange(len(values))
    return part[np.argsort(-mag[part], kind="stable")]


def buckets(h: np.ndarray, bits: int, salt: int = 0) -> np.ndarray:
    """Map uint64 hash values to ``bits``-bit bucket indices (Fibonacci hashing)."""
    x = (h ^ np.uint64(salt)) * _GOLDEN
    return (x >> np.uint64(64 - bits)).astype(np.int64)


def pair_hashes(h: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthogonal sparse bigrams: (hash, left index, distance) for each pair within the window.

    For a window of 5 (``max_distance`` 4), a word is paired with each of the next
    four words, and the distance is part of the feature ("a <skip> <skip> b" differs
    from "a b"), as in CRM114's OSB and Siefkes et al. (2004).
    """
    n = len(h)
    hs, lefts, dists = [], [], []
    for d in range(1, max_distance + 1):
        if n <= d:
            break
        left = h[:-d]
        right = h[d:]
        hs.append(left * _GOLDEN + right * _MIX2 + np.uint64(d * 0x165667B1))
        lefts.append(np.arange(n - d))
        dists.append(np.full(n - d, d))
    if not hs:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(hs), np.concatenate(lefts), np.concatenate(dists)


def byte_ngrams(data: bytes, n: int = 4) -> np.ndarray:
    """uint64 values of every overlapping byte n-gram (n <= 8) of ``data``."""
    if len(data) < n:
        return np.zeros(0, dtype=np.uint64)
    b = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
    g = np.zeros(len(b) - n + 1, dtype=np.uint64)
    for i in range(n):
        g = (g << np.uint64(8)) | b[i: len(b) - n + 1 + i]
    return g
