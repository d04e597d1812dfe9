"""mailsift retrain: a candidate bundle from the corpus plus the learn log, refused when
feedback poisons it, promoted when feedback teaches it a campaign the current bundle
misses; the models directory (atomic ``current``, kept versions, rollback); and a real
scorer serving <models>/current that reloads the promoted bundle.

Everything runs on a small generated corpus (tests/mailgen.py) with a 3-fold recipe, so
one retrain takes about a second. The current bundle of every test was trained on that
corpus without the validation slice, as the retrain job's own bundles are, so the
comparison is the fair one.
"""
from __future__ import annotations

import json
import random
import shutil
from email.message import EmailMessage
from types import SimpleNamespace

import pytest

import mailgen
from classifier.bundle import BundleError, load_bundle, save_bundle
from classifier.cli import main
from classifier.features import extract, message_digest
from classifier.learnlog import LearnLog
from classifier.scorer import Scorer
from training.corpus import read_corpus
from training.recipe import DEFAULT_RECIPE
from training.retrain import (DEFAULT_SLICE, ModelStore, Retrain, RetrainError, decide, distrusted_reporters,
                              read_learnlog, rollback, split_feedback)

BASE = "base-1"
CAMPAIGN = ("crypto airdrop wallet token claim presale blockchain ethereum staking yield ledger"
            " seed phrase verify").split()


def campaign_message(rng: random.Random, i: int) -> bytes:
    """A spam campaign dressed as the corpus' ham (a list member's mail from a known
    mailer), selling words the corpus never saw: the base bundle lets it through."""
    m = EmailMessage()
    m["From"] = f'"Dev {rng.randint(1, 40)}" <dev{rng.randint(1, 40)}@example.org>'
    m["To"] = "user@example.com"
    m["Subject"] = " ".join(rng.choice(CAMPAIGN) for _ in range(3)).title()
    m["List-Id"] = "<dev.lists.example.org>"
    m["X-Mailer"] = "Thunderbird 115"
    words = [rng.choice(CAMPAIGN if rng.random() < 0.5 else mailgen.COMMON) for _ in range(60)]
    m.set_content(" ".join(words) + f"\n\nhttp://claim-{i % 5}.example.net/airdrop\n")
    return bytes(m)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The corpus, a 3-fold recipe, and a models directory seeded with a bundle trained
    on the corpus without the validation slice (``mailsift train --validation-slice``)."""
    # The MIME boundaries of multipart spam come from the global random: seed it, so
    # the corpus, its digests and its validation slice are the same in every run
    random.seed(11)
    root = tmp_path_factory.mktemp("retrain")
    corpus = mailgen.write_corpus(root / "corpus", 60, 90, seed=1)
    recipe_path = root / "recipe.toml"
    recipe_path.write_text(DEFAULT_RECIPE.read_text().replace("cv = 5", "cv = 3"))
    assert main(["train", "--corpus", str(corpus), "--out", str(root / "base"), "--recipe", str(recipe_path),
                 "--version", BASE, "--jobs", "1", "--validation-slice"]) == 0
    trained = load_bundle(root / "base").training
    assert trained["validation_slice"] == DEFAULT_SLICE.describe()
    n_slice = sum(message_digest(m.read()) in DEFAULT_SLICE for m in read_corpus(corpus).messages)
    assert trained["n"] == 150 - n_slice and 0 < n_slice < 30
    assert f"Not trained on: the {n_slice} messages of the validation slice" in (root / "base" / "MODEL_CARD.md").read_text()
    store = ModelStore(root / "models")
    with store.lock():
        store.seed(root / "base")
    return SimpleNamespace(root=root, corpus=corpus, recipe=recipe_path, models=root / "models",
                           bundle=root / "base")


@pytest.fixture
def env(base, tmp_path):
    """A fresh copy of the seeded models directory and an empty learn log."""
    models = tmp_path / "models"
    shutil.copytree(base.models, models, symlinks=True)
    return SimpleNamespace(base=base, models=models, store=ModelStore(models), learnlog=tmp_path / "learnlog.sqlite")


def record(path, items, who: str = "alice") -> list:
    """Learn (message, label, source) items from ``who`` into the learn log at ``path``."""
    log = LearnLog(str(path))
    try:
        return [log.record(message_digest(raw), label, source, who, ["cluster_tokens"], raw)
                for raw, label, source in items]
    finally:
        log.close()


def job(env, **kw) -> Retrain:
    return Retrain(corpus=str(env.base.corpus), models=env.models, learnlog=env.learnlog, recipe=env.base.recipe,
                   threshold=0.9, jobs=1, **kw)


def good_feedback(seed: int = 7) -> list:
    """Reports of a new campaign and releases of ordinary ham, interleaved."""
    rng = random.Random(seed)
    items = [(campaign_message(rng, i), "spam", "report") for i in range(40)]
    items += [(mailgen.make_message("ham", rng, rng.randint(0, 150)), "ham", "release") for _ in range(20)]
    rng.shuffle(items)
    return items


# ---------------------------------------------------------------- the two outcomes

def test_poisoned_feedback_is_refused_and_current_stays(env):
    # spam from the corpus' own campaigns, released as ham: on the held-out part (same
    # wrong labels) the candidate looks better; the validation slice shows the harm
    rng = random.Random(3)
    record(env.learnlog, [(mailgen.make_message("spam", rng, rng.randint(0, 150)), "ham", "release")
                          for _ in range(60)])
    before = sorted(p.name for p in (env.models / "versions").iterdir())

    result = job(env).run()

    assert not result.promoted
    assert env.store.current_version() == BASE
    assert sorted(p.name for p in (env.models / "versions").iterdir()) == before   # no candidate left behind
    report = json.loads((result.report_dir / "report.json").read_text())
    dec = report["decision"]
    assert dec == {"promote": False, "promoted": False, "reasons": dec["reasons"]}
    assert dec["reasons"][0].startswith("refused: the candidate lets more spam through")
    assert any(r.startswith("validation: FNR%") and " > current " in r for r in dec["reasons"])
    val = report["evaluation"]["validation"]
    assert val["candidate"]["fn"] > val["current"]["fn"]
    # the poison does look like an improvement where its own labels judge it
    held = report["evaluation"]["held_out_feedback"]
    assert held["n"] == 12 and held["n_ham"] == 12
    assert held["candidate"]["fp"] < held["current"]["fp"]
    assert report["current"]["validation_fair"] is True
    assert report["data"]["feedback"]["labelled"]["ham"] == 60
    summary = (result.report_dir / "summary.txt").read_text()
    assert "REFUSED, current unchanged" in summary and "validation" in summary
    assert (result.report_dir / "roc.png").stat().st_size > 1000
    assert not (env.models / "history.jsonl").read_text().count('"promote"')


def test_campaign_feedback_is_promoted_previous_kept_and_rollback_works(env):
    entries = record(env.learnlog, good_feedback())
    rng = random.Random(99)
    fresh = [campaign_message(rng, i) for i in range(10)]   # the campaign's next messages
    assert all(Scorer(load_bundle(env.models / "current")).score(m).verdict == "accept" for m in fresh)

    result = job(env).run()

    assert result.promoted, result.summary
    new = result.version
    assert env.store.current_version() == new
    assert (env.models / "current").is_symlink()
    assert (env.models / "versions" / BASE / "manifest.json").exists()    # the previous one is kept
    served = Scorer(load_bundle(env.models / "current"))
    assert served.version == new
    assert all(served.score(m).verdict == "quarantine" for m in fresh)

    t = served.bundle.training
    held = result.report["data"]["feedback"]["held_out"]["n"]
    assert held == 12
    folded_ids = sorted(e.id for e in entries)[:-held]
    # entries were recorded in id order, so the newest 12 are held out and replayed online
    assert t["learnlog_upto"] == folded_ids[-1]
    assert t["validation_slice"] == DEFAULT_SLICE.describe() and t["retrained_from"] == BASE
    cluster = dict(served.bundle.model.feedback_estimators_)["cluster_tokens"]
    assert sum(cluster.n_learned()) == len(folded_ids)   # the folded feedback is in cluster_tokens
    card = (env.models / "current" / "MODEL_CARD.md").read_text()
    assert "## Retraining" in card and f"learn log up to id {folded_ids[-1]}" in card
    ev = result.report["evaluation"]["held_out_feedback"]
    assert ev["candidate"]["fn"] < ev["current"]["fn"]
    assert "PROMOTED, now current" in (result.report_dir / "summary.txt").read_text()

    back = rollback(env.models)
    assert back["version"] == BASE and back["previous"] == new and back["reload"] == []
    assert env.store.current_version() == BASE
    assert rollback(env.models, new)["version"] == new
    with pytest.raises(RetrainError, match="already current"):
        rollback(env.models, new)
    for bad in ("nope", "../versions/" + BASE):
        with pytest.raises(RetrainError, match="nope|no version"):
            rollback(env.models, bad)
    actions = [json.loads(x)["action"] for x in (env.models / "history.jsonl").read_text().splitlines()]
    assert actions == ["seed", "promote", "rollback", "rollback"]
    assert [(v.version, v.current) for v in env.store.versions()] == [(BASE, False), (new, True)]


def cluster_counts(scorer) -> tuple[int, int]:
    return dict(scorer.bundle.model.feedback_estimators_)["cluster_tokens"].n_learned()


def test_a_change_of_mind_after_the_promotion_undoes_the_folded_label(env):
    """A message reported, folded into the promoted bundle, then released: a scorer that
    loads the bundle unlearns the folded spam before it learns the ham. A message whose
    ham came too late to be folded (held out) had its spam never folded: nothing undone."""
    from classifier.server import ScorerService, WorkerConfig

    items = good_feedback()
    early = next(raw for raw, label, _ in items if label == "spam")
    late = mailgen.make_message("ham", random.Random(5), 3)   # ham reported by mistake, first of all,
    record(env.learnlog, [(late, "spam", "report")])          # and released last: the release is held
    entries = record(env.learnlog, items)                     # out, the report replaced before the retrain
    record(env.learnlog, [(late, "ham", "release")])
    result = job(env).run()
    assert result.promoted, result.summary
    bundle = load_bundle(env.models / "current")
    t = bundle.training
    assert message_digest(early) in t["folded_receipts"] and message_digest(late) not in t["folded_receipts"]
    assert len(t["folded_receipts"]) == t["feedback"]["folded"]
    folded_spam = t["feedback"]["folded_spam"]
    folded_ham = t["feedback"]["folded"] - folded_spam
    assert cluster_counts(Scorer(bundle)) == (folded_spam, folded_ham)
    assert next(e.id for e in entries if e.digest == message_digest(early)) <= t["learnlog_upto"]

    held = result.report["data"]["feedback"]["held_out"]
    svc = ScorerService(WorkerConfig(model=str(env.models / "current"), learnlog=str(env.learnlog),
                                     poll_seconds=60.0))
    try:
        # the held-out feedback replayed; the late message once, as ham: its spam, replaced
        # before the retrain, was never folded, and its release undoes nothing
        assert cluster_counts(svc._scorer) == (folded_spam + held["spam"], folded_ham + held["ham"])
        before = token_counts(svc._scorer, early)

        relearn = record(env.learnlog, [(early, "ham", "release")])[0]
        assert relearn.outcome == "relearned" and relearn.id > t["learnlog_upto"]
        svc.catch_up()
        # the folded spam undone with the bundle's receipt, the ham learned: every token of
        # the message has one spam count fewer and one ham count more
        n = len(extract(early).unique_tokens())
        assert token_counts(svc._scorer, early) == (before[0] - n, before[1] + n)
        assert cluster_counts(svc._scorer) == (folded_spam - 1 + held["spam"], folded_ham + 1 + held["ham"])
        svc.reload()                      # a scorer (re)started now ends in the same state
        assert token_counts(svc._scorer, early) == (before[0] - n, before[1] + n)
        assert cluster_counts(svc._scorer) == (folded_spam - 1 + held["spam"], folded_ham + 1 + held["ham"])
    finally:
        svc.close()


def token_counts(scorer, raw) -> tuple[int, int]:
    """cluster_tokens' spam and ham counts summed over the message's tokens."""
    est = dict(scorer.bundle.model.feedback_estimators_)["cluster_tokens"]
    rows = [est.index_[t] for t in extract(raw).unique_tokens() if t in est.index_]
    return int(est.spam_counts_[rows].sum()), int(est.ham_counts_[rows].sum())


def test_dry_run_evaluates_and_promotes_nothing(env):
    record(env.learnlog, good_feedback())
    result = job(env, dry_run=True).run()
    assert result.report["decision"]["promote"] and not result.promoted
    assert env.store.current_version() == BASE
    assert [p.name for p in (env.models / "versions").iterdir()] == [BASE]
    assert "would be promoted (dry run)" in result.summary


def test_reporters_the_others_disagree_with_are_left_out(env, tmp_path):
    from smtpgate.config import FeedbackConfig
    from training.feedback import Feedback

    cfg = FeedbackConfig()
    rng = random.Random(3)
    poison = [(mailgen.make_message("spam", rng, rng.randint(0, 150)), "ham", "release") for _ in range(60)]
    # mallory's releases were learned; then an admin rejected five more of hers (held as
    # releases of mail scored 0.999): her weight falls to 1/7
    record(env.learnlog, poison, who="mallory")
    record(env.learnlog, good_feedback())
    with Feedback(tmp_path / "feedback.db", cfg, None) as fb:
        for i in range(5):
            r = fb.submit(message=mailgen.make_message("spam", rng, i), label="ham", source="release",
                          who="mallory", score=0.999)
            assert r.status == "review"
            fb.reject(r.id, "admin")
    distrusted = distrusted_reporters(tmp_path / "feedback.db", cfg)
    assert distrusted == {"mallory": pytest.approx(1 / 7)}

    result = job(env, distrusted=distrusted).run()

    assert result.promoted, result.summary
    fb = result.report["data"]["feedback"]
    assert fb["left_out_distrusted"] == {"n": 60, "spam": 0, "ham": 60, "by_source": {"release": 60},
                                         "reporters": distrusted}
    assert fb["labelled"]["n"] == 60 and fb["labelled"]["by_source"] == {"report": 40, "release": 20}
    assert "left out: 60 messages of reporters the others disagree with: mallory (weight 0.14)" in result.summary
    assert distrusted_reporters(tmp_path / "absent.db", cfg) == {}


def test_first_use_seeds_with_the_running_bundle(base, tmp_path):
    models = tmp_path / "models"
    result = Retrain(corpus=str(base.corpus), models=models, learnlog=tmp_path / "none.sqlite",
                     recipe=base.recipe, threshold=0.9, jobs=1, seed_from=base.bundle, dry_run=True).run()
    store = ModelStore(models)
    assert store.current_version() == BASE and result.report["current"]["version"] == BASE
    assert not (tmp_path / "none.sqlite").exists()   # a missing learn log is not created
    assert any("no learn log" in w for w in result.report["warnings"])
    assert json.loads((models / "history.jsonl").read_text())["action"] == "seed"


# ---------------------------------------------------------------- the pieces

def test_learnlog_current_labels_and_holdout_split(tmp_path):
    rng = random.Random(5)
    a, b, c, d = (mailgen.make_message("ham", rng, i) for i in range(4))
    path = tmp_path / "learnlog.sqlite"
    e = record(path, [(a, "spam", "report"), (b, "ham", "release"), (a, "spam", "report"),   # a no-op
                      (c, "ham", "release"), (b, "spam", "report"), (d, "spam", "trap")])     # b changes its mind
    items, last = read_learnlog(path)
    assert last == e[-1].id
    # one item per message, with its last label, ordered by the entry that set it
    assert [(i.digest, i.label, i.log_id) for i in items] == [
        (message_digest(a), "spam", e[0].id), (message_digest(c), "ham", e[3].id),
        (message_digest(b), "spam", e[4].id), (message_digest(d), "spam", e[5].id)]
    assert items[0].message == a and items[2].source == "report"

    folded, held = split_feedback(items, current_upto=0, holdout=0.5)
    assert [i.log_id for i in folded] == [e[0].id, e[3].id] and [i.log_id for i in held] == [e[4].id, e[5].id]
    # what the current bundle folded in already is never held out: only the rest is split
    folded, held = split_feedback(items, current_upto=e[4].id, holdout=0.5)
    assert [i.log_id for i in folded] == [e[0].id, e[3].id, e[4].id] and [i.log_id for i in held] == [e[5].id]
    assert split_feedback(items, 0, 0.0)[1] == []
    with pytest.raises(ValueError):
        split_feedback(items, 0, 1.0)


def test_validation_slice_is_a_fixed_hash_slice():
    assert "0000000a" + "0" * 56 in DEFAULT_SLICE          # 10 % 10 == 0
    assert "0000000b" + "0" * 56 not in DEFAULT_SLICE
    assert DEFAULT_SLICE.describe()["rule"] == "int(sha256[:8], 16) % 10 == 0"


def _set(n_ham, n_spam, cur, cand):
    """An evaluation set's measures: (fp, fn, roca_pct) of current and candidate."""
    def m(fp, fn, roca):
        return {"fp": fp, "fn": fn, "roca_pct": roca}
    return {"n": n_ham + n_spam, "n_ham": n_ham, "n_spam": n_spam, "current": m(*cur), "candidate": m(*cand)}


def test_decide_fpr_first_then_roca_then_fnr():
    # better ranking and fewer spam missed do not buy one more ham quarantined
    ok, why = decide({"validation": _set(100, 50, (0, 5, 0.5), (1, 0, 0.1))}, tolerance=0.5)
    assert not ok and why[0].startswith("refused: the candidate quarantines more ham")
    assert "validation: FPR% 1.0000 (1 of 100 ham) > current 0.0000" in why
    ok, why = decide({"validation": _set(100, 50, (1, 5, 0.5), (1, 0, 0.6))}, tolerance=0.0)
    assert not ok and why[0].startswith("refused: the candidate ranks spam and ham worse")
    ok, why = decide({"validation": _set(100, 50, (1, 5, 0.5), (1, 5, 0.6))}, tolerance=0.25)
    assert ok and "validation: 1-ROCA% 0.6000 <= current 0.5000 (limit 0.6250)" in why
    ok, why = decide({"validation": _set(100, 50, (0, 2, 0.5), (0, 3, 0.5))}, tolerance=0.0)
    assert not ok and why[0].startswith("refused: the candidate lets more spam through")
    # a set of one class compares what it can; an empty set is skipped
    ok, why = decide({"validation": _set(10, 10, (0, 0, 0.0), (0, 0, 0.0)),
                      "held_out_feedback": _set(0, 8, (0, 8, None), (0, 0, None)),
                      "empty": _set(0, 0, (0, 0, None), (0, 0, None))}, tolerance=0.0)
    assert ok and "held_out_feedback: no ham, FPR not compared" in why
    assert not any(w.startswith("empty") for w in why)
    ok, why = decide({"validation": _set(0, 0, (0, 0, None), (0, 0, None))}, tolerance=0.0)
    assert not ok and "nothing to evaluate on" in why[0]


def test_store_keeps_the_newest_versions_and_never_the_current_one(base, tmp_path):
    store = ModelStore(tmp_path / "models")
    src = load_bundle(base.bundle)

    def writer(version):
        def write(tmp):
            src.version = version
            save_bundle(src, tmp)
        return write

    with store.lock():
        store.seed(base.bundle)
        for v in ("v2", "v3", "v4"):
            store.add(writer(v), v)
            store.switch(v, "promote")
        store.switch(BASE, "rollback")             # the oldest is current again
        assert store.prune(keep=2) == ["v2"]       # the newest two kept, and the current one
        assert store.free_name("v3") == "v3-2"
        with pytest.raises(RetrainError, match="letters, digits"):
            store.free_name("../evil")
        with pytest.raises(RetrainError, match="another retrain"), store.lock():
            pass
    assert [v.version for v in store.versions()] == [BASE, "v3", "v4"]
    # v4 was rolled back from: a second rollback goes further back, to v3 (v2 is gone)
    assert store.previous_of("v4") == "v3" and store.previous_of(BASE) == "v3"
    assert load_bundle(tmp_path / "models" / "current").version == BASE

    # a bundle that fails its manifest never enters the directory
    def broken(tmp):
        writer("v5")(tmp)
        npz = next(tmp.glob("*.npz"))
        npz.write_bytes(npz.read_bytes() + b"x")
    with store.lock(), pytest.raises(BundleError, match="SHA-256"):
        store.add(broken, "v5")
    assert not (tmp_path / "models" / "versions" / "v5").exists()
    assert not [p for p in (tmp_path / "models" / "versions").iterdir() if p.name.startswith(".")]


def fake_versions(root, *names) -> ModelStore:
    """A models directory whose versions are empty directories: the rollback order and
    prune read only the history and the directory names."""
    store = ModelStore(root)
    for v in names:
        (store.versions_dir / v).mkdir(parents=True)
    return store


def test_rollback_target_and_prune_follow_the_switches_not_the_making(tmp_path):
    """v1 seeded, v2 and v3 promoted, v3 rolled back, v4 promoted: v4 rolls back to v2,
    which served before it, and pruning keeps v2, not the rolled-back v3."""
    store = fake_versions(tmp_path / "models", "v1", "v2", "v3")
    store.switch("v1", "seed")
    store.switch("v2", "promote")
    store.switch("v3", "promote")
    store.switch(store.previous_of("v3"), "rollback")
    assert store.current_version() == "v2"
    (store.versions_dir / "v4").mkdir()
    store.switch("v4", "promote")
    assert store.previous_of("v4") == "v2"
    assert store.prune(keep=2) == ["v1", "v3"]
    assert sorted(p.name for p in store.versions_dir.iterdir()) == ["v2", "v4"]
    # keep=1 still keeps the rollback target
    assert store.prune(keep=1) == [] and store.previous_of("v4") == "v2"


def test_a_second_rollback_goes_further_back_and_a_named_one_is_undone(base, tmp_path):
    store = ModelStore(tmp_path / "models")
    for v in ("v1", "v2", "v3"):   # rollback loads its target: real bundles (copies of the base)
        shutil.copytree(base.bundle, store.versions_dir / v)
    store.switch("v1", "seed")
    store.switch("v2", "promote")
    store.switch("v3", "promote")
    assert rollback(store.root)["version"] == "v2"
    assert rollback(store.root)["version"] == "v1"          # not back to the rolled-back v3
    with pytest.raises(RetrainError, match="nothing to roll back to"):
        rollback(store.root)
    # a rollback to a named version judged nothing: the default one undoes it
    assert rollback(store.root, "v3")["version"] == "v3"
    assert rollback(store.root)["version"] == "v1"
    assert [h["action"] for h in store.history()][-1] == "rollback" and store.history()[-2]["named"]
    # ranked by the last time each was current: v1 (now), v3, v2
    assert store.prune(keep=2) == ["v2"]


# ---------------------------------------------------------------- the command line

def gate_config(tmp_path, model) -> str:
    """A gate config whose scorer (down: nothing listens on port 1) runs ``model``."""
    path = tmp_path / "gate.toml"
    path.write_text('[gate]\nhostname = "mx.gate.test"\nstate_dir = "state"\n\n'
                    '[listeners.inbound]\nbind = "127.0.0.1:2525"\n\n'
                    f'[scorer]\naddresses = ["127.0.0.1:1"]\nmodel = "{model}"\n\n'
                    '[filtering]\nthreshold = 0.9\n\n'
                    '[domains."example.test"]\nroute = "127.0.0.1:2526"\n\n'
                    '[outgoing]\nrelay = "127.0.0.1:2526"\n')
    return str(path)


def test_cli_init_retrain_list_rollback_with_the_gate_config_defaults(base, tmp_path, capsys):
    # the gate's scorer runs the base bundle now ([scorer] model): init copies it in
    config = gate_config(tmp_path, model=base.bundle)
    state = tmp_path / "state"
    models = state / "models"
    assert main(["retrain", "init", "--config", config]) == 0
    assert f"versions/{BASE}" in capsys.readouterr().out
    assert ModelStore(models).current_version() == BASE
    # the learn log where the gate's spawned scorer keeps it
    (state / "scorer").mkdir()
    record(state / "scorer" / "learnlog.sqlite", good_feedback())

    assert main(["retrain", "--config", config, "--corpus", str(base.corpus), "--recipe", str(base.recipe),
                 "--jobs", "1", "--no-reload", "--version", "r2"]) == 0
    out = capsys.readouterr().out
    assert "mailsift retrain r2: PROMOTED" in out and "60 labelled messages" in out
    assert f"report: {models / 'reports' / 'r2'}" in out

    assert main(["retrain", "list", "--config", config]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].split()[0] == BASE and rows[3].split()[:2] == ["*", "r2"]
    assert main(["retrain", "list", "--config", config, "--json"]) == 0
    assert [(v["version"], v["current"]) for v in json.loads(capsys.readouterr().out)] == [(BASE, False), ("r2", True)]

    # the configured scorer is down: the rollback stands, the failed reload is reported
    assert main(["retrain", "rollback", "--config", config]) == 1
    out = capsys.readouterr().out
    assert f"current: {BASE} (was r2)" in out and "reload 127.0.0.1:1: FAILED" in out
    assert main(["retrain", "rollback", "--config", config, "--no-reload"]) == 2
    assert f"nothing to roll back to: no version kept served before {BASE}" in capsys.readouterr().err
    assert main(["retrain", "--config", config]) == 2
    assert "--corpus" in capsys.readouterr().err


def test_cli_init_can_train_a_fair_base(base, tmp_path, capsys):
    config = gate_config(tmp_path, model=base.bundle)
    models = tmp_path / "models"
    assert main(["retrain", "init", "--config", config, "--models", str(models), "--corpus", str(base.corpus),
                 "--recipe", str(base.recipe), "--jobs", "1"]) == 0
    assert "without the validation slice" in capsys.readouterr().out
    current = load_bundle(models / "current")
    assert current.version.endswith("-corpus-base") and current.training["validation_slice"] == DEFAULT_SLICE.describe()
    assert current.training["n"] == load_bundle(base.bundle).training["n"]
    assert main(["retrain", "init", "--config", config, "--models", str(models)]) == 0
    assert f"already seeded, current is {current.version}" in capsys.readouterr().out


# ---------------------------------------------------------------- hot reload

def test_promotion_reloads_a_scorer_serving_models_current(request, env, tmp_path):
    from classifier.client import RemoteScorer
    from test_scorer_service import running

    rng = random.Random(99)
    fresh = campaign_message(rng, 0)
    with running(request, tmp_path / "srv", env.models / "current", workers=1) as srv:
        with RemoteScorer(srv.addresses) as client:
            before = client.score(fresh)
            assert before.model_version == BASE and before.verdict == "accept"
            # the feedback reaches the scorer's own learn log (it learns it online meanwhile)
            record(srv.learnlog, good_feedback())
            env.learnlog = srv.learnlog

            result = job(env, scorers=srv.addresses).run()

            assert result.promoted, result.summary
            reload = result.report["promotion"]["reload"]
            assert reload == [{"address": srv.addresses[0], "model_version": result.version, "changed": True}]
            after = client.score(fresh)
            assert after.model_version == result.version and after.verdict == "quarantine"
        assert {e["model"] for e in srv.events("reloaded")} == {result.version}
    assert f"reload {srv.addresses[0]}: serving {result.version}" in result.summary
