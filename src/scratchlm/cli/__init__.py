"""The ``scratchlm`` command: parses arguments and calls library functions, nothing more.

Any ScratchLMError becomes one line on stderr and exit status 2, any other OSError one
line and exit status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from scratchlm import __version__
from scratchlm.errors import ScratchLMError

# Each command: the module under scratchlm.cli that builds its parser and runs it, and its
# line in `scratchlm --help`. Only the chosen command's module is imported, since the
# modules import torch and `scratchlm --help` should not wait for it.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "pretrain a model (no arguments: the default run on the built-in data)"),
    "sft": ("train", "instruction-tune a pretrained model on conversations"),
    "dpo": ("dpo", "preference-tune a model on chosen/rejected answers (DPO)"),
    "chat": ("chat", "talk to an instruction-tuned model"),
    "generate": ("chat", "continue a prompt with any model (raw completion)"),
    "serve": ("serve", "serve a model over HTTP: OpenAI-compatible API and a chat page"),
    "prepare": ("data", "encode a corpus into train/val token files"),
    "eval": ("evals", "measure what a trained model knows"),
    "checkpoint": ("checkpoint", "inspect and verify checkpoints"),
    "plot": ("plot", "draw a run's loss curves as PNG files"),
    "report": ("report", "write a run's report card (report.md, report.json)"),
    "export": ("export", "write a checkpoint in another ecosystem's format"),
    "import": ("export", "read another ecosystem's model as a checkpoint"),
    "lora": ("lora", "merge a LoRA run's adapters, or write them for PEFT"),
    "model": ("model", "inspect model presets"),
    "tokenizer": ("tokenizer", "train, apply and inspect tokenizers"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``scratchlm`` parser, with the flags of ``command`` (the others: name only)."""
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
    for name, (module, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == command:
            importlib.import_module(f"scratchlm.cli.{module}").PARSERS[name](p)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is one (before it come only the
    options of ``scratchlm`` itself, whose values are no command names)."""
    return next((word for word in argv if word in COMMANDS), None)


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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(chosen_command(argv)).parse_args(argv)
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
    except OSError as e:
        # The system refused something no check foresaw (a full disk while writing a
        # log, a file vanishing mid-run): still one line, naming the file and the cause.
        if args.debug:
            raise
        print(f"scratchlm: error: {describe_os_error(e)} (--debug shows where)", file=sys.stderr)
        return 1


def describe_os_error(error: OSError) -> str:
    """One line for an OSError: 'no space left on device: runs/x/metrics.jsonl' rather
    than '[Errno 28] No space left on device: ...'."""
    cause = error.strerror or str(error)
    cause = cause[:1].lower() + cause[1:]
    files = [os.fsdecode(f) for f in (error.filename, error.filename2) if f is not None]
    return f"{cause}: {' -> '.join(files)}" if files else cause
