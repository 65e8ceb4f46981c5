"""``scratchlm report RUN_DIR``: the report card of a run (report.md, report.json and
its plots), optionally beside another run."""

from __future__ import annotations

import argparse
import sys

from scratchlm.report import write_report

EPILOG_REPORT = """examples:
  scratchlm report runs/default                   # report.md + report.json in runs/default
  scratchlm report runs/mine --out reports/mine   # written elsewhere
  scratchlm report runs/new --compare runs/old    # side by side, regressions flagged
  scratchlm report runs/mine --no-speed           # skip the decode-speed measurement
"""


def _report(args: argparse.Namespace) -> int:
    path = write_report(
        args.run_dir,
        args.out,
        compare=args.compare,
        speed=not args.no_speed,
        echo=lambda line: print(line, file=sys.stderr),
    )
    print(path)
    print(path.with_name("report.json"))
    return 0


def report_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write the report card of a run: environment, data, model, training (loss curves,\n"
        "best validation bits per byte), the evaluations kept in the run, decode speed in\n"
        "float32 and int8, export parity and samples. report.md (with PNG plots beside it)\n"
        "and report.json (versioned) go into RUN_DIR, or --out. A pipeline directory\n"
        "(runs/default: pretrain/ and sft/) reports each stage. Prints the paths written.\n"
        "Plots need matplotlib: pip install 'scratchlm[plot]' (without it: no plots)."
    )
    p.epilog = EPILOG_REPORT
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory, a checkpoint, or a directory of runs"
    )
    p.add_argument("--out", metavar="DIR", default=None, help="where to write (default: RUN_DIR)")
    p.add_argument(
        "--compare",
        metavar="OTHER_RUN",
        default=None,
        help="another run (or its report.json): figures side by side, regressions flagged",
    )
    p.add_argument("--no-speed", action="store_true", help="do not measure decode speed")
    p.set_defaults(func=_report)


PARSERS = {"report": report_parser}
