"""Reputation greylisting (the contract's ``greylisted``): only a sending network with no
good reputation yet is delayed, never one that has proved itself.

- **The sending network** is the registered domain of the client's forward-confirmed
  reverse name when it has one (``mail-ot1.google.com`` -> ``google.com``), else its
  IPv4 /24 or IPv6 /64. Large providers retry from pools of addresses: a retry from
  another address of the same network finds the same triplet and is not delayed again.
- **The triplet** is (network, sender, recipient). Its first attempt is recorded once,
  atomically across gate nodes (``get_or_set``), and answered 451. A retry before
  ``min_delay`` (5 minutes) is delayed again; a retry after it, within ``retry_window``,
  passes and gives the network its reputation.
- **Reputation** (a counter per network, forgotten ``reputation_ttl`` after it last
  grew) grows from passed retries and from ham the gate delivered, and a network that
  has any is never greylisted. Authenticated sessions and DNSWL listings skip the check
  altogether (the gate does not call it for them).
- **A new installation** runs a learning window (72 h by default, the contract's): it
  records reputation from the mail it sees and delays nothing.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from smtpgate.result import CheckResult


@dataclass(frozen=True)
class GreylistSettings:
    min_delay: float = 300.0            # the contract's "minimum delay (default 5 minutes)"
    retry_window: float = 86400.0       # a first attempt not retried within a day is forgotten
    reputation_ttl: float = 30 * 86400.0
    learning_window: float = 72 * 3600.0


def network_of(client_ip: str, ptr: str, ptr_name: str | None) -> str:
    """The sending network a reputation belongs to (see the module docstring)."""
    if ptr == "match" and ptr_name:
        from smtpgate import psl

        reg = psl.registered_domain(ptr_name.rstrip(".").lower())
        if reg:
            return f"dns:{reg}"
    ip = ipaddress.ip_address(client_ip)
    prefix = 24 if ip.version == 4 else 64
    return f"net:{ipaddress.ip_network(f'{ip}/{prefix}', strict=False)}"


async def installed_at(state, now: float) -> float:
    """When this installation first ran (its learning window starts there)."""
    value, _ = await state.get_or_set("greylist:installed", int(now), None, now)
    return float(value)


async def good_reputation(state, network: str) -> int:
    value = await state.get(f"greylist:rep:{network}")
    return int(value) if value is not None else 0


async def add_reputation(state, network: str, settings: GreylistSettings) -> int:
    return await state.incr(f"greylist:rep:{network}", settings.reputation_ttl)


async def greylisted(state, *, network: str, sender: str, rcpt: str, now: float,
                     settings: GreylistSettings) -> CheckResult | None:
    """The verdict for one RCPT: None to go on, or the 451."""
    start = await installed_at(state, now)
    if now - start < settings.learning_window:
        return None                      # still learning: record, never delay
    if await good_reputation(state, network) > 0:
        return None
    key = f"greylist:triplet:{network}:{sender.lower()}:{rcpt.lower()}"
    value, created = await state.get_or_set(key, int(now), settings.retry_window, now)
    first = float(value)
    waited = now - first
    if not created and waited >= settings.min_delay:
        await add_reputation(state, network, settings)
        await state.delete(key)
        return None
    return CheckResult("greylisted", "greylisted",
                       f"{network} has no reputation yet; {'first attempt' if created else f'retried after {waited:.0f} s'}"
                       f" of <{sender}> to <{rcpt}> (retry after {settings.min_delay:.0f} s)",
                       details={"network": network, "first_seen": first, "waited_s": round(waited, 1)})
