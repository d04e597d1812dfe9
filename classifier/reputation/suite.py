"""The reputation checks as the scorer runs them: configured from one TOML file, each
loaded on its own, run on every message, and taught by feedback.

    mailsift scorer serve --reputation reputation.toml

Without a file, the checks that need no data from an admin run with their defaults:
``pyzor`` (a digest store in the scorer's state directory), ``neardup``, ``ucepp``,
``phishing`` and ``reported`` (this installation's own reports and releases). The lists (``urlbl`` zones, the ``safebrowsing`` file, ``external_pattern``
and ``signature_match`` files) run once the file names them. The format is documented
in README.md ("Reputation checks") with an example file per list.

A check that cannot load (a missing list file, a store that does not open) is disabled
with its reason logged and shown by ``status()``; a check that fails on one message (a
digest server that times out) abstains for that message, with the reason in the
evidence. Neither stops the scorer.

Learning: ``learn`` is called once per Learn request by the worker that received it (the
stores are shared files, not per-worker model state). A report (spam) raises the Pyzor
report count, adds the message to the near-duplicate index (with its reporter and
whether the feedback store trusts them), counts its UCEPP tokens
as spam and records the reporter's spam vote on its body; a release (ham) whitelists
the digest, drops the message's near-duplicates from the index, counts its tokens as
ham and records the releaser's ham vote. The first three are taught once per message
(the learn log's digest); the vote is recorded for every reporter, also of bytes
already learned, with whether the feedback store trusts the reporter.

The Pyzor digest, which both ``pyzor`` and ``reported`` key on, is computed once per
message (``_Digests``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..features import MessageFeatures, as_features
from .base import Disabled, Finding, disabled

log = logging.getLogger("mailsift.reputation")


@dataclass
class ReputationConfig:
    resolver_nameservers: tuple[str, ...] = ()
    resolver_port: int = 53
    resolver_timeout: float = 1.0
    pyzor: dict = field(default_factory=lambda: {"enabled": True})
    neardup: dict = field(default_factory=lambda: {"enabled": True})
    ucepp: dict = field(default_factory=lambda: {"enabled": True})
    urlbl: dict = field(default_factory=dict)
    phishing: dict = field(default_factory=lambda: {"enabled": True})
    safebrowsing: dict = field(default_factory=dict)
    external_pattern: dict = field(default_factory=dict)
    signature_match: dict = field(default_factory=dict)
    reported: dict = field(default_factory=lambda: {"enabled": True})


_CHECK_KEYS = {
    "pyzor": {"enabled": bool, "store": str, "server": str, "user": str, "key": str, "timeout": float,
              "min_reports": int, "whitelist_min": int, "whitelist_factor": float, "max_age_days": int},
    "neardup": {"enabled": bool, "threshold": float, "decide_at": float, "min_reporters": int,
                "max_entries": int, "max_age_days": int},
    "ucepp": {"enabled": bool, "half_life_days": float, "min_spam": float, "max_rows": int,
              "allow_domains": list},
    "urlbl": {"enabled": bool, "zones": list, "min_lists": int, "timeout": float, "max_domains": int},
    "phishing": {"enabled": bool, "threshold": float, "brands": dict},
    "safebrowsing": {"enabled": bool, "file": str},
    "external_pattern": {"enabled": bool, "files": list},
    "signature_match": {"enabled": bool, "files": list, "clamd": str, "timeout": float},
    "reported": {"enabled": bool, "min_reporters": int, "max_age_days": int},
}


class _Digests:
    """One message's Pyzor and body digests, computed at most once whichever check
    asks first (a Pyzor digest parses the whole message: ~0.1 ms for a small one)."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self._pyzor: str | None = None
        self._done = False

    def pyzor(self) -> str | None:
        if not self._done:
            from .reported import MAX_PARSE_BYTES
            from .pyzor import pyzor_digest

            self._pyzor = pyzor_digest(self.raw) if len(self.raw) <= MAX_PARSE_BYTES else None
            self._done = True
        return self._pyzor

    def body(self) -> str | None:
        from .reported import body_digest

        return body_digest(self.raw, self.pyzor())

    def exact(self) -> str | None:
        from .reported import exact_digest

        return exact_digest(self.raw)


def load_config(path: str | Path | None) -> ReputationConfig:
    """Read and validate the file; errors name the key (``urlbl.zones[1].bitmask: ...``)."""
    from smtpgate.config import Table, read_toml

    if path is None:
        return ReputationConfig()
    p = Path(path)
    top = Table(read_toml(p), "")
    cfg = ReputationConfig()
    r = top.sub("resolver")
    cfg.resolver_nameservers = r.strings("nameservers")
    cfg.resolver_port = r.take("port", int, 53, lo=1, hi=65535)
    cfg.resolver_timeout = r.take("timeout", float, 1.0, lo=0.05, hi=30.0)
    r.done()
    for check, keys in _CHECK_KEYS.items():
        t = top.sub(check)
        out = dict(getattr(cfg, check))
        for key, typ in keys.items():
            v = t.take(key, typ)
            if v is not None:
                out[key] = v
        t.done()
        if out and "enabled" not in out:
            out["enabled"] = True
        setattr(cfg, check, out)
    top.done()
    base = p.parent
    for check, key in (("safebrowsing", "file"),):
        v = getattr(cfg, check).get(key)
        if v and not Path(v).is_absolute():
            getattr(cfg, check)[key] = str(base / v)
    for check in ("external_pattern", "signature_match"):
        files = getattr(cfg, check).get("files") or []
        getattr(cfg, check)["files"] = [f if Path(f).is_absolute() else str(base / f) for f in files]
    return cfg


class Reputation:
    """The loaded checks. ``evaluate`` is a coroutine (URLBL asks DNS); everything else
    is local and quick."""

    def __init__(self, cfg: ReputationConfig, state_dir: str | Path, *, resolver=None):
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.checks: dict[str, Any] = {}
        self.reasons: dict[str, str] = {}     # check -> why it is disabled
        self._resolver = resolver
        from smtpgate import psl

        psl.load()   # the Public Suffix List's parse (~50 ms) at start, not on the first message
        for check in _CHECK_KEYS:
            settings = getattr(cfg, check)
            if not settings.get("enabled", False):
                self.reasons[check] = "not configured"
                continue
            try:
                self.checks[check] = getattr(self, f"_load_{check}")(settings)
            except (Disabled, OSError, ValueError) as exc:
                self.reasons[check] = str(exc) or type(exc).__name__
                disabled(check, self.reasons[check])

    # -- loading -------------------------------------------------------------------
    def _load_pyzor(self, s: dict):
        from . import pyzor

        if s.get("store", "sqlite") == "pyzord":
            host, _, port = s.get("server", "127.0.0.1:24441").rpartition(":")
            return pyzor.PyzordStore(host, int(port), s.get("timeout", 2.0),
                                     user=s.get("user", "anonymous"), key=s.get("key", ""))
        if s.get("store", "sqlite") != "sqlite":
            raise Disabled(f"pyzor.store must be sqlite or pyzord, not {s['store']!r}")
        return pyzor.SqliteDigestStore(self.state_dir / "pyzor.sqlite",
                                       max_age_days=s.get("max_age_days", 30))

    def _load_neardup(self, s: dict):
        from .neardup import NearDupIndex

        kw = {k: s[k] for k in ("threshold", "max_entries", "max_age_days") if k in s}
        return NearDupIndex(self.state_dir / "neardup.sqlite", **kw)

    def _load_ucepp(self, s: dict):
        from . import ucepp

        kw = {k: s[k] for k in ("half_life_days", "max_rows", "allow_domains") if k in s}
        return ucepp.UceppStore(self.state_dir / "ucepp.sqlite", **kw)

    def _load_urlbl(self, s: dict):
        from .urlbl import UrlblZone

        zones = []
        for i, z in enumerate(s.get("zones", [])):
            if isinstance(z, str):
                zones.append(UrlblZone(z))
            elif isinstance(z, dict):
                try:
                    zones.append(UrlblZone(**z))
                except TypeError as exc:
                    raise Disabled(f"urlbl.zones[{i}]: {exc}") from None
            else:
                raise Disabled(f"urlbl.zones[{i}]: a zone name or a table")
        if not zones:
            raise Disabled("urlbl has no zones")
        if self._resolver is None:
            from smtpgate.dns import Resolver

            self._resolver = Resolver(list(self.cfg.resolver_nameservers) or None,
                                      port=self.cfg.resolver_port, timeout=self.cfg.resolver_timeout)
        return zones

    def _load_phishing(self, s: dict):
        return {"brands": s.get("brands") or None, "threshold": s.get("threshold")}

    def _load_safebrowsing(self, s: dict):
        from .safebrowsing import SafeBrowsingList

        if not s.get("file"):
            raise Disabled("safebrowsing.file is not set")
        return SafeBrowsingList.load(s["file"])

    def _load_external_pattern(self, s: dict):
        from .external_pattern import load_patterns

        if not s.get("files"):
            raise Disabled("external_pattern.files is empty")
        return load_patterns(s["files"])

    def _load_signature_match(self, s: dict):
        from .signature_match import ClamdScanner, load_signatures

        if s.get("clamd"):   # ClamAV's own engine over its socket
            scanner = ClamdScanner(s["clamd"], timeout=s.get("timeout", 10.0))
            scanner.check()
            return scanner
        if not s.get("files"):
            raise Disabled("signature_match has neither files nor clamd")
        return load_signatures(s["files"])

    def _load_reported(self, s: dict):
        from .reported import ReportedStore

        return ReportedStore(self.state_dir / "reported.sqlite", max_age_days=s.get("max_age_days", 30))

    def status(self) -> dict[str, str]:
        return {c: ("enabled" if c in self.checks else f"disabled: {self.reasons.get(c, '')}")
                for c in _CHECK_KEYS}

    # -- scoring ---------------------------------------------------------------------
    async def evaluate(self, raw: bytes, features: MessageFeatures | None = None,
                       recipients: list[str] | None = None) -> tuple[list[Finding], dict[str, float]]:
        """(findings, milliseconds per check). A check that fails on this message is
        logged and skipped; it never fails the scoring."""
        f = features if features is not None else as_features(raw)
        found: list[Finding] = []
        times: dict[str, float] = {}
        digests = _Digests(raw)
        urlbl_task = None
        if "urlbl" in self.checks:
            urlbl_task = asyncio.ensure_future(self._urlbl(f))
        for check in self.checks:
            if check == "urlbl":
                continue
            t0 = time.perf_counter()
            try:
                signal = self._run(check, raw, f, recipients or [], digests)
            except Exception as exc:   # one message's failure: abstain, say why
                log.warning("check failed", extra={"fields": {"event": "check_failed", "check": check,
                                                             "error": f"{type(exc).__name__}: {exc}"}})
                signal = None
            times[check] = (time.perf_counter() - t0) * 1000.0
            if signal is not None:
                found.append(Finding(check, signal))
        if urlbl_task is not None:
            t0 = time.perf_counter()
            try:
                signal = await urlbl_task
            except Exception as exc:
                log.warning("check failed", extra={"fields": {"event": "check_failed", "check": "urlbl",
                                                             "error": f"{type(exc).__name__}: {exc}"}})
                signal = None
            times["urlbl"] = (time.perf_counter() - t0) * 1000.0
            if signal is not None:
                found.append(Finding("urlbl", signal))
        return found, times

    def _run(self, check: str, raw: bytes, f: MessageFeatures, recipients: list[str], digests: _Digests):
        c = self.checks[check]
        s = getattr(self.cfg, check)
        if check == "pyzor":
            from .pyzor import pyzor

            kw = {k: s[k] for k in ("min_reports", "whitelist_min", "whitelist_factor") if k in s}
            digest = digests.pyzor()
            return None if digest is None else pyzor(raw, c, digest=digest, **kw)
        if check == "reported":
            from .reported import reported

            digest = digests.body()
            return None if digest is None else reported(raw, c, digest=digest, exact=digests.exact(),
                                                        min_reporters=s.get("min_reporters", 2))
        if check == "neardup":
            from .neardup import neardup

            return neardup(f, c, **{k: s[k] for k in ("decide_at", "min_reporters") if k in s})
        if check == "ucepp":
            from .ucepp import ucepp

            return ucepp(f, c, **({"min_spam": s["min_spam"]} if "min_spam" in s else {}))
        if check == "phishing":
            from .phishing import phishing

            domains = sorted({r.rpartition("@")[2].lower() for r in recipients if "@" in r})
            kw = {"threshold": c["threshold"]} if c["threshold"] is not None else {}
            return phishing(f, brands=c["brands"], recipient_domains=domains, **kw)
        if check == "safebrowsing":
            from .safebrowsing import safebrowsing

            return safebrowsing(f, c)
        if check == "external_pattern":
            from .external_pattern import external_pattern

            return external_pattern(f, c, raw=raw)
        if check == "signature_match":
            from .signature_match import signature_match

            return signature_match(raw, c)
        raise KeyError(check)

    async def _urlbl(self, f: MessageFeatures):
        from .urlbl import lookup, urlbl

        s = self.cfg.urlbl
        listings = await lookup(self._resolver, f, self.checks["urlbl"],
                                max_domains=s.get("max_domains", 20), timeout=s.get("timeout", 1.0))
        return urlbl(listings, min_lists=s.get("min_lists", 2))

    # -- learning --------------------------------------------------------------------
    def learn(self, raw: bytes, label: str, features: MessageFeatures | None = None,
              previous_label: str | None = None, who: str = "unknown", *, trusted: bool = False,
              only: tuple[str, ...] | None = None) -> dict[str, str]:
        """Teach the stores one labelled message (``who`` taught it: the reporter or
        the admin who released it; ``trusted``: the feedback store vouched for them);
        returns what each check did. ``only`` limits it to those checks (the scorer
        records a later reporter's vote on bytes already learned, ``("reported",)``,
        without counting the message twice in Pyzor, near-dup and UCEPP)."""
        f = features if features is not None else as_features(raw)
        done: dict[str, str] = {}
        spam = label == "spam"
        digests = _Digests(raw)
        for check in ("pyzor", "neardup", "ucepp", "reported"):
            if check not in self.checks or (only is not None and check not in only):
                continue
            c = self.checks[check]
            try:
                if check == "pyzor":
                    d = digests.pyzor()
                    if d is None:
                        done[check] = "no digest"
                        continue
                    (c.report if spam else c.whitelist)(d)
                    done[check] = ("reported " if spam else "whitelisted ") + d
                elif check == "neardup":
                    if spam:
                        added = c.add(f, f.digest, who=who, trusted=trusted)
                        done[check] = (f"added{' (trusted)' if trusted else ''}" if added
                                       else "too little text")
                    else:
                        hit = c.query(f)
                        removed = c.remove(f.digest)
                        if hit is not None and hit[1] != f.digest:
                            removed = c.remove(hit[1]) or removed
                        done[check] = "removed" if removed else "not indexed"
                elif check == "ucepp":
                    c.learn(f, label)
                    done[check] = f"counted as {label}"
                elif check == "reported":
                    d = digests.body()
                    if d is None:
                        done[check] = "no body"
                        continue
                    exact = digests.exact()
                    for key in dict.fromkeys((exact, d)):   # the exact body decides; the Pyzor digest pulls
                        if key is not None:
                            c.vote(key, label, who, trusted=trusted)
                    done[check] = f"{'trusted ' if trusted else ''}{label} vote on {d}"
            except Exception as exc:
                done[check] = f"failed: {type(exc).__name__}: {exc}"
                log.warning("learn failed", extra={"fields": {"event": "reputation_learn_failed",
                                                             "check": check, "error": done[check]}})
        return done

    def close(self) -> None:
        for c in self.checks.values():
            close = getattr(c, "close", None)
            if callable(close):
                close()
