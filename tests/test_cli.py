"""The mailsift command: score, train, evaluate, threshold, end to end on a generated corpus."""
import json
import random

import pytest

import mailgen
from classifier.cli import main


def test_score_human_and_json(fitted_bundle, tmp_path, capsys):
    rng = random.Random(3)
    spam = tmp_path / "spam.eml"
    spam.write_bytes(mailgen.make_message("spam", rng))
    assert main(["score", "--model", str(fitted_bundle), str(spam)]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"{spam}: score=") and "verdict=quarantine" in line
    assert main(["score", "--model", str(fitted_bundle), "--json", str(spam), str(spam)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0]["file"] == str(spam) and rows[0]["reply"].startswith("550")


def test_score_missing_file_and_bad_bundle(fitted_bundle, tmp_path, capsys):
    assert main(["score", "--model", str(fitted_bundle), str(tmp_path / "nope.eml")]) == 1
    assert "nope.eml" in capsys.readouterr().err
    assert main(["score", "--model", str(tmp_path), str(tmp_path / "nope.eml")]) == 2
    assert "manifest" in capsys.readouterr().err


@pytest.mark.slow
def test_train_evaluate_threshold(tmp_path, capsys):
    corpus = mailgen.write_corpus(tmp_path / "corpus", 40, 60)
    recipe = tmp_path / "recipe.toml"
    from training.recipe import DEFAULT_RECIPE

    recipe.write_text(DEFAULT_RECIPE.read_text().replace("cv = 5", "cv = 3"))
    out = tmp_path / "model"
    assert main(["train", "--corpus", str(corpus), "--out", str(out), "--recipe", str(recipe),
                 "--version", "t1", "--jobs", "1"]) == 0
    card = (out / "MODEL_CARD.md").read_text()
    assert "t1" in card and "100 (40 spam, 60 ham)" in card
    assert main(["evaluate", "--corpus", str(corpus), "--recipe", str(recipe), "--out", str(tmp_path / "ev"),
                 "--boot", "10", "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "batch protocol" in text and "online protocol" in text
    batch = json.loads((tmp_path / "ev" / "evaluate-batch.json").read_text())
    assert batch["n_train"] == 70 and batch["n_test"] == 30
    assert batch["metrics"]["combined_score"]["roca_pct"] < 5
    assert (tmp_path / "ev" / "evaluate-online.roc.png").stat().st_size > 1000
    assert main(["threshold", "--corpus", str(corpus), "--model", str(out), "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "0.90" in text and "0.91" in text and "lowest threshold with FPR <= 0.1%" in text
