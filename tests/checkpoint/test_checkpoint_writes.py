"""Writing checkpoints: every file gets the permissions of an ordinary new file, and a
failed write is a WriteError naming what, where and why (a full disk: the space needed
and the space left)."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch
from safetensors import SafetensorError

from scratchlm.atomic import describe_write_error, human_bytes
from scratchlm.checkpoint import CheckpointManager, save_checkpoint
from scratchlm.checkpoint import files as checkpoint_files
from scratchlm.checkpoint.files import save_tensors, write_durably
from scratchlm.errors import WriteError


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_every_file_of_a_run_gets_the_mode_of_a_new_file(tmp_path, umask, make_model):
    """safetensors writes through a private 0600 temporary and mkstemp makes 0600 files;
    what we write must still read like any other file the user makes."""
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters())
    manager = CheckpointManager(tmp_path)
    manager.save(model, optimizer, 1, tensors={"rng.x": torch.zeros(3)}, val_loss=2.0)
    expected = 0o666 & ~umask
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"model.safetensors", "optimizer.safetensors", "tensors.safetensors"} <= names
    assert {"latest", "best", "manifest.json", "config.json"} <= names
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == dict.fromkeys(modes, expected)


def test_save_tensors_turns_safetensors_errors_into_oserror(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left (os error 28)")

    monkeypatch.setattr(checkpoint_files, "save_file", full)
    with pytest.raises(OSError) as caught:
        save_tensors({"a": torch.zeros(2)}, tmp_path / "a.safetensors")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "a.safetensors")


def test_a_full_disk_names_the_checkpoint_the_size_needed_and_the_space_left(
    tmp_path, monkeypatch, make_model
):
    def full(*args, **kwargs):
        raise SafetensorError("I/O error: No space left on device (os error 28)")

    model = make_model()
    monkeypatch.setattr(checkpoint_files, "save_file", full)
    with pytest.raises(WriteError) as caught:
        save_checkpoint(model, None, 7, tmp_path / "step_00000007")
    message = str(caught.value)
    size = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    assert message.startswith("no space left on device: ")
    assert f"{human_bytes(size)} needed for the checkpoint step_00000007 in {tmp_path}" in message
    assert "free)" in message
    assert list(tmp_path.iterdir()) == []  # no half-written folder left


def test_an_io_error_names_the_file(tmp_path):
    error = OSError(errno.EIO, os.strerror(errno.EIO), "/runs/x/model.safetensors")
    message = describe_write_error(error, "the checkpoint step_00000001", "/runs/x")
    assert message == (
        "input/output error: cannot write the checkpoint step_00000001 in /runs/x "
        "(/runs/x/model.safetensors)"
    )


def test_write_durably_fails_with_a_write_error_and_keeps_the_old_content(tmp_path):
    target = tmp_path / "latest"
    target.write_text("step_00000001\n")
    (tmp_path / "sub").mkdir()
    with pytest.raises(WriteError, match="cannot write sub in"):
        write_durably(tmp_path / "sub", b"x")  # a folder cannot be replaced by a file
    write_durably(target, b"step_00000002\n")
    assert target.read_text() == "step_00000002\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "sub"]


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 bytes"), (999, "999 bytes"), (1234, "1.2 KB"), (1_234_567, "1.2 MB"),
     (1.2e9, "1.2 GB"), (3.5e12, "3.5 TB"), (5e15, "5000.0 TB")],
)  # fmt: skip
def test_human_bytes(n, text):
    assert human_bytes(n) == text
