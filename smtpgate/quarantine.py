"""The quarantine: every message whose contract action is ``quarantine`` is kept here.

Each message is two files, written to a temporary name, fsync'd, then renamed into
place (the rename is the commit): ``<id>.eml`` with the bytes exactly as received, and
``<id>.json`` with the envelope, the classification, its evidence and the scores. The
gate writes the copy *before* it answers the 5xx, so a quarantined message is never
lost to a crash. Searching, release, report and retention are the quarantine issue's
(#7); they read this same layout.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Quarantine:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def store(self, qid: str, message: bytes, record: dict[str, Any]) -> Path:
        day = self.directory / time.strftime("%Y-%m-%d", time.gmtime())
        day.mkdir(exist_ok=True)
        _write_durably(day / f"{qid}.eml", message)
        meta = {"id": qid, "stored": time.time(), "size": len(message), **record}
        _write_durably(day / f"{qid}.json", json.dumps(meta, default=str, ensure_ascii=False).encode())
        dfd = os.open(day, os.O_RDONLY)
        try:
            os.fsync(dfd)   # the renames themselves are durable
        finally:
            os.close(dfd)
        return day / f"{qid}.eml"

    def find(self, qid: str) -> tuple[bytes, dict] | None:
        for meta in self.directory.glob(f"*/{qid}.json"):
            return meta.with_suffix(".eml").read_bytes(), json.loads(meta.read_text())
        return None
