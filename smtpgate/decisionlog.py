"""The decision log: one JSON line per message and recipient (and per refused
connection), the record the control panel's log search and the admins' grep read.

Fields: ts, queue_id, conn, client_ip, helo, mail_from, rcpt, message_id, size, phase,
classification (id) and name, action, reply (the exact line sent), evidence (every
check result that decided or was bypassed), score and scores (per classifier),
model_version, settings_id, listener, tls, user.

Lines go to a file opened in append mode (one write per line, so concurrent writers in
one process never interleave) and to the ``mailsift.decision`` logger.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from classifier.classifications import get

log = logging.getLogger("mailsift.decision")


class DecisionLog:
    def __init__(self, path: Path | None):
        self.path = path
        self._fd = None
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, *, classification: str, reply: str, **fields: Any) -> dict:
        row = get(classification)
        rec = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
               "classification": classification, "name": row.name, "action": row.action,
               "reply": reply, **{k: v for k, v in fields.items() if v is not None}}
        line = json.dumps(rec, default=str, ensure_ascii=False)
        if self._fd is not None:
            with self._lock:
                os.write(self._fd, (line + "\n").encode())
        log.info("decision", extra={"fields": {"event": "decision", **rec}})
        return rec
