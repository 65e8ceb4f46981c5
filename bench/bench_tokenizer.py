"""Tokenizer benchmark: scratchlm beside Hugging Face `tokenizers`, `rustbpe` and `tiktoken`.

    .venv/bin/python bench/bench_tokenizer.py [--quick] [--markdown PATH] [--tables 1,2,3,4]

Prints four tables (same inputs, same run, ratios to ours) and writes them as Markdown
with ``--markdown``:

1. training time and peak memory, vocab 10,000 with ``<|endoftext|>``;
2. encoding and decoding MB/s, single thread;
3. id equality over the whole of each corpus (ours pure Python, ours tiktoken path,
   plain tiktoken, HF tokenizers);
4. memory bounds: streaming encode of a large file, training on a file with no newline.

Every contender runs in a fresh subprocess (``harness.measure``), so each peak RSS is its own; the
child times only the sections inside ``clock(...)``, never imports or reading input
unless the tool itself reads it (said in each table's notes). Nothing here asserts a
timing: the numbers are for people to read. MB = 10^6 bytes of UTF-8 text; MiB = 2^20.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import REPO, Report, Table
from tokenizer_tables import (
    table_encoding,
    table_equality,
    table_memory,
    table_merge_loop,
    table_training,
)
from tokenizer_tasks import DATA, full_corpora, machine_facts, quick_slices


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="small slices of the corpora and small generated files (minutes)",
    )
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    p.add_argument("--tables", default="1,2,3,4", help="which tables to run (default: all)")
    p.add_argument("--vocab-size", type=int, default=10_000)
    p.add_argument(
        "--ref-merges",
        type=int,
        help="merges for the pure-Python reference (default 300, --quick 20)",
    )
    p.add_argument(
        "--big-mb",
        type=float,
        help="size of the streaming file in table 4 (default 1000, --quick 50)",
    )
    p.add_argument(
        "--nonl-mb",
        type=float,
        help="size of the no-newline file in table 4 (default 200, --quick 20)",
    )
    p.add_argument("--quick-mb", type=float, default=3.0, help="corpus slice size in --quick")
    args = p.parse_args(argv)
    args.ref_merges = args.ref_merges or (20 if args.quick else 300)
    args.big_mb = args.big_mb or (50 if args.quick else 1000)
    args.nonl_mb = args.nonl_mb or (20 if args.quick else 200)
    which = {int(t) for t in args.tables.split(",")}

    report = Report()
    work = DATA / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    paths = full_corpora()
    if args.quick:
        paths = quick_slices(paths, args.quick_mb, work)

    report.show(machine_facts())
    report.show(
        Table(
            "Inputs",
            ["corpus", "file", "MB"],
            [
                [n, str(p.relative_to(REPO)), f"{p.stat().st_size / 1e6:.1f}"]
                for n, p in paths.items()
            ],
        )
    )

    trained: dict = {}
    details: list[str] = []
    if 1 in which:
        table, trained = table_training(paths, args, work)
        report.show(table)
        report.show(table_merge_loop(paths, args))
    if 2 in which:
        report.show(table_encoding(paths, args, work, trained))
    if 3 in which:
        eq, details = table_equality(paths, work)
        if details:
            eq.details = ["DIFFERENCES (a bug):", *details]
        report.show(eq)
    if 4 in which:
        report.show(table_memory(paths, args, work, trained))

    quick = " (--quick: small slices, not for docs)" if args.quick else ""
    report.finish(f"Tokenizer benchmark{quick}", args.markdown)


if __name__ == "__main__":
    main()
