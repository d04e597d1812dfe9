"""Files that are on disk when the call returns: the quarantine's and the queue's
messages, model bundles, the models directory's switches.

A file is written under a temporary name beside its place, completely, and fsync'd;
the caller then renames or links it into place (the commit) and fsyncs the directory,
so that the rename itself survives a power cut. A write that fails removes its
temporary file: a full disk must not fill up further with our leftovers.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def synced_temp(directory: Path, name: str, data: bytes, mode: int = 0o640) -> Path:
    """``data`` in a new file ``.<name>.<random>.tmp`` in ``directory``, fsync'd; its path."""
    tmp = Path(directory) / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)   # whatever the umask: a model is read by the scorer's user
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def replace_file(path: Path, data: bytes, mode: int = 0o640) -> None:
    """``path`` holds ``data``, complete and fsync'd, or (after a crash) what it held
    before; the caller fsyncs the directory for the rename to be durable too."""
    path = Path(path)
    os.replace(synced_temp(path.parent, path.name, data, mode), path)


def fsync_dir(path: Path) -> None:
    """Make the names created, renamed or removed in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
