"""Fault injection on real training processes: a full disk, an I/O error, or a SIGKILL at
each stage of writing a checkpoint (fault_runner.py puts the fault in place in the child).

After each fault: a failed write ends the process with one line naming the cause, and
a kill with nothing at all; the run directory still holds a valid checkpoint, the newest
one that was complete; and resuming reproduces the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import TINY

import scratchlm
from scratchlm.checkpoint import CheckpointManager
from scratchlm.train.metrics import read_metrics

RUNNER = Path(__file__).with_name("fault_runner.py")
STEPS, EVERY = 20, 5


def child_env() -> dict[str, str]:
    """This scratchlm first on the path; one thread, so every run sums in the same order."""
    src = Path(scratchlm.__file__).resolve().parents[1]
    paths = [str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}


def train(fault: str, data: Path, out: Path) -> subprocess.CompletedProcess:
    """``scratchlm train`` (a tiny model, 20 steps, a checkpoint every 5) in a child
    process, with ``fault`` injected; rerun with the same arguments, it resumes."""
    model = [a for k, v in TINY.items() for a in ("--model", f"{k}={v}")]
    argv = [
        *("--log-level", "ERROR", "train", "--data", str(data), "--out", str(out)),
        *("--preset", "tiny", *model, "--context-length", "32", "--batch-size", "4"),
        *("--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--eval-every", "10"),
        *("--eval-windows", "2", "--sample-tokens", "0", "--log-every", "1"),
        *("--warmup-steps", "2", "--device", "cpu", "--quiet"),
    ]
    return subprocess.run(
        [sys.executable, str(RUNNER), fault, *argv],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
        check=False,
    )


def losses(run: Path) -> list[tuple[str, int, float]]:
    """Every training and validation loss of a run, by step."""
    return [
        (r["kind"], r["step"], r["loss"] if r["kind"] == "train" else r["val_loss"])
        for r in read_metrics(run)
        if r["kind"] in ("train", "val")
    ]


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory) -> list[tuple[str, int, float]]:
    run = tmp_path_factory.mktemp("faults") / "uninterrupted"
    done = train("none", prepared, run)
    assert done.returncode == 0, done.stderr
    return losses(run)


# (fault, the checkpoint resumed from). Each fault strikes the second checkpoint (step
# 10), so the first (step 5) is there to fall back on. Until ``latest`` names step 10,
# resuming starts from step 5, even when step 10's folder is complete.
CASES = [
    ("kill@weights:2", 5),
    ("kill@manifest:2", 5),
    ("kill@rename:2", 5),
    ("kill@renamed:2", 5),
    ("kill@latest:2", 10),
    ("enospc@weights:2", 5),
    ("eio@weights:2", 5),
    ("eio@manifest:2", 5),
    ("eio@rename:2", 5),
    ("enospc@latest:2", 5),
]


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "resumed_from"), CASES)
def test_a_fault_while_checkpointing_loses_nothing(
    fault, resumed_from, prepared, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    hit = train(fault, prepared, run)
    if fault.startswith("kill"):
        assert hit.returncode == -signal.SIGKILL, hit.stderr
    else:
        lines = hit.stderr.strip().splitlines()
        assert hit.returncode == 2 and len(lines) == 1, hit.stderr
        assert "Traceback" not in hit.stderr
        cause = "no space left on device" if fault.startswith("enospc") else "input/output error"
        assert lines[0].startswith(f"scratchlm: error: {cause}: ")
        assert "training stopped at step 10" in lines[0] and f"--resume {run}" in lines[0]
        assert f"last checkpoint: step_{resumed_from:08d}" in lines[0]

    newest = CheckpointManager(run).latest_valid()  # verified against its manifest
    assert newest is not None and newest.name == f"step_{resumed_from:08d}"

    again = train("none", prepared, run)
    assert again.returncode == 0, again.stderr
    assert f"resumed from step_{resumed_from:08d}" in "".join(
        r.get("message", "") for r in read_metrics(run)
    )
    assert losses(run) == uninterrupted  # exactly: the resumed steps repeat bit for bit
