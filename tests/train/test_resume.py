"""Runs in real processes: killed with SIGKILL or stopped with SIGINT mid-run, a resumed
run reproduces the uninterrupted run's losses exactly; two gloo processes (DDP) match
one process with the same global batch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import ENV, last_step, train_command, wait_for_step

pytestmark = pytest.mark.slow


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    steps = [r["step"] for r in train]
    assert steps == sorted(set(steps)), "the metrics must read as one uninterrupted run"
    return {r["step"]: r["loss"] for r in train}


def test_killed_and_interrupted_runs_resume_to_the_same_losses(prepared, tmp_path):
    steps = ["--steps", "150"]
    reference = subprocess.Popen(
        train_command(prepared, tmp_path / "ref", *steps),
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    killed = subprocess.Popen(
        train_command(prepared, tmp_path / "kill", *steps),
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    stopped = subprocess.Popen(
        train_command(prepared, tmp_path / "int", *steps),
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_for_step(killed, tmp_path / "kill", 40)  # past the checkpoint at step 25
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    wait_for_step(stopped, tmp_path / "int", 30)
    stopped.send_signal(signal.SIGINT)
    out, _ = stopped.communicate(timeout=120)
    assert stopped.returncode == 130
    assert "stopped by SIGINT" in out and "--resume" in out
    interrupted_at = last_step(tmp_path / "int")
    latest = (tmp_path / "int" / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{interrupted_at:08d}"  # saved at the step it stopped on
    assert reference.wait(timeout=300) == 0

    # Rerunning the same command resumes; so does --resume RUN_DIR.
    again = subprocess.run(
        train_command(prepared, tmp_path / "kill", *steps), env=ENV, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "scratchlm", "train", "--resume", str(tmp_path / "int")],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr

    expected = _losses(tmp_path / "ref")
    assert sorted(expected) == list(range(1, 151))
    # A rollback (after a loss spike) returns to the newest checkpoint, which differs
    # between runs stopped at different steps: the comparison needs a run without one.
    assert "rolled back" not in (tmp_path / "ref" / "metrics.jsonl").read_text()
    assert _losses(tmp_path / "kill") == expected  # exactly, step for step
    assert _losses(tmp_path / "int") == expected


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(prepared, tmp_path):
    common = ["--steps", "8", "--checkpoint-every", "4", "--eval-every", "4", "--warmup-steps", "2"]
    # float32: in bf16 a process's half batch rounds its products differently (another
    # kernel blocking), which this exact comparison would see.
    common += ["--precision", "fp32"]
    single = train_command(prepared, tmp_path / "one", *common)
    single[single.index("--batch-size") + 1] = "8"
    ddp = train_command(prepared, tmp_path / "two", *common)
    ddp[ddp.index("--batch-size") + 1] = "4"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = [*torchrun, *ddp[1:]]  # python -m torch.distributed.run -m scratchlm train ...

    one = subprocess.run(single, env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(ddp, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert [b[s] for s in a] == pytest.approx([a[s] for s in a], rel=1e-5)
    # Only rank 0 wrote: one metrics file, checkpoints from one writer.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_fsdp_matches_one_process_and_resumes_from_its_checkpoints(prepared, tmp_path):
    """--fsdp on 2 gloo processes: the same losses as one process with the same global
    batch; its checkpoints are ordinary ones; deleting the newest and rerunning redoes
    the last steps from the one before, to the same losses."""
    common = ["--steps", "8", "--checkpoint-every", "4", "--eval-every", "4", "--warmup-steps", "2"]
    common += ["--precision", "fp32", "--grad-accum", "1"]  # fp32: the comparison is to 1e-5
    single = train_command(prepared, tmp_path / "one", *common, "--optimizer", "adamw")
    single[single.index("--batch-size") + 1] = "8"
    # No --optimizer: the default stands for adamw under --fsdp (Muon would refuse it).
    sharded = train_command(prepared, tmp_path / "two", *common, "--fsdp")
    sharded[sharded.index("--batch-size") + 1] = "4"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    sharded = [*torchrun, *sharded[1:]]

    one = subprocess.run(single, env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(sharded, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "optimizer auto is adamw here" in two.stdout
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["optimizer"] == "adamw"
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [b[s] for s in a] == pytest.approx([a[s] for s in a], rel=1e-5)

    from scratchlm.checkpoint import load_model

    model, _ = load_model(tmp_path / "two")
    reference, _ = load_model(tmp_path / "one")
    for (name, p), q in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.allclose(p, q, atol=1e-5), name

    import shutil

    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step_00000008")
    again = subprocess.run(sharded, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _losses(tmp_path / "two") == pytest.approx(b, rel=1e-6)


def test_sigterm_saves_a_checkpoint_at_the_current_step(prepared, tmp_path):
    run = tmp_path / "term"
    proc = subprocess.Popen(
        train_command(prepared, run, "--steps", "500"), env=ENV, stdout=subprocess.PIPE, text=True
    )
    wait_for_step(proc, run, 5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert "stopped by SIGTERM" in out
    stopped_at = last_step(run)
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:08d}"
    assert (run / "checkpoints" / f"step_{stopped_at:08d}" / "manifest.json").is_file()
