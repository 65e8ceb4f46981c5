"""An sft --lora run killed with SIGKILL resumes from its last checkpoint to the same
losses, step for step, as the run that was never interrupted (the adapters, their
optimizer state, the data order and every RNG come back; the frozen base is saved too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def sft_command(pretrained: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "scratchlm", "sft", "--from", str(pretrained), "--out", str(out),
        "--data", "builtin:chat", "--lora", "r=4,alpha=8,dropout=0.1,targets=all-linear",
        "--steps", "60", "--checkpoint-every", "15", "--eval-every", "100", "--log-every", "1",
        "--batch-size", "2", "--eval-windows", "2", "--sample-tokens", "0", "--lr", "1e-2",
        "--warmup-steps", "3", "--device", "cpu", "--quiet",
    ]  # fmt: skip


def train_losses(run: Path) -> dict[int, float]:
    file = run / "metrics.jsonl"
    if not file.exists():
        return {}
    records = [json.loads(x) for x in file.read_text().splitlines() if x.endswith("}")]
    train = [r for r in records if r["kind"] == "train"]
    steps = [r["step"] for r in train]
    assert steps == sorted(set(steps)), "the metrics must read as one uninterrupted run"
    return {r["step"]: r["loss"] for r in train}


def test_a_killed_lora_run_resumes_to_the_same_losses(pretrained, tmp_path):
    reference = subprocess.run(
        sft_command(pretrained, tmp_path / "ref"), env=ENV, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr
    killed = subprocess.Popen(
        sft_command(pretrained, tmp_path / "kill"), env=ENV, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while max(train_losses(tmp_path / "kill"), default=0) < 20:  # past the checkpoint at 15
        assert killed.poll() is None, "the run ended before it was killed"
        assert time.monotonic() < deadline, "the run did not reach step 20 in time"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "kill" / "adapter").exists()
    again = subprocess.run(
        sft_command(pretrained, tmp_path / "kill"), env=ENV, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "from step 15" in again.stdout
    expected = train_losses(tmp_path / "ref")
    assert sorted(expected) == list(range(1, 61))
    assert "rolled back" not in (tmp_path / "ref" / "metrics.jsonl").read_text()
    assert train_losses(tmp_path / "kill") == expected  # exactly
    assert (tmp_path / "kill" / "adapter" / "adapter_model.safetensors").is_file()
