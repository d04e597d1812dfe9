"""mailsift tune: what other thresholds would have done to the mail of a synthetic decision
log, judged by the feedback labels of a real learn log."""
from __future__ import annotations

import json

import mailgen
from classifier.features import message_digest
from classifier.learnlog import LearnLog
from training.tuning import THRESHOLDS, format_tuning, tune_files


def msg(i: int) -> bytes:
    return mailgen.simple_message(f"message {i}", subject=f"m{i}")


def line(qid, cls, score, i, rcpt="a@example.test", phase="data", digest=True, threshold=0.9) -> dict:
    rec = {"ts": "2026-01-01T00:00:00.000+00:00", "queue_id": qid, "phase": phase, "classification": cls,
           "rcpt": rcpt, "score": score, "threshold": threshold}
    if digest:
        rec["digest"] = message_digest(msg(i))
    return rec


def write_logs(tmp_path):
    """A decision log of ten messages and a learn log labelling some of them."""
    lines = [
        line("Q1", "combined_score", 0.95, 1), line("Q1", "combined_score", 0.95, 1, rcpt="b@example.test"),
        line("Q2", "combined_score", 0.905, 2),            # unlabelled, passes from 0.91 up
        line("Q3", "not_spam", 0.87, 3),                   # reported spam: caught at 0.80 and 0.85
        line("Q3", "not_spam", None, 3, phase="delivery"),
        line("Q4", "not_spam", 0.2, 4),                    # never moves
        line("Q5", "dnswl", 0.82, 5),                      # unlabelled, held at 0.80
        line("Q6", "crm114", 0.6, 6),                      # decided alone: no threshold moves it
        line("Q7", "combined_score", 0.97, 7),             # reported spam: let through at 0.98, 0.99
        line("Q8", "not_spam", 0.5, 8),                    # released ham, never held
        line("Q9", "not_spam", 0.83, 9),                   # released ham: held at 0.80
        line("Q10", "combined_score", 0.93, 10, digest=False, threshold=0.91),   # logged before digests
        {"ts": "2026-01-01T00:00:00.000+00:00", "phase": "connect", "classification": "dnsbl_multiple"},
    ]
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    learnlog = tmp_path / "learnlog.sqlite"
    log = LearnLog(str(learnlog))
    for i, label, source in [(1, "ham", "release"), (3, "spam", "report"), (7, "spam", "report"),
                             (8, "ham", "release"), (9, "spam", "report"), (9, "ham", "release"),  # changed mind
                             (11, "spam", "report")]:                                            # not in the log
        log.record(message_digest(msg(i)), label, source, "bob", ["cluster_tokens"], msg(i))
    log.close()
    return decisions, learnlog


def test_tuning_table_on_a_decision_log_and_the_feedback(tmp_path):
    decisions, learnlog = write_logs(tmp_path)
    r = tune_files([decisions], learnlog)
    assert r["messages"] == 10 and r["movable"] == 9 and r["quarantined_now"] == 4
    assert r["fixed"] == {"crm114": 1} and r["unreadable_lines"] == 1
    assert r["labelled"] == {"ham": 3, "spam": 2}   # Q9's last word was ham and r["without_digest"] == 1
    assert r["thresholds_in_use"] == [0.9, 0.91]
    assert [row["threshold"] for row in r["rows"]] == list(THRESHOLDS)
    assert THRESHOLDS == (0.8, 0.85, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
    rows = {row["threshold"]: row for row in r["rows"]}
    zero = {"ham_passed": 0, "ham_held": 0, "spam_caught": 0, "spam_passed": 0,
            "unlabelled_held": 0, "unlabelled_passed": 0}
    assert rows[0.8] == {**zero, "threshold": 0.8, "quarantined": 7, "spam_caught": 1, "ham_held": 1,
                         "unlabelled_held": 1}
    assert rows[0.85] == {**zero, "threshold": 0.85, "quarantined": 5, "spam_caught": 1}
    assert rows[0.9] == {**zero, "threshold": 0.9, "quarantined": 4}
    assert rows[0.91] == {**zero, "threshold": 0.91, "quarantined": 3, "unlabelled_passed": 1}
    assert rows[0.96] == {**zero, "threshold": 0.96, "quarantined": 1, "ham_passed": 1, "unlabelled_passed": 2}
    assert rows[0.99] == {**zero, "threshold": 0.99, "quarantined": 0, "ham_passed": 1, "spam_passed": 1,
                          "unlabelled_passed": 2}


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
    assert out.startswith("10 messages in the decision log: 9 decided by the score (4 quarantined)")
    assert "feedback labels on them: 3 ham, 2 spam; 1 logged without a digest" in out
    table = [x.split() for x in out.splitlines() if x.split()[:1] in (["0.80"], ["0.91"], ["0.99"])]
    assert table == [["0.80", "7", "0", "1", "1", "0", "1", "0"], ["0.91", "3", "0", "0", "0", "0", "0", "1"],
                     ["0.99", "0", "1", "0", "0", "1", "0", "2"]]

    assert main(["tune", "--config", str(config), "--json", "--thresholds", "0.9", "0.95"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [x["threshold"] for x in r["rows"]] == [0.9, 0.95] and r["learnlog"].endswith("learnlog.sqlite")
    assert format_tuning(r).splitlines()[4].split()[:2] == ["threshold", "quarantined"]

    assert main(["tune", "--config", str(config), "--decisions", str(tmp_path / "nope.jsonl")]) == 2
    assert "no decision log" in capsys.readouterr().err
