"""``scratchlm train``: the default pipeline, or a training run."""

from __future__ import annotations

import argparse
from pathlib import Path

FMT = argparse.RawDescriptionHelpFormatter


def _train(args: argparse.Namespace) -> int:
    from scratchlm.pipeline import DefaultRun, run_default

    run_default(DefaultRun(out_dir=Path(args.out)), progress=not args.quiet)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the top-level subparsers."""
    p = sub.add_parser(
        "train",
        help="run the default pipeline on the built-in data",
        description="Run the default pipeline on the built-in data (for now: the tokenizer "
        "stage). Finished stages are reused on a rerun.",
        epilog="example:\n  scratchlm train --out runs/default",
        formatter_class=FMT,
    )
    p.add_argument("--out", default="runs/default", help="run directory (default: runs/default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)
