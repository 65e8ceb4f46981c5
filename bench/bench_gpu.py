"""The GPU check of issue 17 in one prepared command, for a session lent a GPU: training
throughput and MFU of ``small`` and ``gpt2-small`` in bf16 with ``--compile``, and the
speedrun's new default on a 5-minute budget, each run in its own process.

    PYTHONPATH=src python3 bench/bench_gpu.py --out DIR [--parts throughput,speedrun]

On the lent machine (its python3 holds torch, numpy, regex, safetensors and tqdm: nothing
to install), from the repository root, with ``bench/.data/stdlib10k`` and
``bench/.data/tok10k`` carried (built here by any speedrun or ``bench_train.py`` run), in
two calls that fit the 10-minute limit of one command (about 4 and 6 minutes):

    PYTHONPATH=src python3 bench/bench_gpu.py --parts throughput --out $OUT
    PYTHONPATH=src python3 bench/bench_gpu.py --parts speedrun --out $OUT

``--device cpu --steps 4 --minutes 0.3 --tokens-per-step 512 --no-compile`` runs the same
plumbing on a CPU in a few minutes: it checks the script, not the numbers. Nothing here
asserts a number; docs/benchmarks.md records what a lent GPU measured.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench_speedrun import Machine
from harness import BENCH, REPO, Report, Table, num
from scratchlm.config import PRESETS
from scratchlm.report.collect import training_facts
from scratchlm.train import peak_flops, read_metrics
from train_inputs import DATA, PREPARED, ensure_inputs

RUNS = DATA / "gpu"  # the throughput runs (checkpoints included: not for --out)


def matmul_tflops(device: str, n: int, repeats: int = 10) -> float:
    """TFLOP/s of an n x n x n bfloat16 matrix product on ``device``: the mean of
    ``repeats`` products after three warm-ups (random data)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def machine_table(device: str) -> Table:
    """The accelerator, torch, the measured bf16 product speed and the datasheet peak
    that the logged MFU is a fraction of."""
    on_gpu = device.startswith("cuda")
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    n = 8192 if on_gpu else 512
    peak = peak_flops(device, torch.bfloat16)
    measured = num(matmul_tflops(device, n))
    table = Table(
        "Machine",
        ["device", "torch", f"bf16 product {n}^3 (TFLOP/s)", "datasheet bf16 peak (TFLOP/s)"],
        [[name, torch.__version__, measured, num(peak / 1e12) if peak else "-"]],
    )
    table.notes = ["MFU below: model FLOPs per second over the datasheet peak (dense bf16)."]
    return table


def train(args: argparse.Namespace, preset: str, out: Path) -> dict:
    """``scratchlm train`` of ``preset`` for ``args.steps`` updates of about
    ``args.tokens_per_step`` tokens in bf16 (compiled unless ``--no-compile``); the medians
    of its logged tokens/s and MFU after the first third of the steps (compilation and
    warm-up), and its peak memory."""
    context = PRESETS[preset]["context_length"]
    batch = max(1, args.tokens_per_step // context)
    cmd = [
        sys.executable, "-m", "scratchlm", "train", "--data", str(PREPARED),
        "--preset", preset, "--device", args.device, "--precision", "bf16",
        "--steps", str(args.steps), "--batch-size", str(batch), "--grad-accum", "1",
        "--eval-every", str(args.steps), "--eval-windows", "4", "--sample-tokens", "0",
        "--log-every", "1", "--quiet", "--out", str(out),
    ] + ([] if args.no_compile else ["--compile"])  # fmt: skip
    print("  $ " + " ".join(cmd[1:]), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    # The logged peak memory only grows, so the steady steps hold the run's peak too.
    steady = [r for r in read_metrics(out) if r.get("step", 0) > args.steps // 3]
    facts = training_facts(steady, None, None)
    peak = facts.peak_memory_bytes if facts else None
    return {
        "batch": batch,
        "context": context,
        "tokens_per_s": facts.tokens_per_s if facts else None,
        "mfu": facts.mfu if facts else None,
        "peak_memory_gb": peak / 1e9 if peak else None,
        "wall_s": wall,
    }


def throughput_table(args: argparse.Namespace) -> Table:
    table = Table(
        "Training throughput, bf16" + ("" if args.no_compile else " + torch.compile"),
        ["preset", "batch x context", "tokens/s", "MFU", "peak memory (GB)", "wall (s)"],
    )
    for preset in args.presets.split(","):
        r = train(args, preset, RUNS / preset)
        table.rows.append(
            [
                preset,
                f"{r['batch']} x {r['context']}",
                num(r["tokens_per_s"]) if r["tokens_per_s"] else "-",
                f"{r['mfu']:.1%}" if r["mfu"] is not None else "-",
                f"{r['peak_memory_gb']:.2f}" if r["peak_memory_gb"] else "-",
                f"{r['wall_s']:.0f}",
            ]
        )
    table.notes = [
        f"{args.steps} updates each, data stdlib_py (vocabulary 10,000), the default "
        "optimizer (Muon + AdamW); tokens/s and MFU: medians of the steps after the first "
        "third (compilation and warm-up left out); wall: the whole process, compilation "
        "included."
    ]
    return table


def speedrun(args: argparse.Namespace) -> None:
    """bench_speedrun.py for ``args.contenders`` on ``args.device`` in ``args.minutes``;
    its tables, its plot and each run's metrics.jsonl into ``args.out``."""
    runs = Machine(device=args.device).runs(args.minutes)
    cmd = [
        sys.executable, str(BENCH / "bench_speedrun.py"), "--budget", f"{args.minutes:g}",
        "--only", args.contenders, "--device", args.device,
        "--markdown", str(args.out / "speedrun.md"), "--plot", str(args.out / "speedrun.png"),
    ] + ([] if args.no_compile else ["--compile"])  # fmt: skip
    print("  $ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    for name in args.contenders.split(","):
        shutil.copyfile(runs / name / "metrics.jsonl", args.out / f"speedrun-{name}.jsonl")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the tables, plot and curves")
    p.add_argument("--parts", default="throughput,speedrun", help="throughput, speedrun or both")
    p.add_argument("--device", default="cuda")
    p.add_argument("--presets", default="small,gpt2-small", help="for the throughput table")
    p.add_argument("--steps", type=int, default=60, help="updates per throughput run")
    p.add_argument("--tokens-per-step", type=int, default=16_384)
    p.add_argument("--contenders", default="b", help="speedrun contenders (see --list there)")
    p.add_argument("--minutes", type=float, default=5.0, help="the speedrun's budget")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"throughput", "speedrun"}:
        sys.exit(f"--parts {args.parts}: give throughput, speedrun or both")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: this check is for a machine with a GPU (--device cpu "
                 "runs its plumbing on a CPU)")  # fmt: skip
    ensure_inputs()
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report()
    report.show(machine_table(args.device))
    if "throughput" in parts:
        report.show(throughput_table(args))
    report.finish("GPU check (issue 17)", args.out / f"gpu-{'-'.join(sorted(parts))}.md")
    if "speedrun" in parts:
        speedrun(args)


if __name__ == "__main__":
    main()
