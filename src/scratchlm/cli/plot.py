"""``scratchlm plot RUN_DIR``: loss curves of a training run as PNG files."""

from __future__ import annotations

import argparse

from scratchlm.train.plot import plot_run

FMT = argparse.RawDescriptionHelpFormatter

EPILOG_PLOT = """example:
  scratchlm plot runs/default                 # PNGs next to runs/default/metrics.jsonl
  scratchlm plot runs/default --out plots/
"""


def _plot(args: argparse.Namespace) -> int:
    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0


def plot_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Draw the loss curves of a training run from RUN_DIR/metrics.jsonl:\n"
        "train and validation loss against steps, tokens and wall time, and validation\n"
        "bits per byte. Prints the paths of the PNG files it writes.\n"
        "Needs matplotlib: pip install 'scratchlm[plot]'."
    )
    p.epilog = EPILOG_PLOT
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or its metrics.jsonl)")
    p.add_argument("--out", metavar="DIR", default=None, help="where to write (default: RUN_DIR)")
    p.set_defaults(func=_plot)


PARSERS = {"plot": plot_parser}
