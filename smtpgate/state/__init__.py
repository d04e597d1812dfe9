"""The gate's memory for its stateful checks (issue 6): one interface, two backends.

``StateStore`` (``base.py``) is the contract; ``SqliteStore`` keeps the state in one file
of the gate's state dir (one gate, the default), ``RedisStore`` in a Redis shared by
several gate nodes. Both pass the same tests (``tests/test_state_store.py``).
``RedisStore`` is imported on first use, so a gate on SQLite never loads the Redis client.
"""
from __future__ import annotations

from .base import WINDOW_BUCKETS, StateStore, StateUnavailable
from .sqlite import SqliteStore

__all__ = ["WINDOW_BUCKETS", "RedisStore", "SqliteStore", "StateStore", "StateUnavailable"]


def __getattr__(name: str):
    if name == "RedisStore":
        from .redis import RedisStore
        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
