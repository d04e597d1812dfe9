"""Command-line entry points registered by ``classifier.cli`` (being written for issue #7)."""
from __future__ import annotations


def register(sub) -> None:
    """Add this module's subcommands to the ``mailsift`` parser (argparse only; heavy
    imports belong in the handlers, so ``mailsift score`` stays fast)."""
