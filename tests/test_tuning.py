"""mailsift tune: what other thresholds would have done to the mail of a synthetic decision
log, judged by the feedback labels of a real learn log."""
from __future__ import annotations

import json

import mailgen
from classifier.classifications import get
from classifier.features import message_digest
from classifier.learnlog import LearnLog
from smtpgate.decisionlog import DecisionLog
from training.tuning import THRESHOLDS, format_tuning, read_decisions, tune, tune_files


def msg(i: int) -> bytes:
    return mailgen.simple_message(f"message {i}", subject=f"m{i}")


class GateLog:
    """Decision lines written the way the gate writes them: smtpgate/decisionlog.py's
    DecisionLog.write with the fields smtpgate/gate.py passes (``_log`` with ``_act``'s
    log_extra at end of DATA, the blackholed recipients first, the queue's delivery lines)."""

    def __init__(self, path):
        self.log = DecisionLog(path)

    def _write(self, qid, cls, phase, rcpt, **extra):
        self.log.write(classification=cls, reply=get(cls).reply(), phase=phase, queue_id=qid, conn="c1",
                       listener="inbound", client_ip="192.0.2.7", ptr="mail.sender.test", helo="mail.sender.test",
                       user=None, mail_from="sender@sender.test", rcpt=rcpt, settings_id="default", **extra)

    def data(self, qid, cls, score, i, rcpt="a@example.test", digest=True, threshold=0.9):
        self._write(qid, cls, "data", rcpt, message_id=f"<m{i}@sender.test>", size=len(msg(i)), score=score,
                    scores={"cluster_tokens": score} if score is not None else None,
                    threshold=threshold if score is not None else None, model_version="test-1",
                    digest=message_digest(msg(i)) if digest else None,
                    evidence=[{"classification": cls, "phase": "data"}])

    def blackhole(self, qid, i, rcpt="trap@example.test"):
        # before the message's decision, under its queue id, with no score (gate.py _data)
        self._write(qid, "blackhole", "data", rcpt, message_id=f"<m{i}@sender.test>", size=len(msg(i)),
                    evidence=[{"classification": "blackhole", "phase": "rcpt"}])

    def delivered(self, qid, cls, score, i, rcpt="a@example.test"):
        # smtpgate/deliverer.py log_outcome
        self.log.write(classification=cls, reply="250 2.0.0 OK", phase="delivery", event="delivered",
                       queue_id=qid, origin="smtp", mail_from="sender@sender.test", rcpt=rcpt,
                       message_id=f"<m{i}@sender.test>", digest=message_digest(msg(i)), settings_id="default",
                       score=score, evidence=[], route="127.0.0.1:2526", attempts=1)

    def close(self):
        self.log.close()


def write_logs(tmp_path):
    """A decision log of thirteen messages and a learn log labelling some of them."""
    decisions = tmp_path / "decisions.jsonl"
    g = GateLog(decisions)
    g.data("Q1", "combined_score", 0.95, 1)
    g.data("Q1", "combined_score", 0.95, 1, rcpt="b@example.test")
    g.data("Q2", "combined_score", 0.905, 2)            # unlabelled, passes from 0.91 up
    g.data("Q3", "not_spam", 0.87, 3)                   # reported spam: caught at 0.80 and 0.85
    g.delivered("Q3", "not_spam", 0.87, 3)
    g.data("Q4", "not_spam", 0.2, 4)                    # never moves
    g.data("Q5", "dnswl", 0.82, 5)                      # unlabelled, held at 0.80
    g.data("Q6", "crm114", 0.6, 6)                      # decided alone: no threshold moves it
    g.data("Q7", "combined_score", 0.97, 7)             # reported spam: let through at 0.98, 0.99
    g.data("Q8", "not_spam", 0.5, 8)                    # released ham, never held
    g.data("Q9", "not_spam", 0.83, 9)                   # released ham: held at 0.80
    g.data("Q10", "combined_score", 0.93, 10, digest=False, threshold=0.91)   # logged before digests
    g.blackhole("Q11", 12)                              # its blackholed recipient comes first:
    g.data("Q11", "combined_score", 0.93, 12)           # released ham, let through from 0.94 up
    g.data("Q12", "not_spam", 0.97, 13)                 # accepted over its threshold (a released copy):
    g.delivered("Q12", "not_spam", 0.97, 13)            # no threshold decided it
    g.blackhole("Q13", 14)                              # every recipient blackholed
    g.close()
    with decisions.open("a") as fh:
        fh.write("not json\n")
    learnlog = tmp_path / "learnlog.sqlite"
    log = LearnLog(str(learnlog))
    for i, label, source in [(1, "ham", "release"), (3, "spam", "report"), (7, "spam", "report"),
                             (8, "ham", "release"), (9, "spam", "report"), (9, "ham", "release"),  # changed mind
                             (11, "spam", "report"),                                             # not in the log
                             (12, "ham", "release"), (13, "ham", "release")]:
        log.record(message_digest(msg(i)), label, source, "bob", ["cluster_tokens"], msg(i))
    log.close()
    return decisions, learnlog


def test_tuning_table_on_a_decision_log_and_the_feedback(tmp_path):
    decisions, learnlog = write_logs(tmp_path)
    r = tune_files([decisions], learnlog)
    assert r["messages"] == 13 and r["movable"] == 10 and r["quarantined_now"] == 5
    assert r["fixed"] == {"crm114": 1, "not_spam": 1, "blackhole": 1} and r["unreadable_lines"] == 1
    assert r["accepted_over_threshold"] == 1
    assert r["labelled"] == {"ham": 4, "spam": 2}   # Q9's last word was ham
    assert r["without_digest"] == 1
    assert r["thresholds_in_use"] == [0.9, 0.91]
    assert [row["threshold"] for row in r["rows"]] == list(THRESHOLDS)
    assert THRESHOLDS == (0.8, 0.85, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
    rows = {row["threshold"]: row for row in r["rows"]}
    zero = {"ham_passed": 0, "ham_held": 0, "spam_caught": 0, "spam_passed": 0,
            "unlabelled_held": 0, "unlabelled_passed": 0}
    assert rows[0.8] == {**zero, "threshold": 0.8, "quarantined": 8, "spam_caught": 1, "ham_held": 1,
                         "unlabelled_held": 1}
    assert rows[0.85] == {**zero, "threshold": 0.85, "quarantined": 6, "spam_caught": 1}
    assert rows[0.9] == {**zero, "threshold": 0.9, "quarantined": 5}
    assert rows[0.91] == {**zero, "threshold": 0.91, "quarantined": 4, "unlabelled_passed": 1}
    assert rows[0.96] == {**zero, "threshold": 0.96, "quarantined": 1, "ham_passed": 2, "unlabelled_passed": 2}
    assert rows[0.99] == {**zero, "threshold": 0.99, "quarantined": 0, "ham_passed": 2, "spam_passed": 1,
                          "unlabelled_passed": 2}


def test_a_blackholed_recipient_does_not_hide_the_decision(tmp_path):
    """The gate logs a message's blackholed recipients first, under its queue id; the
    line that quarantined it for the others is its decision."""
    path = tmp_path / "decisions.jsonl"
    g = GateLog(path)
    g.blackhole("Q1", 1)
    g.blackhole("Q1", 1, rcpt="trap2@example.test")
    g.data("Q1", "combined_score", 0.93, 1)
    g.close()
    decisions, counts = read_decisions([path])
    assert [(d.key, d.score, d.quarantined, d.threshold) for d in decisions] == [("Q1", 0.93, True, 0.9)]
    assert counts["messages"] == 1 and counts["fixed"] == {}


def test_an_accept_over_its_own_threshold_is_fixed(tmp_path):
    """Scorer rule 5 accepts a released message whatever its score: no threshold at or
    under that score decided it, so it is not ham a lower threshold would hold."""
    path = tmp_path / "decisions.jsonl"
    g = GateLog(path)
    g.data("Q1", "not_spam", 0.97, 1)                   # over its 0.9: fixed
    g.data("Q2", "not_spam", 0.97, 2, threshold=0.98)   # under its 0.98: the threshold let it through
    g.data("Q3", "dnswl", 0.95, 3, threshold=0.95)      # at it: fixed
    g.close()
    decisions, counts = read_decisions([path])
    assert [(d.key, d.score, d.quarantined) for d in decisions] == [("Q2", 0.97, False)]
    assert counts["fixed"] == {"not_spam": 1, "dnswl": 1} and counts["over_threshold"] == 2
    labels = {message_digest(msg(i)): "ham" for i in (1, 2, 3)}
    rows = {row["threshold"]: row for row in tune(decisions, counts, labels, [0.9, 0.95])["rows"]}
    assert rows[0.9]["ham_held"] == 1 and rows[0.95]["ham_held"] == 1   # Q2 only


def test_cli_tune_text_and_json_from_the_gate_config(tmp_path, capsys):
    from classifier.cli import main

    state = tmp_path / "state"
    (state / "scorer").mkdir(parents=True)
    decisions, learnlog = write_logs(tmp_path)
    decisions.rename(state / "decisions.jsonl")
    learnlog.rename(state / "scorer" / "learnlog.sqlite")
    config = tmp_path / "gate.toml"
    config.write_text('[gate]\nhostname = "mx.gate.test"\nstate_dir = "state"\n\n'
                      '[listeners.inbound]\nbind = "127.0.0.1:2525"\n\n'
                      '[domains."example.test"]\nroute = "127.0.0.1:2526"\n\n'
                      '[outgoing]\nrelay = "127.0.0.1:2526"\n')

    assert main(["tune", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("13 messages in the decision log: 10 decided by the score (5 quarantined), 3 by"
                          " something the threshold does not move (1 accepted with a score at or over their"
                          " threshold)")
    assert "feedback labels on them: 4 ham, 2 spam; 1 logged without a digest" in out
    table = [x.split() for x in out.splitlines() if x.split()[:1] in (["0.80"], ["0.91"], ["0.99"])]
    assert table == [["0.80", "8", "0", "1", "1", "0", "1", "0"], ["0.91", "4", "0", "0", "0", "0", "0", "1"],
                     ["0.99", "0", "2", "0", "0", "1", "0", "2"]]

    assert main(["tune", "--config", str(config), "--json", "--thresholds", "0.9", "0.95"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [x["threshold"] for x in r["rows"]] == [0.9, 0.95] and r["learnlog"].endswith("learnlog.sqlite")
    assert format_tuning(r).splitlines()[4].split()[:2] == ["threshold", "quarantined"]

    assert main(["tune", "--config", str(config), "--decisions", str(tmp_path / "nope.jsonl")]) == 2
    assert "no decision log" in capsys.readouterr().err
