"""The queue through real SMTP: the gate accepts into its durable queue, its workers
deliver to real SMTP servers on loopback (aiosmtpd sinks), retry what is put off,
bounce what is refused with an RFC 3464 DSN to the sender's route, and resume after a
restart; the admin commands (``mailsift queue``) on the same queue.

Peers: dnsmasq (tests/gate_zones.py: ``mail.good.test`` is 127.0.0.10, names under
good.test without records are NXDOMAIN, anything under slow.test times out), two
sinks (one on 127.0.0.1, one on 127.0.0.10 for a route given by name), and the
scripted scorer. Time jumps (retry schedules, max_age, retention) use the gate's
injectable clock: it moves the queue, its workers and the purge together.
"""
from __future__ import annotations

import email
import email.policy
import hashlib
import json
import smtplib
import time

import pytest

import gate_zones as z
from classifier.classifications import get
from gate_harness import GateThread, ScriptedScorer, Sink, free_port
from test_gate_smtp import message

SENDER = "sender@good.test"


class Clock:
    """Real time plus an offset a test moves forward."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture(scope="module")
def peers():
    sink, named, scorer = Sink().start(), Sink(host=z.IP_GOOD).start(), ScriptedScorer().start()
    yield sink, named, scorer
    for p in (sink, named, scorer):
        p.stop()


@pytest.fixture
def sink(peers):
    peers[0].clear()
    peers[0].handler.delay = 0.0
    return peers[0]


def gate_config(dns_server, peers, state_dir, queue=None, down_port=None) -> dict:
    sink, named, scorer = peers
    return {
        "gate": {"hostname": "mx.gate.test", "state_dir": str(state_dir), "postmaster": "postmaster@example.test",
                 "relay_timeout": 5.0},
        "listeners": {"inbound": {"bind": f"127.0.0.1:{free_port()}"}},
        "resolver": {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": z.TEST_TIMEOUT},
        "scorer": {"addresses": [scorer.address], "deadline": 2.0},
        "greylist": {"enabled": False},
        "domains": {
            "example.test": {"route": sink.route},
            "down.test": {"route": f"127.0.0.1:{down_port or free_port()}"},     # nothing listens
            "nx.test": {"route": "no-such-host.good.test:25"},                   # NXDOMAIN
            "named.test": {"route": f"mail.good.test:{named.port}"},             # A 127.0.0.10
            "dns-trouble.test": {"route": "mx.slow.test:25"},                    # DNS times out
        },
        # where the DSNs to the senders (good.test is not ours) go
        "outgoing": {"relay": sink.route},
        "queue": {"retry_schedule": [60, 300], "max_age_hours": 2, "poll_interval": 0.05,
                  "connect_timeout": 2.0, **(queue or {})},
    }


@pytest.fixture
def make_gate(dns_server, peers, tmp_path):
    gates = []

    def make(queue=None, clock=None, state_dir=None, down_port=None):
        g = GateThread(gate_config(dns_server, peers, state_dir or tmp_path / "state", queue, down_port),
                       tmp_path, clock=clock or Clock()).start()
        gates.append(g)
        return g

    yield make
    for g in gates:
        if g.server is not None and g.thread.is_alive():
            g.stop()


def send(gate, msg: bytes, rcpts, mail_from=SENDER) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", gate.port(), source_address=(z.IP_GOOD, 0), timeout=20) as s:
        s.ehlo("mail.good.test")
        assert s.mail(mail_from)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250, r
        code, text = s.data(msg)
        return code, text.decode()


def accepted_id(gate, msgid: str) -> str:
    return next(d["queue_id"] for d in gate.decisions() if d.get("message_id") == msgid and d["phase"] == "data")


def outcomes(gate, qid: str) -> list[tuple[str, str, str]]:
    """(event, rcpt, classification) of the queue's delivery lines for one message."""
    return [(d["event"], d["rcpt"], d["classification"]) for d in gate.decisions()
            if d.get("phase") == "delivery" and d["queue_id"] == qid]


def dsn_of(sink, bounced_rcpt: str) -> email.message.EmailMessage:
    for m in sink.messages:
        if m["mail_from"] in ("", "<>") and bounced_rcpt.encode() in m["data"]:
            return email.message_from_bytes(m["data"], policy=email.policy.default)
    raise AssertionError(f"no DSN for {bounced_rcpt} at the sink")


def status_groups(dsn) -> list:
    """The delivery-status part's groups (per-message first), as header mappings."""
    part = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    return list(part.get_payload())


# ======================================================================================
def test_accepted_mail_is_queued_before_the_250_then_delivered_by_a_worker(make_gate, sink):
    g = make_gate()
    msg = message(to="bob@example.test", msgid="<q1@good.test>")
    assert send(g, msg, ["bob@example.test"]) == (250, get("not_spam").reply()[4:])
    qid = accepted_id(g, "<q1@good.test>")
    entry = g.queue.get(qid)             # in the queue as soon as the 250 was answered
    assert entry is not None and entry.origin == "smtp" and entry.rcpts == ["bob@example.test"]
    digest = hashlib.sha256(msg).hexdigest()
    assert entry.meta["classification"] == "not_spam" and entry.meta["digest"] == digest
    assert entry.meta["message_id"] == "<q1@good.test>" and entry.meta["client_ip"] == z.IP_GOOD
    assert g.queue.original(qid) == msg  # the bytes as received, for report-as-spam
    g.settle()
    (m,) = sink.messages
    assert m["rcpts"] == ["bob@example.test"] and m["mail_from"] == SENDER
    assert m["data"] == g.queue.message(qid) and m["data"].endswith(msg)
    assert b"X-Mailsift-Classification: not_spam" in m["data"] and f"id {qid}".encode() in m["data"]
    e = g.queue.get(qid)
    assert e.status == "delivered" and e.recipients[0].attempts == 1 and e.done is not None
    assert outcomes(g, qid) == [("delivered", "bob@example.test", "not_spam")]
    # the gate's own line carries the digest too (the learn log's key)
    assert next(d for d in g.decisions() if d["queue_id"] == qid and d["phase"] == "data")["digest"] == digest


def test_a_destination_that_tempfails_then_accepts_gets_it_once(make_gate, sink):
    clock = Clock()
    g = make_gate(clock=clock)
    send(g, message(to="flaky1-dan@example.test", msgid="<q2@good.test>"), ["flaky1-dan@example.test"])
    qid = accepted_id(g, "<q2@good.test>")
    g.settle()
    r = g.queue.get(qid).recipients[0]
    assert (r.status, r.attempts, r.last_reply) == ("deferred", 1, "451 4.3.0 Try again later")
    assert r.next_attempt == pytest.approx(r.last_attempt + 60)    # the schedule's first step
    assert sink.messages == []
    clock.jump(61)
    g.settle()
    assert [m["rcpts"] for m in sink.messages] == [["flaky1-dan@example.test"]]
    r = g.queue.get(qid).recipients[0]
    assert (r.status, r.attempts) == ("delivered", 2)
    assert [e for e, _, _ in outcomes(g, qid)] == ["deferred", "delivered"]
    clock.jump(3600)
    g.settle()
    assert len(sink.messages) == 1                                   # never again


def test_a_destination_that_rejects_bounces_with_a_dsn_to_the_sender(make_gate, sink):
    g = make_gate()
    msg = message(to="reject-erin@example.test", subject="Quarterly report", msgid="<q3@good.test>")
    send(g, msg, ["reject-erin@example.test"])
    qid = accepted_id(g, "<q3@good.test>")
    g.settle()
    e = g.queue.get(qid)
    assert e.status == "bounced" and e.recipients[0].last_reply == "550 5.1.1 No such user"
    dsn_msg = next(m for m in sink.messages if m["mail_from"] in ("", "<>"))
    assert dsn_msg["rcpts"] == [SENDER]                      # to the sender, from the null sender
    dsn = dsn_of(sink, "reject-erin@example.test")
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    per_message, per_rcpt = status_groups(dsn)
    assert per_message["Reporting-MTA"] == "dns; mx.gate.test"
    assert per_rcpt["Final-Recipient"] == "rfc822; reject-erin@example.test"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
    original = next(p for p in dsn.walk() if p.get_content_type() in ("message/rfc822", "text/rfc822-headers"))
    assert b"Message-ID: <q3@good.test>" in original.as_bytes() and b"Subject: Quarterly report" in original.as_bytes()
    (line,) = [d for d in g.decisions() if d.get("phase") == "delivery" and d["queue_id"] == qid]
    assert (line["event"], line["classification"], line["reply"]) == ("bounced", "not_spam", "550 5.1.1 No such user")
    bounce = g.queue.get(line["bounce"])
    assert bounce.origin == "bounce" and bounce.mail_from == "" and bounce.status == "delivered"


def test_an_unreachable_destination_is_deferred_then_bounced_after_max_age(make_gate, sink):
    clock = Clock()
    g = make_gate(clock=clock)
    send(g, message(to="frank@down.test", msgid="<q4@good.test>"), ["frank@down.test"])
    qid = accepted_id(g, "<q4@good.test>")
    g.settle()
    r = g.queue.get(qid).recipients[0]
    assert r.status == "deferred" and "Errno 111" in r.last_reply        # connection refused
    clock.jump(61)
    g.settle()
    r = g.queue.get(qid).recipients[0]
    assert (r.status, r.attempts) == ("deferred", 2)
    assert r.next_attempt == pytest.approx(r.last_attempt + 300)   # the schedule's next step
    clock.jump(2 * 3600)                                             # past max_age (2 h)
    g.settle()
    assert g.queue.get(qid).recipients[0].status == "bounced"
    per_rcpt = status_groups(dsn_of(sink, "frank@down.test"))[1]
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "4.4.7"   # expired, RFC 3463
    assert [e for e, _, _ in outcomes(g, qid)] == ["deferred", "deferred", "bounced"]


def test_a_route_whose_name_does_not_exist_is_unrouteable(make_gate, sink):
    g = make_gate()
    send(g, message(to="gina@nx.test", msgid="<q5@good.test>"), ["gina@nx.test"])
    qid = accepted_id(g, "<q5@good.test>")
    g.settle()
    (line,) = [d for d in g.decisions() if d.get("phase") == "delivery" and d["queue_id"] == qid]
    assert line["classification"] == "unrouteable" and line["event"] == "bounced"
    assert line["reply"].startswith("550 5.4.4 Unrouteable address")
    assert "no-such-host.good.test" in line["evidence"][0]["evidence"]
    per_rcpt = status_groups(dsn_of(sink, "gina@nx.test"))[1]
    assert per_rcpt["Status"] == "5.4.4" and per_rcpt["Action"] == "failed"


def test_a_route_given_by_name_is_looked_up_in_our_dns(make_gate, peers):
    named = peers[1]
    named.clear()
    g = make_gate()
    send(g, message(to="hal@named.test", msgid="<q6@good.test>"), ["hal@named.test"])
    g.settle()
    assert [m["rcpts"] for m in named.messages] == [["hal@named.test"]]


def test_dns_trouble_for_a_route_is_temporary(make_gate, sink):
    g = make_gate()
    send(g, message(to="ian@dns-trouble.test", msgid="<q7@good.test>"), ["ian@dns-trouble.test"])
    qid = accepted_id(g, "<q7@good.test>")
    g.settle()
    r = g.queue.get(qid).recipients[0]
    assert r.status == "deferred" and "DNS timeout" in r.last_reply


def test_a_failing_message_from_the_null_sender_is_not_bounced(make_gate, sink):
    g = make_gate()
    # a bounce from a mailer daemon (its From domain publishes no DMARC policy)
    msg = message(frm="mailer-daemon@spf-pass.test", to="reject-jo@example.test", msgid="<q8@good.test>")
    assert send(g, msg, ["reject-jo@example.test"], mail_from="")[0] == 250
    qid = accepted_id(g, "<q8@good.test>")
    g.settle()
    assert g.queue.get(qid).status == "bounced"
    (line,) = [d for d in g.decisions() if d.get("phase") == "delivery" and d["queue_id"] == qid]
    assert line["bounce"] == "none: null sender"
    assert sink.messages == [] and [e.origin for e in g.queue.list()] == ["smtp"]


def test_partial_acceptance_retries_only_the_deferred_recipient(make_gate, sink):
    clock = Clock()
    g = make_gate(clock=clock)
    send(g, message(to="bob@example.test", msgid="<q9@good.test>"), ["bob@example.test", "flaky1-carol@example.test"])
    qid = accepted_id(g, "<q9@good.test>")
    g.settle()
    assert [m["rcpts"] for m in sink.messages] == [["bob@example.test"]]
    assert [(r.status, r.attempts) for r in g.queue.get(qid).recipients] == [("delivered", 1), ("deferred", 1)]
    clock.jump(61)
    g.settle()
    assert [m["rcpts"] for m in sink.messages] == [["bob@example.test"], ["flaky1-carol@example.test"]]
    assert [(r.status, r.attempts) for r in g.queue.get(qid).recipients] == [("delivered", 1), ("delivered", 2)]


def test_recipients_of_several_domains_share_one_transaction_and_go_to_their_routes(make_gate, sink, peers):
    named = peers[1]
    named.clear()
    g = make_gate()
    send(g, message(to="bob@example.test", msgid="<q10@good.test>"), ["bob@example.test", "hal@named.test"])
    g.settle()
    assert [m["rcpts"] for m in sink.messages] == [["bob@example.test"]]
    assert [m["rcpts"] for m in named.messages] == [["hal@named.test"]]


def test_at_most_workers_per_route_deliveries_at_once(make_gate, sink):
    sink.handler.delay = 0.3
    g = make_gate(queue={"workers_per_route": 2})
    for i in range(6):
        send(g, message(to=f"u{i}@example.test", msgid=f"<c{i}@good.test>"), [f"u{i}@example.test"])
    g.settle(20)
    assert len(sink.messages) == 6 and sink.handler.most_active == 2


def test_an_enqueue_that_fails_answers_451_and_accepts_nothing(make_gate, sink):
    g = make_gate()

    def broken(**kw):
        raise OSError(28, "No space left on device")
    g.queue.enqueue = broken
    code, text = send(g, message(to="bob@example.test", msgid="<q11@good.test>"), ["bob@example.test"])
    assert f"{code} {text}" == get("internal_error").reply()
    d = next(d for d in g.decisions() if d.get("message_id") == "<q11@good.test>")
    assert d["classification"] == "internal_error" and "No space left" in d["evidence"][0]["evidence"]
    g.settle()
    assert sink.messages == []


def test_a_restarted_gate_resumes_the_queue(make_gate, tmp_path, sink):
    """Mail the first gate accepted but could not deliver (its route was down) is
    delivered by the next gate on the same state directory, once and only once."""
    down = free_port()
    clock = Clock()
    g1 = make_gate(clock=clock, down_port=down)
    send(g1, message(to="kim@down.test", msgid="<q12@good.test>"), ["kim@down.test"])
    send(g1, message(to="bob@example.test", msgid="<q13@good.test>"), ["bob@example.test"])
    g1.settle()
    deferred, delivered = accepted_id(g1, "<q12@good.test>"), accepted_id(g1, "<q13@good.test>")
    g1.stop()
    later = Sink(port=down).start()                 # the route comes back
    try:
        g2 = make_gate(clock=clock, state_dir=tmp_path / "state", down_port=down)
        clock.jump(61)
        g2.settle()
        assert [m["rcpts"] for m in later.messages] == [["kim@down.test"]]
        assert g2.queue.get(deferred).status == "delivered" and g2.queue.get(delivered).status == "delivered"
        assert len([m for m in sink.messages if b"<q13@good.test>" in m["data"]]) == 1
    finally:
        later.stop()


def test_delivered_mail_is_kept_for_keep_delivered_then_purged(make_gate, sink):
    clock = Clock()
    g = make_gate(clock=clock, queue={"keep_delivered_days": 1})
    send(g, message(to="bob@example.test", msgid="<q14@good.test>"), ["bob@example.test"])
    qid = accepted_id(g, "<q14@good.test>")
    g.settle()
    assert g.loop_call(g.server.purge)["queue"] == 0
    clock.jump(86401)
    assert g.loop_call(g.server.purge)["queue"] == 1
    assert g.queue.get(qid) is None


# ======================================================================================
# mailsift queue list|show|retry|delete, beside a running gate
# ======================================================================================
def _cli(capsys, config, *args) -> tuple[int, str]:
    from classifier.cli import main

    code = main(["queue", *args, "--config", str(config)])
    return code, capsys.readouterr().out


@pytest.fixture
def deferred_gate(make_gate, tmp_path):
    """A gate holding one message to a route that is down, and a config file naming
    its state directory (all the queue commands need)."""
    clock = Clock()
    g = make_gate(clock=clock)
    send(g, message(to="lee@down.test", msgid="<q15@good.test>"), ["lee@down.test"])
    g.settle()
    path = tmp_path / "gate.toml"
    path.write_text(f'[gate]\nstate_dir = "{tmp_path / "state"}"\n'
                    f'[listeners.inbound]\nbind = "127.0.0.1:{g.port()}"\n')
    return g, path, accepted_id(g, "<q15@good.test>"), clock


def test_queue_list_and_show(deferred_gate, capsys):
    g, config, qid, _ = deferred_gate
    code, out = _cli(capsys, config, "list", "--status", "deferred")
    assert code == 0 and qid in out and "lee@down.test  deferred  attempts 1" in out and "1 message" in out
    code, out = _cli(capsys, config, "list", "--status", "delivered")
    assert code == 0 and qid not in out
    code, out = _cli(capsys, config, "list", "--recipient", "lee@", "--json")
    (row,) = [json.loads(x) for x in out.splitlines()]
    assert row["queue_id"] == qid and row["recipients"][0]["status"] == "deferred"
    code, out = _cli(capsys, config, "show", qid)
    assert code == 0 and "from:      <sender@good.test>" in out and "Message-ID: <q15@good.test>" in out
    assert "Received: from mail.good.test" in out
    assert _cli(capsys, config, "show", "NOSUCHID")[0] == 1


def test_queue_retry_makes_it_due_now(deferred_gate, capsys):
    g, config, qid, _ = deferred_gate
    code, out = _cli(capsys, config, "retry", qid)
    assert code == 0 and "1 deferred recipient due now" in out
    g.settle()                                  # the running gate tried again, at once
    assert g.queue.get(qid).recipients[0].attempts == 2


def test_queue_delete_stops_delivery_without_a_bounce_and_is_logged(deferred_gate, capsys, sink):
    g, config, qid, clock = deferred_gate
    code, out = _cli(capsys, config, "delete", qid, "--reason", "sender asked")
    assert code == 0 and "deleted lee@down.test" in out
    clock.jump(3 * 3600)                        # past max_age: it would have bounced
    g.settle()
    assert g.queue.get(qid).recipients[0].status == "deleted"
    assert sink.messages == [] and [e.origin for e in g.queue.list()] == ["smtp"]
    line = [d for d in g.decisions() if d.get("queue_id") == qid and d.get("phase") == "delivery"][-1]
    assert line["event"] == "deleted" and "sender asked" in line["reply"]


def test_stop_lets_a_message_being_decided_get_its_reply(make_gate, sink):
    """A gate stopping (SIGTERM, a deploy) while the scorer is deciding a message: the
    sender still gets the reply, and the message is queued once. Cut off after the
    enqueue, the sender would have sent it again (a duplicate)."""
    import threading

    g = make_gate()
    out = {}
    slow = message(msgid="<drain@good.test>").replace(b"\r\n\r\n", b"\r\nX-Test-Verdict: not_spam 0.01 sleep=1.0\r\n\r\n", 1)
    t = threading.Thread(target=lambda: out.setdefault("reply", send(g, slow, ["user@example.test"])))
    t.start()
    end = time.monotonic() + 10
    while not g.server.gate.busy:               # the scorer is deciding it now
        assert time.monotonic() < end
        time.sleep(0.01)
    g.stop()
    t.join(10)
    assert out["reply"] == (250, "2.0.0 Message accepted for delivery")
    entries = g.queue.list()
    assert [e.meta.get("message_id") for e in entries] == ["<drain@good.test>"]


def test_our_own_delivery_failure_is_retried_then_bounced(make_gate, peers):
    """A failure of ours while delivering (here: the message file is gone) is a
    temporary failure on the retry schedule, and past max_age the recipient bounces
    with a DSN like any other; it must not stay queued forever."""
    clock = Clock()
    g = make_gate(clock=clock, queue={"retry_schedule": [60], "max_age_hours": 1})
    qid = g.queue.enqueue(mail_from=SENDER, rcpts=["lost@example.test"], message=b"Subject: x\r\n\r\nbody\r\n")
    g.queue.path(qid).unlink()
    g.loop_call(lambda: _wake(g))
    g.settle()
    r = g.queue.get(qid).recipients[0]
    assert (r.status, r.attempts) == ("deferred", 1) and "internal error: QueueError: no message" in r.last_reply
    clock.offset += 3600
    g.queue.retry(qid)
    g.loop_call(lambda: _wake(g))
    g.settle()
    r = g.queue.get(qid).recipients[0]
    assert r.status == "bounced"
    line = [d for d in g.decisions() if d.get("queue_id") == qid and d["phase"] == "delivery"][-1]
    assert line["event"] == "bounced" and line["bounce"] != "none: null sender"


async def _wake(g):
    g.server.deliverer.wake()
