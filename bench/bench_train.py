"""Training benchmark: scratchlm's whole training loop beside Hugging Face's LlamaForCausalLM.

    .venv/bin/python bench/bench_train.py [--quick] [--markdown PATH] [--keep]
                                          [--no-compile] [--no-profile]

Prints five tables and writes them as Markdown with ``--markdown``:

1. machine and inputs: cores, versions, the prepared token directory;
2. training loop, preset ``small`` (batch 8 x 256, fp32): ours (``Trainer._train_step``,
   one whole optimizer update) beside ``LlamaForCausalLM`` with torch's AdamW on the same
   batches, same initial weights; median step time, tokens/s, ratio, spread; optionally
   ours with ``compile=True``;
3. where one step of each side spends its time: torch.profiler, top ops by self CPU time;
4. data loading: ``trainer.sampler.next("cpu")`` alone, as a share of a step;
   the first fetches from a 1 GB file that is not in the page cache, and (an experiment)
   the same with the mapping advised ``MADV_RANDOM``;
5. peak RSS of 20 training steps on the real token directory and on a synthetic 1 GB one
   (read right after it is written, and again dropped from the page cache): memory must
   not grow with the token file (it is read through ``np.memmap``).

The contenders of table 2 run in one fresh process (``harness.measure``) with
``torch.set_num_threads`` (``--threads``, default 2), in alternating blocks of steps
(round 1: A B C, round 2: B C A, ...), so a change in machine load hits every side alike.
Inputs live in ``bench/.data`` (git-ignored): the 10,000-token tokenizer and the prepared
token directory are built from ``stdlib_py.txt`` on first use; the 1 GB token directory is
written for each run and deleted afterwards unless ``--keep``. Nothing here asserts a
timing: the issue's targets are printed beside the measured ratios, for people to read.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from harness import Report, Run, measure_torch
from train_inputs import (
    DATA,
    PREPARED,
    SYNTHETIC,
    drop_from_page_cache,
    ensure_inputs,
    make_synthetic,
)
from train_tables import data_table, machine_table, memory_table, profile_table, speed_table
from train_tasks import fetch_cold, train_memory, train_speed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few rounds, small synthetic file")
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every child")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 6, --quick 2)")
    p.add_argument("--block", type=int, help="timed steps per block (default 5, --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed steps per side (default 3, --quick 1)")
    p.add_argument("--no-compile", action="store_true", help="leave out ours with compile=True")
    p.add_argument(
        "--compile-limit", type=int, default=180, help="seconds allowed to compile (default 180)"
    )
    p.add_argument("--no-profile", action="store_true", help="leave out table 3")
    p.add_argument("--profile-steps", type=int, default=2, help="profiled steps per side")
    p.add_argument("--memory-steps", type=int, help="steps per memory run (default 20, --quick 5)")
    p.add_argument(
        "--big-tokens", type=int, help="synthetic train tokens (default 500M = 1 GB, --quick 50M)"
    )
    p.add_argument("--cold-fetches", type=int, default=20, help="fetches in the cold rows")
    p.add_argument("--keep", action="store_true", help="keep the synthetic token directory")
    args = p.parse_args(argv)
    defaults = {  # name: (full, quick)
        "rounds": (6, 2),
        "block": (5, 2),
        "warmup": (3, 1),
        "memory_steps": (20, 5),
        "big_tokens": (500_000_000, 50_000_000),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if min(args.rounds, args.block, args.warmup, args.memory_steps) < 1:
        p.error("--rounds, --block, --warmup and --memory-steps must be at least 1")
    compiled = not (args.no_compile or args.quick)

    report = Report()
    inputs = ensure_inputs()
    report.show(machine_table(inputs, args))
    speed = measure_torch(
        train_speed,
        threads=args.threads,
        data=str(PREPARED),
        rounds=args.rounds,
        block=args.block,
        warmup=args.warmup,
        compiled=compiled,
        compile_limit_s=args.compile_limit,
        profile_steps=0 if args.no_profile else args.profile_steps,
        fetch_repeats=200,
    )
    if not speed.error:
        speed.result["profile_steps"] = args.profile_steps
    report.show(speed_table(speed, args))
    if not args.no_profile:
        report.show(profile_table(speed))

    synthetic = SYNTHETIC if args.big_tokens == 500_000_000 else DATA / "stdlib10k_synthetic"
    gb = 2 * args.big_tokens / 1e9
    size = f"{gb:.1f} GB" if gb >= 1 else f"{1e3 * gb:,.0f} MB"
    memory: dict[str, Run] = {}
    cold: dict[str, Run] = {}
    try:
        write_s = make_synthetic(synthetic, args.big_tokens, inputs["meta"]["vocab_size"])
        contenders = [  # (label, directory, drop train.bin from the page cache first)
            ("real", PREPARED, False),
            (f"synthetic {size}, in page cache", synthetic, False),
            (f"synthetic {size}, dropped from page cache", synthetic, True),
        ]
        for label, folder, drop in contenders:
            if drop:
                drop_from_page_cache(folder / "train.bin")
            memory[label] = measure_torch(
                train_memory,
                threads=args.threads,
                data=str(folder),
                steps=args.memory_steps,
                fetch_repeats=200,
            )
        for advise in (False, True):
            label = f"synthetic {size}, cold, first {args.cold_fetches} fetches"
            label += ", MADV_RANDOM (experiment)" if advise else ""
            drop_from_page_cache(synthetic / "train.bin")
            cold[label] = measure_torch(
                fetch_cold,
                threads=args.threads,
                data=str(synthetic),
                fetches=args.cold_fetches,
                madvise_random=advise,
            )
    finally:
        if not args.keep:
            shutil.rmtree(synthetic, ignore_errors=True)
    report.show(data_table(speed, memory, cold))
    report.show(memory_table(memory, args.memory_steps, write_s))

    quick = " (--quick: few steps, not for docs)" if args.quick else ""
    report.finish(f"Training benchmark{quick}", args.markdown)


if __name__ == "__main__":
    main()
