"""The whole filter as an admin runs it: ``mailsift gate serve`` as a process, which
starts the real scoring service with a trained model ([scorer] spawn), DNS from dnsmasq,
a sink for the domain's mail server; spam gets the scorer's 550 and lands in the
quarantine, ham is relayed with our headers; swaks (a real SMTP client) for a smoke
test; SIGTERM stops both processes cleanly.
"""
from __future__ import annotations

import email.utils
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest

import gate_zones as z
import mailgen
from classifier.classifications import get
from gate_harness import Sink, free_port, gate_toml


def _crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", raw)


def _now(raw: bytes) -> bytes:
    """mailgen's messages are dated January 2026; the gate's date_skew check would say so."""
    return re.sub(rb"(?m)^Date: .*$", f"Date: {email.utils.formatdate(localtime=True)}".encode(), raw, count=1)


@pytest.fixture(scope="module")
def running(dns_server, fitted_bundle, tmp_path_factory):
    """(gate port, sink, state dir, process) for a gate started from the command line."""
    from classifier.scorer import Scorer

    d = tmp_path_factory.mktemp("e2e")
    sink = Sink().start()
    port, scorer_port = free_port(), free_port()
    cfg = gate_toml(listener="inbound", port=port, dns_port=dns_server.port, hostname="mx.e2e.test") + f"""
[scorer]
addresses = ["127.0.0.1:{scorer_port}"]
spawn = true
model = "{fitted_bundle}"
deadline = 20
reputation = "reputation.toml"

[feedback]
trusted = ["postmaster"]            # the admin of test_report_then_release: no review

[domains."example.test"]
route = "127.0.0.1:{sink.port}"
"""
    (d / "gate.toml").write_text(cfg)
    (d / "reputation.toml").write_text(
        f'[resolver]\nnameservers = ["127.0.0.1"]\nport = {dns_server.port}\ntimeout = 0.5\n'
        f'[urlbl]\nzones = ["{z.URL_BLOCKLISTS[0]}", "{z.URL_BLOCKLISTS[1]}"]\n')
    ready = d / "gate.ready"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "classifier.cli", "gate", "serve", "--config",
                             str(d / "gate.toml"), "--ready-file", str(ready)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    end = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"the gate did not start: {proc.stdout.read().decode()[-3000:]}")
        time.sleep(0.1)
    # pick a spam and a ham the model is sure of, from messages it was not trained on
    scorer = Scorer.load(fitted_bundle)
    msgs, labels = mailgen.corpus(20, 20, seed=7)
    msgs = [_now(_crlf(m)) for m in msgs]
    spam = max((m for m, y in zip(msgs, labels) if y == 1), key=lambda m: scorer.score(m).score)
    ham = min((m for m, y in zip(msgs, labels) if y == 0), key=lambda m: scorer.score(m).score)
    yield {"port": port, "scorer_port": scorer_port, "sink": sink, "state": d / "state", "proc": proc, "spam": spam, "ham": ham}
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    sink.stop()


def _decisions(running) -> list[dict]:
    """The gate's decisions at end of DATA (not the queue's delivery outcomes)."""
    lines = [json.loads(x) for x in (running["state"] / "decisions.jsonl").read_text().splitlines()]
    return [d for d in lines if d.get("phase") != "delivery"]


def _send(port, raw):
    with smtplib.SMTP("127.0.0.1", port, source_address=(z.IP_GOOD, 0), timeout=30) as s:
        s.ehlo("mail.good.test")
        s.mail("sender@good.test")
        s.rcpt("user@example.test")
        code, text = s.data(raw)
        return code, text.decode()


def test_spam_is_refused_by_the_scorers_classification_and_quarantined(running):
    code, text = _send(running["port"], running["spam"])
    d = _decisions(running)[-1]
    row = get(d["classification"])
    assert row.action == "quarantine"
    assert (code, text) == (row.code, f"{row.enhanced} {row.text}")
    assert d["score"] is not None and d["model_version"] == "test-1"
    assert d["evidence"][0]["check"] == "scorer"
    assert list(running["state"].glob(f"quarantine/*/{d['queue_id']}.eml"))
    assert running["sink"].messages == []


def test_ham_is_relayed_with_the_verdict_in_its_headers(running):
    running["sink"].clear()
    code, text = _send(running["port"], running["ham"])
    assert (code, text) == (250, get("not_spam").reply()[4:])
    delivered = running["sink"].wait(1)[0]["data"]     # the queue delivers it
    assert b"X-Mailsift-Classification: not_spam" in delivered
    assert re.search(rb"X-Mailsift-Score: 0\.\d{4}; threshold=0.9; model=test-1", delivered)


def test_a_url_on_two_blocklists_gets_the_urlbl_reply_naming_them(running):
    # the ham the model is sure of, with one listed link added: the scorer's urlbl check
    raw = running["ham"].replace(b"\r\n\r\n", b"\r\n\r\nDetails: http://spam-link.test/offer\r\n", 1)
    code, text = _send(running["port"], raw)
    assert (code, text) == (550, "5.7.1 Message contains a URL listed on URL blacklists"
                                 " (uribl-a.test, uribl-b.test)")
    d = _decisions(running)[-1]
    assert d["classification"] == "urlbl" and "uribl-a.test" in d["evidence"][0]["evidence"]
    assert d["evidence"][0]["details"]["reputation"][0]["check"] == "urlbl"


def test_swaks_smoke(running):
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (Debian package swaks)")
    running["sink"].clear()
    out = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{running['port']}", "--local-interface", z.IP_GOOD,
         "--helo", "mail.good.test", "--from", "sender@good.test", "--to", "user@example.test",
         "--header", "Subject: meeting notes", "--body", running["ham"].split(b"\r\n\r\n", 1)[1].decode(),
         "--timeout", "30"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<-  250 2.0.0 Message accepted for delivery" in out.stdout
    assert len(running["sink"].wait(1)) == 1


def _admin(running, *args) -> str:
    """A ``mailsift`` admin command against the running gate's state, as an admin runs it."""
    out = subprocess.run([sys.executable, "-m", "classifier.cli", *args, "--config",
                          str(running["state"].parent / "gate.toml"), "--who", "postmaster"],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_report_then_release_changes_the_verdict_on_copies(running):
    """The feedback loop through SMTP with the real scorer: a delivered message reported
    as spam makes its next copy `considered_spam` (550, quarantined, logged with the
    reported check's evidence); releasing that copy lets the copy after it through."""
    sink = running["sink"]
    sink.clear()
    body = b"\r\n\r\nThe minutes of the garden committee, item 7: compost bins for the north plot.\r\n"
    copies = [running["ham"].replace(b"\r\n\r\n", body, 1).replace(
        b"Message-ID: <", f"Message-ID: <copy{i}.".encode(), 1) for i in range(3)]
    assert _send(running["port"], copies[0]) == (250, get("not_spam").reply()[4:])
    first = _decisions(running)[-1]
    sink.wait(1)
    out = _admin(running, "quarantine", "report", "--queue-id", first["queue_id"], "--why", "newsletter I never asked for")
    assert "learned" in out

    code, text = _send(running["port"], copies[1])
    row = get("considered_spam")
    assert (code, text) == (550, "5.7.1 Message considered spam") == (row.code, f"{row.enhanced} {row.text}")
    held = _decisions(running)[-1]
    assert held["classification"] == "considered_spam"
    assert "reported as spam by 1 reporter" in held["evidence"][0]["evidence"]
    assert held["digest"] != first["digest"]        # a copy, not the reported bytes

    out = _admin(running, "quarantine", "release", held["queue_id"], "--why", "the user asked for it after all")
    assert "learned" in out or "relearned" in out
    assert len(sink.wait(2)) == 2                   # the released copy, delivered by the queue
    assert _send(running["port"], copies[2]) == (250, get("not_spam").reply()[4:])
    assert _decisions(running)[-1]["classification"] == "not_spam"


def test_sigterm_stops_the_gate_and_its_scorer(running):
    proc = running["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    log = proc.stdout.read().decode()
    assert '"event": "listening"' in log
    for p in (running["port"], running["scorer_port"]):   # the gate and the scorer it started
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p), timeout=2)
