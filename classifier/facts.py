"""What the combined score knows about a message besides its classifiers' scores.

- The gate's facts: the gate runs SPF, DKIM, DMARC, DNSBL/DNSWL and HELO/PTR checks
  before it asks the scorer.
- The reputation checks' findings (``classifier/reputation``): a Pyzor digest or a
  near-duplicate of reported spam, a token seen in recent spam, listed URLs, phishing
  indicators, patterns and signatures an admin loaded. The scorer runs them itself.

Both reach the combined score as features. The corpora we train on carry none of them,
so their weights start as documented priors in the model bundle
(``combined.fact_weights``) and are fitted once feedback with them exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# The feature names the combiner sees, in order. Gate facts are 0/1 indicators, except
# the *_hits features, which count listings.
GATE_FACTS = (
    "spf=pass", "spf=fail", "spf=softfail", "spf=error",
    "dkim=pass", "dkim=fail",
    "dmarc=pass", "dmarc=fail",
    "dnsbl_hits", "dnswl_hits",
    "helo=invalid", "ptr=missing", "ptr=mismatch",
    "authenticated",
)
# The reputation checks' strengths (classifier/reputation/base.Signal.strength), by check.
# New checks go at the end: a bundle made before one existed gives it its prior weight
# (CombinedClassifier._set_state, classifier/bundle.py).
REPUTATION_FEATURES = (
    "pyzor", "neardup", "ucepp", "urlbl", "phishing", "safebrowsing", "external_pattern",
    "signature_match", "reported",
)
FACT_FEATURES = GATE_FACTS + REPUTATION_FEATURES


@dataclass(slots=True)
class GateFacts:
    spf: str = "none"        # pass, fail, softfail, neutral, none, temperror, permerror
    dkim: str = "none"       # pass, fail, none
    dmarc: str = "none"      # pass, fail, none
    dnsbl: list[str] = field(default_factory=list)   # zones that list the client IP
    dnswl: list[str] = field(default_factory=list)
    helo_valid: bool = True
    ptr: str = "unknown"     # match, mismatch, missing, unknown
    authenticated: bool = False
    reputation: dict[str, float] = field(default_factory=dict)   # set by the scorer

    def vector(self) -> list[float]:
        v = {
            "spf=pass": self.spf == "pass", "spf=fail": self.spf == "fail",
            "spf=softfail": self.spf == "softfail",
            "spf=error": self.spf in ("temperror", "permerror"),
            "dkim=pass": self.dkim == "pass", "dkim=fail": self.dkim == "fail",
            "dmarc=pass": self.dmarc == "pass", "dmarc=fail": self.dmarc == "fail",
            "dnsbl_hits": len(self.dnsbl), "dnswl_hits": len(self.dnswl),
            "helo=invalid": not self.helo_valid, "ptr=missing": self.ptr == "missing",
            "ptr=mismatch": self.ptr == "mismatch", "authenticated": self.authenticated,
        }
        return [float(v[name]) for name in GATE_FACTS] + \
            [float(self.reputation.get(name, 0.0)) for name in REPUTATION_FEATURES]

    def describe(self) -> list[str]:
        """The facts that are set, as short readable strings for evidence."""
        return [f"{n}={int(x) if n.endswith('_hits') else ''}".rstrip("=")
                for n, x in zip(GATE_FACTS, self.vector()) if x] + \
            [f"{n}={x:g}" for n, x in self.reputation.items() if x]


NO_FACTS = GateFacts()
