#!/usr/bin/env python3
"""The time from a release or a report to the scorer's changed verdict on a
near-identical message.

    python3 bench/feedback_bench.py [--trials 50] [--model models/default] \\
        [--out bench/out/feedback/feedback_bench.json]

A real ``mailsift scorer serve --workers 2`` (bench/grpc_bench.py's ``Server``: its own
subprocess, fresh state directory, free ports, INFO logging to a file) serves the model
(``--model``, the shipped bundle by default). The feedback goes through
``training.feedback.Feedback`` with a ``RemoteScorer`` on worker 0's own port, as the
quarantine's release and report do; the verdicts are asked of both workers' own ports.

Each trial (``--trials``, alternating report and release) takes a fresh synthetic
message (``campaign``: tests/mailgen.py's headers, a body of made-up words, seeded, a
new campaign each time): for a report one the model accepts, for a release one it
quarantines. Its copy to another recipient (own
To, Message-ID and Date, the same body) is scored on both workers first and must get
the same verdict. Then:

- ``submit``: the time ``Feedback.submit`` takes (the guards, the store's fsync'd
  insert, the Learn RPC with the learn log's insert, the worker applying it and
  teaching the reputation stores);
- ``changed_learner`` and ``changed_other``: from ``submit`` returning, until a Score
  of the copy on the worker that received the Learn, and on the other one, returns the
  other verdict (the end of the first such RPC; the copy is scored on both in turn,
  learner first, with no pause, until both changed or ``--timeout``; how many Score
  calls each took is recorded, and the summary counts the trials where the very first
  one on each worker had already changed); ``total_other`` is ``submit`` plus
  ``changed_other``: from the admin's click to the other worker's new verdict;
- ``pickup_other``: from ``submit`` returning until the other worker has applied the
  learn to its own model copy (its learn-log poll, every 0.2 s), seen in the Score
  reply's ``cluster_tokens`` part, which reports how many learns it has while it
  abstains (below 50 of each). After that it no longer says, and the row has none.
  Each submit waits a random 0-0.25 s first: a trial ends at a pickup, so the next
  submit would otherwise fall at the same point of the poll cycle every time.

The verdict does not wait for the poll: the reputation stores (``reported`` for both
directions, ``neardup`` for reports) are SQLite files the two workers share, written
by the one that received the Learn before it answers. ``decided_by`` records which
checks decided the changed verdict. Releases and reports are made by a trusted
reporter (an admin): an ordinary user's release of spam the model is more than 0.99
sure of waits for review, and one ordinary user's report is short of the quorum
(``min_reporters``, 2), a pull on the combined score rather than a ruling; the second
ordinary reporter's learn goes through the same stores as the admin's one.

Prints p50/p99 (nearest rank) per measure, for all trials and by kind, and writes
the JSON (config, machine, summary, every trial) to ``--out``.
"""
from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import pathlib
import platform
import random
import re
import signal
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from classifier.bundle import DEFAULT_BUNDLE  # noqa: E402
from classifier.client import RemoteScorer  # noqa: E402
from grpc_bench import Server, pct  # noqa: E402
from smtpgate.config import FeedbackConfig  # noqa: E402
from training.feedback import Feedback  # noqa: E402

import mailgen  # noqa: E402

LEARNED = re.compile(r"learned (\d+) spam / (\d+) ham")
MEASURES = ("submit", "changed_learner", "changed_other", "total_other", "pickup_other")


def copy_of(raw: bytes, to: str, n: int) -> bytes:
    m = email.message_from_bytes(raw, policy=email.policy.default)
    for name, value in (("To", to), ("Message-ID", f"<bench-copy{n}@bulk.test>"),
                        ("Date", f"Mon, 02 Feb 2026 08:{n % 60:02d}:00 +0000")):
        del m[name]
        m[name] = value
    return m.as_bytes()


def learns(v) -> int | None:
    """How many learns the worker that gave this verdict has applied to cluster_tokens,
    while it abstains and says so."""
    c = next((c for c in v.classifiers if c.id == "cluster_tokens"), None)
    m = LEARNED.search(c.reason) if c is not None and c.abstained else None
    return int(m.group(1)) + int(m.group(2)) if m else None


_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def campaign(kind: str, rng: random.Random, seq: int) -> bytes:
    """mailgen's message of ``kind`` (its headers; for spam its words too) with a body
    of made-up words no other trial uses: a new campaign, so that what one trial taught
    the stores (near-duplicates, UCEPP's token counts) does not decide the next one.
    Reporting mailgen's ham, whose words every ham shares, would soon make all of it
    spam to UCEPP."""
    m = email.message_from_bytes(mailgen.make_message(kind, rng, seq), policy=email.policy.default)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(50, 90))]
    if kind == "spam":
        words = [rng.choice(mailgen.SPAM_WORDS) if rng.random() < 0.4 else w for w in words]
    m.clear_content()       # a multipart/alternative one becomes plain text
    m.set_content(" ".join(words) + "\n")
    return m.as_bytes()


def pick(scorers: tuple[RemoteScorer, RemoteScorer], kind: str, rng: random.Random, seq: int):
    """A fresh message the model accepts (``ham``) or quarantines (``spam``), with a
    copy to another recipient that both workers give the same verdict (a score near
    the threshold may fall either side for the copy's other headers: such a message is
    skipped). Returns (message, its verdict, the copy, the copy's verdicts)."""
    want = "quarantine" if kind == "spam" else "accept"
    for _ in range(200):
        raw = campaign(kind, rng, seq)
        v = scorers[0].score(raw)
        if v.verdict != want:
            continue
        copy = copy_of(raw, f"copy{seq}@home.test", seq)
        before = [s.score(copy) for s in scorers]
        if all(b.verdict == want for b in before):
            return raw, v, copy, before
    raise RuntimeError(f"no generated {kind} message that the model would {want}, with its copy")


def trial(i: int, fb: Feedback, learner: RemoteScorer, other: RemoteScorer, rng: random.Random,
          timeout: float) -> dict:
    kind = "report" if i % 2 == 0 else "release"
    raw, v0, copy, before = pick((learner, other), "ham" if kind == "report" else "spam", rng, i)
    count0 = learns(before[1])
    # a trial ends when the other worker's poll picked its learn up, so without this
    # pause every submit would fall at the same point of the 0.2 s poll cycle
    time.sleep(rng.uniform(0.0, 0.25))
    t0 = time.perf_counter()
    r = fb.submit(message=raw, label="spam" if kind == "report" else "ham", source=kind,
                  who="postmaster@home.test",
                  score=v0.score, classification=v0.classification)
    t1 = time.perf_counter()
    if r.status not in ("learned", "relearned"):
        raise RuntimeError(f"trial {i}: feedback {r.status} {r.reasons} {r.detail}")
    row = {"trial": i, "kind": kind, "score_before": v0.score, "verdict_before": v0.verdict,
           "submit": t1 - t0, "changed_learner": None, "changed_other": None, "total_other": None,
           "pickup_other": None,
           "decided_by": None, "verdict_after": None, "audit_id": r.audit_id,
           "scores_learner": 0, "scores_other": 0}   # Score calls until the verdict changed
    pending = {"changed_learner": learner, "changed_other": other}
    watch_pickup = count0 is not None
    end = t1 + timeout
    while (pending or watch_pickup) and time.perf_counter() < end:
        for key, s in list(pending.items()) or [("pickup", other)]:
            v = s.score(copy)
            now = time.perf_counter()
            if key in pending:
                row["scores_" + key.removeprefix("changed_")] += 1
            if key in pending and v.verdict != v0.verdict:
                row[key] = now - t1
                del pending[key]
                row["verdict_after"] = f"{v.verdict}/{v.classification}"
                row["decided_by"] = sorted(x.check for x in v.reputation if x.decides_alone)
            if s is other and watch_pickup:
                n = learns(v)
                if n is None or n > count0:
                    watch_pickup = False
                    if n is not None:
                        row["pickup_other"] = now - t1
    if row["changed_other"] is not None:
        row["total_other"] = row["submit"] + row["changed_other"]
    return row


def summarise(rows: list[dict]) -> dict:
    out = {}
    for kind in ("all", "report", "release"):
        sel = [r for r in rows if kind == "all" or r["kind"] == kind]
        out[kind] = {"trials": len(sel)}
        for m in MEASURES:
            xs = sorted(r[m] * 1000.0 for r in sel if r[m] is not None)
            out[kind][m] = {"n": len(xs), "p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99),
                            "max_ms": xs[-1] if xs else None}
        out[kind]["changed_at_first_score"] = sum(
            1 for r in sel if r["changed_learner"] is not None and r["changed_other"] is not None
            and r["scores_learner"] == 1 and r["scores_other"] == 1)
        out[kind]["unchanged_within_timeout"] = sum(
            1 for r in sel if r["changed_learner"] is None or r["changed_other"] is None)
    return out


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_BUNDLE), help="model bundle (default: the shipped one)")
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a changed verdict")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "feedback" / "feedback_bench.json"))
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)   # stop the scorer on the way out, as Ctrl-C does

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mailsift-feedback-bench-"))
    server = Server(a.model, 2, "INFO", tmp, "scorer-2w")
    rows: list[dict] = []
    try:
        server.start()
        learner = RemoteScorer([server.addresses[0]], deadline=10.0)
        other = RemoteScorer([server.addresses[1]], deadline=10.0)
        cfg = FeedbackConfig(per_reporter_hour=0, per_reporter_day=0, trusted=("postmaster@home.test",))
        fb = Feedback(tmp / "feedback.db", cfg, learner)
        rng = random.Random(a.seed)
        print(f"scorer up ({a.model}, 2 workers); {a.trials} trials", flush=True)
        for i in range(a.trials):
            rows.append(trial(i, fb, learner, other, rng, a.timeout))
        fb.close()
        learner.close()
        other.close()
    finally:
        server.stop()
    summary = summarise(rows)
    res = {"model": a.model, "workers": 2, "trials": a.trials, "timeout_s": a.timeout, "seed": a.seed,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "loadavg_at_end": os.getloadavg()},
           "summary": summary, "rows": rows}
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))

    print(f"\n{'kind':8} {'measure':16} {'n':>3} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, s in summary.items():
        for m in MEASURES:
            x = s[m]
            if x["n"]:
                print(f"{kind:8} {m:16} {x['n']:>3} {x['p50_ms']:>8.1f} {x['p99_ms']:>8.1f}")
        print(f"{kind:8} changed at the first Score on both workers: {s['changed_at_first_score']}"
              f" of {s['trials']}")
        if s["unchanged_within_timeout"]:
            print(f"{kind:8} unchanged within {a.timeout:g} s: {s['unchanged_within_timeout']}")
    decided = {}
    for r in rows:
        key = f"{r['kind']}: {r['verdict_after']} by {','.join(r['decided_by'] or []) or '-'}"
        decided[key] = decided.get(key, 0) + 1
    for k, n in sorted(decided.items()):
        print(f"  {n:3} x {k}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
