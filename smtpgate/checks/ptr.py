"""Forward-confirmed reverse DNS of the client (RFC 8601 section 3, "iprev").

Not a verdict: a fact for the combined score, the Received header and
Authentication-Results. The address's PTR names are looked up, then each name's
A/AAAA; the fact is

- "match": some PTR name resolves back to the address (that name is returned);
- "mismatch": PTR names exist but none resolves back (the first is returned, for the
  log only: a Received header must not present it as the client's name);
- "missing": no PTR record (NXDOMAIN or no data);
- "unknown": DNS trouble prevented an answer either way.
"""
from __future__ import annotations

import asyncio
import ipaddress

from smtpgate.dns import BaseResolver
from smtpgate.checks.dnsbl import client_address

# RFC 7208 section 4.6.4 and RFC 8601 section 3: at most 10 PTR names are followed, so a
# hostile reverse zone cannot make us do unbounded work.
MAX_PTR_NAMES = 10

FACTS = ("match", "mismatch", "missing", "unknown")


async def ptr_fact(resolver: BaseResolver, ip: str, *,
                   max_names: int = MAX_PTR_NAMES) -> tuple[str, str | None]:
    """(fact, name): see the module docstring; names come without the final dot."""
    addr = client_address(ip)
    ptr = await resolver.ptr(str(addr))
    if ptr.temporary:
        return "unknown", None
    names = [record.rstrip(".").lower() for record in ptr.records if record.rstrip(".")]
    if not ptr.ok or not names:
        return "missing", None
    names = names[:max_names]
    rdtype = "A" if addr.version == 4 else "AAAA"
    forwards = await asyncio.gather(*(resolver.query(name, rdtype) for name in names))
    for name, forward in zip(names, forwards):
        if forward.ok and any(_same(record, addr) for record in forward.records):
            return "match", name
    if any(forward.temporary for forward in forwards):
        return "unknown", names[0]
    return "mismatch", names[0]


def _same(record: str, addr) -> bool:
    try:
        return ipaddress.ip_address(record) == addr
    except ValueError:
        return False
