#!/usr/bin/env python3
"""How many near-duplicates of reported spam the near-duplicate index catches, and how
many ham it hits, with the threshold sweep the defaults of
``classifier/reputation/neardup.py`` are chosen from.

    python3 bench/neardup_bench.py --corpus ../shared/corpora/spamassassin \
        --out bench/out/neardup.json

1. Campaigns, grouped independently of the index: the exact Jaccard similarity of the
   shingle sets (the index's normalisation and 5-word shingles, no MinHash) of every
   pair of spam, by one sparse matrix product; campaigns are the connected components
   of the pairs at or above ``--group`` (0.5). Spam with fewer than the index's
   ``min_shingles`` shingles cannot be matched and is counted apart.
2. Split test: in receipt order (the corpus index's order), the first half (rounded
   up) of every campaign of two or more is reported (added to the index); every other
   message of the campaign is queried. Caught at threshold t: its best match has
   similarity >= t. All ham is queried against the same index (ham hits at t).
3. Worst case for ham: ALL spam reported, all ham queried, for several
   ``min_shingles`` values.
4. Accuracy of the estimate: |estimated - exact Jaccard| for the matches found, and
   the cost of a signature, an add and a query (wall time per message, features
   already extracted).

The run that set the defaults (SpamAssassin corpus, 1896 spam, 4150 ham) is quoted in
the module docstring of classifier/reputation/neardup.py.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classifier.reputation.neardup import NearDupIndex, normalise_words, shingle_hashes  # noqa: E402
from training.corpus import read_corpus  # noqa: E402
from training.train import extract_all  # noqa: E402

SWEEP = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
SHINGLES = (3, 4, 5)
MIN_SHINGLES = (20, 30, 40)
# a campaign is defined on every spam with at least one full sentence of text, so that
# the min_shingles settings are compared on the same campaigns
GROUP_MIN_SHINGLES = 5
# campaigns are grouped on word 5-grams, the strictest of the shingle sizes compared:
# a pair at Jaccard 0.5 on 5-grams is at least as close on 3-grams, so the grouping
# does not favour the shorter shingles that are under test
GROUP_SHINGLE = 5


def exact_jaccard_pairs(sets: list[np.ndarray], at_least: float) -> list[tuple[int, int, float]]:
    """Every pair (i < j) with exact Jaccard >= at_least."""
    vocab: dict[int, int] = {}
    rows, cols = [], []
    for i, s in enumerate(sets):
        for h in s.tolist():
            cols.append(vocab.setdefault(h, len(vocab)))
            rows.append(i)
    x = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(sets), len(vocab)))
    inter = (x @ x.T).tocoo()
    sizes = np.array([len(s) for s in sets])
    keep = inter.row < inter.col
    r, c, n = inter.row[keep], inter.col[keep], inter.data[keep]
    jac = n / (sizes[r] + sizes[c] - n)
    ok = jac >= at_least
    return list(zip(r[ok].tolist(), c[ok].tolist(), jac[ok].tolist()))


def sweep_counts(sims: list[float | None]) -> dict[str, int]:
    return {f"{t:.2f}": sum(1 for s in sims if s is not None and s >= t - 1e-12) for t in SWEEP}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora" / "spamassassin"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "neardup.json"))
    ap.add_argument("--group", type=float, default=0.5,
                    help="exact Jaccard (word 5-grams) that joins two spam in a campaign")
    ap.add_argument("--jobs", type=int, default=0)
    args = ap.parse_args(argv)

    corpus = read_corpus(args.corpus)
    msgs = corpus.messages
    t0 = time.perf_counter()
    feats = extract_all(msgs, jobs=args.jobs)
    extract_s = time.perf_counter() - t0
    spam = [i for i, m in enumerate(msgs) if m.label == "spam"]
    ham = [i for i, m in enumerate(msgs) if m.label == "ham"]
    probe = NearDupIndex(None)    # the defaults under test
    words = {i: normalise_words(feats[i].text, probe.max_words) for i in range(len(msgs))}
    shingles = {i: shingle_hashes(words[i], GROUP_SHINGLE) for i in range(len(msgs))}
    eligible = [i for i in spam if len(shingles[i]) >= GROUP_MIN_SHINGLES]

    # 1. campaigns by exact Jaccard
    pairs = exact_jaccard_pairs([shingles[i] for i in eligible], args.group)
    graph = sp.coo_matrix((np.ones(len(pairs)), ([p[0] for p in pairs], [p[1] for p in pairs])),
                          shape=(len(eligible), len(eligible)))
    _, comp = connected_components(graph, directed=False)
    campaigns: dict[int, list[int]] = {}
    for k, c in enumerate(comp.tolist()):
        campaigns.setdefault(c, []).append(eligible[k])
    multi = [sorted(v) for v in campaigns.values() if len(v) >= 2]
    sizes = sorted((len(v) for v in multi), reverse=True)
    reported, held_out = [], []
    for camp in multi:
        half = (len(camp) + 1) // 2
        reported += camp[:half]
        held_out += [(i, camp[:half]) for i in camp[half:]]
    by_id = {msgs[i].id: i for i in range(len(msgs))}

    def exact_j(i: int, j: int, k: int) -> float:
        a, b = shingle_hashes(words[i], k), shingle_hashes(words[j], k)
        n = len(np.intersect1d(a, b, assume_unique=True))
        return n / (len(a) + len(b) - n)

    split, worst, est_err, cost = {}, {}, [], {}
    for k, m in [(k, m) for k in SHINGLES for m in MIN_SHINGLES]:
        name = f"shingle={k},min_shingles={m}"
        default = (k, m) == (probe.shingle, probe.min_shingles)
        # 2. split test; threshold 0 returns the best LSH candidate whatever its similarity
        idx = NearDupIndex(None, threshold=0.0, shingle=k, min_shingles=m, max_entries=10**6,
                           max_age_days=10**6)
        t = time.perf_counter()
        for i in reported:
            idx.add(feats[i], msgs[i].id)
        add_ms = (time.perf_counter() - t) / max(1, len(reported)) * 1e3
        caught, own = [], 0
        for i, camp_reported in held_out:
            found = idx.query(feats[i])
            caught.append(found[0] if found else None)
            if found:
                j = by_id[found[1]]
                own += j in camp_reported and found[0] >= min(SWEEP)
                if default:
                    est_err.append(abs(found[0] - exact_j(i, j, k)))
        t = time.perf_counter()
        ham_found = [idx.query(feats[i]) for i in ham]
        query_ms = (time.perf_counter() - t) / max(1, len(ham)) * 1e3
        if default:
            cost = {"add": round(add_ms, 3), "query": round(query_ms, 3)}
        split[name] = {
            "reported_indexed": len(idx),
            "held_out_caught": sweep_counts(caught),
            "caught_by_own_campaign_at_0.50": own,
            "reported_too_short": len(reported) - len(idx),
            "ham_hits": sweep_counts([f[0] if f else None for f in ham_found]),
        }
        # 3. all spam reported, all ham queried
        full = NearDupIndex(None, threshold=0.0, shingle=k, min_shingles=m, max_entries=10**6,
                            max_age_days=10**6)
        for i in spam:
            full.add(feats[i], msgs[i].id)
        found = [full.query(feats[i]) for i in ham]
        best = [f[0] for f in found if f]
        worst[name] = {
            "indexed_spam": len(full),
            "ham_hits": sweep_counts([f[0] if f else None for f in found]),
            "ham_best_similarity": {"max": round(max(best), 3) if best else None,
                                    ">=0.3": sum(b >= 0.3 for b in best),
                                    ">=0.4": sum(b >= 0.4 for b in best)},
            "examples": sorted(((round(f[0], 3), msgs[i].id, f[1]) for i, f in zip(ham, found) if f),
                               reverse=True)[:3],
        }
    t = time.perf_counter()
    for i in ham[:1000]:
        probe.signature(feats[i])
    cost["signature"] = round((time.perf_counter() - t) / min(1000, len(ham)) * 1e3, 3)
    cost["extract"] = round(extract_s / len(msgs) * 1e3, 3)

    report = {
        "corpus": args.corpus, "spam": len(spam), "ham": len(ham),
        "defaults": {"threshold": probe.threshold, "min_shingles": probe.min_shingles,
                     "num_perm": probe.num_perm, "bands": probe.bands, "shingle": probe.shingle},
        "group": {"jaccard": args.group, "shingle": GROUP_SHINGLE, "min_shingles": GROUP_MIN_SHINGLES},
        "spam_too_short_to_group": len(spam) - len(eligible),
        "campaigns": {"count": len(multi), "messages": sum(sizes), "largest": sizes[:10],
                      "reported": len(reported), "held_out": len(held_out)},
        "split": split,
        "all_spam_reported": worst,
        "estimate_abs_error": {"mean": round(statistics.fmean(est_err), 4) if est_err else None,
                               "max": round(max(est_err), 4) if est_err else None},
        "cost_ms_per_msg": cost,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
