"""A real Redis on loopback for the state store's tests: redis-server in a temporary dir.

The server keeps nothing on disk (``--save ""``, ``--appendonly no``), listens on
127.0.0.1 only, on a free port, and runs with ``maxmemory-policy volatile-ttl`` (the
policy ``smtpgate/state/redis.py`` recommends; without ``maxmemory`` it changes nothing
until a test sets one). It dies with the test process (PR_SET_PDEATHSIG, as
``dnsserver.py``'s dnsmasq does).

Usage::

    with RedisServer() as server:
        RedisStore(server.url)
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

from dnsserver import LocalService, _free_port

REDIS_PATHS = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


def find_redis_server() -> str | None:
    """The redis-server binary, or None (Debian package: redis-server)."""
    found = shutil.which("redis-server")
    if found:
        return found
    return next((p for p in REDIS_PATHS if os.access(p, os.X_OK)), None)


class RedisServer(LocalService):
    """redis-server on 127.0.0.1:<free port>; a context manager. ``url`` names it."""

    log_name = "redis.log"

    def __init__(self, *, binary: str | None = None):
        self.binary = binary or find_redis_server()
        self.address = "127.0.0.1"
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def start(self, ready_timeout: float = 10.0) -> RedisServer:
        if self._proc is not None:
            return self
        if not self.binary:
            raise FileNotFoundError("redis-server not found (Debian package redis-server)")
        self._dir = tempfile.TemporaryDirectory(prefix="mailsift-redis-")
        last_error = ""
        for _attempt in range(5):          # the free port can be taken before redis binds
            port = _free_port()
            last_error = self._launch(
                [self.binary, "--port", str(port), "--bind", self.address,
                 "--dir", self._dir.name, "--save", "", "--appendonly", "no",
                 "--daemonize", "no", "--maxmemory-policy", "volatile-ttl",
                 "--logfile", ""],          # "" logs to stdout, our log file
                port, ready_timeout)
            if last_error is None:
                return self
            if "in use" not in last_error:
                break
        self.stop()
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> None:
        def pong() -> bool:
            with socket.create_connection((self.address, self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")

        self._wait_until(pong, timeout, "PONG")
