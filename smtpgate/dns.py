"""DNS for the gate: one explicitly configured async resolver whose answers are plain data.

Every DNS-based check (SPF, DKIM keys, DMARC policy, DNSBL, PTR, the sender's MX) asks
through a ``Resolver`` handed to it, never through the system resolver, so the
nameserver, port and time budget are configuration and tests can point the gate at a
real DNS server on loopback (``tests/dnsserver.py``) or at a ``FakeResolver``.

An ``Answer`` is ``(status, records, ttl)``. ``status`` separates what the checks must
treat differently: "nxdomain" (the name does not exist: evidence against a sender),
"nodata" (the name exists, without that type), and "timeout"/"servfail" (DNS trouble:
never evidence, the caller tempfails or abstains). DNS trouble never raises.

Records are text:
- TXT: the character-strings of one record concatenated, decoded as UTF-8 (invalid bytes
  become U+FFFD), because SPF (RFC 7208 section 3.3), DKIM (RFC 6376 section 3.6.2.2)
  and DMARC (RFC 7489 section 6.1) all define a record as its strings joined.
- MX: "preference exchange." ("10 mx.example.org.", and "0 ." for a null MX, RFC 7505).
- A / AAAA: the address; PTR / CNAME: the target name with its final dot.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ipaddress
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

STATUSES = ("ok", "nxdomain", "nodata", "timeout", "servfail")

# Cache bounds. 86400 s is the usual resolver ceiling (unbound's cache-max-ttl); negative
# answers are kept at most 3600 s (unbound's cache-max-negative-ttl; RFC 2308 section 5
# allows up to 3 hours): a sender that fixes a missing record should not wait longer.
MAX_TTL = 86400
MAX_NEGATIVE_TTL = 3600


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one lookup. ``ttl`` is how long it may be reused (0: not at all)."""

    status: str
    records: tuple[str, ...] = ()
    ttl: int = 0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown DNS answer status {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def temporary(self) -> bool:
        """DNS trouble: the question has no answer yet, which is not a negative answer."""
        return self.status in ("timeout", "servfail")


# Ready-made answers, mostly for FakeResolver tables.
TIMEOUT = Answer("timeout")
SERVFAIL = Answer("servfail")
NXDOMAIN = Answer("nxdomain")
NODATA = Answer("nodata")


def normalise(name: str) -> str:
    """The cache/table key of a name: lower case, no final dot."""
    return name.strip().rstrip(".").lower()


def reverse_name(ip: str) -> str:
    """The PTR name of an address: "2.0.0.127.in-addr.arpa", nibbles under ip6.arpa.

    An IPv4-mapped IPv6 address is looked up as the IPv4 address it carries, as it is
    the IPv4 client that connected.
    """
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.reverse_pointer


class TTLCache:
    """A bounded LRU map of (name, type) to ``Answer`` that forgets each entry at its TTL.

    Entries with a TTL of 0 are not stored. ``get`` returns the answer with the TTL
    that is left, so a caller that re-publishes a TTL does not stretch it.
    """

    def __init__(self, maxsize: int = 10000, clock: Callable[[], float] = time.monotonic):
        self.maxsize = maxsize
        self._clock = clock
        self._entries: collections.OrderedDict[tuple[str, str], tuple[float, Answer]] = (
            collections.OrderedDict())
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> Answer | None:
        entry = self._entries.get(key)
        now = self._clock()
        if entry is None or entry[0] <= now:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        expires, answer = entry
        return Answer(answer.status, answer.records, max(1, int(expires - now)))

    def put(self, key: tuple[str, str], answer: Answer) -> None:
        if answer.ttl <= 0 or self.maxsize <= 0:
            return
        self._entries[key] = (self._clock() + answer.ttl, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class BaseResolver:
    """What the checks use: ``query`` plus typed helpers and a blocking facade."""

    timeout: float = 2.0

    async def query(self, name: str, rdtype: str) -> Answer:  # pragma: no cover - abstract
        raise NotImplementedError

    async def txt(self, name: str) -> Answer:
        return await self.query(name, "TXT")

    async def a(self, name: str) -> Answer:
        return await self.query(name, "A")

    async def aaaa(self, name: str) -> Answer:
        return await self.query(name, "AAAA")

    async def mx(self, name: str) -> Answer:
        return await self.query(name, "MX")

    async def ptr(self, ip: str) -> Answer:
        """PTR records of an address (not of a name): the reverse name is built here."""
        return await self.query(reverse_name(ip), "PTR")

    def blocking(self, loop: asyncio.AbstractEventLoop | None = None) -> BlockingResolver:
        """A synchronous view of this resolver for code run in a worker thread.

        ``loop`` is the event loop that owns the resolver (default: the running one).
        """
        return BlockingResolver(self, loop or asyncio.get_running_loop())


class Resolver(BaseResolver):
    """An async stub resolver over dnspython with its own TTL cache.

    ``nameservers`` are addresses; when given, /etc/resolv.conf is not read at all (None
    reads it, once, here). ``timeout`` is the whole lifetime of one lookup, retries
    included. ``cache_size`` bounds the cache (0 disables it).
    """

    def __init__(self, nameservers: Sequence[str] | None, port: int = 53,
                 timeout: float = 2.0, cache_size: int = 10000, *,
                 clock: Callable[[], float] = time.monotonic):
        if nameservers is None:
            self._resolver = dns.asyncresolver.Resolver(configure=True)
        else:
            if not nameservers:
                raise ValueError("Resolver needs at least one nameserver")
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = list(nameservers)
        self._resolver.port = port
        self._resolver.lifetime = timeout
        # Half the lifetime per attempt, so one lost UDP datagram is retried once within
        # the same lifetime instead of spending all of it waiting.
        self._resolver.timeout = timeout / 2
        self._resolver.cache = None          # our own cache, which also keeps statuses
        self.nameservers = tuple(nameservers or self._resolver.nameservers)
        self.port = port
        self.timeout = timeout
        self.cache = TTLCache(cache_size, clock)

    def __repr__(self) -> str:
        return (f"Resolver(nameservers={list(self.nameservers)!r}, port={self.port}, "
                f"timeout={self.timeout})")

    async def query(self, name: str, rdtype: str) -> Answer:
        rdtype = rdtype.upper()
        key = (normalise(name), rdtype)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        answer = await self._lookup(key[0], dns.rdatatype.from_text(rdtype))
        self.cache.put(key, answer)
        return answer

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> Answer:
        if not name:
            return NXDOMAIN                   # "" would otherwise ask about the root
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            # A name that cannot be written in DNS (empty or >63-octet label, bad IDN)
            # cannot exist: that is a negative answer, not DNS trouble.
            return NXDOMAIN
        try:
            # dnspython's lifetime does not bound its back-off sleeps between retries
            # (a 0.5 s lifetime can take 0.7 s), so the lifetime is enforced here too.
            result = await asyncio.wait_for(self._resolver.resolve(
                qname, rdtype, raise_on_no_answer=False, search=False), self.timeout)
        except TimeoutError:
            return TIMEOUT
        except dns.resolver.NXDOMAIN as e:
            responses = e.kwargs.get("responses") or {}
            response = next(iter(responses.values()), None)
            return Answer("nxdomain", (), negative_ttl(response))
        except dns.exception.Timeout:
            return TIMEOUT
        except (dns.exception.DNSException, OSError, EOFError):
            # NoNameservers (SERVFAIL/REFUSED from every server), YXDOMAIN, malformed
            # replies, network errors: all "ask again later".
            return SERVFAIL
        if result.rrset is None:
            return Answer("nodata", (), negative_ttl(result.response))
        records = tuple(rdata_text(rdata) for rdata in result.rrset)
        ttl = min(MAX_TTL, max(0, int(result.expiration - time.time())))
        return Answer("ok", records, ttl)


def rdata_text(rdata) -> str:
    """One record as the text described in the module docstring."""
    rdtype = rdata.rdtype
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rdata.address
    if rdtype == dns.rdatatype.MX:
        return f"{rdata.preference} {rdata.exchange.to_text()}"
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return rdata.target.to_text()
    return rdata.to_text()


def negative_ttl(response: dns.message.Message | None) -> int:
    """How long a negative answer may be cached: RFC 2308 section 5.

    The TTL is the SOA record's own TTL capped by its MINIMUM field; a negative answer
    without an SOA in the authority section must not be cached (0).
    """
    if response is None:
        return 0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return min(MAX_NEGATIVE_TTL, rrset.ttl, rrset[0].minimum)
    return 0


class BlockingResolver:
    """A synchronous view of an async resolver, for libraries whose DNS is synchronous.

    pyspf calls its DNS function synchronously; we run pyspf in a worker thread and
    let each of its lookups run as a coroutine on the event loop that owns the resolver
    (``asyncio.run_coroutine_threadsafe``). The resolver and its cache are then only ever
    touched from their own loop, so neither needs a lock, and pyspf's lookups share the
    cache and the configured nameserver with everything else.
    """

    # Slack on top of the resolver's own lifetime before the thread stops waiting: the
    # coroutine normally returns "timeout" itself; this only guards a stalled loop.
    GRACE = 1.0

    def __init__(self, resolver: BaseResolver, loop: asyncio.AbstractEventLoop):
        self._resolver = resolver
        self._loop = loop

    def query(self, name: str, rdtype: str) -> Answer:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("BlockingResolver.query on its own event loop would deadlock; "
                               "run the caller in a thread (asyncio.to_thread)")
        future = asyncio.run_coroutine_threadsafe(self._resolver.query(name, rdtype), self._loop)
        try:
            return future.result(timeout=self._resolver.timeout + self.GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return TIMEOUT


class FakeResolver(BaseResolver):
    """A dict-backed resolver for unit tests that fails on any lookup it was not given.

    ``records`` maps (name, type) to an ``Answer`` (``TIMEOUT``, ``NXDOMAIN``, ...) or to
    a list of record strings (an "ok" answer; an empty list is "nodata"). Names are
    compared without case or final dot. A lookup missing from the table raises
    AssertionError, as dkimpy's test resolver does: a test states every lookup it
    expects, so a check that starts asking something new fails loudly. ``calls`` lists
    the lookups made, in order.
    """

    def __init__(self, records: Mapping[tuple[str, str], Answer | Iterable[str]] = (),
                 *, timeout: float = 2.0, ttl: int = 300):
        self.timeout = timeout
        self.calls: list[tuple[str, str]] = []
        self._table: dict[tuple[str, str], Answer] = {}
        for (name, rdtype), value in dict(records).items():
            if isinstance(value, Answer):
                answer = value
            elif isinstance(value, (str, bytes)):
                raise TypeError(f"FakeResolver value for {name} {rdtype} must be an Answer "
                                "or a list of record strings, not a bare string")
            else:
                recs = tuple(value)
                answer = Answer("ok", recs, ttl) if recs else Answer("nodata")
            self._table[(normalise(name), rdtype.upper())] = answer

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (normalise(name), rdtype.upper())
        self.calls.append(key)
        if key not in self._table:
            raise AssertionError(f"unexpected DNS lookup: {key[0]} {key[1]}")
        return self._table[key]
