"""The gate's configuration: one TOML file, validated at start.

Every key is known here; an unknown key, a wrong type or a value out of range stops the
gate at start with an error naming the key (``domains."example.org".filtering.threshold:
must be between 0 and 1, got 1.5``), because a typo in a mail filter's configuration is
silently lost mail or an open relay.

Filtering settings apply in three layers, later ones winning key by key:
``[filtering]`` (defaults for every domain), ``[domains."D".filtering]`` and
``[domains."D".recipients."local@D"]``. What applies to a recipient has a stable id,
``Settings.id`` (a hash of the merged settings): recipients with the same id can share
one SMTP transaction, others get ``split_delivery``.

The shipped example is ``smtpgate/default.toml``: the README's main command runs it.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import ipaddress
import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .checks.dnsbl import Zone
from .checks.greylisted import GreylistSettings


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key it is about."""


# --- small typed readers --------------------------------------------------------------

def _type_name(t) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(t, str(t))


class Table:
    """A TOML table being read: each key is taken once, leftovers are unknown keys."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'top level'}: must be a table")
        self.data = dict(data)
        self.path = path

    def key(self, k: str) -> str:
        k = _quote(k)
        return f"{self.path}.{k}" if self.path else k

    def take(self, k: str, t, default=None, *, lo=None, hi=None, required=False):
        if k not in self.data:
            if required:
                raise ConfigError(f"{self.key(k)}: required")
            return default
        v = self.data.pop(k)
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, t) or (t is int and isinstance(v, bool)):
            raise ConfigError(f"{self.key(k)}: must be {_type_name(t)}, got {v!r}")
        if lo is not None and v < lo or hi is not None and v > hi:
            raise ConfigError(f"{self.key(k)}: must be between {lo} and {hi}, got {v!r}")
        return v

    def strings(self, k: str, default=()) -> tuple[str, ...]:
        v = self.take(k, list, None)
        if v is None:
            return None if default is None else tuple(default)
        for i, x in enumerate(v):
            if not isinstance(x, str):
                raise ConfigError(f"{self.key(k)}[{i}]: must be a string, got {x!r}")
        return tuple(v)

    def sub(self, k: str) -> "Table":
        return Table(self.data.pop(k, {}), self.key(k))

    def done(self) -> None:
        if self.data:
            bad = sorted(self.data)[0]
            raise ConfigError(f"{self.key(bad)}: unknown key")


def _quote(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _hostport(value: str, key: str, default_port: int | None = None) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, str(default_port) if default_port else ""
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: must be host:port, got {value!r}")
    return host, int(port)


def _network(value: str, key: str):
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(f"{key}: not an IP address or network: {value!r}") from None


# --- address patterns -----------------------------------------------------------------

def normalise_address(address: str) -> str:
    """Compare addresses case-insensitively; the local part's case is kept by RFC 5321 but
    no real system relies on it, and list entries typed by admins must match."""
    return address.strip().strip("<>").lower()


def address_matches(address: str, patterns: tuple[str, ...]) -> str | None:
    """The first pattern matching the address, or None. Patterns: a full address
    (``a@b.org``), a domain (``@b.org`` or ``b.org``: that domain only), a subdomain
    wildcard (``*.b.org``), or a glob over the address (``*@b.org``, ``news-*@*``)."""
    a = normalise_address(address)
    domain = a.rpartition("@")[2]
    for p in patterns:
        q = p.lower()
        if q.startswith("@"):
            q = q[1:]
            if domain == q:
                return p
        elif "@" not in q and "*" not in q and "?" not in q:
            if domain == q:
                return p
        elif q.startswith("*.") and "@" not in q:
            if domain.endswith(q[1:]):
                return p
        elif fnmatch.fnmatchcase(a, q):
            return p
    return None


# --- the settings ---------------------------------------------------------------------

# What the contract names as defaults (classifications.md, "Defaults named in the
# reference"); the rest say where they come from.
DEFAULT_CHECKS = (
    "invalid_helo", "dnsbl_multiple", "dnswl", "spf_fail", "sender_missing_dns", "dmarc",
    "line_too_long", "too_many_mime_parts", "bad_header_count", "date_skew",
    "subject_invalid_chars", "header_too_long", "message_partial", "restricted_address_chars",
    "null_sender_multiple_rcpt", "scorer",
)


@dataclass(frozen=True)
class Settings:
    """The filtering settings that apply to one recipient."""

    threshold: float = 0.9                    # contract default (0.91 = "tolerant")
    max_line_length: int = 998                # RFC 5322 2.1.1, contract default
    max_mime_parts: int = 100                 # contract default
    max_date_skew_days: float = 7.0           # contract default
    max_header_length: int = 16384            # one field as received; see checks/header_too_long
    allowed_address_chars: str | None = None  # None: checks/restricted_address_chars default
    sender_whitelist: tuple[str, ...] = ()
    sender_blacklist: tuple[str, ...] = ()
    blackhole: tuple[str, ...] = ()           # local addresses whose mail goes nowhere
    disabled_checks: frozenset[str] = frozenset()

    def enabled(self, check: str) -> bool:
        return check not in self.disabled_checks

    @functools.cached_property
    def id(self) -> str:
        """A stable id of these settings: equal settings, equal id, across restarts."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["disabled_checks"] = sorted(d["disabled_checks"])
        blob = json.dumps(d, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _read_settings(t: Table, base: Settings) -> Settings:
    out = {}
    for name, typ, lo, hi in (("threshold", float, 0.0, 1.0),
                              ("max_line_length", int, 78, 10_000_000),
                              ("max_mime_parts", int, 1, 100_000),
                              ("max_date_skew_days", float, 0.0, 36500.0),
                              ("max_header_length", int, 256, 10_000_000)):
        v = t.take(name, typ, lo=lo, hi=hi)
        if v is not None:
            out[name] = v
    chars = t.take("allowed_address_chars", str)
    if chars is not None:
        out["allowed_address_chars"] = chars
    for name in ("sender_whitelist", "sender_blacklist", "blackhole"):
        v = t.strings(name, None)
        if v is not None:
            out[name] = v
    checks = t.sub("checks")
    disabled = set(base.disabled_checks)
    for name in DEFAULT_CHECKS:
        v = checks.take(name, bool)
        if v is False:
            disabled.add(name)
        elif v is True:
            disabled.discard(name)
    checks.done()
    out["disabled_checks"] = frozenset(disabled)
    t.done()
    return replace(base, **out)


@dataclass(frozen=True)
class StateConfig:
    backend: str = "sqlite"                   # sqlite (one gate) or redis (several nodes)
    path: Path | None = None                  # sqlite: None = <state_dir>/state.db
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "mailsift:"
    timeout: float = 0.5


@dataclass(frozen=True)
class Limits:
    """The stateful protections' limits; 0 turns one off."""
    ip_concurrency: int = 10                  # the contract's default: 10 per IP
    ip_rate: int = 0                          # connections per IP per window (off by default)
    ip_rate_window: float = 60.0
    sender_rate: int = 0                      # messages per sender (or user) per minute
    invalid_rcpt: int = 0                     # invalid RCPTs per IP per window, then 550
    invalid_rcpt_window: float = 3600.0
    outgoing_per_hour: int = 0                # per outgoing user
    outgoing_per_day: int = 0
    auth_failures: int = 5                    # failed AUTHs per IP or per user in auth_window
    auth_window: float = 600.0                # (Postfix anvil's default rate time unit is 60 s;
    auth_lockout: float = 900.0               # fail2ban's postfix-sasl jail: 5 in 10 min, 15 min ban)


@dataclass(frozen=True)
class Domain:
    name: str
    route: tuple[str, int]                   # destination host:port
    local_recipients: frozenset[str] | None  # None: every address of the domain
    settings: Settings
    recipient_settings: dict[str, Settings] = field(default_factory=dict)
    verify_recipients: bool = False          # callout to the route before accepting a RCPT
    rate_limits: dict[str, int] = field(default_factory=dict)  # ip_rate, sender_rate over [limits]

    def settings_for(self, address: str) -> Settings:
        return self.recipient_settings.get(normalise_address(address), self.settings)


@dataclass(frozen=True)
class User:
    """An outgoing (submission) user. The password is stored as a scrypt hash
    (``smtpgate.auth.hash_password``), never in clear."""
    name: str
    password_hash: str
    senders: tuple[str, ...]   # MAIL FROM patterns this user may use; () = any


@dataclass(frozen=True)
class Listener:
    kind: str                  # inbound, submission (STARTTLS), submissions (implicit TLS)
    host: str
    port: int


@dataclass(frozen=True)
class QueueConfig:
    """The durable queue (``[queue]``): accepted mail is on disk before the 250, then
    delivered by workers per route with retries; a permanent failure bounces (DSN)."""
    enabled: bool = True                      # false: relay synchronously while the sender waits
    # seconds to wait after the 1st, 2nd, ... temporary failure; the last repeats
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
    max_age: float = 5 * 86400.0              # then a tempfailing recipient bounces (RFC 5321 4.5.4.1)
    workers_per_route: int = 4                # concurrent deliveries to one route
    connect_timeout: float = 30.0
    poll_interval: float = 1.0                # how often workers look for due mail
    keep_delivered: float = 30 * 86400.0      # delivered mail kept for "report as spam"


@dataclass(frozen=True)
class QuarantineConfig:
    retention: float = 30 * 86400.0           # quarantined mail is purged after this


@dataclass(frozen=True)
class FeedbackConfig:
    """Release/report feeding the classifiers (``[feedback]``), with poisoning guards."""
    learn: bool = True                        # false: record feedback, teach nothing
    review_release_above: float = 0.99        # releasing a message scored >= this: held for review
    review_report_below: float = 0.01         # reporting a message scored <= this: held for review
    per_reporter_hour: int = 30               # learns per reporter per hour (0: no limit)
    per_reporter_day: int = 200               # learns per reporter per day (0: no limit)
    min_agreement: float = 0.5                # a reporter agreeing less often with the rest...
    agreement_min_samples: int = 5            # ...over at least this many shared messages: review
    trusted: tuple[str, ...] = ()             # reporters whose feedback skips review (not the rate limit)


@dataclass(frozen=True)
class GateConfig:
    hostname: str = "localhost"
    postmaster: str | None = None             # where RCPT TO:<postmaster> goes (RFC 5321 4.5.1)
    state_dir: Path = Path("var")
    listeners: tuple[Listener, ...] = ()
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100                 # RFC 5321 4.5.3.1.8 asks for at least 100
    command_timeout: float = 300.0            # RFC 5321 4.5.3.2: 5 minutes per command
    tls_cert: Path | None = None
    tls_key: Path | None = None
    own_ips: tuple[str, ...] = ()
    ip_blacklist: tuple = ()                  # ip_network objects
    sender_blacklist: tuple[str, ...] = ()    # the administrator's (sender_blacklisted)
    dnsbl_zones: tuple[Zone, ...] = ()
    dnsbl_min_hits: int = 2                   # contract: "multiple" = at least 2 lists
    dnswl_zones: tuple[Zone, ...] = ()
    dnswl_min_hits: int = 1
    dnsbl_check_private: bool = False         # look up loopback/private IPs (tests only)
    resolver_nameservers: tuple[str, ...] = ()
    resolver_port: int = 53
    resolver_timeout: float = 2.0
    scorer_addresses: tuple[str, ...] = ("127.0.0.1:50051",)
    scorer_deadline: float = 10.0
    scorer_spawn: bool = False                # start `mailsift scorer serve` ourselves
    scorer_model: str | None = None
    scorer_workers: int = 1
    scorer_reputation: str | None = None      # the spawned scorer's reputation checks' TOML
    filtering: Settings = Settings()
    domains: dict[str, Domain] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    outgoing_relay: tuple[str, int] | None = None
    outgoing_settings: Settings = Settings()
    relay_timeout: float = 60.0
    decision_log: Path | None = None          # None: <state_dir>/decisions.jsonl
    state: StateConfig = StateConfig()        # the stateful protections' store
    greylist: GreylistSettings | None = None  # None: greylisting off
    limits: Limits = Limits()
    queue: QueueConfig = QueueConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    feedback: FeedbackConfig = FeedbackConfig()

    def domain_of(self, address: str) -> Domain | None:
        d = normalise_address(address).rpartition("@")[2]
        return self.domains.get(d)

    @property
    def decision_log_path(self) -> Path:
        return self.decision_log or self.state_dir / "decisions.jsonl"


_LISTENER_KINDS = ("inbound", "submission", "submissions")


def _zones(t: Table, key: str) -> tuple[Zone, ...]:
    raw = t.take(key, list, [])
    out = []
    for i, z in enumerate(raw):
        k = f"{t.key(key)}[{i}]"
        if isinstance(z, str):
            out.append(Zone(z.strip(".").lower()))
        elif isinstance(z, dict):
            zt = Table(z, k)
            name = zt.take("name", str, required=True).strip(".").lower()
            codes = zt.strings("codes", None)
            for c in codes or ():
                try:
                    ipaddress.ip_address(c)
                except ValueError:
                    raise ConfigError(f"{k}.codes: not an IP address: {c!r}") from None
            zt.done()
            out.append(Zone(name, frozenset(codes) if codes else None))
        else:
            raise ConfigError(f"{k}: must be a zone name or a table with name and codes")
    return tuple(out)


def parse(data: dict, base_dir: Path | None = None) -> GateConfig:
    """Build a GateConfig from parsed TOML; relative paths are taken from ``base_dir``."""
    base_dir = base_dir or Path.cwd()
    top = Table(data, "")

    def path(v: str | None) -> Path | None:
        return None if v is None else (base_dir / v if not Path(v).is_absolute() else Path(v))

    g = top.sub("gate")
    kw: dict[str, Any] = dict(
        hostname=g.take("hostname", str, "localhost"),
        postmaster=g.take("postmaster", str),
        state_dir=path(g.take("state_dir", str, "var")),
        max_message_size=g.take("max_message_size", int, 25 * 1024 * 1024, lo=1024, hi=2**31),
        max_recipients=g.take("max_recipients", int, 100, lo=1, hi=100_000),
        command_timeout=g.take("command_timeout", float, 300.0, lo=1.0, hi=3600.0),
        own_ips=g.strings("own_ips"),
        decision_log=path(g.take("decision_log", str)),
        relay_timeout=g.take("relay_timeout", float, 60.0, lo=1.0, hi=3600.0),
    )
    g.done()

    ls = top.sub("listeners")
    listeners = []
    for kind in list(ls.data):
        if kind not in _LISTENER_KINDS:
            raise ConfigError(f"{ls.key(kind)}: unknown listener (one of {', '.join(_LISTENER_KINDS)})")
        lt = ls.sub(kind)
        if lt.take("enabled", bool, True):
            host, port = _hostport(lt.take("bind", str, required=True), lt.key("bind"))
            listeners.append(Listener(kind, host, port))
        else:
            lt.take("bind", str)
        lt.done()
    ls.done()
    if not listeners:
        raise ConfigError("listeners: at least one listener must be enabled")
    kw["listeners"] = tuple(listeners)

    tls = top.sub("tls")
    kw["tls_cert"] = path(tls.take("cert", str))
    kw["tls_key"] = path(tls.take("key", str))
    tls.done()
    if (kw["tls_cert"] is None) != (kw["tls_key"] is None):
        raise ConfigError("tls: cert and key go together")

    bl = top.sub("blacklists")
    kw["ip_blacklist"] = tuple(_network(v, bl.key("ips")) for v in bl.strings("ips"))
    kw["sender_blacklist"] = bl.strings("senders")
    bl.done()

    d = top.sub("dnsbl")
    kw["dnsbl_zones"] = _zones(d, "zones")
    kw["dnsbl_min_hits"] = d.take("min_hits", int, 2, lo=1, hi=100)
    kw["dnsbl_check_private"] = d.take("check_private", bool, False)
    d.done()
    w = top.sub("dnswl")
    kw["dnswl_zones"] = _zones(w, "zones")
    kw["dnswl_min_hits"] = w.take("min_hits", int, 1, lo=1, hi=100)
    w.done()

    r = top.sub("resolver")
    ns = r.strings("nameservers")
    for i, n in enumerate(ns):
        try:
            ipaddress.ip_address(n)
        except ValueError:
            raise ConfigError(f"resolver.nameservers[{i}]: not an IP address: {n!r}") from None
    kw["resolver_nameservers"] = ns
    kw["resolver_port"] = r.take("port", int, 53, lo=1, hi=65535)
    kw["resolver_timeout"] = r.take("timeout", float, 2.0, lo=0.05, hi=60.0)
    r.done()

    s = top.sub("scorer")
    addrs = s.strings("addresses", ("127.0.0.1:50051",))
    if not addrs:
        raise ConfigError("scorer.addresses: at least one address")
    for i, a in enumerate(addrs):
        _hostport(a, f"scorer.addresses[{i}]")
    kw["scorer_addresses"] = addrs
    kw["scorer_deadline"] = s.take("deadline", float, 10.0, lo=0.05, hi=600.0)
    kw["scorer_spawn"] = s.take("spawn", bool, False)
    model = s.take("model", str)
    kw["scorer_model"] = str(path(model)) if model else None
    kw["scorer_workers"] = s.take("workers", int, 1, lo=1, hi=256)
    rep = s.take("reputation", str)
    kw["scorer_reputation"] = str(path(rep)) if rep else None
    s.done()

    filtering = _read_settings(top.sub("filtering"), Settings())
    kw["filtering"] = filtering

    domains = {}
    dt = top.sub("domains")
    for name in list(dt.data):
        key = dt.key(name)
        one = dt.sub(name)
        lname = name.lower().rstrip(".")
        if "@" in lname or "." not in lname:
            raise ConfigError(f"{key}: not a domain name")
        # Required until delivery by MX lookup exists: a domain without a route would
        # tempfail every message (review of issue 5).
        route = one.take("route", str, required=True)
        local = one.strings("local_recipients", None)
        verify = one.take("verify_recipients", bool, False)
        lim = one.sub("limits")
        rate_limits = {k: v for k in ("ip_rate", "sender_rate")
                       if (v := lim.take(k, int, None, lo=0, hi=10_000_000)) is not None}
        lim.done()
        settings = _read_settings(one.sub("filtering"), filtering)
        per_rcpt = {}
        rt = one.sub("recipients")
        for addr in list(rt.data):
            if normalise_address(addr).rpartition("@")[2] != lname:
                raise ConfigError(f"{rt.key(addr)}: not an address of {lname}")
            per_rcpt[normalise_address(addr)] = _read_settings(rt.sub(addr), settings)
        rt.done()
        one.done()
        domains[lname] = Domain(
            name=lname,
            route=_hostport(route, f"{key}.route", 25), verify_recipients=verify,
            rate_limits=rate_limits,
            local_recipients=None if local is None else frozenset(
                normalise_address(x if "@" in x else f"{x}@{lname}") for x in local),
            settings=settings, recipient_settings=per_rcpt)
    dt.done()
    kw["domains"] = domains

    users = {}
    ot = top.sub("outgoing")
    relay = ot.take("relay", str)
    kw["outgoing_relay"] = _hostport(relay, "outgoing.relay", 25) if relay else None
    kw["outgoing_settings"] = _read_settings(ot.sub("filtering"), filtering)
    ut = ot.sub("users")
    for name in list(ut.data):
        u = ut.sub(name)
        h = u.take("password_hash", str, required=True)
        if not h.startswith("scrypt$"):
            raise ConfigError(f"{u.key('password_hash')}: must be a scrypt hash from "
                              "`mailsift gate passwd`, never a clear password")
        users[name] = User(name, h, u.strings("senders"))
        u.done()
    ut.done()
    ot.done()
    kw["users"] = users

    st = top.sub("state")
    backend = st.take("backend", str, "sqlite")
    if backend not in ("sqlite", "redis"):
        raise ConfigError(f"state.backend: sqlite or redis, got {backend!r}")
    kw["state"] = StateConfig(backend=backend, path=path(st.take("path", str)),
                              redis_url=st.take("redis_url", str, StateConfig.redis_url),
                              redis_prefix=st.take("redis_prefix", str, StateConfig.redis_prefix),
                              timeout=st.take("timeout", float, 0.5, lo=0.01, hi=30.0))
    st.done()
    lt = top.sub("limits")
    kw["limits"] = Limits(
        ip_concurrency=lt.take("ip_concurrency", int, 10, lo=0, hi=100_000),
        ip_rate=lt.take("ip_rate", int, 0, lo=0, hi=10_000_000),
        ip_rate_window=lt.take("ip_rate_window", float, 60.0, lo=1.0, hi=86400.0),
        sender_rate=lt.take("sender_rate", int, 0, lo=0, hi=10_000_000),
        invalid_rcpt=lt.take("invalid_rcpt", int, 0, lo=0, hi=10_000_000),
        invalid_rcpt_window=lt.take("invalid_rcpt_window", float, 3600.0, lo=1.0, hi=7 * 86400.0),
        outgoing_per_hour=lt.take("outgoing_per_hour", int, 0, lo=0, hi=10_000_000),
        outgoing_per_day=lt.take("outgoing_per_day", int, 0, lo=0, hi=10_000_000),
        auth_failures=lt.take("auth_failures", int, 5, lo=0, hi=10_000),
        auth_window=lt.take("auth_window", float, 600.0, lo=1.0, hi=86400.0),
        auth_lockout=lt.take("auth_lockout", float, 900.0, lo=1.0, hi=7 * 86400.0))
    lt.done()
    gt = top.sub("greylist")
    if gt.take("enabled", bool, True):
        kw["greylist"] = GreylistSettings(
            min_delay=gt.take("min_delay", float, 300.0, lo=0.0, hi=86400.0),
            retry_window=gt.take("retry_window", float, 86400.0, lo=60.0, hi=30 * 86400.0),
            reputation_ttl=gt.take("reputation_days", float, 30.0, lo=1.0, hi=3650.0) * 86400.0,
            learning_window=gt.take("learning_hours", float, 72.0, lo=0.0, hi=8760.0) * 3600.0)
    gt.done()
    qt = top.sub("queue")
    schedule = qt.take("retry_schedule", list, None)
    if schedule is not None:
        if not schedule or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 1 <= x <= 7 * 86400
                                   for x in schedule):
            raise ConfigError(f"queue.retry_schedule: must be a non-empty list of seconds (1 to 604800), got {schedule!r}")
        schedule = tuple(float(x) for x in schedule)
    kw["queue"] = QueueConfig(
        enabled=qt.take("enabled", bool, True),
        retry_schedule=schedule or QueueConfig.retry_schedule,
        max_age=qt.take("max_age_hours", float, 120.0, lo=0.01, hi=30 * 24.0) * 3600.0,
        workers_per_route=qt.take("workers_per_route", int, 4, lo=1, hi=256),
        connect_timeout=qt.take("connect_timeout", float, 30.0, lo=0.1, hi=600.0),
        poll_interval=qt.take("poll_interval", float, 1.0, lo=0.01, hi=60.0),
        keep_delivered=qt.take("keep_delivered_days", float, 30.0, lo=0.0, hi=3650.0) * 86400.0)
    qt.done()
    qa = top.sub("quarantine")
    kw["quarantine"] = QuarantineConfig(
        retention=qa.take("retention_days", float, 30.0, lo=0.01, hi=3650.0) * 86400.0)
    qa.done()
    fb = top.sub("feedback")
    kw["feedback"] = FeedbackConfig(
        learn=fb.take("learn", bool, True),
        review_release_above=fb.take("review_release_above", float, 0.99, lo=0.0, hi=1.0),
        review_report_below=fb.take("review_report_below", float, 0.01, lo=0.0, hi=1.0),
        per_reporter_hour=fb.take("per_reporter_hour", int, 30, lo=0, hi=10_000_000),
        per_reporter_day=fb.take("per_reporter_day", int, 200, lo=0, hi=10_000_000),
        min_agreement=fb.take("min_agreement", float, 0.5, lo=0.0, hi=1.0),
        agreement_min_samples=fb.take("agreement_min_samples", int, 5, lo=1, hi=1_000_000),
        trusted=fb.strings("trusted"))
    fb.done()
    top.done()
    pm = kw["postmaster"]
    if pm is not None and (normalise_address(pm).rpartition("@")[2] not in domains):
        raise ConfigError(f"gate.postmaster: must be an address of a filtered domain, got {pm!r}")
    if kw["outgoing_relay"] is None and any(x.kind != "inbound" for x in kw["listeners"]):
        raise ConfigError("outgoing.relay: required when a submission listener is enabled")
    return GateConfig(**kw)


def read_toml(path: str | Path) -> dict:
    """A TOML file's data; a file that cannot be read or parsed is a ConfigError."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"{p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None


def load(path: str | Path, base_dir: Path | None = None) -> GateConfig:
    """Relative paths in the file are taken from the file's directory, or from
    ``base_dir`` (the shipped default config's paths are relative to where you run it)."""
    return parse(read_toml(path), base_dir or Path(path).parent)


DEFAULT_CONFIG = Path(__file__).with_name("default.toml")
