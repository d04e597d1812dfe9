"""restricted_address_chars: the local part of a recipient address has a character that
is not allowed.

The reference page: a character "that is not accepted by the system, for example: '&'",
and the allowed set is a per-domain setting. RFC 5322 3.2.3 permits much more in an
atom (``! # $ % & ' * + - / = ? ^ _ ` { | } ~``) and a quoted local part permits nearly
anything, but those characters are what shell pipes, ``%``-hack relaying and naive
mailbox back ends trip over, and real mailboxes almost never need them.

* ASCII letters and digits are always allowed.
* ``allowed`` is the domain's set; it replaces the default (letters and digits stay
  allowed whatever it holds). ``DEFAULT_ALLOWED`` adds ``. - _ + =``: dot for names,
  hyphen and underscore for role and system accounts, ``+`` for subaddressing (RFC
  5233), ``=`` for the SRS/BATV/VERP forms of bounces. The first candidate a domain
  may want to add is the apostrophe (o'brien@): ``DEFAULT_ALLOWED + "'"``.
* Non-ASCII characters are allowed when they are letters, combining marks or decimal
  digits (Unicode categories L*, M*, Nd): the local parts of internationalized
  addresses (RFC 6531). Only a transaction that asked for SMTPUTF8 may carry one; the
  gate refuses it otherwise before this check, as this row too, whether or not the
  domain turned the check off (``Gate.rcpt_restricted_address_chars``). Non-ASCII
  punctuation, symbols, spaces and controls, and the lone surrogates that aiosmtpd's
  surrogateescape makes of invalid UTF-8, are not.

The local part is everything before the last "@" (a quoted local part may hold one), or
the whole address when it has none (``RCPT TO:<Postmaster>``, RFC 5321 4.1.1.3).
aiosmtpd hands over the address unquoted when the quotes were unnecessary, so
``"a&b"@example.com`` is checked as ``a&b@example.com``; a quote that remains (a local
part with a space, say) is itself a character that is not allowed by default.
"""
from __future__ import annotations

import string
import unicodedata

from smtpgate.message import shown
from smtpgate.result import CheckResult

_ALWAYS = frozenset(string.ascii_letters + string.digits)
DEFAULT_ALLOWED = string.ascii_letters + string.digits + ".-_+="
_DEFAULT_SET = frozenset(DEFAULT_ALLOWED)


def _unicode_word_char(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] in "LM" or category == "Nd"


def _quoted(ch: str) -> str:
    return '"\'"' if ch == "'" else f"'{shown(ch)}'"


def restricted_address_chars(address: str, allowed: str | None = None) -> CheckResult | None:
    """A result naming the first character of the local part of ``address`` that is not
    allowed; ``allowed`` is the domain's set (None: ``DEFAULT_ALLOWED``)."""
    local = address.rpartition("@")[0] if "@" in address else address
    permitted = _DEFAULT_SET if allowed is None else _ALWAYS | frozenset(allowed)
    for position, ch in enumerate(local):
        if ch in permitted or (not ch.isascii() and _unicode_word_char(ch)):
            continue
        return CheckResult(
            classification="restricted_address_chars", check="restricted_address_chars",
            evidence=(f"character {_quoted(ch)} not allowed in local part of "
                      f"'{shown(address, 200)}'"),
            details={"character": shown(ch), "codepoint": f"U+{ord(ch):04X}",
                     "position": position})
    return None
