"""Every failure a user can run into ends in one line on stderr and a non-zero exit, never
a traceback: a full disk or an I/O error while checkpointing, a misplaced file in the run
directory, unknown or impossible model settings, a bad split pattern, an unreadable input.

Each case runs the command in-process through ``cli.main``: an exception that escapes it
is what would print a traceback, and fails the test. Faults of the disk are injected by
replacing the function that writes (the real-process versions are in
tests/train/test_faults.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors import SafetensorError

from scratchlm.builtin import END_OF_TEXT, builtin_corpus
from scratchlm.checkpoint import files as checkpoint_files
from scratchlm.cli import main
from scratchlm.data import prepare
from scratchlm.tokenizer import CharTokenizer
from scratchlm.tokenizer.files import write_tokenizer_dir

# Tiny models on shared cores: one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A prepared data directory with a character tokenizer (quick to build)."""
    root = tmp_path_factory.mktemp("cli_errors")
    corpus = builtin_corpus()
    tok = CharTokenizer.train([corpus.read_text(encoding="utf-8")], [END_OF_TEXT])
    write_tokenizer_dir(tok, root / "tok")
    prepare([str(corpus)], tok, root / "data", val_fraction=0.1, workers=1, progress=False)
    return root / "data"


def train_argv(
    data: Path, out: Path, *more: str, model: tuple[str, ...] = ("d_model=32", "n_heads=2")
) -> list[str]:
    """A two-step run of a very small model, checkpointing every step."""
    return [
        *("--log-level", "ERROR", "train", "--data", str(data), "--out", str(out)),
        *("--preset", "tiny", *(a for field in model for a in ("--model", field))),
        *("--steps", "2", "--batch-size", "2", "--context-length", "16"),
        *("--checkpoint-every", "1", "--eval-windows", "1", "--sample-tokens", "0"),
        *("--device", "cpu", "--quiet", *more),
    ]


def safetensors_fails(code: int) -> Callable[..., None]:
    """A save_file that fails as safetensors does: a SafetensorError with the OS error
    in its text."""

    def save_file(*args, **kwargs):
        raise SafetensorError(
            f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})"
        )

    return save_file


def raises_oserror(code: int) -> Callable[..., None]:
    def write(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return write


def unreadable_file(tmp_path: Path) -> str:
    """A file that exists and cannot be read: mode 000, or for root (whom modes do not
    stop) Linux's /proc/self/mem, whose first page is unmapped (EIO)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        if not Path("/proc/self/mem").is_file():
            pytest.skip("no unreadable file for root on this system")
        return "/proc/self/mem"
    path = tmp_path / "secret.txt"
    path.write_text("hidden\n")
    path.chmod(0)
    return str(path)


# Each case: (set-up, which returns the command line; words the error line must hold).
# The set-up gets (tmp_path, data_dir, monkeypatch).
CASES = {
    "disk full writing the weights": (
        lambda t, d, mp: (
            mp.setattr(checkpoint_files, "save_file", safetensors_fails(errno.ENOSPC)),
            train_argv(d, t / "run"),
        )[1],
        ["no space left on device", "needed for the checkpoint step_00000001", "--resume"],
    ),
    "I/O error writing the weights": (
        lambda t, d, mp: (
            mp.setattr(checkpoint_files, "save_file", safetensors_fails(errno.EIO)),
            train_argv(d, t / "run"),
        )[1],
        ["input/output error", "cannot write the checkpoint step_00000001", "model.safetensors"],
    ),
    "I/O error writing the manifest": (
        lambda t, d, mp: (
            mp.setattr("scratchlm.checkpoint.io.write_manifest", raises_oserror(errno.EIO)),
            train_argv(d, t / "run"),
        )[1],
        ["input/output error", "cannot write the checkpoint step_00000001"],
    ),
    "disk full writing latest": (
        lambda t, d, mp: (
            mp.setattr(checkpoint_files, "atomic_write_bytes", raises_oserror(errno.ENOSPC)),
            train_argv(d, t / "run"),
        )[1],
        ["no space left on device: cannot write latest", "last checkpoint: step_00000001"],
    ),
    "--out is a file": (
        lambda t, d, mp: ((t / "run").write_text("x"), train_argv(d, t / "run"))[1],
        ["run is a file", "choose another --out"],
    ),
    "unknown --model key": (
        lambda t, d, mp: train_argv(d, t / "run", "--model", "n_layer=3"),
        ["unknown model field(s): n_layer", "n_layers"],
    ),
    "unknown key in a TOML [model] table": (
        lambda t, d, mp: (
            (t / "run.toml").write_text("[model]\nd_model = 32\nn_heads = 2\nwidth = 64\n"),
            # no --model flag: flags replace the file's whole [model] table
            train_argv(d, t / "run", "--config", str(t / "run.toml"), model=()),
        )[1],
        ["unknown model field(s): width"],
    ),
    "d_model not divisible by n_heads": (
        lambda t, d, mp: train_argv(d, t / "run", "--model", "n_heads=5"),
        ["d_model=32 is not divisible by n_heads=5"],
    ),
    "negative size": (
        lambda t, d, mp: train_argv(d, t / "run", "--model", "n_layers=-2"),
        ["n_layers must be a positive integer, got -2"],
    ),
    "a model larger than the machine": (
        lambda t, d, mp: train_argv(d, t / "run", model=("d_model=4000000", "n_layers=1000")),
        ["parameters", "needs more than", "this machine has"],
    ),
    "a word for a number": (
        lambda t, d, mp: train_argv(d, t / "run", "--model", "rope_theta=big"),
        ["rope_theta must be a number, got 'big'"],
    ),
    "non-UTF-8 train_config.json": (
        lambda t, d, mp: (
            (t / "run").mkdir(),
            (t / "run" / "train_config.json").write_bytes(b"\xff\xfe{"),
            train_argv(d, t / "run"),
        )[2],
        ["train_config.json", "utf-8"],
    ),
    "train_config.json not an object": (
        lambda t, d, mp: (
            (t / "run").mkdir(),
            (t / "run" / "train_config.json").write_text("[1, 2]"),
            ["train", "--resume", str(t / "run")],
        )[2],
        ["train_config.json is damaged: expected a JSON object"],
    ),
    "checkpoints/ is a file": (
        lambda t, d, mp: (
            (t / "run").mkdir(),
            (t / "run" / "checkpoints").write_text("x"),
            train_argv(d, t / "run"),
        )[2],
        ["checkpoints is a file"],
    ),
    "latest is a directory": (
        lambda t, d, mp: (
            (t / "run" / "checkpoints" / "latest").mkdir(parents=True),
            train_argv(d, t / "run"),
        )[1],
        ["latest is a folder"],
    ),
    "best is a directory": (
        lambda t, d, mp: (
            (t / "run" / "checkpoints" / "best").mkdir(parents=True),
            train_argv(d, t / "run"),
        )[1],
        ["best is a folder"],
    ),
    "metrics.jsonl is a directory": (
        lambda t, d, mp: (
            (t / "run" / "metrics.jsonl").mkdir(parents=True),
            train_argv(d, t / "run"),
        )[1],
        ["metrics.jsonl"],
    ),
    "invalid --pattern": (
        lambda t, d, mp: [
            *("tokenizer", "train", str(builtin_corpus()), "--vocab-size", "300"),
            *("--pattern", "(?<word", "--workers", "1", "--quiet", "--out", str(t / "tok")),
        ],
        ["split pattern '(?<word' is not a valid regular expression"],
    ),
    "unreadable input of tokenizer train": (
        lambda t, d, mp: [
            *("tokenizer", "train", unreadable_file(t), "--vocab-size", "300"),
            *("--workers", "1", "--quiet", "--out", str(t / "tok")),
        ],
        ["cannot read"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_failure_is_one_line_without_traceback(case, tmp_path, data_dir, monkeypatch, capsys):
    set_up, words = CASES[case]
    argv = set_up(tmp_path, data_dir, monkeypatch)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("scratchlm: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


def test_a_failed_checkpoint_leaves_the_previous_one(tmp_path, data_dir, monkeypatch, capsys):
    """The disk fills at the second checkpoint: the first stays the newest valid one,
    named by latest, and no temporary folder is left behind."""
    from scratchlm.checkpoint import CheckpointManager

    real = checkpoint_files.save_file
    calls = []

    def save_file(tensors, file, metadata=None):
        calls.append(Path(file).name)
        if calls.count("model.safetensors") == 2:
            raise SafetensorError("I/O error: No space left on device (os error 28)")
        real(tensors, file, metadata=metadata)

    monkeypatch.setattr(checkpoint_files, "save_file", save_file)
    assert main(train_argv(data_dir, tmp_path / "run")) == 2
    assert "last checkpoint: step_00000001" in capsys.readouterr().err
    manager = CheckpointManager(tmp_path / "run")
    assert manager.latest_valid().name == "step_00000001"
    assert [p.name for p in manager.dir.iterdir() if p.name.startswith(".")] == []
