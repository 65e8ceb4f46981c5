"""The CPU speedrun: validation bits per byte against wall-clock time, one contender after
another in separate processes, on the same data and validation windows.

    .venv/bin/python bench/bench_speedrun.py [--budget 15] [--only a,b,c] [--reuse]
                                             [--repeat 1] [--markdown PATH] [--plot PNG]
                                             [--threads 2]

Contenders (``--only`` picks some; ``--list`` prints them all):

- ``a``: the wave-1 recipe, the reference command of docs/training.md: preset ``small``,
  float32, AdamW at 1e-3, cosine over a step count sized for the budget (450 steps for 15
  minutes, as measured on 2026-11-21), 8 x 256 tokens per step.
- ``b``: the new default recipe: ``scratchlm train --data D --preset mini --time-budget Nm``
  and nothing else (the defaults are the recipe, see :data:`RECIPE` for what they amount to).
- ``c``: Hugging Face ``LlamaForCausalLM`` of the same shape, float32, torch's AdamW, a
  cosine over the budget (``speedrun_hf.py``).
- ``b5``, ``b10``: the new default with 5- and 10-minute budgets (every budget from 5 to
  15 minutes is its own run: a warmup-stable-decay schedule is sized to its budget).
- ablations ``b-...``: the new default with one of its changes undone (or one option
  added), each with the same budget: the number that justifies each default.
- ``...-small``: the same on the ``small`` preset, the default shape before ``mini`` was
  measured; the size search (``b-d384``, ``b-d320``, ...) is small with ``--model``
  overrides. Each contender names its preset.

Data: ``bench/.data/stdlib10k`` (``stdlib_py.txt`` with a 10,000-token tokenizer, built on
first use as ``bench_train.py`` does). Every contender validates on the same 16 fixed
windows during its run (as the reference did) and, after its budget and untimed, on 128
windows in float32 (the "final" column: the number to compare). Runs go to
``bench/.data/speedrun/MINUTESm/NAME``; ``--reuse`` keeps a contender's finished run instead of
training it again (to add contenders to a table without rerunning the others).
``--repeat K`` trains each contender K times (``NAME``, ``NAME.2``, ...; every other round
in reverse order, so a drift in the machine's speed falls on all contenders alike) and adds
a table of each contender's mean and spread: on a shared machine a run's throughput, and
with it its bits per byte on the clock, varies between runs of the same recipe. Nothing
here asserts a number: the issue's targets are printed beside the measured ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import BENCH, REPO, Report, Table, cores, load_average, num
from speedrun_contenders import RECIPE, Contender, contenders
from train_inputs import PREPARED, ensure_inputs

RUNS = BENCH / ".data" / "speedrun"
EVAL_WINDOWS = 16  # as the reference run (docs/training.md)
FINAL_WINDOWS = 128
TARGET_BPB = 1.45  # issue 17, for 15 minutes


def run_name(c: Contender, round_: int) -> str:
    """The name of ``c``'s run in round ``round_`` (1-based) of ``--repeat``."""
    return c.name if round_ == 1 else f"{c.name}.{round_}"


@dataclass(frozen=True)
class Machine:
    """Where and how every contender trains: torch threads, ``--device``, ``--compile``."""

    threads: int = 2
    device: str = "cpu"
    compile: bool = False

    def runs(self, minutes: float) -> Path:
        """The folder of the runs of a ``minutes`` budget: ``5m`` on the CPU, ``5m-cuda``
        (``5m-cuda1``, ...) on an accelerator, so the two never mix."""
        kind = "" if self.device == "cpu" else "-" + self.device.replace(":", "")
        return RUNS / f"{minutes:g}m{kind}"


def run_contender(c: Contender, name: str, budget: float, machine: Machine, reuse: bool) -> Path:
    """Train ``c`` in a child process as the run ``name`` (unless ``reuse`` finds it
    finished); its run dir."""
    minutes = c.minutes or budget
    out = machine.runs(minutes) / name
    threads = machine.threads
    if reuse and (out / "final.json").exists():
        print(f"[{name}] reusing {out}", flush=True)
        return out
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if c.hf:
        cmd = [
            sys.executable,
            str(BENCH / "speedrun_hf.py"),
            "--data",
            str(PREPARED),
            "--budget",
            str(minutes * 60),
            "--out",
            str(out),
            "--eval-windows",
            str(EVAL_WINDOWS),
            "--final-windows",
            str(FINAL_WINDOWS),
            "--preset",
            c.preset,
        ]
    else:
        timed = ["--time-budget", f"{minutes:g}m", "--eval-every", "50"] if c.timed else []
        where = ["--device", machine.device] + (["--compile"] if machine.compile else [])
        flags = timed + where + c.flags.split()
        cmd = [
            sys.executable,
            "-m",
            "scratchlm",
            "train",
            "--data",
            str(PREPARED),
            "--preset",
            c.preset,
            "--batch-size",
            "8",
            "--eval-windows",
            str(EVAL_WINDOWS),
            "--sample-tokens",
            "0",
            "--quiet",
            "--out",
            str(out),
            *flags,
        ]
    print(f"[{name}] {c.what}: {' '.join(cmd[1:])}", flush=True)
    limit = minutes * 60 * 1.1 + 60  # a run sized in steps (a) is stopped at its budget
    child = subprocess.Popen(cmd, cwd=REPO, env=env)
    try:
        child.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        print(f"[{name}] past {limit:.0f} s: interrupted (it saves a checkpoint)", flush=True)
        child.send_signal(signal.SIGINT)
        child.wait()
    if child.returncode not in (0, 130):
        sys.exit(f"[{name}] failed with exit status {child.returncode}")
    if not c.hf:
        final_eval(out, threads)
    return out


def final_eval(run_dir: Path, threads: int) -> None:
    """The run's last checkpoint on FINAL_WINDOWS windows in float32 -> final.json."""
    code = (
        "import json, sys, torch\n"
        "from scratchlm.checkpoint import load_model\n"
        "from scratchlm.data import fixed_windows, open_tokens, read_meta\n"
        "from scratchlm.train.evaluate import evaluate\n"
        f"torch.set_num_threads({threads})\n"
        "run, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "model, _ = load_model(run)\n"
        "model.float()\n"
        "x, y = fixed_windows(open_tokens(data, 'val'), n, model.config.context_length)\n"
        "bpt = read_meta(data)['splits']['val']['bytes_per_token']\n"
        "r = evaluate(model, x, y, batch_size=8, bytes_per_token=bpt)\n"
        "print(json.dumps({'val_loss': r['val_loss'], 'val_bpb': r['val_bpb']}))\n"
    )
    cmd = [sys.executable, "-c", code, str(run_dir), str(PREPARED), str(FINAL_WINDOWS)]
    done = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    (run_dir / "final.json").write_text(done.stdout.strip().splitlines()[-1])


@dataclass
class Curve:
    """A contender's validation records: minutes, bits per byte, steps, tokens."""

    minutes: list[float]
    bpb: list[float]
    steps: list[int]
    tokens: list[int]
    final_bpb: float

    @classmethod
    def read(cls, run_dir: Path) -> Curve:
        minutes, bpb, steps, tokens = [], [], [], []
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") == "val" and "val_bpb" in r:
                minutes.append(r["time"] / 60)
                bpb.append(r["val_bpb"])
                steps.append(r["step"])
                tokens.append(r["tokens"])
        final = json.loads((run_dir / "final.json").read_text())["val_bpb"]
        return cls(minutes, bpb, steps, tokens, final)

    def at(self, minutes: float) -> float | None:
        """The last validation bits per byte measured by ``minutes`` (None: none yet)."""
        seen = [b for t, b in zip(self.minutes, self.bpb, strict=True) if t <= minutes + 1e-6]
        return seen[-1] if seen else None

    def last_within(self, minutes: float) -> int:
        """Index of the last record by ``minutes``."""
        return max(i for i, t in enumerate(self.minutes) if t <= minutes + 1e-6)


def cell(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def tables(
    runs: list[tuple[Contender, str]], curves: dict[str, Curve], budget: float
) -> list[Table]:
    """The speedrun's tables for ``runs`` ((contender, run name) pairs, a run's curve in
    ``curves`` under its name)."""
    marks = [m for m in (5, 10, 15) if m <= budget] or [budget]
    main = Table(
        f"Validation bits per byte on stdlib_py within a {budget:g}-minute budget",
        [
            "contender",
            "what",
            "steps",
            "tokens",
            "tokens/s",
            *(f"bpb at {m:g} min" for m in marks),
            "final (128 windows)",
            "vs a",
        ],
    )
    base = curves.get("a")
    for c, name in runs:
        curve = curves[name]
        minutes = c.minutes or budget
        i = curve.last_within(minutes)
        a_final = base.at(minutes) if base else None
        gain = "-" if a_final is None else f"{a_final - curve.at(minutes):+.3f}"
        main.rows.append(
            [
                name,
                f"{c.preset}: {c.what}",
                f"{curve.steps[i]:,}",
                f"{curve.tokens[i]:,}",
                num(curve.tokens[i] / (curve.minutes[i] * 60)),
                *(cell(curve.at(m)) if m <= minutes else "-" for m in marks),
                f"{curve.final_bpb:.3f}",
                gain,
            ]
        )
    main.notes = [
        f"The new default recipe: {RECIPE}.",
        f"Target (issue 17): at most {TARGET_BPB} bits per byte in 15 minutes, and below a "
        "and c at every budget from 5 to 15 minutes.",
        "bpb at N min: the last validation (16 fixed windows) measured by then, in the run's "
        "own precision; final: the run's last weights on 128 windows in float32, untimed.",
        "vs a: a's bits per byte at the contender's budget minus the contender's "
        "(positive: better than the wave-1 recipe).",
    ]
    budgets = Table(
        "Each budget its own run: the new default against a and c at the same wall time",
        ["budget", "b (its own run)", "a at that time", "c at that time"],
    )
    for name, minutes in (("b5", 5), ("b10", 10), ("b", budget)):
        if name in curves:
            b = curves[name].at(minutes)
            a = curves["a"].at(minutes) if "a" in curves else None
            hf = curves["c"].at(minutes) if "c" in curves else None
            budgets.rows.append([f"{minutes:g} min", cell(b), cell(a), cell(hf)])
    budgets.notes = [
        "a and c at a shorter time are read off their full-budget curves (mid-schedule), "
        "b5 and b10 are runs sized to those budgets."
    ]
    repeated = repeats_table(runs, curves)
    return [main] + ([budgets] if budgets.rows else []) + ([repeated] if repeated else [])


def repeats_table(runs: list[tuple[Contender, str]], curves: dict[str, Curve]) -> Table | None:
    """Each contender's final bits per byte over its ``--repeat`` runs: mean, spread and
    the difference of means from b's (None when no contender ran twice)."""
    finals: dict[str, list[float]] = {}
    for c, name in runs:
        finals.setdefault(c.name, []).append(curves[name].final_bpb)
    if max(len(f) for f in finals.values()) < 2:
        return None
    table = Table(
        "Repeated runs: final bits per byte (128 windows), each contender's mean and spread",
        ["contender", "runs", "final bpb of each run", "mean", "spread (max - min)", "mean - b's"],
    )
    base = finals.get("b")
    for name, values in finals.items():
        mean = sum(values) / len(values)
        vs_b = "-" if base is None else f"{mean - sum(base) / len(base):+.3f}"
        each = ", ".join(f"{v:.3f}" for v in values)
        table.rows.append(
            [name, str(len(values)), each, f"{mean:.3f}", f"{max(values) - min(values):.3f}", vs_b]
        )
    table.notes = [
        "A difference of means smaller than the spreads is not a difference these runs can "
        "tell apart."
    ]
    return table


def plot(
    runs: list[tuple[Contender, str]], curves: dict[str, Curve], machine: Machine, png: Path
) -> None:
    """Bits per byte against minutes, one line per run."""
    import matplotlib  # deferred: the plot extra is optional

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for c, name in runs:
        curve = curves[name]
        style = "-" if c.name in ("a", "b", "c") else ":"
        label = f"{name}: {c.preset}, {c.what}"
        ax.plot(curve.minutes, curve.bpb, style, label=label, linewidth=1.6)
    ax.axhline(TARGET_BPB, color="grey", linewidth=0.8, linestyle="--")
    where = f"{machine.threads} CPU threads" if machine.device == "cpu" else machine.device
    ax.set_xlabel(f"wall-clock minutes ({where})")
    ax.set_ylabel("validation bits per byte")
    lowest = min(min(curves[name].bpb) for _, name in runs)
    ax.set_ylim(min(1.1, lowest - 0.05), 2.6)
    ax.set_title("scratchlm speedrun on stdlib_py")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    print(f"plot written to {png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=15.0, help="minutes (default 15)")
    p.add_argument("--only", help="comma-separated contender names (default: a,b,c)")
    p.add_argument("--list", action="store_true", help="print the contenders and exit")
    p.add_argument("--reuse", action="store_true", help="keep finished runs of contenders")
    p.add_argument("--repeat", type=int, default=1, help="runs of each contender (default 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda: where scratchlm contenders train"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile scratchlm contenders")
    p.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    p.add_argument("--plot", type=Path, help="write the curves as a PNG here")
    args = p.parse_args()
    every = contenders(args.budget)
    if args.list:
        for c in every:
            print(f"{c.name:18} {c.preset:6} {c.what}")
        return
    names = (args.only or "a,b,c").split(",")
    unknown = sorted(set(names) - {c.name for c in every})
    if unknown:
        sys.exit(f"unknown contenders {unknown}: see --list")
    chosen = [c for c in every if c.name in names]
    if args.repeat < 1:
        sys.exit(f"--repeat {args.repeat}: give at least 1")
    on_cpu_only = [c.name for c in chosen if c.hf]
    if args.device != "cpu" and on_cpu_only:
        sys.exit(f"{on_cpu_only} train on the CPU only: leave them out of --only")
    machine = Machine(args.threads, args.device, args.compile)
    runs = [
        (c, run_name(c, k))
        for k in range(1, args.repeat + 1)
        for c in (chosen if k % 2 else chosen[::-1])
    ]
    ensure_inputs()
    report = Report()
    report.show(
        Table(
            "Machine",
            ["cores", "threads", "device", "compile", "load average at the start"],
            [[cores(), str(args.threads), args.device, str(args.compile), load_average()]],
        )
    )
    curves = {}
    for c, name in runs:
        curves[name] = Curve.read(run_contender(c, name, args.budget, machine, args.reuse))
        print(f"[{name}] final bpb {curves[name].final_bpb:.3f}", flush=True)
    for table in tables(runs, curves, args.budget):
        report.show(table)
    if args.plot:
        plot(runs, curves, machine, args.plot)
    report.finish("CPU speedrun", args.markdown)


if __name__ == "__main__":
    main()
