"""The gate's policy: which checks run in each SMTP phase, and in what order.

This table is the whole order of the gate; the checks themselves live one per module in
``smtpgate/checks/`` and the glue that feeds each check its inputs is a method
``Gate.<phase>_<step>`` in ``smtpgate/gate.py``. A step returns nothing (go on) or a
``CheckResult``; what the result does is the contract's, not the step's:

- action ``accept`` (``dnswl``, ``whitelisted``): remembered, the transaction goes on;
- action ``tempfail``/``reject``/``quarantine``/``discard``: the reply is sent and the
  phase stops for this command (a RCPT refusal refuses that recipient only);
- a result the sender whitelist may bypass (``whitelist`` = yes in the contract) found
  before the recipient is known (connect, HELO, MAIL) is *deferred*: the recipient's own
  sender whitelist decides at RCPT whether it applies (the ``deferred`` step), as
  Postfix's smtpd_delay_reject does. A result the whitelist cannot bypass is answered at
  once, in its own phase.

The stateful protections (issue #6) keep their state in ``smtpgate/state`` (SQLite, or
Redis shared by several nodes). ``auth_denied`` is not a step: AUTH is its own command,
checked in ``Gate.authenticate``.
"""
from __future__ import annotations

POLICY: dict[str, tuple[str, ...]] = {
    # Before the greeting. PTR and DNSWL are facts for later steps and the scorer.
    "connect": (
        "ip_concurrency_limit",      # leases across every node sharing the store: 421 at once
        "ip_rate_limit",             # connections per window: counted here, judged at RCPT
        "ip_blacklisted",            # the administrator's IP blacklist: 554, no bypass
        "dnsbl",                     # dnsbl_multiple (deferred) and dnswl (a fact)
        "ptr",                       # forward-confirmed reverse DNS: a scorer fact
    ),
    "helo": (
        "invalid_helo",              # deferred: a sender whitelist bypasses it
    ),
    "mail": (
        "submission_auth_required",  # submission ports: AUTH first
        "sender_login_mismatch",     # an outgoing user sends only as the senders configured
        "outgoing_quota",            # an outgoing user's messages per hour and per day
        "sender_rate_limit",         # messages per sender per minute: counted here, judged at RCPT
        "sender_blacklisted",        # the administrator's sender blacklist
        "spf_fail",                  # deferred
        "sender_missing_dns",        # deferred; a DNS timeout tempfails, deferred too
    ),
    "rcpt": (
        "too_many_invalid_recipients",  # this IP tried too many invalid addresses lately
        "too_many_recipients",       # RFC 5321 4.5.3.1.8: 452, the client sends the rest later
        "restricted_address_chars",
        "relay_not_permitted",       # inbound: only our domains; submission: any, once authenticated
        "destination_not_configured",  # the domain's Local Recipients list
        "destination_verification",  # callout to the route (domains with verify_recipients)
        "null_sender_multiple_rcpt",
        "blackhole",                 # 250, and delivered nowhere
        "domain_sender_blacklisted",  # the recipient domain's own sender blacklist
        "whitelisted",               # the recipient's sender whitelist: bypasses what may be bypassed
        "deferred",                  # what connect/HELO/MAIL found, unless whitelisted
        "rate_limits",               # ip_rate_limit, sender_rate_limit: the domain's limit or the global one
        "greylisted",                # a network with no reputation yet: 451, then pass on retry
        "split_delivery",            # the first accepted recipient fixes the settings
    ),
    # At the end of DATA, for the whole transaction (its recipients share settings).
    "data": (
        "message_partial",
        "dmarc",                     # dmarc_reject / dmarc_quarantine: never bypassed
        "line_too_long",
        "too_many_mime_parts",
        "bad_header_count",
        "header_too_long",
        "subject_invalid_chars",
        "date_skew",
        "whitelisted",               # accepted as `whitelisted`, without scoring
        "scorer",                    # combined_score, crm114, global_tokens, ... or not_spam/dnswl
    ),
}

# The steps an admin can turn off per domain ([filtering.checks]) are the data checks,
# the rcpt checks with a name of their own in the contract, and the scorer.
