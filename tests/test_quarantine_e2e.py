"""Quarantine, release and report end to end, with real peers on loopback.

A message is quarantined through a real SMTP conversation with the gate (its 550 is
what the sender sees), found and released with the ``mailsift quarantine`` commands
(run in this process, as a separate process would: their own queue, quarantine and
feedback store on the gate's state directory), delivered by the gate's queue workers to
a real aiosmtpd sink, and the scorer (the real gRPC service, scripted, recording its
Learn requests) is taught the release as ham. The recipient then reports the delivered
copy as spam (a change of mind), and reports a message the gate accepted; both reach
the scorer with the bytes the gate received.

Peers: dnsmasq (tests/gate_zones.py), the gate (GateThread), the scripted scorer with
Learn, the sink (tests/gate_harness.py).
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import smtplib

import pytest

import gate_zones as z
from classifier import wire
from classifier.cli import main
from classifier.proto import scorer_pb2 as pb
from gate_harness import GateThread, ScriptedScorer, Sink, _Scripted, free_port, gate_toml
from smtpgate.config import load

ADMIN = "admin@example.test"


class _Learning(_Scripted):
    def Learn(self, request, context):
        with self.owner.lock:
            self.owner.learns.append(request)
            n = len(self.owner.learns)
        return pb.LearnReply(outcome=wire.OUTCOMES["learned"], digest=hashlib.sha256(request.message).hexdigest(),
                             audit_id=n, classifiers=request.classifiers)


class LearningScorer(ScriptedScorer):
    """The harness's scripted scorer, answering Learn too and recording each request."""

    def __init__(self):
        import threading
        from concurrent import futures

        import grpc

        from classifier.proto import scorer_pb2_grpc as pb_grpc

        self.port = free_port()
        self.requests, self.learns, self.lock = [], [], threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_ScorerServicer_to_server(_Learning(self), self.server)
        self.server.add_insecure_port(self.address)


@pytest.fixture
def world(dns_server, tmp_path):
    sink, scorer = Sink().start(), LearningScorer().start()
    config = tmp_path / "gate.toml"
    config.write_text(
        gate_toml(listener="inbound", port=free_port(), dns_port=dns_server.port)
        + f'\n[scorer]\naddresses = ["{scorer.address}"]\ndeadline = 2.0\n'
        + f'\n[domains."example.test"]\nroute = "127.0.0.1:{sink.port}"\n'
        + f'\n[outgoing]\nrelay = "127.0.0.1:{sink.port}"\n'
        + '\n[queue]\npoll_interval = 0.05\n')
    gate = GateThread.from_config(load(config)).start()
    yield gate, sink, scorer, str(config)
    gate.stop()
    scorer.stop()
    sink.stop()


def message(verdict: str, subject: str) -> bytes:
    return (f"From: sender@good.test\r\nTo: user@example.test\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid(domain='good.test')}\r\n"
            f"X-Test-Verdict: {verdict}\r\n\r\nThe quarterly figures are attached, as agreed.\r\n").encode()


def send(gate, msg: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gate.port(), source_address=(z.IP_GOOD, 0), timeout=20) as s:
        s.ehlo("mail.good.test")
        s.mail("sender@good.test")
        s.rcpt("user@example.test")
        return s.data(msg)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_quarantined_released_delivered_learned_then_reported(world, capsys, tmp_path):
    gate, sink, scorer, config = world
    raw = message("combined_score 0.95", "Figures")
    code, text = send(gate, raw)
    assert (code, text) == (550, b"5.7.1 High probability of spam")
    assert sink.messages == []

    # the admin finds it by recipient
    code, out, _ = cli(capsys, "quarantine", "list", "--config", config, "--recipient", "user@example.test", "--json")
    [found] = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and found["classification"] == "combined_score" and found["subject"] == "Figures"
    assert found["sender"] == "sender@good.test" and found["state"] == "held"

    # released: delivered to the original recipient by the gate's queue workers
    code, out, err = cli(capsys, "quarantine", "release", "--config", config, "--who", ADMIN,
                         "--why", "the quarterly figures", found["id"])
    assert code == 0, err
    assert f"released {found['id']} to user@example.test" in out and ": learned" in out
    [delivered] = sink.wait(1)
    assert delivered["mail_from"] == "sender@good.test" and delivered["rcpts"] == ["user@example.test"]
    head, _, original = delivered["data"].partition(b"\r\n")
    assert head.startswith(b"X-Mailsift-Released: " + found["id"].encode()) and original == raw

    # the scorer learned it as ham, for the classifiers that fired and cluster_tokens
    [learn] = scorer.learns
    assert (learn.label, learn.source, learn.who) == (pb.LABEL_HAM, pb.LEARN_SOURCE_RELEASE, ADMIN)
    assert learn.message == raw
    assert sorted(wire.id_of(c) for c in learn.classifiers) == ["cluster_tokens", "global_tokens"]
    code, out, _ = cli(capsys, "quarantine", "list", "--config", config, "--state", "released", "--json")
    assert [json.loads(x)["id"] for x in out.splitlines()] == [found["id"]]

    # released once; again only when forced
    code, _, err = cli(capsys, "quarantine", "release", "--config", config, found["id"])
    assert code == 1 and "already released" in err

    # the recipient changes their mind: the delivered copy reported as spam
    copy = tmp_path / "copy.eml"
    copy.write_bytes(delivered["data"])
    code, out, err = cli(capsys, "quarantine", "report", "--config", config, "--who", "user@example.test",
                         "--file", str(copy))
    assert code == 0, err
    assert "as spam; feedback" in out
    second = scorer.learns[1]
    assert (second.label, second.source, second.who) == (pb.LABEL_SPAM, pb.LEARN_SOURCE_REPORT, "user@example.test")
    assert second.message == raw
    code, out, _ = cli(capsys, "feedback", "stats", "--config", config)
    assert ADMIN in out and "user@example.test" in out


def test_an_accepted_message_reported_as_spam(world, capsys, tmp_path):
    gate, sink, scorer, config = world
    raw = message("not_spam 0.2", "Cheap watches")
    assert send(gate, raw)[0] == 250
    [delivered] = sink.wait(1)
    assert delivered["data"].endswith(raw) and delivered["data"] != raw   # our trace fields on top
    copy = tmp_path / "copy.eml"
    # as a mailbox keeps it: one more hop's trace field above ours, bare LF line ends
    copy.write_bytes((b"Received: by mailbox.example.test with LMTP; Thu, 1 Jan 2026 10:00:00 +0000\r\n"
                      + delivered["data"]).replace(b"\r\n", b"\n"))
    code, out, err = cli(capsys, "quarantine", "report", "--config", config, "--who", "user@example.test",
                         "--file", str(copy), "--why", "not something I signed up for")
    assert code == 0, err
    [learn] = scorer.learns
    assert (learn.label, learn.source) == (pb.LABEL_SPAM, pb.LEARN_SOURCE_REPORT) and learn.message == raw
    # by queue id as well: the same bytes (the scorer's learn log makes it a noop)
    qid = out.split("queue id ")[1].split()[0]
    code, out, err = cli(capsys, "quarantine", "report", "--config", config, "--who", "user@example.test",
                         "--queue-id", qid)
    assert code == 0, err
    assert scorer.learns[1].message == raw
    code, _, err = cli(capsys, "quarantine", "report", "--config", config, "--queue-id", "NOSUCHID")
    assert code == 1 and "no message NOSUCHID" in err


def test_a_release_against_an_overwhelming_verdict_waits_for_an_admin(world, capsys):
    gate, sink, scorer, config = world
    raw = message("combined_score 0.995", "Figures again")
    assert send(gate, raw)[0] == 550
    code, out, _ = cli(capsys, "quarantine", "list", "--config", config, "--json")
    qid = json.loads(out)["id"]
    code, out, err = cli(capsys, "quarantine", "release", "--config", config, "--who", "helpdesk", qid)
    assert code == 0, err
    assert ": review (overwhelming_verdict)" in out
    assert len(sink.wait(1)) == 1 and scorer.learns == []      # delivered, not learned
    code, out, _ = cli(capsys, "feedback", "review", "--config", config)
    [line] = [x for x in out.splitlines() if "helpdesk" in x]
    fid = line.split()[0]
    code, out, err = cli(capsys, "feedback", "approve", "--config", config, "--who", ADMIN, fid)
    assert code == 0 and ": approved" in out, err
    [learn] = scorer.learns
    assert (learn.label, learn.source, learn.who, learn.message) == (pb.LABEL_HAM, pb.LEARN_SOURCE_RELEASE,
                                                                     "helpdesk", raw)
    code, _, err = cli(capsys, "feedback", "reject", "--config", config, fid)
    assert code == 1 and "not held for review" in err
