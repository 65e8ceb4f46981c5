"""LoRA benchmark: memory and speed of training adapters beside full fine-tuning.

    .venv/bin/python bench/bench_lora.py [--quick] [--steps N] [--batch N] [--seq-len N]
                                         [--precision P] [--checkpointing off|on|both]
                                         [--malloc default|mmap|both] [--loss-chunk N]
                                         [--preset NAME] [--modes NAME,...]
                                         [--threads N] [--markdown PATH]

Each contender trains a preset (``small`` by default; random weights: memory and speed
do not depend on them) in a fresh process (``harness.measure``, 2 threads), on the same
random token batches, with what the trainer does per step: forward + loss under the
run's autocast (``--precision``, default: what ``--precision auto`` picks here, bf16 on
a CPU with hardware bf16), backward, clip the gradient to 1.0, AdamW
(``build_optimizer``, fused where torch has it), zero_grad:

- full: every parameter trained (what ``scratchlm sft`` does without ``--lora``);
- lora: ``--lora r=8,alpha=16,targets=q_proj,v_proj``, the base frozen in float32;
- lora bf16: the same adapters on the bf16 base (``base=bf16``: every frozen matrix
  stored in bfloat16);
- lora int8: the same adapters on the int8 base (``base=int8``, "QLoRA-lite").

All run under the same settings, once keeping every activation for the backward pass
and once with ``--checkpoint-activations`` (each block's input kept, the block
recomputed in backward), and (``--malloc``) with glibc's default allocator settings or
with ``MALLOC_MMAP_THRESHOLD_=65536`` (every allocation over 64 KiB is its own mapping,
returned to the kernel when freed, so the RSS follows the live tensors instead of
keeping freed blocks in the heap). Each ratio compares with full fine-tuning under the
same settings, and with full fine-tuning at its best (the lowest full peak measured in
the same invocation, whatever its settings). The loss is ``model.loss``, the chunked
output layer + cross-entropy the trainer uses (it never holds the (tokens x vocabulary)
logits at once; ``--loss-chunk`` rows at a time).

Peak RSS is read from the kernel (VmHWM). The training peak is measured from the start
of the first step, after the model was built (the high-water mark is reset through
/proc/self/clear_refs): weights, gradients, optimizer state and activations, plus the
Python and torch runtime already resident. "Above baseline" subtracts the RSS the
process had before the model was built (Python, torch, the imports): what training
itself costs. The process peak also counts building the model (for int8: the float
weights before they are quantized). Nothing here asserts a timing or a size: the issue's
target (LoRA's peak at most half of full fine-tuning's, optimizer state included) is
printed beside the measured ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from harness import Report, Run, Table, cores, load_average, measure, package_version, ratio

MODES = {
    "full": "",
    "lora": "r=8,alpha=16,targets=q_proj,v_proj",
    "lora bf16": "r=8,alpha=16,base=bf16,targets=q_proj,v_proj",
    "lora int8": "r=8,alpha=16,base=int8,targets=q_proj,v_proj",
}
MALLOC = {  # glibc settings of the child process
    "default": {},
    "mmap": {"MALLOC_MMAP_THRESHOLD_": "65536"},
}
LOSS_CHUNK = 1024  # the model's default (model/loss.py)
SEED = 1337
MIB = 2**20


def _status(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def train_steps(
    spec: str,
    steps: int,
    warmup: int,
    batch: int,
    seq_len: int,
    precision: str = "fp32",
    checkpointing: bool = False,
    preset_name: str = "small",
    loss_chunk: int = LOSS_CHUNK,
) -> dict:
    """Train ``preset_name`` for ``warmup`` + ``steps`` steps, LoRA per ``spec`` ("" =
    full fine-tuning), under ``precision``'s autocast ("auto": what the trainer would
    pick), with activation checkpointing or not, the loss ``loss_chunk`` rows at a time;
    returns step times, memory and parameter counts."""
    import torch

    from scratchlm.config import preset
    from scratchlm.model import TransformerLM
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.optim import build_optimizer, clip_grad_norm
    from scratchlm.train.runtime import autocast, cpu_flags, pick_precision
    from scratchlm.tune.lora import apply_lora, parse_lora_spec

    cpu = torch.device("cpu")
    precision = pick_precision(precision, cpu, cpu_flags())
    torch.manual_seed(SEED)
    rss_start = _status("VmRSS")
    model = TransformerLM(preset(preset_name, context_length=seq_len)).train()
    model.checkpoint_activations = checkpointing
    if spec:
        apply_lora(model, parse_lora_spec(spec))
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", lr=3e-4))  # as sft
    g = torch.Generator().manual_seed(SEED)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (batch, seq_len + 1), generator=g) for _ in range(4)]
    rss_built = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM: the training peak from here
        f.write("5")

    def step(i: int) -> float:
        start = time.perf_counter()
        rows = batches[i % len(batches)]
        with autocast(cpu, precision):
            loss = model.loss(rows[:, :-1], rows[:, 1:], chunk_size=loss_chunk)
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())  # syncs, as the trainer's read of the loss does
        assert value == value, "the loss is NaN"
        return time.perf_counter() - start

    for i in range(warmup):
        step(i)
    times = [step(warmup + i) for i in range(steps)]
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {
        "step_s": times,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "weights_mib": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / MIB,
        "optimizer_mib": sum(t.numel() * t.element_size() for t in state) / MIB,
        "rss_start_mib": rss_start,
        "rss_built_mib": rss_built,
        "train_peak_mib": _status("VmHWM"),
        "tokens_per_step": batch * seq_len,
        "precision": precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "malloc": os.environ.get("MALLOC_MMAP_THRESHOLD_", "default"),
    }


GROUPS = {"off": (False,), "on": (True,), "both": (False, True)}
MALLOC_GROUPS = {"default": ("default",), "mmap": ("mmap",), "both": ("default", "mmap")}
Key = tuple[str, bool, str]  # contender, checkpointing, malloc


def _group(checkpointing: bool) -> str:
    return "checkpointed" if checkpointing else "all kept"


def _above(r: dict) -> float:
    """The training peak above the RSS the process had before the model was built."""
    return r["train_peak_mib"] - r["rss_start_mib"]


def results_table(runs: dict[Key, Run], args: argparse.Namespace) -> Table:
    done = [r.result for r in runs.values() if not r.error]
    precision = done[0]["precision"] if done else args.precision
    title = (
        f"preset {args.preset}, batch {args.batch} x {args.seq_len} tokens, {precision} "
        f"autocast, loss {args.loss_chunk} rows at a time, {args.threads} threads, "
        f"{args.steps} timed steps after {args.warmup}"
    )
    headers = ["training", "activations", "malloc", "trainable params", "weights MiB",
               "optimizer state MiB", "training peak RSS MiB", "vs full", "vs best full",
               "peak above baseline MiB", "vs full", "vs best full", "process peak RSS MiB",
               "tokens/s (median)", "vs full"]  # fmt: skip
    table = Table(title, headers)

    def tps(r: dict) -> float:
        return r["tokens_per_step"] / statistics.median(r["step_s"])

    fulls = [run.result for (name, _, _), run in runs.items() if name == "full" and not run.error]
    best_peak = min((r["train_peak_mib"] for r in fulls), default=None)
    best_above = min((_above(r) for r in fulls), default=None)
    for (name, checkpointing, malloc), run in runs.items():
        group = _group(checkpointing)
        if run.error:
            table.rows.append([name, group, malloc, "failed", run.error] + [""] * 10)
            continue
        r = run.result
        full = runs.get(("full", checkpointing, malloc))
        base = full.result if full is not None and not full.error else None
        peak = ratio(r["train_peak_mib"] / base["train_peak_mib"]) if base else ""
        net = ratio(_above(r) / _above(base)) if base else ""
        speed = ratio(tps(r) / tps(base)) if base else ""
        best = ratio(r["train_peak_mib"] / best_peak) if best_peak else ""
        best_net = ratio(_above(r) / best_above) if best_above else ""
        table.rows.append([
            name, group, malloc, f"{r['trainable']:,}", f"{r['weights_mib']:,.0f}",
            f"{r['optimizer_mib']:,.1f}", f"{r['train_peak_mib']:,.0f}", peak, best,
            f"{_above(r):,.0f}", net, best_net, f"{run.peak_rss_mib:,.0f}",
            f"{tps(r):,.0f}", speed,
        ])  # fmt: skip
    if done:
        starts = sorted(r["rss_start_mib"] for r in done)
        table.notes.append(
            f"baseline, resident before the model was built (Python, torch, imports): "
            f"{starts[0]:,.0f}-{starts[-1]:,.0f} MiB; it is part of every training peak"
        )
    table.notes += [
        "LoRA: " + "; ".join(f"{k}: --lora {v}" for k, v in MODES.items() if v),
        "activations: all kept for backward, or checkpointed (--checkpoint-activations: "
        "each block's input kept, the block recomputed in backward)",
        "malloc: glibc's default settings, or mmap: MALLOC_MMAP_THRESHOLD_=65536 (freed "
        "tensors go back to the kernel)",
        "vs full: under the same settings; vs best full: against the lowest full "
        "fine-tuning figure in this table, whatever its settings",
        "the issue's target: LoRA's training peak at most 0.50x full fine-tuning's",
        "random token batches (fixed seed), the loss on every position; one process per row",
    ]
    return table


def machine_table(args: argparse.Namespace) -> Table:
    table = Table("Machine", ["fact", "value"])
    malloc = ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    table.rows += [
        ["cores", cores()],
        ["load average at start", load_average()],
        ["python", platform.python_version()],
        ["torch", package_version("torch")],
        ["torch threads", f"{args.threads} (torch.set_num_threads, OMP_NUM_THREADS)"],
        ["glibc malloc (this process)", malloc or "default settings"],
        ["date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")],
    ]
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 steps of batch 2 x 64: a smoke run")
    p.add_argument("--steps", type=int, help="timed steps per contender (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, help="rows per step (default 8)")
    p.add_argument("--seq-len", type=int, help="tokens per row (default 256)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--precision", default="auto", help="fp32, bf16 or auto (the trainer's choice here)"
    )
    p.add_argument(
        "--checkpointing", choices=sorted(GROUPS), default="both",
        help="activation checkpointing off, on, or both (each contender twice)",
    )  # fmt: skip
    p.add_argument(
        "--malloc", choices=sorted(MALLOC_GROUPS), default="default",
        help="glibc's default settings, mmap (MALLOC_MMAP_THRESHOLD_=65536), or both",
    )  # fmt: skip
    p.add_argument(
        "--loss-chunk", type=int, default=LOSS_CHUNK,
        help=f"rows of the output layer + loss at a time (default {LOSS_CHUNK}, the model's)",
    )  # fmt: skip
    p.add_argument("--preset", default="small", help="the model (default small)")
    p.add_argument(
        "--modes", default=",".join(MODES),
        help=f"the contenders, comma-separated (default all: {','.join(MODES)})",
    )  # fmt: skip
    p.add_argument("--markdown", type=Path, help="also write the tables here as Markdown")
    args = p.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 20)
    args.batch = args.batch or (2 if args.quick else 8)
    args.seq_len = args.seq_len or (64 if args.quick else 256)
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown contender {unknown[0]!r}: choose from {', '.join(MODES)}")
    if "default" in MALLOC_GROUPS[args.malloc] and any(k in os.environ for k in MALLOC["mmap"]):
        p.error("MALLOC_MMAP_THRESHOLD_ is set here: unset it, or measure with --malloc mmap")

    report = Report()
    report.show(machine_table(args))
    runs: dict[Key, Run] = {}
    for malloc in MALLOC_GROUPS[args.malloc]:
        for checkpointing in GROUPS[args.checkpointing]:
            for name in modes:
                runs[name, checkpointing, malloc] = measure(
                    train_steps, env=MALLOC[malloc], threads=args.threads, timeout=3600,
                    spec=MODES[name], steps=args.steps, warmup=args.warmup,
                    batch=args.batch, seq_len=args.seq_len, precision=args.precision,
                    checkpointing=checkpointing, preset_name=args.preset,
                    loss_chunk=args.loss_chunk,
                )  # fmt: skip
                print(f"  {name}, {_group(checkpointing)}, malloc {malloc}: done", flush=True)
    report.show(results_table(runs, args))
    quick = " (--quick: few steps, not for docs)" if args.quick else ""
    report.finish(f"LoRA vs full fine-tuning{quick}", args.markdown)


if __name__ == "__main__":
    main()
