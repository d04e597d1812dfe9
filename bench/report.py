#!/usr/bin/env python3
"""Write bench/report.md: mailsift beside the peers, and each target of the scoring core
checked against what was measured.

    python3 bench/report.py --harness bench/out/harness/results/spamassassin.json \\
        --evaluate bench/out/evaluate --speed bench/out/speed.json --out bench/report.md

Inputs: the shared harness' results (all peers and mailsift, one run), mailsift's own
``evaluate`` outputs (per-classifier figures, the online protocol), and bench/speed.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OURS = "mailsift"


def load(path):
    p = pathlib.Path(path)
    return json.loads(p.read_text()) if p.exists() else None


def f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def peers_table(section: dict, mode: str) -> list[str]:
    rows = ["| peer | 1-ROCA% [95% CI] | lam% | FPR% (ham->spam) | FNR% (spam missed) | caught @0.1% FPR"
            + (" | train msg/s | score msg/s | latency p50/p99 ms |" if mode == "batch" else " |"),
            "|---|---|---|---|---|---" + ("|---|---|---|" if mode == "batch" else "|")]
    for name, r in section.items():
        if "error" in r:
            rows.append(f"| {name} | failed: see the harness log |")
            continue
        m = r["metrics"]["score"]
        ci = m.get("roca_pct_ci95", [None, None])
        line = (f"| {'**' + name + '**' if name == OURS else name} | {f(m['roca_pct'])} [{f(ci[0])}, {f(ci[1])}]"
                f" | {f(m['lam_pct'], 2)} | {f(m['fpr_pct'], 2)} ({m['fp']}) | {f(m['fnr_pct'], 2)} ({m['fn']})"
                f" | {f(m['catch_at_0.1pct_fpr_pct'], 1)}%")
        if mode == "batch":
            s = r["speed"]
            line += (f" | {f(r['train_msgs_per_s'], 1)} | {f(s['msgs_per_s'], 1)}"
                     f" | {f(s['latency_ms_p50'], 1)} / {f(s['latency_ms_p99'], 1)} |")
        else:
            line += " |"
        rows.append(line)
    return rows


def row_t(what, measured, target, ok) -> str:
    verdict = "" if ok is None else ("met" if ok else "**not met**")
    return f"| {what} | {measured} | {target} | {verdict} |"


def reputation_sections(rep, pz, nd) -> list[str]:
    """The reputation checks: digest compatibility, near-duplicates, with/without."""
    L = []
    if pz or nd or rep:
        L += ["", "## The reputation checks", ""]
    if pz:
        c = pz["counts"]
        L += [f"**Pyzor digests** (`bench/pyzor_compat.py`, against {pz['reference']}): of {c['messages']}"
              f" messages, {c['equal']} equal, {c['different']} different, {c['both_none']} with no digest"
              f" on either side (pyzor's empty digest), {c['ours_only_none'] + c['reference_only_none']}"
              f" with a digest on one side only. {pz['timing']['ours_us_per_msg'] / 1000:.2f} ms per message"
              f" (pyzor: {pz['timing']['reference_us_per_msg'] / 1000:.2f} ms).", ""]
    if nd:
        key = f"shingle={nd['defaults']['shingle']},min_shingles={nd['defaults']['min_shingles']}"
        s, camp = nd["split"][key], nd["campaigns"]
        L += [f"**Near-duplicates** (`bench/neardup_bench.py`): {camp['count']} campaigns of spam"
              f" ({camp['messages']} messages) found by exact Jaccard; the first half of each reported"
              f" ({camp['reported']}), the other {camp['held_out']} held out; {nd['ham']} ham all checked.", "",
              "| similarity threshold | " + " | ".join(s["held_out_caught"]) + " |",
              "|---|" + "---|" * len(s["held_out_caught"]),
              "| held-out copies caught | " + " | ".join(str(v) for v in s["held_out_caught"].values()) + " |",
              "| ham hit | " + " | ".join(str(v) for v in s["ham_hits"].values()) + " |", ""]
    if rep:
        sys.path.insert(0, str(ROOT / "bench"))
        from reputation_bench import markdown as reputation_markdown

        L += [reputation_markdown(rep), ""]
    return L


def queue_feedback_sections(q, fb) -> list[str]:
    """Issue 7: the durable queue against the synchronous relay, and the time from a
    release or report to the scorer's changed verdict."""
    L: list[str] = []
    if q:
        s, p = q["summary"], q["parameters"]
        L += ["", "## The durable queue (`bench/queue_bench.py`)", "",
              f"{p['clients']} clients, {p['messages']} messages per round, {p['rounds']} interleaved rounds per mode,"
              " one gate process per mode against the same scorer, sink and DNS; medians over rounds.", "",
              "| | queue (fsync'd before the 250) | synchronous relay | queue / relay |",
              "|---|---|---|---|"]
        qq, ss = s["queue"], s["sync"]
        L += [f"| accepted msgs/s | {qq['accepted_msgs_per_s_median']:.1f} | {ss['accepted_msgs_per_s_median']:.1f}"
              f" | {s['accepted_ratio_queue_over_sync']:.2f} |",
              f"| delivered end to end msgs/s | {qq['delivered_msgs_per_s_median']:.1f} | {ss['delivered_msgs_per_s_median']:.1f}"
              f" | {s['delivered_ratio_queue_over_sync']:.2f} |",
              f"| end of DATA to reply, p50 / p99 | {qq['latency_ms_p50']:.0f} / {qq['latency_ms_p99']:.0f} ms"
              f" | {ss['latency_ms_p50']:.0f} / {ss['latency_ms_p99']:.0f} ms | |",
              f"| gate CPU per message | {qq['gate_cpu_ms_per_msg_median']:.1f} ms | {ss['gate_cpu_ms_per_msg_median']:.1f} ms | |",
              f"| every 250 delivered, nothing else | {qq['delivered_matches_250']} | {ss['delivered_matches_250']} | |", ""]
    if fb:
        a = fb["summary"]["all"]
        L += ["", "## From feedback to the changed verdict (`bench/feedback_bench.py`)", "",
              f"{a['trials']} trials alternating report and release, a {fb['workers']}-worker scorer with the shipped"
              " model; the clock starts when `Feedback.submit` returns and stops at the changed verdict on a copy"
              " of the message to another recipient.", "",
              "| measure | p50 | p99 |", "|---|---|---|"]
        for key, what in (("submit", "`Feedback.submit` (guards, fsync'd insert, Learn)"),
                          ("changed_learner", "to the changed verdict on the worker that learned"),
                          ("changed_other", "to the changed verdict on the other worker"),
                          ("total_other", "start of submit to the other worker's changed verdict"),
                          ("pickup_other", "until the other worker's learn-log poll applied the learn")):
            L.append(f"| {what} | {a[key]['p50_ms']:.1f} ms | {a[key]['p99_ms']:.1f} ms |")
        L += ["", f"The first Score after the submit already gave the new verdict in {a['changed_at_first_score']}"
              f" of {a['trials']} trials.", ""]
    return L


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--harness", default=str(ROOT / "bench/out/harness/results/spamassassin.json"))
    ap.add_argument("--evaluate", default=str(ROOT / "bench/out/evaluate"))
    ap.add_argument("--speed", default=str(ROOT / "bench/out/speed.json"))
    ap.add_argument("--grpc", default=str(ROOT / "bench/out/grpc.json"))
    ap.add_argument("--gate", default=str(ROOT / "bench/out/gate.json"))
    ap.add_argument("--reputation", default=str(ROOT / "bench/out/reputation.json"))
    ap.add_argument("--pyzor", default=str(ROOT / "bench/out/pyzor_compat.json"))
    ap.add_argument("--neardup", default=str(ROOT / "bench/out/neardup.json"))
    ap.add_argument("--gate-stateful", default=str(ROOT / "bench/out/gate_stateful.json"))
    ap.add_argument("--queue", default=str(ROOT / "bench/out/queue/queue_bench.json"))
    ap.add_argument("--feedback", default=str(ROOT / "bench/out/feedback/feedback_bench.json"))
    ap.add_argument("--out", default=str(ROOT / "bench/report.md"))
    ap.add_argument("--note", default="", help="a paragraph on how this run differs from a plain bench/run.sh")
    a = ap.parse_args(argv)
    h = load(a.harness)
    ev_b = load(pathlib.Path(a.evaluate) / "evaluate-batch.json")
    ev_o = load(pathlib.Path(a.evaluate) / "evaluate-online.json")
    sp = load(a.speed)
    gr = load(a.grpc)
    if not h or OURS not in h.get("batch", {}):
        print("no harness results with mailsift in them; run bench/run.sh first", file=sys.stderr)
        return 1

    L = [f"# mailsift beside Rspamd, SpamAssassin, Bogofilter and CRM114",
         "",
         f"Corpus `{h['corpus']}`: {h['corpus_info']['n']} messages ({h['corpus_info']['n_spam']} spam,"
         f" {h['corpus_info']['n_ham']} ham); {h['host']['cpus']} cores, {h['host']['platform']}."
         f" Harness run {h['generated']}; this report written"
         f" {datetime.datetime.now().isoformat(timespec='seconds')}.",
         "",
         "Every peer, mailsift included, ran through the shared harness on the same split",
         "(`../shared/bench/run.py`; protocol in `../shared/bench/PROTOCOL.md`), mailsift as the",
         "module peer `bench/peer.py`; `bash bench/run.sh` reruns them all in one run.",
         "mailsift's verdict is its product default: quarantine at combined score >= 0.9, or",
         "when a classifier decides alone.",
         ""] + ([a.note, ""] if a.note else [])
    b = h["batch"]
    L += ["## Batch split (seed 0, 70/30)", ""] + peers_table(b, "batch") + [""]
    o = h.get("online", {})
    if o:
        L += ["## TREC online protocol (immediate feedback, index order)", ""] + peers_table(o, "online") + [""]
        L += ["Second half of the online sequence (less cold start):", "",
              "| peer | 1-ROCA% | lam% | FPR% | FNR% |", "|---|---|---|---|---|"]
        for name, r in o.items():
            if "error" in r:
                continue
            m = r["metrics_second_half"]["score"]
            L.append(f"| {name} | {f(m['roca_pct'])} | {f(m['lam_pct'], 2)} | {f(m['fpr_pct'], 2)} | {f(m['fnr_pct'], 2)} |")
        L.append("")

    if ev_o:
        L += ["### mailsift's classifiers, each on its own (online protocol, `mailsift evaluate`)", "",
              "| scorer | 1-ROCA% | second half 1-ROCA% | lam% (log-odds > 0) |", "|---|---|---|---|"]
        for n, m in ev_o["metrics"].items():
            L.append(f"| {n} | {f(m['roca_pct'])} | {f(ev_o['metrics_second_half'][n]['roca_pct'])} | {f(m['lam_pct'], 2)} |")
        L += ["", "`cluster_tokens` learns every message here too; in production it learns only an",
              "installation's feedback.", ""]
    if ev_b:
        L += ["### mailsift's classifiers on the batch split (`mailsift evaluate`)", "",
              "| scorer | 1-ROCA% [95% CI] | lam% | caught @0.1% FPR |", "|---|---|---|---|"]
        for n, m in ev_b["metrics"].items():
            ci = m.get("roca_pct_ci95") or [None, None]
            L.append(f"| {n} | {f(m['roca_pct'])} [{f(ci[0])}, {f(ci[1])}] | {f(m['lam_pct'], 2)}"
                     f" | {f(m['catch_at_0.1pct_fpr_pct'], 1)}% |")
        L += ["", "Classifiers at their own calibrated 0.5; responsible classifications of the test"
              f" verdicts: {json.dumps(ev_b['verdict']['classifications'])}.", ""]

    if sp:
        c, r = sp["cpu_ms_per_msg"], sp["ratio_to_baseline"]
        lr = sp["learn"]
        L += ["## In-process speed (`bench/speed.py`)", "",
              f"CPU per message on the batch test part, median of {sp['rounds']} interleaved rounds, and the",
              "ratio to a baseline measured in the same rounds (the standard library parsing the",
              "message and decoding its text parts):", "",
              "| stage | CPU ms/message | x baseline |", "|---|---|---|"]
        for k in ("baseline", "extract", "score", "full"):
            L.append(f"| {k} | {c[k]:.3f} | {r[k]:.2f} |")
        L += ["", f"- scoring, raw bytes to verdict with evidence: **{sp['score_msgs_per_s_one_core']:.0f} msg/s on one core**",
              f"- batch learning (extraction + one fit of each classifier, on all cores):"
              f" **{lr['batch_learn_msgs_per_s_all_cores']:.0f} msg/s**;"
              f" in one process {lr['batch_learn_msgs_per_s_one_process']:.0f} msg/s",
              f"- each classifier's fit alone, features already extracted (the analogue of Bogofilter's"
              f" bulk registration): " + ", ".join(f"{k} {v:.0f} msg/s" for k, v in lr["fit_msgs_per_s_per_classifier"].items()),
              f"- a full stacked train (5-fold out-of-fold fits + final fit): {lr['train_msgs_per_s_stacked']:.0f} msg/s"
              f" ({lr['stacked_fit_seconds']:.1f} s for {lr['messages']} messages)", ""]

    # targets of the scoring core issue
    peers_b = {n: r for n, r in b.items() if n != OURS and "error" not in r}
    ours = b[OURS]["metrics"]["score"]
    best_roca = min(r["metrics"]["score"]["roca_pct"] for r in peers_b.values())
    best_lam = min(r["metrics"]["score"]["lam_pct"] for r in peers_b.values())
    fastest = max(r["speed"]["msgs_per_s"] for r in peers_b.values())
    bogo_train = b.get("bogofilter", {}).get("train_msgs_per_s")
    caught = 100 - ours["fnr_pct"]

    def row(target, measured, ok):
        return f"| {target} | {measured} | {'met' if ok else '**not met**'} |"

    L += ["## Targets of the scoring core", "", "| target | measured | |", "|---|---|---|",
          row(f"1-ROCA% <= half the best peer's ({best_roca:.3f} / 2 = {best_roca / 2:.4f})",
              f"{ours['roca_pct']:.4f}", ours["roca_pct"] <= best_roca / 2),
          row(f"lam% <= half the best peer's ({best_lam:.2f} / 2 = {best_lam / 2:.2f})",
              f"{ours['lam_pct']:.2f}", ours["lam_pct"] <= best_lam / 2),
          row("at 0.9: FPR <= 0.1% while catching >= 98% of spam",
              f"FPR {ours['fpr_pct']:.3f}% ({ours['fp']}), caught {caught:.2f}%",
              ours["fpr_pct"] <= 0.1 and caught >= 98)]
    if sp:
        L.append(row(f"scoring >= 500 msg/s on one core, and >= 2x the fastest peer ({fastest:.0f} msg/s in the harness)",
                     f"{sp['score_msgs_per_s_one_core']:.0f} msg/s in-process (bench/speed.py);"
                     f" {b[OURS]['speed']['msgs_per_s']:.0f} msg/s through the harness",
                     sp["score_msgs_per_s_one_core"] >= max(500, 2 * fastest)))
        L.append(row(f"batch learning >= 1,000 msg/s (Bogofilter's bulk registration: {f(bogo_train, 0)} msg/s)",
                     f"{sp['learn']['batch_learn_msgs_per_s_all_cores']:.0f} msg/s",
                     sp["learn"]["batch_learn_msgs_per_s_all_cores"] >= 1000))
    if gr:
        o, sc, la = gr["overhead"], gr["scale"], gr["latency"]
        floor = o["cpu_ms_per_msg"]["health_check_floor"]
        L += ["", "## The scoring service over gRPC (`bench/grpc_bench.py`)", "",
              f"{gr['messages']} messages, model {gr['model_version']}, grpc {gr['machine']['grpc']},"
              f" {gr['machine']['cpu_count']} cores; medians of {o['rounds']} interleaved rounds.", "",
              "| measurement | result | target | |", "|---|---|---|---|",
              row_t("server CPU per message over gRPC / in-process (1 worker, one client, WARNING logs)",
                    f"{o['cpu_ms_per_msg']['server_warning']:.2f} / {o['cpu_ms_per_msg']['in_process']:.2f} ms"
                    f" = x{o['ratio_warning']:.2f}", "<= 1.25", o["ratio_warning"] <= 1.25),
              row_t("the same with INFO logs (a JSON line per decision, the default)",
                    f"x{o['ratio_info']:.2f}", "", None),
              row_t("the same with the worker kept busy (8 in flight)",
                    f"x{sc['server_cpu_ratio_to_in_process_1w_loaded']:.2f}", "<= 1.25",
                    sc["server_cpu_ratio_to_in_process_1w_loaded"] <= 1.25),
              row_t("gRPC's own floor: server CPU for one bare Health/Check call",
                    f"{floor:.2f} ms", "", None),
              row_t(f"throughput, 1 worker / 2 workers, {sc['inflight']} in flight",
                    f"{sc['workers_1']['msgs_per_s']:.0f} / {sc['workers_2']['msgs_per_s']:.0f} msg/s"
                    f" = x{sc['ratio']:.2f} (per-round median x{sc['ratio_median_of_rounds']:.2f})",
                    ">= 1.6", sc["ratio"] >= 1.6),
              row_t("load client's own CPU (it shares the 2 cores)",
                    f"{sc['workers_2']['client_cpu_cores']:.2f} cores", "", None),
              row_t(f"latency at half the 2-worker throughput ({la['rate_target']:.0f} msg/s, open loop)",
                    f"p50 {la['latency_ms_p50']:.1f} ms, p99 {la['latency_ms_p99']:.1f} ms", "p99 < 50 ms", la["latency_ms_p99"] < 50),
              ""]
    gate = load(a.gate)
    if gate:
        sys.path.insert(0, str(ROOT / "bench"))
        from gate_bench import markdown as gate_markdown

        L += ["", gate_markdown(gate).replace("### SMTP gate", "## The SMTP gate", 1), ""]
    L += reputation_sections(load(a.reputation), load(a.pyzor), load(a.neardup))
    stateful = load(a.gate_stateful)
    if stateful:
        from gate_bench import markdown_stateful

        L += ["", "## The stateful protections' cost", "", markdown_stateful(stateful),
              "", "The store on its own, and its growth to 1M client IPs: `python bench/state_bench.py`"
              " (numbers in the closing note of issue 6).", ""]
    L += queue_feedback_sections(load(a.queue), load(a.feedback))
    L += ["", "Where a target is not met, the closing notes of the issues and",
          "README.md say what was measured and why.", ""]
    pathlib.Path(a.out).write_text("\n".join(L))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
