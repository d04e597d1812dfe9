"""training/notebooks/evaluation.ipynb runs: executed in a real kernel by nbclient, with
parameters injected after its ``parameters`` cell, on a generated corpus and feedback
(a learn log, then a feedback store), it writes and shows its three figures and the
measures."""
from __future__ import annotations

import json
import pathlib
import random

import nbformat
import pytest
from nbclient import NotebookClient

import mailgen
from classifier.features import message_digest
from classifier.learnlog import LearnLog

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "training" / "notebooks" / "evaluation.ipynb"


def run(params: dict, cwd: pathlib.Path) -> nbformat.NotebookNode:
    """The notebook executed with ``params`` set in a cell after its parameters cell."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def text_of(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def images_of(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_notebook_on_a_corpus_and_the_learn_log(fitted_bundle, tmp_path):
    corpus = mailgen.write_corpus(tmp_path / "corpus", 20, 30, seed=4)
    rng = random.Random(6)
    log = LearnLog(str(tmp_path / "learnlog.sqlite"))
    for i in range(10):
        kind = "spam" if i % 2 else "ham"
        raw = mailgen.make_message(kind, rng, i)
        log.record(message_digest(raw), kind, "report" if kind == "spam" else "release", "alice",
                   ["cluster_tokens"], raw)
    log.close()
    out = tmp_path / "figures"

    nb = run({"CORPUS": str(corpus), "FEEDBACK": str(tmp_path / "learnlog.sqlite"), "MODEL": str(fitted_bundle),
              "THRESHOLD": 0.9, "OUT": str(out)}, tmp_path)

    text = text_of(nb)
    assert "corpus: 50 messages, 20 spam, 30 ham" in text and "feedback: 10 messages, 5 spam, 5 ham" in text
    assert "bundle test-1" in text and "threshold 0.9" in text
    assert images_of(nb) == 3
    for name in ("roc.png", "histogram.png", "tradeoff.png"):
        assert (out / name).stat().st_size > 1000, name
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "test-1" and m["threshold"] == 0.9
    assert set(m["metrics"]) == {"all", "corpus", "feedback"}
    assert m["metrics"]["all"]["n"] == 60 and m["metrics"]["corpus"]["n_spam"] == 20
    assert 0.0 <= m["metrics"]["all"]["roca_pct"] < 50.0   # both classes: the measures are there


def test_notebook_on_the_feedback_store(fitted_bundle, tmp_path):
    from smtpgate.config import FeedbackConfig
    from training.feedback import Feedback

    rng = random.Random(8)
    # learn = false: every item is kept as labelled data without a scorer to teach
    with Feedback(tmp_path / "feedback.db", FeedbackConfig(learn=False), None) as fb:
        for i in range(8):
            kind = "spam" if i % 2 else "ham"
            r = fb.submit(message=mailgen.make_message(kind, rng, i), label=kind,
                          source="report" if kind == "spam" else "release", who="alice")
            assert r.status == "recorded"

    nb = run({"FEEDBACK": str(tmp_path / "feedback.db"), "MODEL": str(fitted_bundle), "OUT": str(tmp_path / "o")},
             tmp_path)

    assert "feedback: 8 messages, 4 spam, 4 ham" in text_of(nb)
    assert images_of(nb) == 3
    assert set(json.loads((tmp_path / "o" / "metrics.json").read_text())["metrics"]) == {"all"}


def test_notebook_without_data_says_so(tmp_path):
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="nothing to evaluate"):
        run({"OUT": str(tmp_path / "o")}, tmp_path)
