"""``mailsift tune``: what moving the quarantine threshold would have changed, on this
installation's own traffic.

``mailsift threshold`` answers the question on a labelled corpus; this answers it on
the mail the gate actually saw. Its inputs:

- the gate's decision log (smtpgate/decisionlog.py, JSON lines): for each message the
  classification that decided, the combined score and the message's ``digest``
  (SHA-256 of the bytes as received);
- the feedback: the learn log's current label of each digest (classifier/learnlog.py;
  the same SHA-256). A released message is ham, a reported one spam; every source counts.

Only what the threshold decided can move: a message quarantined by the combined score
(``combined_score``) or accepted with a score under the threshold it was compared with
(``not_spam``, ``dnswl``). A message a classifier or a reputation check quarantined
alone, a whitelisted one, one the gate refused, or one accepted with a score at or over
its threshold (the scorer let it through for another reason: a released copy, a
reputation check) stays where it was at any threshold, and is only counted. A message
is counted once, by its queue id, from the first end-of-DATA line that accepted or
quarantined it: a message to several recipients is one quarantine entry, one release.
Its blackholed recipients, logged first under the same queue id, are not its decision,
nor are the delivery lines the queue writes later. A message with no such line (every
recipient blackholed, refused at DATA) is counted by its first line.

Labels exist only where someone looked: quarantined ham that was released, delivered
spam that was reported. So the table counts corrections a threshold would have saved or
caused, not error rates; most mail that moves is unlabelled, and its volume is how much
more (or less) mail would have been held for people to look at.

One row per threshold t, a message going to quarantine when its score >= t:

    quarantined             messages the score would quarantine at t
    ham_passed              known ham quarantined that t would have let through
    ham_held                known ham delivered that t would have quarantined
    spam_caught             known spam delivered that t would have caught
    spam_passed             known spam quarantined that t would have let through
    unlabelled_held         unlabelled delivered messages t would have quarantined
    unlabelled_passed       unlabelled quarantined messages t would have delivered
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

from classifier.classifications import get

from .metrics import format_table
from .retrain import read_learnlog

# The reference's 0.9 and its tolerant 0.91 among every step a deployment would try,
# and two lower ones to see how much more a lax setting would hold.
THRESHOLDS = (0.80, 0.85) + tuple(round(0.90 + i / 100, 2) for i in range(10))
QUARANTINED_BY_SCORE = frozenset({"combined_score"})
ACCEPTED_BY_SCORE = frozenset({"not_spam", "dnswl"})
COLUMNS = ["threshold", "quarantined", "ham_passed", "ham_held", "spam_caught", "spam_passed",
           "unlabelled_held", "unlabelled_passed"]


@dataclass(frozen=True)
class Decision:
    """One message whose fate the threshold decided."""

    key: str                  # queue id (else digest)
    digest: str | None
    score: float
    quarantined: bool         # what happened
    threshold: float | None   # the threshold it was judged at, where logged


def read_decisions(paths: Iterable[str | os.PathLike]) -> tuple[list[Decision], dict]:
    """The movable decisions of the decision logs, one per message, and counts of the
    rest (by classification; ``over_threshold``: the accepts among them whose score was
    at or over their own threshold)."""
    decided: dict[str, dict] = {}    # key -> the line that accepted or quarantined it
    first: dict[str, dict] = {}      # key -> its first end-of-DATA line (insertion order)
    counts = {"lines": 0, "unreadable": 0, "messages": 0, "fixed": {}, "over_threshold": 0}
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                counts["lines"] += 1
                try:
                    rec = json.loads(line)
                except ValueError:
                    counts["unreadable"] += 1
                    continue
                if not isinstance(rec, dict) or rec.get("phase") != "data":
                    continue
                key = rec.get("queue_id") or rec.get("digest")
                if key is None:
                    continue
                first.setdefault(key, rec)
                if key not in decided and _action(rec.get("classification")) in ("accept", "quarantine"):
                    decided[key] = rec
    out: list[Decision] = []
    for key, head in first.items():
        counts["messages"] += 1
        rec = decided.get(key, head)
        cls, score, thr = rec.get("classification"), rec.get("score"), rec.get("threshold")
        scored = isinstance(score, int | float)
        thr = float(thr) if isinstance(thr, int | float) else None
        movable = scored and key in decided and (
            cls in QUARANTINED_BY_SCORE
            # an accept at or over its own threshold was not the threshold's doing
            or (cls in ACCEPTED_BY_SCORE and (thr is None or score < thr)))
        if not movable:
            counts["fixed"][cls] = counts["fixed"].get(cls, 0) + 1
            if scored and cls in ACCEPTED_BY_SCORE and key in decided:
                counts["over_threshold"] += 1
            continue
        out.append(Decision(key, rec.get("digest"), float(score), cls in QUARANTINED_BY_SCORE, thr))
    return out, counts


def _action(classification) -> str | None:
    """The contract table's action for a logged classification id (None: not one)."""
    try:
        return get(classification).action
    except (KeyError, TypeError):
        return None


def tuning_table(decisions: list[Decision], labels: dict[str, str],
                 thresholds: Iterable[float] = THRESHOLDS) -> list[dict]:
    """One row per threshold (the columns in the module docstring)."""
    rows = []
    for t in thresholds:
        r = {c: 0 for c in COLUMNS}
        r["threshold"] = float(t)
        for d in decisions:
            held = d.score >= t
            r["quarantined"] += held
            if held == d.quarantined:
                continue
            label = labels.get(d.digest) if d.digest else None
            if label == "ham":
                r["ham_held" if held else "ham_passed"] += 1
            elif label == "spam":
                r["spam_caught" if held else "spam_passed"] += 1
            else:
                r["unlabelled_held" if held else "unlabelled_passed"] += 1
        rows.append(r)
    return rows


def tune(decisions: list[Decision], counts: dict, labels: dict[str, str],
         thresholds: Iterable[float] = THRESHOLDS) -> dict:
    """The table with what it was computed from."""
    labelled = [labels[d.digest] for d in decisions if d.digest in labels]
    used = sorted({d.threshold for d in decisions if d.threshold is not None})
    return {
        "messages": counts["messages"], "movable": len(decisions),
        "quarantined_now": sum(d.quarantined for d in decisions),
        "labelled": {"ham": labelled.count("ham"), "spam": labelled.count("spam")},
        "without_digest": sum(d.digest is None for d in decisions),
        "fixed": counts["fixed"], "accepted_over_threshold": counts.get("over_threshold", 0),
        "unreadable_lines": counts["unreadable"],
        "thresholds_in_use": used,
        "rows": tuning_table(decisions, labels, thresholds),
    }


def tune_files(decision_logs: Iterable[str | os.PathLike], learnlog: str | os.PathLike | None,
               thresholds: Iterable[float] = THRESHOLDS) -> dict:
    decision_logs = list(decision_logs)
    decisions, counts = read_decisions(decision_logs)
    items, _ = read_learnlog(learnlog) if learnlog else ([], 0)
    result = tune(decisions, counts, {i.digest: i.label for i in items}, thresholds)
    result["decision_logs"] = [str(p) for p in decision_logs]
    result["learnlog"] = str(learnlog) if learnlog else None
    return result


def format_tuning(result: dict) -> str:
    fixed = sum(result["fixed"].values())
    lines = [
        f"{result['messages']} messages in the decision log: {result['movable']} decided by the score"
        f" ({result['quarantined_now']} quarantined), {fixed} by something the threshold does not move"
        + (f" ({result['accepted_over_threshold']} accepted with a score at or over their threshold)"
           if result.get("accepted_over_threshold") else ""),
        f"feedback labels on them: {result['labelled']['ham']} ham, {result['labelled']['spam']} spam"
        + (f"; {result['without_digest']} logged without a digest (unlabelled)" if result["without_digest"] else ""),
        "thresholds in use: " + (", ".join(f"{t:g}" for t in result["thresholds_in_use"]) or "not logged"),
        "",
        format_table(result["rows"], COLUMNS, ".2f"),
        "",
        "ham_passed: quarantined ham the threshold would have delivered; spam_caught: delivered spam it"
        " would have held;",
        "ham_held / spam_passed: the price; unlabelled_*: mail nobody labelled that would have moved.",
    ]
    return "\n".join(lines)
