"""``scratchlm plot RUN_DIR``: loss curves of a training run as PNG files."""

from __future__ import annotations

import argparse

FMT = argparse.RawDescriptionHelpFormatter

EPILOG_PLOT = """example:
  scratchlm plot runs/default                 # PNGs next to runs/default/metrics.jsonl
  scratchlm plot runs/default --out plots/
"""


def _plot(args: argparse.Namespace) -> int:
    from scratchlm.train.plot import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``plot`` to the top-level subparsers."""
    p = sub.add_parser(
        "plot",
        help="draw a run's loss curves as PNG files",
        description="Draw the loss curves of a training run from RUN_DIR/metrics.jsonl:\n"
        "train and validation loss against steps, tokens and wall time, and validation\n"
        "bits per byte. Prints the paths of the PNG files it writes.\n"
        "Needs matplotlib: pip install 'scratchlm[plot]'.",
        epilog=EPILOG_PLOT,
        formatter_class=FMT,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or its metrics.jsonl)")
    p.add_argument("--out", metavar="DIR", default=None, help="where to write (default: RUN_DIR)")
    p.set_defaults(func=_plot)
