"""The stateful protections through real SMTP conversations, with each backend of the
state store (SQLite; a real redis-server on loopback), time moved by an injected clock:
ip_concurrency_limit, ip_rate_limit, sender_rate_limit, too_many_invalid_recipients,
outgoing_quota, destination verification by callout; and two gate nodes sharing one
Redis enforcing one concurrency limit and one rate limit."""
from __future__ import annotations

import base64
import smtplib
import time

import pytest

import gate_zones as z
from gate_harness import GateThread, RawClient, gate_toml
from test_gate_smtp import PASSWORD, _client_tls, assert_logged, decision, gate_config, message, reply, send, split

pytest_plugins = ["state_fixtures"]


class Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _gate_factory(backend: str, request, dns_server, tmp_path):
    """Build gates with given [limits] on ``backend``; they are stopped afterwards."""
    from gate_harness import ScriptedScorer, Sink

    sink, scorer = Sink().start(), ScriptedScorer().start()
    gates = []
    redis_url = request.getfixturevalue("redis_server").url if backend == "redis" else None
    prefix = f"t{time.monotonic_ns()}:"

    def make(limits: dict, clock=None, domains: dict | None = None, name="g", greylist: dict | None = None,
             namespace: str | None = None):
        """``namespace``: gates given the same one share their Redis state (nodes of one
        installation); by default each gate has its own."""
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        cfg = gate_config(dns_server, sink, scorer, {"gate": {"state_dir": str(d)}, "limits": limits,
                                                     "greylist": greylist or {}})
        cfg["domains"].update(domains or {})
        if redis_url:
            cfg["state"] = {"backend": "redis", "redis_url": redis_url,
                            "redis_prefix": f"{prefix}{namespace or name}:"}
        g = GateThread(cfg, d, clock=clock).start()
        gates.append(g)
        return g

    make.sink = sink

    def stop():
        for g in gates:
            g.stop()
        sink.stop()
        scorer.stop()
    return make, stop


@pytest.fixture(params=["sqlite", "redis"])
def make_gate(request, dns_server, tmp_path):
    make, stop = _gate_factory(request.param, request, dns_server, tmp_path)
    yield make
    stop()


@pytest.fixture
def make_redis_gate(request, dns_server, tmp_path):
    """Gates sharing one Redis: several nodes behind one MX."""
    make, stop = _gate_factory("redis", request, dns_server, tmp_path)
    yield make
    stop()


def test_ip_concurrency_limit(make_gate):
    g = make_gate({"ip_concurrency": 2})
    first, second = RawClient(g.port()), RawClient(g.port())
    assert first.reply()[0] == second.reply()[0] == 220
    third = RawClient(g.port())
    assert third.reply() == split(reply("ip_concurrency_limit"))
    assert third.closed()
    assert_logged(decision(g, classification="ip_concurrency_limit"), "ip_concurrency_limit")
    first.cmd("QUIT")
    first.close()
    for _ in range(50):                  # the lease goes back when the connection ends
        c = RawClient(g.port())
        code, _ = c.reply()
        c.close()
        if code == 220:
            break
        time.sleep(0.05)
    assert code == 220


def test_ip_rate_limit_is_deferred_so_the_whitelist_can_bypass_it(make_gate):
    clock = Clock()
    g = make_gate({"ip_rate": 3, "ip_rate_window": 60}, clock=clock)
    for _ in range(3):
        assert send(g, message())[2][0] == 250
    _, rr, _ = send(g, message())
    assert (rr[0][0], rr[0][1].decode()) == split(reply("ip_rate_limit"))
    assert_logged(decision(g, classification="ip_rate_limit"), "ip_rate_limit")
    # friend@good.test is on local.test's sender whitelist
    assert send(g, message(frm="friend@good.test"), mail_from="friend@good.test")[2] == split(reply("whitelisted"))
    clock.t += 61                      # the window has passed
    assert send(g, message())[2][0] == 250


def test_sender_rate_limit(make_gate):
    clock = Clock()
    g = make_gate({"sender_rate": 2}, clock=clock)
    for _ in range(2):
        assert send(g, message(frm="busy@good.test"), mail_from="busy@good.test")[2][0] == 250
    _, rr, _ = send(g, message(frm="busy@good.test"), mail_from="busy@good.test")
    assert (rr[0][0], rr[0][1].decode()) == split(reply("sender_rate_limit"))
    assert send(g, message())[2][0] == 250          # another sender is not limited
    clock.t += 61
    assert send(g, message(frm="busy@good.test"), mail_from="busy@good.test")[2][0] == 250


def test_too_many_invalid_recipients(make_gate):
    clock = Clock()
    g = make_gate({"invalid_rcpt": 2, "invalid_rcpt_window": 3600}, clock=clock)
    _, rr, _ = send(g, message(), rcpts=("nobody1@local.test", "nobody2@local.test", "alice@local.test"))
    assert [c for c, _ in rr] == [550, 550, 550]
    assert (rr[2][0], rr[2][1].decode()) == split(reply("too_many_invalid_recipients"))
    assert_logged(decision(g, classification="too_many_invalid_recipients"), "too_many_invalid_recipients")
    clock.t += 3601
    assert send(g, message())[2][0] == 250


def test_outgoing_quota(make_gate):
    clock = Clock()
    g = make_gate({"outgoing_per_hour": 2}, clock=clock)

    def submit():
        with smtplib.SMTP_SSL("127.0.0.1", g.port("submissions"), context=_client_tls(), timeout=10) as s:
            s.ehlo("laptop")
            s.login("alice@example.test", PASSWORD)
            code, text = s.mail("alice@example.test")
            if code != 250:
                return code, text.decode()
            s.rcpt("x@far-away.test")
            return s.data(message(frm="alice@example.test", to="x@far-away.test"))[0], ""

    assert submit()[0] == 250 and submit()[0] == 250
    assert submit() == split(reply("outgoing_quota"))
    assert_logged(decision(g, classification="outgoing_quota"), "outgoing_quota")
    clock.t += 3601
    assert submit()[0] == 250


def test_destination_verification_by_callout(make_gate):
    g = make_gate({}, domains={"verify.test": {"route": f"127.0.0.1:{make_gate.sink.port}",
                                               "verify_recipients": True}})
    _, rr, data = send(g, message(), rcpts=("alice@verify.test", "reject-x@verify.test", "tempfail-y@verify.test"))
    assert rr[0][0] == 250
    assert (rr[1][0], rr[1][1].decode()) == split(reply("destination_does_not_exist"))
    assert (rr[2][0], rr[2][1].decode()) == split(reply("destination_unverified"))
    assert data[0] == 250
    assert_logged(decision(g, rcpt="reject-x@verify.test", classification="destination_does_not_exist"),
                  "destination_does_not_exist")


def test_two_nodes_sharing_redis_enforce_one_limit(make_redis_gate):
    a = make_redis_gate({"ip_concurrency": 2, "ip_rate": 4, "ip_rate_window": 60}, name="a", namespace="mx")
    b = make_redis_gate({"ip_concurrency": 2, "ip_rate": 4, "ip_rate_window": 60}, name="b", namespace="mx")
    ca, cb = RawClient(a.port(), source=z.IP_GOOD), RawClient(b.port(), source=z.IP_GOOD)
    assert ca.reply()[0] == cb.reply()[0] == 220
    third = RawClient(b.port(), source=z.IP_GOOD)
    assert third.reply() == split(reply("ip_concurrency_limit"))   # counted across both nodes
    for c in (ca, cb, third):
        c.close()
    time.sleep(0.3)
    # 2 connections counted above (the refused one made no hit) + 2 more = the limit of 4
    assert send(a, message())[2][0] == 250
    assert send(b, message())[2][0] == 250
    _, rr, _ = send(a, message())
    assert rr[0][0] == 421                                           # the 5th, on either node


def test_auth_lockout_per_ip_and_per_user_without_revealing_the_password(make_gate):
    clock = Clock()
    g = make_gate({"auth_failures": 3, "auth_window": 600, "auth_lockout": 900}, clock=clock)

    def login(password, source=z.IP_GOOD):
        with smtplib.SMTP_SSL("127.0.0.1", g.port("submissions"), context=_client_tls(), timeout=10,
                              source_address=(source, 0)) as s:
            s.ehlo("laptop")
            # one mechanism per attempt: smtplib's login() would try LOGIN after PLAIN
            plain = base64.b64encode(f"\0alice@example.test\0{password}".encode()).decode()
            code, text = s.docmd("AUTH", "PLAIN " + plain)
            return code, text.decode()

    for _ in range(3):
        assert login("wrong")[0] == 535
    locked = split(reply("auth_denied"))
    assert login(PASSWORD) == locked                 # the right password, same answer
    assert login("wrong") == locked
    assert login(PASSWORD, source=z.IP_NO_PTR) == locked   # the user is locked from any IP
    assert_logged(decision(g, classification="auth_denied"), "auth_denied")
    clock.t += 901
    assert login(PASSWORD)[0] == 235                 # after the lockout, right works again


def test_greylisting_by_reputation(make_gate):
    clock = Clock()
    # a new installation learns for 72 h and delays nothing
    learning = make_gate({}, clock=clock, name="learning")
    assert send(learning, message(), source=z.IP_NO_PTR)[2][0] == 250

    g = make_gate({}, clock=clock, name="live", greylist={"learning_hours": 0, "min_delay": 300})
    greylisted = split(reply("greylisted"))
    _, rr, _ = send(g, message(), source=z.IP_NO_PTR)
    assert (rr[0][0], rr[0][1].decode()) == greylisted
    d = decision(g, classification="greylisted")
    assert_logged(d, "greylisted")
    assert d["evidence"][0]["details"]["network"] == "net:127.0.0.0/24"
    clock.t += 60                                    # too early: delayed again
    _, rr, _ = send(g, message(), source=z.IP_NO_PTR)
    assert (rr[0][0], rr[0][1].decode()) == greylisted
    clock.t += 250                                   # past the minimum delay, retried from
    _, _, data = send(g, message(), source=z.IP_ERROR_CODE)   # another address of the /24
    assert data[0] == 250
    # the network has a reputation now: a new sender and recipient pass at once
    _, _, data = send(g, message(frm="other@good.test"), mail_from="other@good.test",
                      rcpts=("carol@local.test",), source=z.IP_NO_PTR)
    assert data[0] == 250
    # a whitelisted sender from a network without reputation is never delayed
    _, _, data = send(g, message(frm="friend@good.test"), mail_from="friend@good.test", source=z.IP_GOOD)
    assert data == split(reply("whitelisted"))


def test_two_nodes_sharing_redis_share_one_greylist(make_redis_gate):
    clock = Clock()
    grey = {"learning_hours": 0, "min_delay": 300}
    a = make_redis_gate({}, clock=clock, name="a", namespace="mx", greylist=grey)
    b = make_redis_gate({}, clock=clock, name="b", namespace="mx", greylist=grey)
    _, rr, _ = send(a, message(), source=z.IP_NO_PTR)
    assert (rr[0][0], rr[0][1].decode()) == split(reply("greylisted"))
    clock.t += 301                                  # the sender's retry reaches the other node
    assert send(b, message(), source=z.IP_NO_PTR)[2][0] == 250
    assert send(a, message(), rcpts=("carol@local.test",), source=z.IP_NO_PTR)[2][0] == 250


def test_outgoing_users_managed_from_the_cli_live_in_the_store(dns_server, tmp_path):
    import subprocess
    import sys

    from gate_harness import ScriptedScorer, Sink, free_port

    sink, scorer = Sink().start(), ScriptedScorer().start()
    port = free_port()
    (tmp_path / "gate.toml").write_text(gate_toml(listener="submissions", port=port, dns_port=dns_server.port)
                                        + f"""
[scorer]
addresses = ["{scorer.address}"]
[domains."example.test"]
route = "127.0.0.1:{sink.port}"
[outgoing]
relay = "127.0.0.1:{sink.port}"
""")
    cli = [sys.executable, "-m", "classifier.cli", "gate", "user"]
    cfg = ["--config", str(tmp_path / "gate.toml")]

    def run(*args, stdin=""):
        return subprocess.run(cli + list(args) + cfg, input=stdin, capture_output=True, text=True)

    assert run("add", "bob@example.test", "--senders", "bob@example.test", stdin="s3cret\n").returncode == 0
    assert run("list").stdout.split() == ["bob@example.test"]
    assert b"s3cret" not in (tmp_path / "state" / "state.db").read_bytes()   # a hash, never the password
    from smtpgate.config import load

    g = GateThread.from_config(load(tmp_path / "gate.toml")).start()   # the file the CLI used
    try:
        def login(password):
            with smtplib.SMTP_SSL("127.0.0.1", port, context=_client_tls(), timeout=10) as s:
                s.ehlo("laptop")
                plain = base64.b64encode(f"\0bob@example.test\0{password}".encode()).decode()
                return s.docmd("AUTH", "PLAIN " + plain)[0]

        assert login("s3cret") == 235 and login("wrong") == 535
        assert run("del", "bob@example.test").returncode == 0
        assert login("s3cret") == 535
    finally:
        g.stop()
        sink.stop()
        scorer.stop()


def test_two_gate_processes_sharing_redis_enforce_one_set_of_limits(dns_server, redis_server, tmp_path):
    """Two `mailsift gate serve` processes behind one MX, sharing one Redis: one
    concurrency limit, one greylist, one rate limit. (Greylisting's minimum delay is
    1 s here and really waited for: two processes share no injectable clock.)"""
    import os
    import subprocess
    import sys

    from gate_harness import ScriptedScorer, Sink, free_port

    sink, scorer = Sink().start(), ScriptedScorer().start()
    nodes, procs = [], []

    class Node:
        def __init__(self, port):
            self._port = port

        def port(self, kind="inbound"):
            return self._port

        def settle(self):
            pass   # a gate in another process: this test looks at replies, not at the sink

    try:
        for i in range(2):
            d = tmp_path / f"node{i}"
            d.mkdir()
            port = free_port()
            (d / "gate.toml").write_text(gate_toml(listener="inbound", port=port, dns_port=dns_server.port)
                                         + f"""
[scorer]
addresses = ["{scorer.address}"]
[state]
backend = "redis"
redis_url = "{redis_server.url}"
redis_prefix = "twoproc:"
[limits]
ip_concurrency = 2
ip_rate = 5
ip_rate_window = 60
[greylist]
learning_hours = 0
min_delay = 1
[domains."local.test"]
route = "127.0.0.1:{sink.port}"
""")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "classifier.cli", "gate", "serve", "--config", str(d / "gate.toml"),
                 "--ready-file", str(d / "ready"), "--log-level", "WARNING"],
                env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            nodes.append((Node(port), d / "ready"))
        for (_, ready), proc in zip(nodes, procs):
            for _ in range(300):
                if ready.exists() or proc.poll() is not None:
                    break
                time.sleep(0.05)
            assert ready.exists(), "a gate process did not start"
        a, b = nodes[0][0], nodes[1][0]

        # one concurrency limit: one connection on each node, a third anywhere is refused
        ca, cb = RawClient(a.port(), source=z.IP_NO_PTR), RawClient(b.port(), source=z.IP_NO_PTR)
        assert ca.reply()[0] == cb.reply()[0] == 220
        third = RawClient(a.port(), source=z.IP_NO_PTR)
        assert third.reply() == split(reply("ip_concurrency_limit"))
        for c in (ca, cb, third):
            c.close()
        time.sleep(0.5)                                  # the leases go back on disconnect

        # one greylist: the first attempt on one node, the retry on the other
        _, rr, _ = send(a, message(), source=z.IP_NO_PTR)
        assert (rr[0][0], rr[0][1].decode()) == split(reply("greylisted"))
        time.sleep(1.2)
        assert send(b, message(), source=z.IP_NO_PTR)[2][0] == 250

        # one rate limit: 2 connections above + 2 transactions = 4; the 5th passes, the 6th not
        assert send(a, message(), source=z.IP_NO_PTR)[2][0] == 250
        _, rr, _ = send(b, message(), source=z.IP_NO_PTR)
        assert (rr[0][0], rr[0][1].decode()) == split(reply("ip_rate_limit"))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        sink.stop()
        scorer.stop()


def test_a_dnswl_listing_vouches_for_its_network(make_gate):
    clock = Clock()
    g = make_gate({}, clock=clock, greylist={"learning_hours": 0})
    # 127.0.0.4 is on wl.test; its reverse name wl-client.test is its network
    assert send(g, message(), source=z.IP_WHITELISTED, helo="wl-client.test")[2] == split(reply("dnswl"))
    value = g.loop_call(lambda: g.server.gate.state.get("greylist:rep:dns:wl-client.test"))
    assert value is not None and int(value) >= 1


def test_a_domain_sets_its_own_rate_limit(make_gate):
    g = make_gate({}, domains={"example.test": {"route": f"127.0.0.1:{make_gate.sink.port}",
                                                "limits": {"sender_rate": 1}}})
    busy = dict(mail_from="busy@good.test")
    assert send(g, message(frm="busy@good.test", to="bob@example.test"), rcpts=("bob@example.test",), **busy)[2][0] == 250
    _, rr, _ = send(g, message(frm="busy@good.test", to="bob@example.test"), rcpts=("bob@example.test",), **busy)
    assert (rr[0][0], rr[0][1].decode()) == split(reply("sender_rate_limit"))
    d = decision(g, classification="sender_rate_limit")
    assert_logged(d, "sender_rate_limit")
    assert d["evidence"][0]["details"]["limit"] == 1
    # the global default (off) still applies to the other domain
    assert send(g, message(frm="busy@good.test"), **busy)[2][0] == 250
