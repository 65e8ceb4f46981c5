"""The ``scratchlm`` command: parses arguments and calls library functions, nothing more.

Any ScratchLMError becomes one line on stderr and exit status 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from scratchlm import __version__
from scratchlm.cli import chat as cli_chat
from scratchlm.cli import checkpoint as cli_checkpoint
from scratchlm.cli import data as cli_data
from scratchlm.cli import evals as cli_evals
from scratchlm.cli import export as cli_export
from scratchlm.cli import model as cli_model
from scratchlm.cli import plot as cli_plot
from scratchlm.cli import tokenizer as cli_tokenizer
from scratchlm.cli import train as cli_train
from scratchlm.errors import ScratchLMError


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="scratchlm",
        description="Train, tune, chat with and export a small LLM, written from scratch.",
        epilog="example:\n  scratchlm train            # the default run on the built-in data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SCRATCHLM_LOG", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (default: $SCRATCHLM_LOG or INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for module in (
        cli_train,
        cli_chat,
        cli_data,
        cli_evals,
        cli_checkpoint,
        cli_plot,
        cli_export,
        cli_model,
        cli_tokenizer,
    ):
        module.register(sub)
    return parser


def _configure_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise SystemExit(
            f"scratchlm: error: unknown log level {level!r} (use DEBUG, INFO, WARNING or ERROR)"
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("scratchlm")
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scratchlm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return args.func(args)
    except ScratchLMError as e:
        if args.debug:
            raise
        print(f"scratchlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scratchlm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
