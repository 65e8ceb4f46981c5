"""Model benchmark: scratchlm's TransformerLM beside Hugging Face's LlamaForCausalLM.

    .venv/bin/python bench/bench_model.py [--quick] [--markdown PATH] [--tables 1,2,3,4]
                                          [--profile]

Prints four tables (same weights, same inputs, same run, ratios to the reference) and
writes them as Markdown with ``--markdown``:

1. machine: cores, versions, the measured matmul GFLOP/s (fp32, and bf16 where the
   CPU has it), the peak the other tables are read against, and the streaming read
   bandwidth (GB/s), the bound decoding is read against;
2. training step (forward + backward + AdamW) on preset ``small``: tokens/s, achieved
   GFLOP/s, % of the matmul peak, vs HF; eager, ``torch.compile`` and bf16 autocast;
3. decode, batch 1: ours with and without the KV cache (float32, int8 and bf16
   weights) beside HF ``generate`` with its cache, on the identical weights (exported
   with ``to_hf``), whether the greedy tokens agree, the bytes of weights each step
   reads and each decoder's speed as a % of its bound (read bandwidth / bytes per token);
4. batched generation of 8 prompts of different lengths vs the same prompts one at a time.

``--profile`` adds the top costs of our cached decode step (torch.profiler and cProfile).

Every contender runs in a fresh subprocess (``measure_torch``) with ``torch.set_num_threads``
(``--threads``, default 2) and its own empty torch.compile cache, so compile times are
cold. Warm-up steps are not timed; each row shows the mean of the timed steps and their
spread. Nothing here asserts a timing: the targets of the issue are printed beside the
measured ratios, for people to read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from decode_table import decode_table
from harness import Report, measure_torch
from model_tables import batched_table, machine_table, profile_table, training_table
from model_tasks import matmul_peak, read_bandwidth


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few steps (minutes)")
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    p.add_argument("--tables", default="1,2,3,4", help="which tables to run (default: all)")
    p.add_argument("--profile", action="store_true", help="add table 5: a decode-step profile")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every child")
    p.add_argument("--batch", type=int, help="training batch (default 8, --quick 2)")
    p.add_argument("--seq-len", type=int, help="training tokens per row (default 256, --quick 64)")
    p.add_argument("--train-steps", type=int, help="timed training steps (default 20, --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps (default 3, --quick 2)")
    p.add_argument(
        "--compile-limit", type=int, default=300, help="seconds allowed to compile (default 300)"
    )
    p.add_argument("--prompt-len", type=int, default=32, help="decode prompt tokens")
    p.add_argument("--new-tokens", type=int, help="decode new tokens (default 256, --quick 32)")
    p.add_argument("--decode-repeats", type=int, help="(default 5, --quick 2)")
    p.add_argument("--uncached-repeats", type=int, help="(default 2, --quick 1)")
    p.add_argument(
        "--batch-new-tokens", type=int, help="table 4 new tokens (default 128, --quick 16)"
    )
    p.add_argument("--batch-repeats", type=int, help="(default 3, --quick 1)")
    p.add_argument("--peak-repeats", type=int, help="matmul repeats (default 10, --quick 3)")
    p.add_argument(
        "--bandwidth-mb", type=int, help="MB summed to measure bandwidth (default 512, --quick 128)"
    )
    p.add_argument("--bandwidth-repeats", type=int, help="(default 10, --quick 3)")
    args = p.parse_args(argv)
    defaults = {  # name: (full, quick)
        "batch": (8, 2),
        "seq_len": (256, 64),
        "train_steps": (20, 3),
        "warmup": (3, 2),
        "new_tokens": (256, 32),
        "decode_repeats": (5, 2),
        "uncached_repeats": (2, 1),
        "batch_new_tokens": (128, 16),
        "batch_repeats": (3, 1),
        "peak_repeats": (10, 3),
        "bandwidth_mb": (512, 128),
        "bandwidth_repeats": (10, 3),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    which = {int(t) for t in args.tables.split(",")}

    report = Report()
    size = 2048
    peak_run = measure_torch(
        matmul_peak, threads=args.threads, size=size, repeats=args.peak_repeats
    )
    peak_run.result.update(size=size, repeats=args.peak_repeats)
    peak = None if peak_run.error else peak_run.result
    bandwidth_run = measure_torch(
        read_bandwidth, threads=args.threads, mb=args.bandwidth_mb, repeats=args.bandwidth_repeats
    )
    bandwidth = None if bandwidth_run.error else bandwidth_run.result
    report.show(machine_table(peak_run, bandwidth_run))
    if 2 in which:
        report.show(training_table(args, peak))
    if 3 in which:
        report.show(decode_table(args, peak, bandwidth))
    if 4 in which:
        report.show(batched_table(args))
    if args.profile:
        report.show(profile_table(args))

    quick = " (--quick: small sizes, not for docs)" if args.quick else ""
    report.finish(f"Model benchmark{quick}", args.markdown)


if __name__ == "__main__":
    main()
