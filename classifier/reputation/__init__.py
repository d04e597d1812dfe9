"""The content checks that catch what a statistical model has not learned yet: the same
campaign seen before (Pyzor digests, near-duplicates), a token or URL already known to
be bad (UCEPP, URLBL, Safe Browsing), a phishing link, a pattern or signature an admin
loaded. Each is one module here, returns a ``Signal`` with its classification id and
evidence, and feeds the combined score (``classifier/scorer.py``).
"""
