"""A real DNS server on loopback for the gate's tests: dnsmasq serving records given as data.

Why dnsmasq: Debian's ``dnsmasq-base`` is one small binary with no service or init
scripts, it serves A/AAAA/MX/TXT/PTR/CNAME from command-line style options without zone
files, runs unprivileged in the foreground, and forwards chosen domains to a server of
our choosing, which is how ``slow_domains`` get no answer at all (they are forwarded to
a UDP socket that never replies, so timeouts are real). unbound would also do, but its
package installs and may start a system service; authoritative servers (nsd, knot)
cannot leave a query unanswered.

How records map to dnsmasq (and what that means for tests):
- A/AAAA: ``address=/name/ip`` plus ``local=/*.name/``. Unlike ``host-record`` this adds
  no PTR for the address (so a DNSBL answer of 127.0.0.2 does not give the test client
  127.0.0.2 a reverse name), and the ``local`` line keeps subdomains that have no
  records of their own at NXDOMAIN instead of inheriting the address. A name with only
  A/AAAA also gets a placeholder NAPTR record: without another record dnsmasq answers
  NXDOMAIN for its other types, where a real server says NODATA.
- TXT: a str is one record, split into 255-byte character-strings (RFC 1035 section
  3.3.14) as long DKIM keys must be; a tuple gives the strings explicitly.
- MX: (preference, exchange); exchange "." is a null MX (RFC 7505).
- PTR: keyed by the address ("127.0.0.10") or the reverse name; only the PTRs given exist.
- CNAME: a target that is itself in the records.
- Every name under a served zone that has no record is NXDOMAIN; a name with records
  but not of the asked type is NODATA. Names outside every served zone get REFUSED
  (the resolver's "servfail"). Negative answers carry no SOA, so they are not cached.

Usage::

    with DnsServer({"example.test": {"A": ["192.0.2.1"], "TXT": ["v=spf1 -all"]}},
                   slow_domains=["slow.test"]) as server:
        Resolver(["127.0.0.1"], port=server.port, timeout=0.5)
"""
from __future__ import annotations

import ctypes
import getpass
import grp
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

import dns.exception
import dns.message
import dns.query

DNSMASQ_PATHS = ("/usr/sbin/dnsmasq", "/usr/bin/dnsmasq")
RTYPES = ("A", "AAAA", "MX", "TXT", "PTR", "CNAME")


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started us dies (Linux
    prctl PR_SET_PDEATHSIG), so a test run killed mid-way leaves no dnsmasq behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def find_dnsmasq() -> str | None:
    """The dnsmasq binary, or None (Debian package: dnsmasq-base)."""
    found = shutil.which("dnsmasq")
    if found:
        return found
    return next((p for p in DNSMASQ_PATHS if os.access(p, os.X_OK)), None)


def txt_strings(value: str | tuple[str, ...] | list[str]) -> list[str]:
    """A TXT record as its character-strings: a str is split every 255 bytes."""
    if isinstance(value, (tuple, list)):
        strings = list(value)
    else:
        data = value.encode("utf-8")
        strings = [data[i:i + 255].decode("utf-8") for i in range(0, len(data), 255)] or [""]
    for s in strings:
        if len(s.encode("utf-8")) > 255:
            raise ValueError(f"TXT string longer than 255 bytes: {s[:40]}...")
    return strings


def _quoted(s: str) -> str:
    if any(ch in s for ch in "\r\n\0"):
        raise ValueError(f"control character in TXT string {s!r}")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _name(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    if not name or any(ch in name for ch in " ,/#\n"):
        raise ValueError(f"bad DNS name for the test server: {name!r}")
    return name


def _ptr_name(key: str) -> str:
    try:
        return ipaddress.ip_address(key).reverse_pointer
    except ValueError:
        return _name(key)


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for the test DNS server")


class LocalService:
    """What a test's server process shares: a temporary directory, a log file in it,
    stopping (terminate, then kill), and use as a context manager. Subclasses set
    ``log_name`` and start ``self._proc`` with ``self._log`` as its output."""

    log_name = "service.log"
    _proc: subprocess.Popen | None = None
    _log = None
    _dir: tempfile.TemporaryDirectory | None = None

    def start(self, ready_timeout: float = 10.0):
        raise NotImplementedError

    def _launch(self, cmd: list[str], port: int, ready_timeout: float) -> str | None:
        """Start ``cmd`` (which listens on ``port``): None once it is ready, else why
        not (the process is gone by then)."""
        self._log = open(Path(self._dir.name) / self.log_name, "wb")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.port = port
        try:
            self._wait_ready(ready_timeout)
            return None
        except RuntimeError as e:
            self._kill()
            return str(e)

    def _wait_ready(self, timeout: float) -> None:
        raise NotImplementedError

    def _wait_until(self, probe, timeout: float, what: str) -> None:
        """Poll ``probe()`` (True: ready; OSError or False: not yet) until ``timeout``;
        a process that exits meanwhile fails at once with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(self.log_text() or f"exited with {self._proc.returncode}")
            try:
                if probe():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"no {what} within {timeout}s; log: {self.log_text()}")

    def log_text(self) -> str:
        if self._dir is None:
            return ""
        path = Path(self._dir.name) / self.log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class DnsServer(LocalService):
    """dnsmasq on 127.0.0.1:<free port>, serving ``records``; a context manager.

    ``records`` maps a name to {type: [values]} (see the module docstring for the value
    shapes). ``slow_domains``: queries for these names and everything under them are
    never answered. ``zones``: the domains served authoritatively (NXDOMAIN for unknown
    names); by default the top-level domain of every record name, and "arpa".
    """

    log_name = "dnsmasq.log"

    def __init__(self, records: Mapping[str, Mapping[str, Iterable]], *,
                 slow_domains: Iterable[str] = (), zones: Iterable[str] | None = None,
                 ttl: int = 300, binary: str | None = None, log_queries: bool = False):
        self.records = {_name(n) if not _is_ip(n) else n: dict(v) for n, v in records.items()}
        self.slow_domains = tuple(_name(d) for d in slow_domains)
        self.zones = tuple(zones) if zones is not None else self._default_zones()
        self.ttl = ttl
        self.binary = binary or find_dnsmasq()
        self.log_queries = log_queries
        self.address = "127.0.0.1"
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._blackhole: socket.socket | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    def _default_zones(self) -> tuple[str, ...]:
        tlds = {("arpa" if _is_ip(n) else n.rsplit(".", 1)[-1]) for n in self.records}
        return tuple(sorted(tlds | {"arpa"}))

    # -- configuration --------------------------------------------------------------
    def config_lines(self, port: int, blackhole_port: int) -> list[str]:
        lines = [
            f"port={port}", f"listen-address={self.address}", "bind-interfaces",
            "no-resolv", "no-hosts", "no-poll", "cache-size=0", f"local-ttl={self.ttl}",
            "log-facility=-",
        ]
        if self.log_queries:
            lines.append("log-queries")
        for zone in self.zones:
            lines.append(f"local=/{_name(zone)}/")
        for domain in self.slow_domains:
            lines.append(f"server=/{domain}/127.0.0.1#{blackhole_port}")
        for key, types in self.records.items():
            unknown = set(types) - set(RTYPES)
            if unknown:
                raise ValueError(f"{key}: unsupported record types {sorted(unknown)}")
            name = _ptr_name(key) if _is_ip(key) else key
            addresses = [*types.get("A", ()), *types.get("AAAA", ())]
            for ip in addresses:
                ipaddress.ip_address(ip)                  # fail early on a typo
                lines.append(f"address=/{name}/{ip}")
            if addresses:
                lines.append(f"local=/*.{name}/")
                if not types.get("TXT") and not types.get("MX"):
                    # address= alone does not make the name exist for other types
                    # (they would be NXDOMAIN); any other record does. A NAPTR, which
                    # no mail check asks for, makes them NODATA as they must be.
                    lines.append(f"naptr-record={name},0,0,,,,.")
            for value in types.get("TXT", ()):
                lines.append(f"txt-record={name}," + ",".join(_quoted(s) for s in txt_strings(value)))
            for pref, exchange in types.get("MX", ()):
                exchange = "." if exchange.strip() == "." else _name(exchange)
                lines.append(f"mx-host={name},{exchange},{int(pref)}")
            for target in types.get("PTR", ()):
                lines.append(f"ptr-record={name},{_name(target)}")
            for target in types.get("CNAME", ()):
                lines.append(f"cname={name},{_name(target)}")
        return lines

    # -- lifecycle --------------------------------------------------------------------
    def start(self, ready_timeout: float = 10.0) -> DnsServer:
        if self._proc is not None:
            return self
        if not self.binary:
            raise FileNotFoundError("dnsmasq not found (Debian package dnsmasq-base)")
        self._dir = tempfile.TemporaryDirectory(prefix="mailsift-dns-")
        # The slow domains' "server": a bound UDP socket nobody reads or answers.
        self._blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._blackhole.bind(("127.0.0.1", 0))
        last_error = ""
        for _attempt in range(5):          # the free port can be taken before dnsmasq binds
            port = _free_port()
            conf = Path(self._dir.name) / "dnsmasq.conf"
            conf.write_text("\n".join(self.config_lines(port, self._blackhole.getsockname()[1])) + "\n")
            user = getpass.getuser()
            group = grp.getgrgid(os.getgid()).gr_name
            last_error = self._launch(
                [self.binary, "--keep-in-foreground", f"--conf-file={conf}",
                 # Run as whoever we are (dnsmasq started as root otherwise drops to nobody);
                 # no pid file, so no writable /run is needed.
                 f"--user={user}", f"--group={group}", "--pid-file="], port, ready_timeout)
            if last_error is None:
                return self
            if "in use" not in last_error:
                break
        self.stop()
        raise RuntimeError(f"dnsmasq did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> None:
        query = dns.message.make_query("ready.invalid.", "A")

        def answers() -> bool:
            try:
                dns.query.udp(query, self.address, port=self.port, timeout=0.2)
                return True
            except dns.exception.Timeout:
                return False

        self._wait_until(answers, timeout, "answer")

    def stop(self) -> None:
        if self._blackhole is not None:
            self._blackhole.close()
            self._blackhole = None
        super().stop()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True

