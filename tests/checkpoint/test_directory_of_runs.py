"""`scratchlm checkpoint verify|inspect` on a directory of runs (runs/default holds
pretrain/ and sft/): a one-line error that names the runs inside and how to check each."""

from __future__ import annotations

import pytest

from scratchlm.checkpoint import CheckpointManager
from scratchlm.cli import main


@pytest.fixture
def pipeline_dir(tmp_path, trained, char_tokenizer):
    """``default/`` with the runs ``pretrain`` and ``sft``, one checkpoint each, beside
    the folders a pipeline also keeps (a tokenizer, token files)."""
    model, opt = trained(steps=1)
    for stage in ("sft", "pretrain"):
        manager = CheckpointManager(tmp_path / "default" / stage)
        manager.save(model, opt, 1, tokenizer=char_tokenizer, train_state={"step": 1})
    (tmp_path / "default" / "tokenizer").mkdir()
    (tmp_path / "default" / "data").mkdir()
    return tmp_path / "default"


@pytest.mark.parametrize("action", ["verify", "inspect"])
def test_a_directory_of_runs_names_its_runs(pipeline_dir, capsys, action):
    assert main(["checkpoint", action, str(pipeline_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scratchlm: error: "), err
    assert "not a checkpoint but a directory of runs (pretrain, sft)" in err
    for stage in ("pretrain", "sft"):
        assert f"scratchlm checkpoint {action} {pipeline_dir / stage}" in err
    assert "tokenizer" not in err and "manifest" not in err


def test_each_named_run_verifies(pipeline_dir, capsys):
    for stage in ("pretrain", "sft"):
        assert main(["checkpoint", "verify", str(pipeline_dir / stage)]) == 0
        assert capsys.readouterr().out.startswith("ok: step_00000001")
