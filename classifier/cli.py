"""The ``mailsift`` command.

    mailsift score FILE...             score messages with the shipped model, with evidence
    mailsift score --remote ADDR FILE  the same, asking a running scoring service
    mailsift scorer serve              the scoring service over gRPC
    mailsift gate serve [--config F]   the SMTP gate (the shipped config also starts the scorer)
    mailsift train --corpus DIR ...    build a model bundle
    mailsift evaluate --corpus DIR     batch and online protocols, accuracy and speed
    mailsift threshold --corpus DIR    what each quarantine threshold costs on your mail

Subcommands import their modules only when run, so ``mailsift score`` does not pay
for training code. Configuration is built here, in ``main``, and passed down.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .paths import DEFAULT_BUNDLE


def _score(a) -> int:
    from .bundle import BundleError
    from .scorer import Scorer

    if a.remote:
        return _score_remote(a)
    try:
        scorer = Scorer.load(a.model, a.manifest_sha256)
    except BundleError as exc:
        print(f"mailsift: {exc}", file=sys.stderr)
        return 2
    status = 0
    for path in a.files:
        try:
            raw = _read_message(path)
        except OSError as exc:
            print(f"mailsift: {path}: {exc.strerror}", file=sys.stderr)
            status = 1
            continue
        v = scorer.score(raw, threshold=a.threshold, evidence=a.evidence)
        if a.json:
            print(json.dumps({"file": path, **v.to_dict()}, default=float))
        else:
            print(f"{path}: {v.summary(a.evidence)}")
    return status


def _gate_config(a):
    from smtpgate.config import DEFAULT_CONFIG, ConfigError, load

    try:
        if a.config is None:   # the shipped default: its paths are relative to the cwd
            from pathlib import Path

            return load(DEFAULT_CONFIG, base_dir=Path.cwd())
        return load(a.config)
    except ConfigError as exc:
        print(f"mailsift: configuration: {exc}", file=sys.stderr)
        return None


def _gate_serve(a) -> int:
    from pathlib import Path

    from smtpgate.serve import serve

    from .logs import setup

    cfg = _gate_config(a)
    if cfg is None:
        return 2
    setup(a.log_level)
    # aiosmtpd logs every command line at INFO (its "mail.log"): the decision log has
    # what admins need, and those lines cost ~14% of the gate's CPU (bench/gate_bench.py)
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))
    return serve(cfg, Path(a.ready_file) if a.ready_file else None)


def _gate_check(a) -> int:
    cfg = _gate_config(a)
    if cfg is None:
        return 2
    print(f"ok: {len(cfg.listeners)} listeners "
          f"({', '.join(f'{x.kind} {x.host}:{x.port}' for x in cfg.listeners)}), "
          f"{len(cfg.domains)} domains, {len(cfg.users)} outgoing users")
    for d in cfg.domains.values():
        route = f"{d.route[0]}:{d.route[1]}" if d.route else "MX"
        print(f"  {d.name}: route {route}, settings {d.settings.id}, threshold {d.settings.threshold}")
    return 0


def _gate_passwd(a) -> int:
    import getpass

    from smtpgate.auth import hash_password

    pw = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not pw:
        print("mailsift: empty password", file=sys.stderr)
        return 2
    print(hash_password(pw))
    return 0


def _gate_user(a) -> int:
    import asyncio
    import getpass
    import time

    from smtpgate.auth import hash_password
    from smtpgate.config import User
    from smtpgate.serve import open_store
    from smtpgate.state import StateUnavailable
    from smtpgate.users import delete_user, list_users, put_user

    cfg = _gate_config(a)
    if cfg is None:
        return 2
    if a.action != "list" and not a.name:
        print("mailsift: a user name is needed", file=sys.stderr)
        return 2
    password = None
    if a.action == "add":
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if not password:
            print("mailsift: empty password", file=sys.stderr)
            return 2

    async def run() -> int:
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        store = await open_store(cfg, clock=time.time)
        try:
            if a.action == "add":
                await put_user(store, User(a.name, hash_password(password), tuple(a.senders)))
                print(f"added {a.name}")
            elif a.action == "del":
                if not await delete_user(store, a.name):
                    print(f"mailsift: no user {a.name}", file=sys.stderr)
                    return 1
                print(f"deleted {a.name}")
            else:
                for name in await list_users(store):
                    print(name)
            return 0
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StateUnavailable as exc:
        print(f"mailsift: state store: {exc}", file=sys.stderr)
        return 1


def _read_message(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()


def _score_remote(a) -> int:
    import grpc

    from .client import MessageTooLarge, RemoteScorer, ScorerUnavailable

    status = 0
    with RemoteScorer(a.remote, deadline=a.deadline) as remote:
        for path in a.files:
            try:
                raw = _read_message(path)
            except OSError as exc:
                print(f"mailsift: {path}: {exc.strerror}", file=sys.stderr)
                status = 1
                continue
            try:
                v = remote.score(raw, threshold=a.threshold, evidence=a.evidence)
            except MessageTooLarge as exc:
                print(f"mailsift: {path}: refused: {exc}", file=sys.stderr)
                status = 1
                continue
            except ScorerUnavailable as exc:
                print(f"mailsift: {path}: scorer at {a.remote}: {exc}", file=sys.stderr)
                return 2
            except grpc.RpcError as exc:  # the server refused this message
                print(f"mailsift: {path}: {exc.code().name}: {exc.details()}", file=sys.stderr)
                status = 1
                continue
            if a.json:
                print(json.dumps({"file": path, **v.to_dict()}, default=float))
            else:
                print(f"{path}: {v.summary(a.evidence)}")
    return status


def _scorer_serve(a) -> int:
    import pathlib

    from .serve import serve
    from .server import WorkerConfig

    state = pathlib.Path(a.state)
    cfg = WorkerConfig(model=a.model, learnlog=str(state / "learnlog.sqlite"), bind=a.bind,
                       max_queue=a.max_queue,
                       max_message_bytes=int(a.max_message_mb * 1024 * 1024),
                       manifest_sha256=a.manifest_sha256, reputation=a.reputation,
                       state_dir=str(state / "reputation"))
    if a.reputation:   # a bad file stops the start with the key named, like the gate's config
        from smtpgate.config import ConfigError

        from .reputation.suite import load_config
        try:
            load_config(a.reputation)
        except ConfigError as exc:
            print(f"mailsift: reputation: {exc}", file=sys.stderr)
            return 2
    workers = a.workers or os.cpu_count() or 1
    return serve(cfg, workers, a.metrics_port, a.log_level, a.ready_file)


def _train(a) -> int:
    from training.train import DEFAULT_SLICE, train

    b = train(a.corpus, a.out, a.recipe, a.version, a.evaluation, a.jobs, a.format,
              validation_slice=DEFAULT_SLICE if a.validation_slice else None)
    print(f"wrote bundle {b.version} to {a.out}")
    return 0


def _evaluate(a) -> int:
    from training.evaluate import evaluate_batch, evaluate_online, write_outputs
    from training.metrics import format_table

    results = []
    if a.protocol in ("batch", "both"):
        results.append(evaluate_batch(a.corpus, a.recipe, a.seed, jobs=a.jobs, fmt=a.format, boot=a.boot))
    if a.protocol in ("online", "both"):
        results.append(evaluate_online(a.corpus, a.recipe, a.format, a.limit, boot=a.boot))
    for r in results:
        paths = write_outputs(r, a.out)
        rows = [{"scorer": n, **m} for n, m in r["metrics"].items()]
        print(f"\n{r['protocol']} protocol on {a.corpus}:")
        print(format_table(rows, ["scorer", "roca_pct", "lam_pct", "fpr_pct", "fnr_pct",
                                  "catch_at_0.1pct_fpr_pct", "brier"]))
        if "speed" in r:
            s = r["speed"]
            v = r["verdict"]
            print(f"verdicts at {v['threshold']}: FPR {v['fpr_pct']:.3f}% ({v['fp']}), FNR {v['fnr_pct']:.2f}% ({v['fn']})")
            print(f"scoring {s['score_msgs_per_s']:.0f} msg/s (p50 {s['score_latency_ms_p50']:.2f} ms,"
                  f" p99 {s['score_latency_ms_p99']:.2f} ms); batch learning {s['learn_msgs_per_s_one_process']:.0f} msg/s in one process")
        else:
            print(f"{r['n']} messages, {r['msgs_per_s']:.0f} msg/s (score + learn)")
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _threshold(a) -> int:
    import numpy as np

    from training.corpus import read_corpus
    from training.metrics import format_table, threshold_for_fpr, threshold_table
    from training.train import extract_all

    from .scorer import Scorer

    scorer = Scorer.load(a.model, a.manifest_sha256)
    c = read_corpus(a.corpus, a.format)
    feats = extract_all(c.messages, a.jobs)
    y = np.array([1 if m.label == "spam" else 0 for m in c.messages])
    s = np.array([scorer.score(f, evidence=0).score for f in feats])
    print(f"{len(y)} messages ({int(y.sum())} spam, {int((1 - y).sum())} ham) scored by bundle {scorer.version}")
    print(format_table(threshold_table(y, s), ["threshold", "fp", "fpr_pct", "fn", "fnr_pct", "caught_pct"]))
    t = threshold_for_fpr(y, s, a.target_fpr)
    print(f"lowest threshold with FPR <= {100 * a.target_fpr:g}%: "
          + ("none" if t == float("inf") else f"{t:.6f}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mailsift", description="mailsift mail filter")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("--model", default=str(DEFAULT_BUNDLE), help="model bundle directory (default: the shipped one)")
        p.add_argument("--manifest-sha256", help="refuse a bundle whose manifest.json has another SHA-256")

    def corpus_args(p):
        p.add_argument("--corpus", required=True, help="spam/ and ham/ dirs, a TREC index, mbox or Maildir")
        p.add_argument("--format", default="auto", choices=["auto", "index", "dirs", "mbox", "maildir"])
        p.add_argument("--jobs", type=int, default=0, help="processes for feature extraction (0: one per core)")

    p = sub.add_parser("score", help="score messages and explain the verdict")
    model_args(p)
    p.add_argument("files", nargs="+", metavar="FILE", help="raw RFC 822 messages ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--threshold", type=float, help="quarantine threshold (default: the bundle's, 0.9)")
    p.add_argument("--evidence", type=int, default=5, help="clues shown per classifier")
    p.add_argument("--remote", metavar="ADDR[,ADDR...]",
                   help="ask a running scorer service (mailsift scorer serve) instead of loading the model")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds per message with --remote")
    p.set_defaults(func=_score)

    p = sub.add_parser("scorer", help="the scoring service")
    ssub = p.add_subparsers(dest="scorer_command", required=True)
    s = ssub.add_parser("serve", help="serve the scorer over gRPC, one worker process per core")
    model_args(s)
    s.add_argument("--bind", default="127.0.0.1:50051",
                   help="shared address of all workers; worker i also listens on port+1+i")
    s.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core)")
    s.add_argument("--state", default=os.environ.get("MAILSIFT_STATE", "var"),
                   help="directory of the learn log (SQLite); default ./var or $MAILSIFT_STATE")
    s.add_argument("--max-queue", type=int, default=64,
                   help="requests a worker holds at once; more get RESOURCE_EXHAUSTED")
    s.add_argument("--max-message-mb", type=float, default=25.0, help="largest message accepted")
    s.add_argument("--metrics-port", type=int, default=9150, help="Prometheus metrics port (0: off)")
    s.add_argument("--log-level", default="INFO")
    s.add_argument("--ready-file", help="write the workers' addresses here once started")
    s.add_argument("--reputation", help="the reputation checks' TOML (Pyzor, URLBL, lists...);"
                   " default: the checks that need no list, with their defaults")
    s.set_defaults(func=_scorer_serve)

    p = sub.add_parser("gate", help="the SMTP gate")
    gsub = p.add_subparsers(dest="gate_command", required=True)
    g = gsub.add_parser("serve", help="run the SMTP gate (and, with [scorer] spawn, the scorer)")
    g.add_argument("--config", default=None, help="gate TOML (default: the shipped smtpgate/default.toml)")
    g.add_argument("--ready-file", help="write the gate's pid here once it listens")
    g.add_argument("--log-level", default="INFO")
    g.set_defaults(func=_gate_serve)
    g = gsub.add_parser("check-config", help="validate a gate configuration and print what it sets")
    g.add_argument("--config", default=None)
    g.set_defaults(func=_gate_check)
    g = gsub.add_parser("passwd", help="hash a submission user's password (read from stdin or asked)")
    g.set_defaults(func=_gate_passwd)
    g = gsub.add_parser("user", help="outgoing users in the gate's state store (every node sees them)")
    g.add_argument("action", choices=["add", "del", "list"])
    g.add_argument("name", nargs="?")
    g.add_argument("--senders", nargs="*", default=[], help="MAIL FROM patterns the user may use")
    g.add_argument("--config", default=None)
    g.set_defaults(func=_gate_user)

    p = sub.add_parser("train", help="build a model bundle from a labelled corpus")
    corpus_args(p)
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--recipe", default=None, help="model recipe TOML (default: training/default_model.toml)")
    p.add_argument("--version", help="bundle version (default: DATE-CORPUSNAME)")
    p.add_argument("--evaluation", help="evaluate-batch.json to quote in the model card")
    p.add_argument("--validation-slice", action="store_true",
                   help="leave out the validation slice mailsift retrain compares bundles on"
                        " (int(sha256[:8], 16) %% 10 == 0, a tenth), so that its comparison with this bundle is fair")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="measure a recipe: batch split and TREC online protocols")
    corpus_args(p)
    p.add_argument("--protocol", default="both", choices=["batch", "online", "both"])
    p.add_argument("--recipe", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="online: only the first N messages")
    p.add_argument("--boot", type=int, default=200, help="bootstrap resamples for the 1-ROCA%% CI")
    p.add_argument("--out", default="bench-out", help="directory for JSON, TSV and PNG outputs")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("threshold", help="FPR/FNR for thresholds 0.5..0.99 on a labelled corpus")
    corpus_args(p)
    model_args(p)
    p.add_argument("--target-fpr", type=float, default=0.001, help="report the threshold meeting this FPR")
    p.set_defaults(func=_threshold)

    # issue #7's admin commands live beside their code; each registers argparse only
    from smtpgate.quarantine_cli import register as register_quarantine
    from smtpgate.queue_cli import register as register_queue
    from training.retrain_cli import register as register_retrain

    register_queue(sub)
    register_quarantine(sub)
    register_retrain(sub)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if getattr(a, "recipe", "unset") is None:
        from training.recipe import DEFAULT_RECIPE

        a.recipe = DEFAULT_RECIPE
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
