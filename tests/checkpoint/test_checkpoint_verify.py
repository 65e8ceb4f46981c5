"""verify_checkpoint finds a missing, truncated or corrupted file and names it."""

from __future__ import annotations

import json
import re

import pytest

from scratchlm.checkpoint import load_checkpoint, read_manifest, save_checkpoint, verify_checkpoint
from scratchlm.errors import CheckpointError


@pytest.fixture
def checkpoint(tmp_path, trained, char_tokenizer):
    model, opt = trained(steps=1)
    return save_checkpoint(
        model, opt, 1, tmp_path / "c", tokenizer=char_tokenizer, train_state={"step": 1}
    )


def test_complete_checkpoint_verifies(checkpoint):
    verify_checkpoint(checkpoint)
    on_disk = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert set(read_manifest(checkpoint)) == on_disk - {"manifest.json"}


@pytest.mark.parametrize(
    "name", ["model.safetensors", "trainer_state/optimizer.safetensors", "tokenizer.json"]
)
def test_deleted_file(checkpoint, name):
    (checkpoint / name).unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"missing file {name}")):
        verify_checkpoint(checkpoint)


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state/state.json"])
def test_truncated_file(checkpoint, name):
    file = checkpoint / name
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(f"{name} is truncated")):
        verify_checkpoint(checkpoint)


@pytest.mark.parametrize(
    "name", ["model.safetensors", "config.json", "trainer_state/optimizer.json"]
)
def test_flipped_byte(checkpoint, name):
    file = checkpoint / name
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(f"{name} is corrupted")):
        verify_checkpoint(checkpoint)


def test_load_checkpoint_verifies_first(checkpoint, make_model):
    file = checkpoint / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF  # inside a tensor: the file still parses, the weights are wrong
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape("model.safetensors is corrupted")):
        load_checkpoint(checkpoint, make_model())


def test_manifest_problems(checkpoint):
    manifest = checkpoint / "manifest.json"
    data = json.loads(manifest.read_text())

    manifest.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(CheckpointError, match=r"version 99; this scratchlm reads version 1"):
        verify_checkpoint(checkpoint)

    hostile = {**data, "files": {**data["files"], "../outside.txt": {"sha256": "0", "size": 1}}}
    manifest.write_text(json.dumps(hostile))
    with pytest.raises(CheckpointError, match="not inside the checkpoint"):
        verify_checkpoint(checkpoint)

    files = {k: v for k, v in data["files"].items() if k != "model.safetensors"}
    manifest.write_text(json.dumps({**data, "files": files}))
    with pytest.raises(CheckpointError, match=re.escape("does not list model.safetensors")):
        verify_checkpoint(checkpoint)

    manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint manifest"):
        verify_checkpoint(checkpoint)

    manifest.unlink()
    with pytest.raises(CheckpointError, match=re.escape("has no manifest.json")):
        verify_checkpoint(checkpoint)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        verify_checkpoint(tmp_path / "nothing")
