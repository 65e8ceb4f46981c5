"""CheckpointManager: keep-last-N, best, the latest pointer, fallback and crash safety."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import scratchlm.checkpoint.io as checkpoint_io
from scratchlm.checkpoint import (
    CheckpointManager,
    load_model,
    read_config,
    resolve_checkpoint,
)
from scratchlm.errors import CheckpointError, WriteError


@pytest.fixture
def model(make_model):
    return make_model()


def _names(paths):
    return [p.name for p in paths]


def _flip_byte(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def test_keep_last_and_best(tmp_path, model):
    manager = CheckpointManager(tmp_path, keep_last=2)
    losses = {1: 3.0, 2: 1.5, 3: 2.0, 4: 2.5, 5: 1.9}
    for step, loss in losses.items():
        path = manager.save(model, None, step, val_loss=loss)
        assert path == tmp_path / "checkpoints" / f"step_{step:08d}"
        assert (tmp_path / "checkpoints" / "latest").read_text().strip() == path.name
    # The newest two, plus step 2, the best, which survives although it is older.
    assert _names(manager.list()) == ["step_00000002", "step_00000004", "step_00000005"]
    assert manager.best() == tmp_path / "checkpoints" / "step_00000002"
    assert manager.best_val_loss() == 1.5
    assert json.loads((tmp_path / "checkpoints" / "best").read_text()) == {
        "name": "step_00000002",
        "val_loss": 1.5,
    }

    manager.save(model, None, 6, val_loss=1.0)  # a new best: the old one may go
    assert _names(manager.list()) == ["step_00000005", "step_00000006"]
    assert manager.best().name == "step_00000006"
    manager.save(model, None, 7)  # no loss: the best stays
    assert manager.best().name == "step_00000006"
    assert _names(manager.list()) == ["step_00000006", "step_00000007"]


def test_saving_the_same_step_replaces_it(tmp_path, make_model):
    manager = CheckpointManager(tmp_path)
    manager.save(make_model(seed=0), None, 10, train_state={"version": 1})
    second = make_model(seed=1)
    path = manager.save(second, None, 10, train_state={"version": 2})
    assert _names(manager.list()) == ["step_00000010"]
    rebuilt, _ = load_model(path)
    assert torch.equal(rebuilt.embed_tokens.weight, second.embed_tokens.weight)
    assert json.loads((path / "trainer_state/state.json").read_text()) == {"version": 2}


def test_latest_valid_follows_pointer_then_falls_back(tmp_path, model, caplog):
    manager = CheckpointManager(tmp_path, keep_last=5)
    assert manager.latest_valid() is None
    for step in (1, 2, 3):
        manager.save(model, None, step)
    assert manager.latest_valid().name == "step_00000003"

    _flip_byte(manager.path_for(3) / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="scratchlm"):
        assert manager.latest_valid().name == "step_00000002"
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "step_00000003" in warning and "model.safetensors" in warning

    (manager.path_for(2) / "config.json").unlink()
    assert manager.latest_valid().name == "step_00000001"
    (manager.path_for(1) / "manifest.json").unlink()
    assert manager.latest_valid() is None


def test_pointer_comes_before_higher_steps(tmp_path, model):
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step in (1, 2, 3):
        manager.save(model, None, step)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000002\n")
    assert manager.latest_valid().name == "step_00000002"
    (tmp_path / "checkpoints" / "latest").write_text("../../elsewhere\n")  # damaged pointer
    assert manager.latest_valid().name == "step_00000003"
    (tmp_path / "checkpoints" / "latest").unlink()
    assert manager.latest_valid().name == "step_00000003"


def test_leftover_temporary_directory_is_ignored_then_removed(tmp_path, model):
    manager = CheckpointManager(tmp_path)
    manager.save(model, None, 1)
    # What a crash inside write_dir_atomically leaves: a half-built hidden folder.
    leftover = tmp_path / "checkpoints" / ".step_00000002.k3j4h5.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    assert _names(manager.list()) == ["step_00000001"]
    assert manager.latest_valid().name == "step_00000001"
    assert resolve_checkpoint(tmp_path).name == "step_00000001"
    manager.save(model, None, 2)
    assert not leftover.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step_00000001",
        "step_00000002",
    ]


def test_error_while_writing_leaves_old_state(tmp_path, trained, monkeypatch):
    model, opt = trained(steps=1)
    manager = CheckpointManager(tmp_path)
    manager.save(model, opt, 1)
    real_write_json = checkpoint_io.write_json

    def fail_on_optimizer(path, data):
        if path.name == "optimizer.json":  # after the weights and config were written
            raise OSError(28, "No space left on device")
        real_write_json(path, data)

    monkeypatch.setattr(checkpoint_io, "write_json", fail_on_optimizer)
    with pytest.raises(WriteError, match=r"no space left on device: .* step_00000002"):
        manager.save(model, opt, 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step_00000001",
    ]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    assert manager.latest_valid().name == "step_00000001"


def test_killed_process_leaves_previous_checkpoint(tmp_path):
    """A hard exit (as kill -9: no cleanup runs) in the middle of writing step 2."""
    script = textwrap.dedent(
        f"""
        import os, torch
        import scratchlm.checkpoint.io as cio
        from scratchlm.checkpoint import CheckpointManager

        model = torch.nn.Linear(3, 2)
        manager = CheckpointManager({str(tmp_path)!r})
        manager.save(model, None, 1)

        def die(folder):
            os._exit(9)

        cio.write_manifest = die  # every other file of step 2 is written by now
        manager.save(model, None, 2)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert result.returncode == 9
    folder = tmp_path / "checkpoints"
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".step_00000002.")]
    assert len(leftovers) == 1  # the half-written step 2, under its hidden name
    manager = CheckpointManager(tmp_path)
    assert _names(manager.list()) == ["step_00000001"]
    assert (folder / "latest").read_text().strip() == "step_00000001"
    assert manager.latest_valid().name == "step_00000001"


def test_resolve_checkpoint(tmp_path, model):
    manager = CheckpointManager(tmp_path / "run")
    manager.save(model, None, 4)
    manager.save(model, None, 8)
    expected = tmp_path / "run" / "checkpoints" / "step_00000008"
    assert resolve_checkpoint(tmp_path / "run") == expected
    assert resolve_checkpoint(tmp_path / "run" / "checkpoints") == expected
    assert resolve_checkpoint(expected) == expected
    assert read_config(resolve_checkpoint(tmp_path / "run"))["step"] == 8
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        resolve_checkpoint(tmp_path / "elsewhere")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="has no valid checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


def test_load_model_from_run_directory(tmp_path, make_model, char_tokenizer):
    manager = CheckpointManager(tmp_path)
    manager.save(make_model(seed=0), None, 1, tokenizer=char_tokenizer)
    newest = make_model(seed=1)
    manager.save(newest, None, 2, tokenizer=char_tokenizer)
    _flip_byte(manager.path_for(2) / "model.safetensors")
    rebuilt, tok = load_model(tmp_path)  # falls back to step 1
    assert torch.equal(rebuilt.embed_tokens.weight, make_model(seed=0).embed_tokens.weight)
    assert tok.vocab == char_tokenizer.vocab


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(CheckpointError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)
