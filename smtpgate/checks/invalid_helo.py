"""invalid_helo: the HELO/EHLO argument is not a greeting the gate accepts.

The models are Postfix's ``reject_invalid_helo_hostname`` (syntax) and
``reject_non_fqdn_helo_hostname`` (a fully qualified name), plus the classic forgery
checks (the client claims to be us, or to be localhost). RFC 5321 4.1.1.1 gives the
syntax, ``Domain / address-literal``; RFC 5321 2.3.5 and 4.1.4 say the client sends its
fully qualified name, or an address literal when it has none. The reference page:
"an IP address is used for the HELO, or ... the HELO contains an invalid character, for
example: underscore".

Invalid, in the order tested (the first reason found is the evidence):

* empty (aiosmtpd already answers 501 to a bare HELO; a whitespace-only one gets here);
* an address literal that is not ``[IPv4]`` or ``[IPv6:...]`` (RFC 5321 4.1.3; no
  general literals: IANA has registered no other tag);
* an IP address, bracketed or not, that is one of ours (``own_ips``), unless the
  client itself is ours or loopback;
* a loopback address (``[127.0.0.1]``, ``[IPv6:::1]``) from a client that is not
  loopback;
* an IP address without brackets (RFC 5321 4.1.3 requires the literal form);
* an address literal, only when ``allow_address_literals`` is False. By default it is
  accepted: RFC 5321 4.1.4 makes it the correct greeting of a host without a name, and
  whether it matches the client's address is not judged (RFC 5321 4.1.4: a server
  "MUST NOT refuse to accept a message" because that verification fails);
* a name that is not a syntactically valid hostname: US-ASCII letters, digits and
  hyphens, labels of 1 to 63 characters not starting or ending with a hyphen, at most
  255 in all (RFC 5321 4.1.2 and 4.5.3.1.2). So no underscore (the reference page's
  example), no space, no empty label, and no trailing dot (the RFC 5321 grammar has
  none; Postfix's valid_hostname() refuses it too). Internationalized names must come
  as A-labels: RFC 6531 3.7.1 requires an ASCII EHLO even with SMTPUTF8;
* a name with an all-numeric last label (no top-level domain is numeric; catches
  "1.2.3.4.5" and friends, as Postfix does);
* ``localhost`` (also ``localhost.localdomain`` and names under ``.localhost``, RFC
  6761 6.3) from a client that is not loopback; from a loopback client it is accepted;
* one of our own names (``own_names``), unless the client is ours or loopback;
* a name of one label (no dot): not fully qualified.

Names are compared case-insensitively. ``own_names``/``own_ips`` are the gate's host
names and addresses from its configuration; an entry that is not an IP address is
ignored here (the configuration should refuse it).
"""
from __future__ import annotations

import ipaddress
import re

from smtpgate.message import shown
from smtpgate.result import CheckResult

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DOTTED_QUAD = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    """RFC 5321 IPv4-address-literal: four Snum of 1-3 digits, each at most 255."""
    m = _DOTTED_QUAD.fullmatch(text)
    if m is None or any(int(g) > 255 for g in m.groups()):
        return None
    return ipaddress.IPv4Address(".".join(str(int(g)) for g in m.groups()))


def _ipv6(text: str) -> ipaddress.IPv6Address | None:
    if "%" in text:  # a zone index has no meaning to another host
        return None
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def _canonical(ip: _IP) -> _IP:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _address(text: str) -> _IP | None:
    try:
        return _canonical(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        return None


def _hostname_problem(name: str) -> str | None:
    if not name.isascii():
        return "syntax"
    if len(name) > 255:
        return "too_long"
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "syntax"
    if labels[-1].isdigit():
        return "numeric_tld"
    return None


def _result(helo: str, reason: str, evidence: str) -> CheckResult:
    return CheckResult(classification="invalid_helo", check="invalid_helo",
                       evidence=evidence, details={"helo": shown(helo, 300), "reason": reason})


def invalid_helo(helo: str, client_ip: str, own_names: set[str], own_ips: set[str], *,
                 allow_address_literals: bool = True) -> CheckResult | None:
    """A result when ``helo`` (the HELO/EHLO argument as aiosmtpd passes it) is not a
    greeting the gate accepts from ``client_ip``; see the module for the rules."""
    text = f"HELO '{shown(helo, 100)}'"
    client = _address(client_ip) if client_ip else None
    ours = {ip for ip in map(_address, own_ips) if ip is not None}
    client_is_local = client is not None and (client.is_loopback or client in ours)

    if not helo or not helo.strip():
        return _result(helo, "empty", "HELO is empty")

    ip: _IP | None = None
    literal = helo.startswith("[") and helo.endswith("]")
    if literal:
        inner = helo[1:-1]
        if inner[:5].lower() == "ipv6:":
            ip = _ipv6(inner[5:])
        else:
            ip = _ipv4(inner)
        if ip is None:
            return _result(helo, "bad_literal", f"{text} is not a valid address literal")
        ip = _canonical(ip)
    else:
        ip = _ipv4(helo) or (_ipv6(helo) if ":" in helo else None)
        ip = _canonical(ip) if ip is not None else None

    if ip is not None:
        if ip in ours and not client_is_local:
            return _result(helo, "own_ip", f"{text} is one of our own addresses")
        if ip.is_loopback and not (client is not None and client.is_loopback):
            return _result(helo, "loopback",
                           f"{text} is a loopback address from client {shown(client_ip, 60)}")
        if not literal:
            return _result(helo, "bare_ip",
                           f"{text} is an IP address without brackets (RFC 5321 4.1.3)")
        if not allow_address_literals:
            return _result(helo, "address_literal", f"{text} is an address literal, not a hostname")
        return None

    problem = _hostname_problem(helo)
    if problem == "too_long":
        return _result(helo, problem, f"{text} is longer than 255 characters")
    if problem == "numeric_tld":
        return _result(helo, problem, f"{text} has a numeric top-level domain")
    if problem is not None:
        return _result(helo, problem, f"{text} is not a valid hostname")

    name = helo.lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        if client is not None and client.is_loopback:
            return None
        return _result(helo, "loopback",
                       f"{text} is a loopback name from client {shown(client_ip, 60)}")
    if name in {n.lower().rstrip(".") for n in own_names} and not client_is_local:
        return _result(helo, "own_name", f"{text} is one of our own names")
    if "." not in name:
        return _result(helo, "not_fqdn", f"{text} is not a fully qualified domain name")
    return None
