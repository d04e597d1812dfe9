#!/usr/bin/env python3
"""Our Pyzor digests against the reference ``pyzor`` package's, message by message.

    python3 bench/pyzor_compat.py --corpus ../shared/corpora/spamassassin \
        --out bench/out/pyzor_compat.json

The reference digest is what ``pyzor digest`` prints for the message on its standard
input: ``pyzor.digest.DataDigester(email.message_from_bytes(raw)).value``. Where the
reference has no useful digest (nothing to digest: it answers the SHA-1 of nothing;
or it raises) ours is None by design (classifier/reputation/pyzor.py), and the pair
counts as ``both_none``. Target: ``different``, ``ours_only_none`` and
``reference_only_none`` all zero. Also times both digesters (CPU per message, median
of interleaved rounds).
"""
from __future__ import annotations

import argparse
import email
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyzor.digest  # noqa: E402  (the reference: a bench dependency, pip install pyzor)

from classifier.reputation.pyzor import EMPTY_DIGEST, pyzor_digest  # noqa: E402
from training.corpus import read_corpus  # noqa: E402


def reference_digest(raw: bytes) -> tuple[str | None, str]:
    """(digest or None, why None: '' | 'empty' | 'error: ...')."""
    try:
        value = pyzor.digest.DataDigester(email.message_from_bytes(raw)).value
    except Exception as e:  # the reference dies with a traceback here
        return None, f"error: {type(e).__name__}: {e}"
    if value == EMPTY_DIGEST:
        return None, "empty"
    return value, ""


def cpu_per_msg(fn, items) -> float:
    t = time.process_time()
    for x in items:
        fn(x)
    return (time.process_time() - t) / max(1, len(items))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora" / "spamassassin"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "pyzor_compat.json"))
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (0: no timing)")
    args = ap.parse_args(argv)

    corpus = read_corpus(args.corpus)
    counts = {"messages": 0, "equal": 0, "different": 0, "both_none": 0,
              "both_none_reference_empty": 0, "both_none_reference_error": 0,
              "ours_only_none": 0, "reference_only_none": 0}
    mismatches = []
    raws = []
    for m in corpus.messages:
        raw = m.read()
        raws.append(raw)
        ours = pyzor_digest(raw)
        ref, why = reference_digest(raw)
        counts["messages"] += 1
        if ours is None and ref is None:
            counts["both_none"] += 1
            counts["both_none_reference_empty" if why == "empty" else "both_none_reference_error"] += 1
            continue
        if ours == ref:
            counts["equal"] += 1
            continue
        key = "ours_only_none" if ours is None else "reference_only_none" if ref is None else "different"
        counts[key] += 1
        mismatches.append({"id": m.id, "label": m.label, "ours": ours, "reference": ref, "why": why})

    timing = {}
    if args.rounds > 0:
        ref_fn = lambda raw: reference_digest(raw)  # noqa: E731
        rounds = {"ours": [], "reference": []}
        for _ in range(args.rounds):
            rounds["ours"].append(cpu_per_msg(pyzor_digest, raws))
            rounds["reference"].append(cpu_per_msg(ref_fn, raws))
        timing = {f"{k}_us_per_msg": round(statistics.median(v) * 1e6, 1) for k, v in rounds.items()}

    report = {"corpus": args.corpus, "reference": f"pyzor {pyzor.__version__}",
              "python": sys.version.split()[0], "counts": counts, "timing": timing,
              "mismatches": mismatches[:50],
              "target_met": counts["different"] + counts["ours_only_none"] + counts["reference_only_none"] == 0}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    shown = ("reference", "python", "counts", "timing", "target_met")
    print(json.dumps({k: report[k] for k in shown}, indent=2))
    for mm in mismatches[:10]:
        print("MISMATCH", mm)
    return 0 if report["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
