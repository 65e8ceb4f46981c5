"""Shared settings and helpers of the training tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# A model small enough to train a few dozen steps in about a second.
TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "d_ff": 64}

# Training processes started by the tests: one thread each, output as it happens.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    """``scratchlm train`` of the tiny model on ``data`` into ``out`` (CPU, quiet)."""
    model = [f"--model={k}={v}" for k, v in TINY.items()]
    return [
        sys.executable, "-m", "scratchlm", "train", "--data", str(data), "--out", str(out),
        "--preset", "tiny", *model, "--context-length", "64", "--batch-size", "8",
        "--lr", "1e-3", "--warmup-steps", "10", "--eval-every", "100", "--eval-windows", "4",
        "--sample-tokens", "0", "--checkpoint-every", "25", "--log-every", "1", "--seed", "3",
        "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def last_step(run: Path) -> int:
    """The newest step in ``run``'s metrics.jsonl (0 before the first)."""
    file = run / "metrics.jsonl"
    if not file.exists():
        return 0
    lines = [json.loads(x) for x in file.read_text().splitlines() if x.endswith("}")]
    return max((r["step"] for r in lines if r["kind"] == "train"), default=0)


def wait_for_step(proc: subprocess.Popen, run: Path, step: int) -> None:
    """Wait until the training process ``proc`` has logged ``step`` in ``run``."""
    deadline = time.monotonic() + 120
    while last_step(run) < step:
        assert proc.poll() is None, f"training ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "training did not reach the step in time"
        time.sleep(0.02)
