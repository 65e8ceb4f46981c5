"""Number formats on a CPU: detecting hardware bf16, bf16 autocast tracking fp32's
losses, and exact resume within bf16."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from scratchlm.train.runtime import (
    cpu_flags,
    cpu_has_fast_bf16,
    pick_precision,
    precision_advice,
)
from scratchlm.train.trainer import Trainer

CPU = torch.device("cpu")

# Shortened /proc/cpuinfo texts of three CPUs.
ICE_LAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: avx2 avx512f avx512_bf16\n"


@pytest.mark.parametrize(
    ("cpuinfo", "fast"),
    [
        (ICE_LAKE, False),  # AVX-512 without its bf16 instructions: emulated
        (SAPPHIRE_RAPIDS, True),
        (ZEN4, True),
        ("processor\t: 0\n", False),  # no flags line (some ARM kernels, containers)
        ("", False),
    ],
)
def test_hardware_bf16_is_read_from_the_cpu_flags(cpuinfo, fast):
    assert cpu_has_fast_bf16(cpu_flags(cpuinfo)) is fast


def test_each_flag_alone():
    assert cpu_has_fast_bf16({"avx512_bf16"}) and cpu_has_fast_bf16({"amx_bf16"})
    assert not cpu_has_fast_bf16({"amx_tile", "amx_int8"})  # AMX without its bf16 part
    assert not cpu_has_fast_bf16({"avx512f", "avx2"})


def test_auto_picks_bf16_only_on_a_cpu_with_hardware_bf16():
    fast, slow = {"avx512_bf16"}, {"avx2"}
    assert pick_precision("auto", CPU, fast) == "bf16"
    assert pick_precision("auto", CPU, {"amx_bf16", "amx_tile"}) == "bf16"
    assert pick_precision("auto", CPU, slow) == "fp32"
    assert pick_precision("auto", CPU) == "fp32"  # no flags known (macOS, Windows)
    assert pick_precision("fp32", CPU, fast) == "fp32"  # an explicit choice stands
    assert precision_advice("auto", "fp32", CPU, slow) is None
    assert precision_advice("auto", "bf16", CPU, fast) is None
    assert "emulated" in precision_advice("bf16", "bf16", CPU, slow)
    assert precision_advice("bf16", "bf16", CPU, fast) is None
    assert precision_advice("fp32", "fp32", CPU, fast) is None  # chosen on purpose
    assert precision_advice("auto", "bf16", torch.device("cuda"), slow) is None


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.fixture
def one_thread_run(tiny_config, one_thread):
    return tiny_config.replace(steps=30, eval_every=0, sample_tokens=0, checkpoint_every=30)


# bf16 autocast keeps float32 weights and optimizer state, so its losses follow fp32's:
# measured on the tiny model (seeds 7, 8, 9, 30 steps) the largest relative difference
# of a step's loss was 1.3e-4; the bound below leaves ten times that.
BF16_TRACKING = 2e-3


def test_bf16_training_tracks_fp32(one_thread_run, tmp_path):
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        Trainer(one_thread_run.replace(out=str(out), precision=precision)).run()
        results[precision] = _losses(out)
    fp32, bf16 = results["fp32"], results["bf16"]
    assert len(fp32) == len(bf16) == 30
    assert bf16 != fp32  # the products did run in bf16
    assert bf16 == pytest.approx(fp32, rel=BF16_TRACKING)
    assert bf16[-1] < bf16[0] - 0.5  # and it learned


def test_a_bf16_run_stopped_and_resumed_repeats_its_losses_exactly(one_thread_run, tmp_path):
    config = one_thread_run.replace(precision="bf16", checkpoint_every=10)
    Trainer(config.replace(out=str(tmp_path / "whole"))).run()
    running: dict[str, Trainer] = {}  # the interrupted run, read by its clock
    fired: list[bool] = []

    def interrupting_clock() -> float:  # Ctrl-C once, while step 13 runs
        run = running.get("trainer")
        if run is not None and run.state.step == 12 and not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGINT)
        return time.perf_counter()

    stopped = running["trainer"] = Trainer(config, clock=interrupting_clock)
    result = stopped.run()
    assert result.interrupted == "SIGINT" and 12 <= result.step < 30
    Trainer(config.replace(resume=True)).run()
    assert _losses(Path(config.out)) == _losses(tmp_path / "whole")  # bit for bit
