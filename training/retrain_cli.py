"""``mailsift retrain`` and ``mailsift tune``: the retraining job and threshold tuning on
real traffic, registered by ``classifier.cli``.

    mailsift retrain --corpus DIR [--dry-run]   build, evaluate and maybe promote a bundle
    mailsift retrain list                        the kept versions, the current one marked
    mailsift retrain rollback [VERSION]          back to VERSION (default: the one that served before)
    mailsift retrain init [--corpus DIR]         seed the models directory (first use)
    mailsift tune [--json]                       what other thresholds would have changed

Paths default from the gate's config (``--config``, like ``mailsift gate serve``): the
models directory is <state_dir>/models, the learn log the one the gate's scorer keeps
(<state_dir>/scorer/learnlog.sqlite), the decision log <state_dir>/decisions.jsonl, the
threshold ``[filtering] threshold`` and the scorers to reload ``[scorer] addresses``.
"""
from __future__ import annotations

import json
import pathlib
import sys


def register(sub) -> None:
    """Add this module's subcommands to the ``mailsift`` parser (argparse only; heavy
    imports belong in the handlers, so ``mailsift score`` stays fast)."""
    p = sub.add_parser("retrain", help="fold feedback into a new model bundle; promote it only if not worse")
    rsub = p.add_subparsers(dest="retrain_command", metavar="{list,rollback,init}")
    _common(p)
    p.add_argument("--corpus", help="the base corpus (spam/ and ham/ dirs, a TREC index, mbox or Maildir)")
    p.add_argument("--format", default="auto", choices=["auto", "index", "dirs", "mbox", "maildir"])
    p.add_argument("--learnlog", help="the scorer's learn log (default: <state_dir>/scorer/learnlog.sqlite)")
    p.add_argument("--recipe", default=None, help="model recipe TOML (default: training/default_model.toml)")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="newest fraction of new feedback held out to test the candidate (default 0.2)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="relative 1-ROCA%% worsening still accepted (default 0: none)")
    p.add_argument("--threshold", type=float, help="quarantine threshold (default: the gate's [filtering])")
    p.add_argument("--keep", type=int, default=5, help="versions kept for rollback (default 5)")
    p.add_argument("--dry-run", action="store_true", help="evaluate and report, promote nothing")
    p.add_argument("--version", help="the candidate's version (default: DATE-TIME-retrain)")
    p.add_argument("--report", help="report directory (default: <models>/reports/<version>)")
    p.add_argument("--jobs", type=int, default=0, help="processes for features and fits (0: one per core)")
    p.set_defaults(func=_retrain)

    s = rsub.add_parser("list", help="the versions kept, oldest first; * marks the current one")
    _common(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_list)
    s = rsub.add_parser("rollback", help="make an older version current again and reload the scorers")
    _common(s)
    s.add_argument("target", nargs="?", metavar="VERSION", help="default: the version that served before the current one")
    s.set_defaults(func=_rollback)
    s = rsub.add_parser("init", help="seed the models directory with the bundle the scorer runs now,"
                                     " or with one trained on --corpus without the validation slice")
    _common(s)
    s.add_argument("--corpus", help="train the first version on this corpus, without the validation slice"
                                    " (a fair base for the comparisons; the shipped model saw the whole corpus)")
    s.add_argument("--format", default="auto", choices=["auto", "index", "dirs", "mbox", "maildir"])
    s.add_argument("--recipe", default=None, help="model recipe TOML (default: training/default_model.toml)")
    s.add_argument("--jobs", type=int, default=0, help="processes for features and fits (0: one per core)")
    s.set_defaults(func=_init)

    t = sub.add_parser("tune", help="what moving the threshold would have changed, from the decision log"
                                    " and the feedback")
    t.add_argument("--config", default=None, help="gate TOML (default: the shipped smtpgate/default.toml)")
    t.add_argument("--decisions", action="append",
                   help="decision log(s), JSON lines (default: <state_dir>/decisions.jsonl); repeatable")
    t.add_argument("--learnlog", help="the scorer's learn log (default: <state_dir>/scorer/learnlog.sqlite)")
    t.add_argument("--thresholds", type=float, nargs="+", help="default: 0.80 0.85 0.90 0.91 ... 0.99")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_tune)


def _common(p) -> None:
    p.add_argument("--config", default=None, help="gate TOML (default: the shipped smtpgate/default.toml)")
    p.add_argument("--models", help="models directory (default: <state_dir>/models)")
    p.add_argument("--scorer", help="scorer address(es) to reload, comma-separated (default: [scorer] addresses)")
    p.add_argument("--no-reload", action="store_true", help="do not call the scorers' Reload")


def _paths(a):
    """(gate config, models dir) or (None, None) after printing why."""
    from classifier.cli import _gate_config

    cfg = _gate_config(a)
    if cfg is None:
        return None, None
    return cfg, pathlib.Path(a.models) if a.models else cfg.state_dir / "models"


def _scorers(a, cfg) -> list[str]:
    if a.no_reload:
        return []
    if a.scorer:
        return [x.strip() for x in a.scorer.split(",") if x.strip()]
    return list(cfg.scorer_addresses)


def _learnlog(a, cfg) -> pathlib.Path:
    # where the gate's spawned scorer keeps it (smtpgate/serve.py: --state <state_dir>/scorer)
    return pathlib.Path(a.learnlog) if a.learnlog else cfg.state_dir / "scorer" / "learnlog.sqlite"


def _seed_source(cfg, models: pathlib.Path) -> pathlib.Path:
    """The bundle the scorer runs now: [scorer] model, unless that is this directory's
    ``current`` (not there yet), else the shipped one."""
    from classifier.bundle import DEFAULT_BUNDLE

    if cfg.scorer_model:
        m = pathlib.Path(cfg.scorer_model)
        if m.absolute() != (models / "current").absolute():
            return m
    return DEFAULT_BUNDLE


def _fail(msg: str) -> int:
    print(f"mailsift: {msg}", file=sys.stderr)
    return 2


def _retrain(a) -> int:
    from classifier.bundle import BundleError
    from training.corpus import CorpusError

    from .retrain import Retrain, RetrainError, distrusted_reporters

    if not a.corpus:
        return _fail("retrain needs --corpus (the base corpus the candidate is trained on)")
    cfg, models = _paths(a)
    if cfg is None:
        return 2
    distrusted = distrusted_reporters(cfg.state_dir / "feedback.db", cfg.feedback)
    job = Retrain(corpus=a.corpus, models=models, learnlog=_learnlog(a, cfg), fmt=a.format, recipe=a.recipe,
                  holdout=a.holdout, tolerance=a.tolerance,
                  threshold=a.threshold if a.threshold is not None else cfg.filtering.threshold,
                  keep=a.keep, dry_run=a.dry_run, scorers=_scorers(a, cfg), version=a.version,
                  report_dir=pathlib.Path(a.report) if a.report else None,
                  seed_from=_seed_source(cfg, models), distrusted=distrusted, jobs=a.jobs, progress=True,
                  argv=sys.argv[1:])
    try:
        result = job.run()
    except (RetrainError, BundleError, CorpusError, ValueError) as exc:
        return _fail(f"retrain: {exc}")
    print(result.summary, end="")
    print(f"report: {result.report_dir}")
    reloads = result.report.get("promotion", {}).get("reload", [])
    return 1 if any("error" in r for r in reloads) else 0


def _list(a) -> int:
    from .retrain import ModelStore, RetrainError

    cfg, models = _paths(a)
    if cfg is None:
        return 2
    try:
        versions = ModelStore(models).versions()
    except RetrainError as exc:
        return _fail(str(exc))
    if a.json:
        print(json.dumps([{**v.__dict__, "path": str(v.path)} for v in versions], indent=1))
        return 0
    if not versions:
        print(f"no versions in {models} (mailsift retrain init seeds it)")
        return 0
    from .metrics import format_table

    rows = [{" ": "*" if v.current else "", "version": v.version, "added": v.added or "-", "how": v.action or "-",
             "trained": v.trained or "-", "messages": v.n, "learnlog_upto": v.learnlog_upto} for v in versions]
    print(format_table(rows, [" ", "version", "added", "how", "trained", "messages", "learnlog_upto"]))
    return 0


def _rollback(a) -> int:
    from .retrain import RetrainError, rollback

    cfg, models = _paths(a)
    if cfg is None:
        return 2
    try:
        r = rollback(models, a.target, _scorers(a, cfg))
    except RetrainError as exc:
        return _fail(f"rollback: {exc}")
    print(f"current: {r['version']} (was {r['previous']})")
    status = 0
    for x in r["reload"]:
        if "error" in x:
            status = 1
            print(f"reload {x['address']}: FAILED: {x['error']}")
        else:
            print(f"reload {x['address']}: serving {x['model_version']}")
    return status


def _init(a) -> int:
    from classifier.bundle import BundleError
    from training.corpus import CorpusError

    from .retrain import ModelStore, RetrainError

    cfg, models = _paths(a)
    if cfg is None:
        return 2
    store = ModelStore(models)
    try:
        with store.lock():
            cur = store.current_version()
            if cur is not None:
                print(f"{models}: already seeded, current is {cur}")
                return 0
            if a.corpus:
                source = f"trained on {a.corpus} without the validation slice"
                name = store.seed_trained(a.corpus, a.recipe, a.format, a.jobs, argv=sys.argv[1:])
            else:
                source = f"a copy of {_seed_source(cfg, models)}"
                name = store.seed(_seed_source(cfg, models))
    except (RetrainError, BundleError, CorpusError) as exc:
        return _fail(f"init: {exc}")
    print(f"{models}/current -> versions/{name} ({source})")
    print(f'serve it with: [scorer] model = "{models / "current"}" (or mailsift scorer serve --model ...)')
    return 0


def _tune(a) -> int:
    from classifier.cli import _gate_config

    from .tuning import THRESHOLDS, format_tuning, tune_files

    cfg = _gate_config(a)
    if cfg is None:
        return 2
    decisions = [pathlib.Path(p) for p in a.decisions] if a.decisions else [cfg.decision_log_path]
    missing = [str(p) for p in decisions if not p.exists()]
    if missing:
        return _fail(f"tune: no decision log at {', '.join(missing)}")
    result = tune_files(decisions, _learnlog(a, cfg), a.thresholds or THRESHOLDS)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_tuning(result))
    return 0
