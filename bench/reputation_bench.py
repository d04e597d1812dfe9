#!/usr/bin/env python3
"""The combined score with and without the reputation checks, on the same messages in
the same run, and what the checks add to the time per message.

    python3 bench/reputation_bench.py --corpus ../shared/corpora/spamassassin \\
        --out bench/out/reputation.json [--online N] [--rounds 3]

The checks are the suite's defaults (``ReputationConfig()``): ``pyzor`` (SQLite digest
store), ``neardup``, ``ucepp`` and ``phishing`` without brands. URLBL, Safe Browsing,
patterns and signatures need lists an admin loads, and no public lists exist offline:
they stay off. ``recipients`` (the envelope's, in the scorer service) are taken from the
To, Cc, Delivered-To and X-Original-To fields: only ``phishing`` uses them (display
names that spoof the recipient's own domain).

1. Batch (the peer benchmark's split, ``training.corpus.batch_split``: ids sorted,
   ``random.Random(0).shuffle``, 70/30). The shipped model saw the whole corpus, so a
   fresh model is fitted on the training part with the default recipe, as ``mailsift
   evaluate`` does (same building blocks: ``extract_all``, ``build_model``,
   ``solo_thresholds``; its "without" figures reproduce ``evaluate-batch.json``). The
   reputation stores (in a temporary directory) are then fed the training part as
   feedback history: every training spam reported, every training ham released
   (``Reputation.learn``), at the wall clock, so nothing decays or expires. Every test
   message is scored twice, without findings and with ``Reputation.evaluate``'s.
2. Online (TREC immediate feedback, the corpus index's order, ``--online`` messages, 0 =
   all). A model that starts empty, as ``mailsift evaluate``'s online protocol: each
   message is scored (twice, without and with the findings of the stores as they are
   then), then learned by the model (``Scorer.learn``) and by the stores. The model
   learns without facts, so both arms share one model and one set of stores and differ
   only in the findings the message is scored with. The online model has no
   out-of-fold probabilities, so no classifier decides alone (as in ``evaluate``); the
   checks do. ``--clock dates`` (the default) runs the stores' clocks on the messages'
   receipt times (``replay_times``: ``training.corpus.message_time`` smoothed over the
   neighbours in the index, never going backwards), so UCEPP's 7-day half-life and the
   30-day expiry of digests and near-duplicates act as they would have over the
   corpus' months; ``--clock wall`` keeps every report alive. The whole corpus is the
   default: the replay takes about a minute here (2 cores), the whole bench under 3.
3. Cost, on the batch test messages with the batch stores: per message, in
   ``--rounds`` interleaved rounds (the order of the two arms alternating per message
   and per round, after a warm-up), the time of features -> verdict without findings,
   of ``Reputation.evaluate`` (per check from its own ``ms_per_check``) and of
   features -> verdict with the findings; extraction, which both pay once, is timed in
   the same rounds. Each message's time is its median over the rounds (CPU time of
   this process, and wall time); the added time per message is ``evaluate`` plus the
   difference of the two scorings, and the ratio is (extract + evaluate + score with)
   over (extract + score without), the scorer service's work per message.

Reported per arm: 1-ROCA% of the combined score with its 95% bootstrap CI (class-
stratified, ``training.metrics``) and a paired bootstrap CI of the difference; lam%,
FPR and FNR of the verdict (quarantine at combined score >= 0.9, or when a classifier
or a check decides alone); ham quarantined, by responsible classification and by what
decided alone; spam caught. Per check: test spam and ham it had a finding for, and
for which it decided alone. Every ham that the findings moved (quarantined with them
and not without, or any ham a check decided) is listed with its evidence.

Writes the JSON to ``--out`` and prints a table; ``markdown(res)`` gives the section of
bench/report.md.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import email.utils
import gc
import json
import logging
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from classifier.bundle import ModelBundle  # noqa: E402
from classifier.features import extract  # noqa: E402
from classifier.reputation.suite import Reputation, ReputationConfig  # noqa: E402
from classifier.scorer import QUARANTINE, Scorer  # noqa: E402
from training.corpus import batch_split, message_time, read_corpus  # noqa: E402
from training.metrics import evaluate_scores  # noqa: E402
from training.evaluate import fit_scorer  # noqa: E402
from training.recipe import DEFAULT_RECIPE, build_model, load_recipe  # noqa: E402
from training.train import extract_all  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "spamassassin"
ARMS = ("without", "with")
# receipt times before this are broken Date headers (the corpus has year-102 ones);
# the replay clock ignores them
EARLIEST_PLAUSIBLE = 788918400.0   # 1995-01-01
_RCPT_HEADERS = ("to", "cc", "delivered-to", "x-original-to")


# ---------------------------------------------------------------- helpers

def recipients(f) -> list[str]:
    """The message's addressees as the envelope would name them (see the docstring)."""
    values = [v for n, v in f.headers if n.lower() in _RCPT_HEADERS]
    return sorted({a.lower() for _, a in email.utils.getaddresses(values) if "@" in a})


class ReplayClock:
    """The stores' clock during the online replay: set to each message's replay time
    (``replay_times``) before the message is scored and learned."""

    def __init__(self, start: float):
        self.t = start

    def __call__(self) -> float:
        return self.t


def replay_times(msgs, window: int = 25) -> np.ndarray:
    """Each message's place in time: the median receipt time of the messages within
    ``window`` places of it in the index, never going backwards. The index is in
    receipt order, but a few messages carry times far off their place (on the
    SpamAssassin corpus 18 by more than 30 days: Date headers in the year 102, a spam
    dated 2003-07-20 among July 2002's); a clock that took the latest time seen would
    stop at 2003-07-20 from the 967th message on, and nothing would decay after it."""
    t = np.array([message_time(m.read()) or np.nan for m in msgs], dtype=float)
    t[t < EARLIEST_PLAUSIBLE] = np.nan
    med = np.array([np.nanmedian(t[max(0, i - window):i + window + 1])
                    if np.isfinite(t[max(0, i - window):i + window + 1]).any() else np.nan
                    for i in range(len(t))])
    med = np.where(np.isfinite(med), med, -np.inf)
    out = np.maximum.accumulate(med)
    if not np.isfinite(out).any():
        return np.full(len(t), time.time())
    first = out[np.isfinite(out)][0]
    return np.where(np.isfinite(out), out, first)


class ReplayReputation(Reputation):
    """The suite with its stores on a replay clock. UCEPP's store fixes its decay epoch
    from the clock when it is created, so it is created on the replay clock; the digest
    store and the near-duplicate index read the clock only for ages, through the
    ``clock`` attribute their tests set too.

    (A UCEPP store created on the wall clock and then fed 2002's dates does not learn:
    moving its epoch back 24 years overflows ``2.0 ** ((epoch - now) / half_life)`` in
    ``UceppStore._rescale``, and the suite logs every learn as failed.)"""

    def __init__(self, cfg, state_dir, clock):
        self._replay_clock = clock
        super().__init__(cfg, state_dir)
        for store in self.checks.values():
            if hasattr(store, "clock"):
                store.clock = clock

    def _load_ucepp(self, s: dict):
        from classifier.reputation import ucepp

        kw = {k: s[k] for k in ("half_life_days", "max_rows", "allow_domains") if k in s}
        return ucepp.UceppStore(self.state_dir / "ucepp.sqlite", clock=self._replay_clock, **kw)


class LogCounter(logging.Handler):
    """Counts the reputation suite's warnings by event (a check failing on a message
    abstains and logs; the bench reports how often)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.events: collections.Counter = collections.Counter()

    def emit(self, record):
        fields = getattr(record, "fields", {}) or {}
        self.events[f"{fields.get('event', record.getMessage())}:{fields.get('check', '')}"] += 1


def fresh_scorer(recipe, train, feats, jobs: int) -> tuple[Scorer, float]:
    """The recipe fitted on ``train`` (``feats`` its features), as
    ``training.evaluate.evaluate_batch`` fits it."""
    return fit_scorer(recipe, feats, [1 if m.label == "spam" else 0 for m in train], jobs, "reputation-bench")


def decided_by(v) -> list[str]:
    """What decided alone in a verdict: classifiers by id, checks by name."""
    return [c.id for c in v.classifiers if c.decides_alone] + \
        [r.check for r in v.reputation if r.decides_alone]


def finding_row(x) -> dict:
    return {"check": x.check, "classification": x.signal.classification,
            "strength": round(x.signal.strength, 4), "decides": x.signal.decides,
            "evidence": list(x.signal.evidence)}


def paired_roca_delta(y: np.ndarray, s0: np.ndarray, s1: np.ndarray, boot: int, seed: int = 0):
    """1-ROCA% (s1) - 1-ROCA% (s0) with a 95% CI from a class-stratified bootstrap that
    resamples the same messages for both (metrics._bootstrap_roca's resampling)."""
    d = 100 * ((1 - roc_auc_score(y, s1)) - (1 - roc_auc_score(y, s0)))
    if boot <= 0:
        return d, None
    rng = np.random.RandomState(seed)
    ih, isp = np.where(y == 0)[0], np.where(y == 1)[0]
    vals = []
    for _ in range(boot):
        ii = np.concatenate([rng.choice(ih, ih.size), rng.choice(isp, isp.size)])
        vals.append(100 * (roc_auc_score(y[ii], s0[ii]) - roc_auc_score(y[ii], s1[ii])))
    return d, [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


class Tally:
    """Both arms' verdicts of a sequence of messages, and what each check found."""

    def __init__(self, checks):
        self.ids: list[str] = []
        self.y: list[int] = []
        self.score = {a: [] for a in ARMS}
        self.quarantined = {a: [] for a in ARMS}
        self.classification = {a: [] for a in ARMS}
        self.decided = {a: [] for a in ARMS}
        self.checks = list(checks)
        self.per_check = {c: {"spam_found": 0, "ham_found": 0, "spam_decided": 0, "ham_decided": 0}
                          for c in self.checks}
        self.ham_findings: list[dict] = []     # every ham with a finding, with its evidence
        self.spam_rescued: list[dict] = []     # spam quarantined only with findings

    def add(self, m, v0, v1, findings) -> None:
        spam = m.label == "spam"
        self.ids.append(m.id)
        self.y.append(int(spam))
        for arm, v in zip(ARMS, (v0, v1)):
            self.score[arm].append(v.score)
            self.quarantined[arm].append(v.verdict == QUARANTINE)
            self.classification[arm].append(v.classification)
            self.decided[arm].append(decided_by(v))
        for x in findings:
            pc = self.per_check.setdefault(x.check, {"spam_found": 0, "ham_found": 0,
                                                     "spam_decided": 0, "ham_decided": 0})
            lab = "spam" if spam else "ham"
            pc[f"{lab}_found"] += 1
            pc[f"{lab}_decided"] += int(x.signal.decides)
        row = {"id": m.id, "score_without": round(v0.score, 6), "score_with": round(v1.score, 6),
               "verdict_without": v0.classification if v0.verdict == QUARANTINE else "accept",
               "verdict_with": v1.classification if v1.verdict == QUARANTINE else "accept",
               "decided_by_with": decided_by(v1), "findings": [finding_row(x) for x in findings]}
        if findings and not spam:
            self.ham_findings.append(row)
        if spam and v1.verdict == QUARANTINE and v0.verdict != QUARANTINE:
            self.spam_rescued.append(row)

    def result(self, threshold: float, boot: int) -> dict:
        y = np.array(self.y)
        out: dict = {"n": len(y), "n_spam": int(y.sum()), "n_ham": int((y == 0).sum()), "arms": {}}
        for arm in ARMS:
            s = np.array(self.score[arm])
            q = np.array(self.quarantined[arm])
            verdict = evaluate_scores(y, s, threshold, verdict=q, boot=boot)
            score_only = evaluate_scores(y, s, threshold, boot=0)
            ham_by_class = collections.Counter(c for c, qq, yy in zip(self.classification[arm], q, y)
                                               if qq and yy == 0)
            ham_by_decider = collections.Counter(
                "+".join(d) or "combined score" for d, qq, yy in zip(self.decided[arm], q, y) if qq and yy == 0)
            spam_by_class = collections.Counter(c for c, qq, yy in zip(self.classification[arm], q, y)
                                                if qq and yy == 1)
            out["arms"][arm] = {
                "verdict": verdict,
                "score_at_threshold": {k: score_only.get(k) for k in ("fp", "fn", "fpr_pct", "fnr_pct", "lam_pct")},
                "ham_quarantined": int((q & (y == 0)).sum()),
                "ham_quarantined_by_classification": dict(ham_by_class),
                "ham_quarantined_decided_by": dict(ham_by_decider),
                "ham_quarantined_ids": [i for i, qq, yy in zip(self.ids, q, y) if qq and yy == 0],
                "spam_caught": int((q & (y == 1)).sum()),
                "spam_caught_pct": 100 * float((q & (y == 1)).sum()) / max(1, int(y.sum())),
                "spam_by_classification": dict(spam_by_class),
            }
        s0, s1 = np.array(self.score["without"]), np.array(self.score["with"])
        d, ci = paired_roca_delta(y, s0, s1, boot)
        q0, q1 = np.array(self.quarantined["without"]), np.array(self.quarantined["with"])
        out["delta"] = {
            "roca_pct": d, "roca_pct_ci95": ci,
            "lam_pct": out["arms"]["with"]["verdict"]["lam_pct"] - out["arms"]["without"]["verdict"]["lam_pct"],
            "spam_newly_caught": int((q1 & ~q0 & (y == 1)).sum()),
            "ham_newly_quarantined": int((q1 & ~q0 & (y == 0)).sum()),
            "spam_newly_missed": int((~q1 & q0 & (y == 1)).sum()),
            "ham_newly_released": int((~q1 & q0 & (y == 0)).sum()),
            "score_changed": int((np.abs(s1 - s0) > 1e-12).sum()),
        }
        out["per_check"] = self.per_check
        # ham the findings quarantined, or that a check would have quarantined alone
        moved = [r for r in self.ham_findings
                 if (r["verdict_with"] != "accept" and r["verdict_without"] == "accept")
                 or any(x["decides"] for x in r["findings"])]
        out["ham_moved"] = moved
        out["ham_with_findings"] = self.ham_findings
        out["spam_rescued"] = self.spam_rescued
        return out


# ---------------------------------------------------------------- the protocols

async def run_batch(a, recipe, corpus, log_counter) -> tuple[dict, dict]:
    train, test = batch_split(corpus, 0.7, 0)
    feats_tr = extract_all(train, a.jobs, desc="features (train)")
    scorer, fit_s = fresh_scorer(recipe, train, feats_tr, a.jobs)
    state = tempfile.TemporaryDirectory(prefix="reputation-bench-batch-")
    rep = Reputation(ReputationConfig(), state.name)

    # feedback history: the training part, in its (shuffled) split order
    t0 = time.perf_counter()
    learned = collections.Counter()
    learn_ms = []
    for m, f in zip(_progress(train, "feed stores"), feats_tr):
        raw = m.read()
        t1 = time.perf_counter()
        # the corpus's labels stand for admin-verified feedback: trusted, so that a single
        # report decides in neardup and reported as it did before trust was weighed
        done = rep.learn(raw, m.label, f, trusted=True)
        learn_ms.append(1000 * (time.perf_counter() - t1))
        for check, what in done.items():
            learned[f"{check}: {what.split(' ')[0]}"] += 1
    feed_s = time.perf_counter() - t0
    del feats_tr
    gc.collect()
    gc.freeze()   # the fitted model out of the cyclic GC, as the scoring service does

    raws = [m.read() for m in test]
    feats = [extract(r) for r in raws]
    rcpts = [recipients(f) for f in feats]
    tally = Tally(rep.checks)
    for m, raw, f, rc in zip(_progress(test, "batch test"), raws, feats, rcpts):
        findings, _ = await rep.evaluate(raw, f, rc)
        tally.add(m, scorer.score(f), scorer.score(f, findings=findings), findings)
    res = tally.result(recipe.threshold, a.boot)
    res.update({"n_train": len(train), "n_test": len(test), "fit_seconds": fit_s,
                "feed": {"seconds": feed_s, "learn_ms_mean": statistics.fmean(learn_ms),
                         "learn_ms_p50": float(np.percentile(learn_ms, 50)),
                         "learn_ms_p99": float(np.percentile(learn_ms, 99)), "outcomes": dict(learned)},
                "checks": rep.status(), "check_warnings": dict(log_counter.events)})
    log_counter.events.clear()
    cost = await run_cost(scorer, rep, raws, feats, rcpts, a.rounds)
    rep.close()
    state.cleanup()
    return res, cost


async def run_online(a, recipe, corpus, log_counter) -> dict:
    msgs = corpus.messages[:a.online] if a.online else corpus.messages
    model = build_model(recipe)
    model._ensure_ready()
    scorer = Scorer(ModelBundle(model=model, version="reputation-bench-online", threshold=recipe.threshold,
                                tolerant_threshold=recipe.tolerant_threshold, solo_thresholds={},
                                specificity=recipe.specificity))
    state = tempfile.TemporaryDirectory(prefix="reputation-bench-online-")
    clock = times = None
    if a.clock == "dates":
        times = replay_times(msgs)
        clock = ReplayClock(float(times[0]))
        rep = ReplayReputation(ReputationConfig(), state.name, clock)
    else:
        rep = Reputation(ReputationConfig(), state.name)
    tally = Tally(rep.checks)
    eval_ms, learn_ms = [], []
    learned = collections.Counter()
    t0 = time.perf_counter()
    for i, m in enumerate(_progress(msgs, "online")):
        raw = m.read()
        if clock is not None:
            clock.t = float(times[i])
        f = extract(raw)
        t1 = time.perf_counter()
        findings, _ = await rep.evaluate(raw, f, recipients(f))
        eval_ms.append(1000 * (time.perf_counter() - t1))
        tally.add(m, scorer.score(f), scorer.score(f, findings=findings), findings)
        scorer.learn(f, 1 if m.label == "spam" else 0)
        t1 = time.perf_counter()
        done = rep.learn(raw, m.label, f, trusted=True)     # admin-verified labels, as above
        learn_ms.append(1000 * (time.perf_counter() - t1))
        for check, what in done.items():
            learned[f"{check}: {what.split(' ')[0]}"] += 1
    wall = time.perf_counter() - t0
    res = tally.result(recipe.threshold, a.boot)
    half = len(msgs) // 2
    y = np.array(tally.y)
    res["second_half"] = {}
    for arm in ARMS:
        s = np.array(tally.score[arm])
        q = np.array(tally.quarantined[arm])
        res["second_half"][arm] = evaluate_scores(y[half:], s[half:], recipe.threshold, verdict=q[half:], boot=0)
    res.update({"clock": a.clock, "order": corpus.description, "seconds": wall,
                "replayed": ([time.strftime("%Y-%m-%d", time.gmtime(x)) for x in (times[0], times[-1])]
                             if clock else None),
                "evaluate_ms_mean": statistics.fmean(eval_ms), "learn_ms_mean": statistics.fmean(learn_ms),
                "learn_outcomes": dict(learned),
                "checks": rep.status(), "check_warnings": dict(log_counter.events)})
    log_counter.events.clear()
    rep.close()
    state.cleanup()
    return res


async def run_cost(scorer, rep, raws, feats, rcpts, rounds: int) -> dict:
    """Interleaved timing of the two arms on the same messages (see the docstring)."""
    n = len(raws)
    for raw, f, rc in zip(raws[:50], feats, rcpts):            # warm-up: caches, SQLite pages
        scorer.score(f)
        fi, _ = await rep.evaluate(raw, f, rc)
        scorer.score(f, findings=fi)
    stages = ("extract", "score_without", "evaluate", "score_with")
    cpu = {s: np.zeros((rounds, n)) for s in stages}
    wall = {s: np.zeros((rounds, n)) for s in stages}
    per_check: dict[str, np.ndarray] = {}
    pc, pt = time.process_time, time.perf_counter

    async def arm_with(r, i):
        c0, w0 = pc(), pt()
        findings, ms = await rep.evaluate(raws[i], feats[i], rcpts[i])
        c1, w1 = pc(), pt()
        scorer.score(feats[i], findings=findings)
        c2, w2 = pc(), pt()
        cpu["evaluate"][r, i], wall["evaluate"][r, i] = c1 - c0, w1 - w0
        cpu["score_with"][r, i], wall["score_with"][r, i] = c2 - c1, w2 - w1
        for check, v in ms.items():
            per_check.setdefault(check, np.zeros((rounds, n)))[r, i] = v / 1000.0

    def arm_without(r, i):
        c0, w0 = pc(), pt()
        scorer.score(feats[i])
        cpu["score_without"][r, i], wall["score_without"][r, i] = pc() - c0, pt() - w0

    for r in range(rounds):
        for i in _progress(range(n), f"cost round {r + 1}/{rounds}"):
            c0, w0 = pc(), pt()
            extract(raws[i])
            cpu["extract"][r, i], wall["extract"][r, i] = pc() - c0, pt() - w0
            if (i + r) % 2:
                arm_without(r, i)
                await arm_with(r, i)
            else:
                await arm_with(r, i)
                arm_without(r, i)

    def stats(x: np.ndarray) -> dict:
        per_msg = 1000 * np.median(x, axis=0)     # each message: its median over rounds
        return {"mean": float(per_msg.mean()), "p50": float(np.percentile(per_msg, 50)),
                "p99": float(np.percentile(per_msg, 99))}

    derived_cpu = {
        "full_without": cpu["extract"] + cpu["score_without"],
        "full_with": cpu["extract"] + cpu["evaluate"] + cpu["score_with"],
        "added": cpu["evaluate"] + cpu["score_with"] - cpu["score_without"],
    }
    derived_wall = {
        "full_without": wall["extract"] + wall["score_without"],
        "full_with": wall["extract"] + wall["evaluate"] + wall["score_with"],
        "added": wall["evaluate"] + wall["score_with"] - wall["score_without"],
    }
    out = {"messages": n, "rounds": rounds,
           "cpu_ms": {k: stats(v) for k, v in {**cpu, **derived_cpu}.items()},
           "wall_ms": {k: stats(v) for k, v in {**wall, **derived_wall}.items()},
           "per_check_wall_ms": {k: stats(v) for k, v in per_check.items()}}
    for unit in ("cpu_ms", "wall_ms"):
        s = out[unit]
        out[f"ratio_full_{unit.split('_')[0]}"] = s["full_with"]["mean"] / s["full_without"]["mean"]
        out[f"ratio_score_{unit.split('_')[0]}"] = (s["evaluate"]["mean"] + s["score_with"]["mean"]) \
            / s["score_without"]["mean"]
    return out


def _progress(items, desc):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="msg", disable=None, leave=False)


# ---------------------------------------------------------------- output

def _f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def _ci(m) -> str:
    ci = m.get("roca_pct_ci95") or [None, None]
    return f"{_f(m['roca_pct'], 4)} [{_f(ci[0], 4)}, {_f(ci[1], 4)}]"


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def arm_rows(section: dict) -> list[list[str]]:
    rows = []
    for arm in ARMS:
        x = section["arms"][arm]
        v = x["verdict"]
        rows.append([arm, _ci(v), _f(v["lam_pct"], 3), f"{_f(v['fpr_pct'], 3)} ({v['fp']})",
                     f"{_f(v['fnr_pct'], 3)} ({v['fn']})", f"{_f(v['catch_at_0.1pct_fpr_pct'], 1)}",
                     f"{x['ham_quarantined']}: {_counts(x['ham_quarantined_by_classification'])}",
                     f"{x['spam_caught']} ({_f(x['spam_caught_pct'], 2)}%)"])
    return rows


ARM_HEADER = ["findings", "1-ROCA% [95% CI]", "lam%", "FPR% (fp)", "FNR% (fn)", "caught@0.1%FPR",
              "ham quarantined: by classification", "spam caught"]


def delta_line(section: dict) -> str:
    d = section["delta"]
    ci = d["roca_pct_ci95"] or [None, None]
    return (f"with - without: 1-ROCA% {d['roca_pct']:+.4f} [{_f(ci[0], 4)}, {_f(ci[1], 4)}] (paired bootstrap), "
            f"lam% {d['lam_pct']:+.3f}; spam newly caught {d['spam_newly_caught']}, ham newly quarantined "
            f"{d['ham_newly_quarantined']}, spam newly missed {d['spam_newly_missed']}, ham newly released "
            f"{d['ham_newly_released']}; scores changed on {d['score_changed']} of {section['n']} messages")


def check_rows(section: dict) -> list[list[str]]:
    n_s, n_h = section["n_spam"], section["n_ham"]
    return [[c, f"{p['spam_found']} / {n_s}", str(p["spam_decided"]), f"{p['ham_found']} / {n_h}",
             str(p["ham_decided"])] for c, p in section["per_check"].items()]


CHECK_HEADER = ["check", "spam with a finding", "spam decided", "ham with a finding", "ham decided"]


def text_table(header, rows) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(vals):
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def md_table(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def ham_lines(section: dict) -> list[str]:
    out = []
    for r in section["ham_moved"]:
        ev = "; ".join(f"{x['check']}={x['strength']:g}{'!' if x['decides'] else ''} [{'; '.join(x['evidence'])}]"
                       for x in r["findings"])
        out.append(f"{r['id']}: {r['verdict_without']} -> {r['verdict_with']} (score {r['score_without']:.4f}"
                   f" -> {r['score_with']:.4f}; decided by {'+'.join(r['decided_by_with']) or 'combined score'}): {ev}")
    return out


def cost_rows(cost: dict) -> list[list[str]]:
    rows = []
    for k, label in (("extract", "extract (both pay it once)"), ("score_without", "score without findings"),
                     ("evaluate", "Reputation.evaluate"), ("score_with", "score with findings"),
                     ("full_without", "raw -> verdict without"), ("full_with", "raw -> verdict with"),
                     ("added", "added per message")):
        c, w = cost["cpu_ms"][k], cost["wall_ms"][k]
        rows.append([label, _f(c["mean"]), _f(w["p50"]), _f(w["mean"]), _f(w["p99"])])
    for k, w in cost["per_check_wall_ms"].items():
        rows.append([f"  check {k}", "", _f(w["p50"]), _f(w["mean"]), _f(w["p99"])])
    return rows


COST_HEADER = ["stage", "CPU ms mean", "wall ms p50", "wall ms mean", "wall ms p99"]


def cost_summary(cost: dict) -> str:
    return (f"added {cost['cpu_ms']['added']['mean']:.3f} ms CPU per message (wall p50 "
            f"{cost['wall_ms']['added']['p50']:.3f}, p99 {cost['wall_ms']['added']['p99']:.3f}); "
            f"raw -> verdict with/without: x{cost['ratio_full_cpu']:.2f} CPU (x{cost['ratio_full_wall']:.2f} wall); "
            f"features -> verdict with/without: x{cost['ratio_score_cpu']:.2f} CPU")


def quarantined_ham_lines(section: dict, most: int = 25) -> list[str]:
    out = []
    for arm in ARMS:
        ids = section["arms"][arm]["ham_quarantined_ids"]
        out.append(f"ham quarantined {arm} findings ({len(ids)}): " + (", ".join(ids) if len(ids) <= most else
                                                                     ", ".join(ids[:most]) + ", ..."))
    return out


def print_report(res: dict) -> None:
    b, o, c = res.get("batch"), res.get("online"), res.get("cost")
    if b:
        print(f"\nBATCH: train {b['n_train']} (fed to the stores), test {b['n_test']} "
              f"({b['n_spam']} spam, {b['n_ham']} ham); quarantine at >= {res['threshold']} or decided alone")
        print(text_table(ARM_HEADER, arm_rows(b)))
        print(delta_line(b))
        print("\n".join(quarantined_ham_lines(b)))
        print(text_table(CHECK_HEADER, check_rows(b)))
        for line in ham_lines(b):
            print("  ham moved: " + line)
        print(f"stores fed: {_counts(b['feed']['outcomes'])}; check warnings: {_counts(b['check_warnings'])}")
    if o:
        print(f"\nONLINE ({o['order']}, {o['n']} messages, stores' clock: {o['clock']}, "
              f"{o['seconds']:.0f} s): ({o['n_spam']} spam, {o['n_ham']} ham)")
        print(text_table(ARM_HEADER, arm_rows(o)))
        print(delta_line(o))
        sh = o["second_half"]
        # a short run's second half may hold one class only: then it has counts, no ROC
        print("second half: " + "; ".join(f"{arm} 1-ROCA% {_f(sh[arm].get('roca_pct'), 4)} lam% {_f(sh[arm].get('lam_pct'), 3)}"
                                          f" fp {sh[arm]['fp']} fn {sh[arm]['fn']}" for arm in ARMS))
        print("\n".join(quarantined_ham_lines(o)))
        print(text_table(CHECK_HEADER, check_rows(o)))
        for line in ham_lines(o):
            print("  ham moved: " + line)
        print(f"stores learned: {_counts(o['learn_outcomes'])}; check warnings: {_counts(o['check_warnings'])}")
    if c:
        print(f"\nCOST: {c['messages']} batch test messages, {c['rounds']} interleaved rounds, per-message "
              "median over rounds")
        print(text_table(COST_HEADER, cost_rows(c)))
        print(cost_summary(c))


def markdown(res: dict) -> str:
    """The section of bench/report.md for this bench."""
    b, o, c = res.get("batch"), res.get("online"), res.get("cost")
    m = res["machine"]
    L = ["### Reputation checks in the combined score (bench/reputation_bench.py)", "",
         (f"Checks: {', '.join(res['checks'])} (suite defaults; URL lists, Safe Browsing, patterns and "
         f"signatures need lists and were off). Quarantine at combined score >= {res['threshold']} or when a "
         f"classifier or check decides alone. {m['cpu_count']} cores, {m['platform']}."), ""]
    if b:
        L += [(f"**Batch split** (seed 0, 70/30): a model fitted on the {b['n_train']} training messages, which "
              f"also fed the stores (spam reported, ham released); {b['n_test']} test messages scored "
              "without and with the findings."), "", md_table(ARM_HEADER, arm_rows(b)), "",
              delta_line(b) + ".", "", md_table(CHECK_HEADER, check_rows(b)), ""]
        moved = ham_lines(b)
        L += (["Ham the findings moved:", ""] + [f"- {x}" for x in moved] if moved
              else ["No ham was moved to quarantine by the findings."]) + [""]
    if o:
        L += [(f"**Online** (TREC immediate feedback, {o['order']}, {o['n']} messages; model and stores start "
              f"empty and learn every message after scoring it; stores' clock: {o['clock']})."), "",
              md_table(ARM_HEADER, arm_rows(o)), "", delta_line(o) + ".", "",
              md_table(CHECK_HEADER, check_rows(o)), ""]
        moved = ham_lines(o)
        L += (["Ham the findings moved:", ""] + [f"- {x}" for x in moved] if moved
              else ["No ham was moved to quarantine by the findings."]) + [""]
    if c:
        L += [(f"**Cost** ({c['messages']} batch test messages, {c['rounds']} interleaved rounds, each message's "
              "median over rounds):"), "", md_table(COST_HEADER, cost_rows(c)), "", cost_summary(c) + ".", ""]
    return "\n".join(L)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    ap.add_argument("--online", type=int, default=0,
                    help="messages of the online replay, in index order (0: all, about a minute)")
    ap.add_argument("--clock", choices=("dates", "wall"), default="dates",
                    help="the stores' clock in the online replay (see the docstring)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the cost measurement")
    ap.add_argument("--boot", type=int, default=200, help="bootstrap resamples for the 1-ROCA%% CIs")
    ap.add_argument("--jobs", type=int, default=0, help="processes for feature extraction and fitting (0: all cores)")
    ap.add_argument("--skip", choices=("batch", "online"), action="append", default=[],
                    help="leave out a protocol (batch also carries the cost measurement)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "reputation.json"))
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.online < 0:
        ap.error("--rounds must be >= 1 and --online >= 0")

    logging.basicConfig(level=logging.ERROR)   # the suite's warnings are counted, not printed
    counter = LogCounter()
    logging.getLogger("mailsift.reputation").addHandler(counter)
    logging.getLogger("mailsift.reputation").propagate = False
    logging.getLogger("mailsift.reputation").setLevel(logging.WARNING)

    recipe = load_recipe(a.recipe)
    corpus = read_corpus(a.corpus)
    res: dict = {"corpus": a.corpus, "recipe": a.recipe, "threshold": recipe.threshold,
                 "parameters": {k: v for k, v in vars(a).items() if k != "out"},
                 "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                             "python": platform.python_version()}}
    t0 = time.perf_counter()
    if "batch" not in a.skip:
        res["batch"], res["cost"] = asyncio.run(run_batch(a, recipe, corpus, counter))
    if "online" not in a.skip:
        res["online"] = asyncio.run(run_online(a, recipe, corpus, counter))
    res["seconds"] = time.perf_counter() - t0
    status = (res.get("batch") or res.get("online") or {}).get("checks", {})
    res["checks"] = [c for c, st in status.items() if st == "enabled"]
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    print_report(res)
    print("\n" + markdown(res))
    print(f"wrote {out} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
