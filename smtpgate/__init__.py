"""mailsift's SMTP gate: the transaction, the deterministic checks, the scorer call."""
