"""One check per module; the module name, its function and the classification id agree.

The order in which checks run, per SMTP phase, is not here: it is the policy table in
``smtpgate/policy.py``.
"""
