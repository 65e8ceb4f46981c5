"""``scratchlm plot RUN_DIR``: loss curves of a training run (or of each run of a
pipeline directory) as PNG files."""

from __future__ import annotations

import argparse
import sys

from scratchlm.train.plot import plot_runs

FMT = argparse.RawDescriptionHelpFormatter

EPILOG_PLOT = """examples:
  scratchlm plot runs/mine                    # PNGs next to runs/mine/metrics.jsonl
  scratchlm plot runs/default                 # each stage: runs/default/pretrain/*.png, sft/
  scratchlm plot runs/default --out plots/    # plots/pretrain/*.png, plots/sft/*.png
"""


def _plot(args: argparse.Namespace) -> int:
    for run, paths in plot_runs(args.run_dir, args.out).items():
        if not paths:
            print(f"{run}: nothing to plot yet", file=sys.stderr)
        for path in paths:
            print(path)
    return 0


def plot_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Draw the loss curves of a training run from RUN_DIR/metrics.jsonl:\n"
        "train and validation loss against steps, tokens and wall time, and validation\n"
        "bits per byte. A pipeline directory (runs/default: pretrain/ and sft/ inside)\n"
        "gets the plots of each run in it. Prints the paths of the PNG files it writes.\n"
        "Needs matplotlib: pip install 'scratchlm[plot]'."
    )
    p.epilog = EPILOG_PLOT
    p.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run directory (or its metrics.jsonl), or a directory of runs",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="where to write (default: RUN_DIR; for a directory of runs, OUT/RUN)",
    )
    p.set_defaults(func=_plot)


PARSERS = {"plot": plot_parser}
