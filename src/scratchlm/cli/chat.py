"""``scratchlm chat`` and ``scratchlm generate``: talk to a model, or let it continue text."""

from __future__ import annotations

import argparse
import sys
from typing import Any

FMT = argparse.RawDescriptionHelpFormatter

EPILOG_CHAT = """examples:
  scratchlm chat                                  # the newest model under runs/ (see below)
  scratchlm chat runs/default/sft --temperature 0
  scratchlm chat runs/mine --system 'You are terse.' --prompt 'Why is the sky blue?'
  printf 'Hi!\\nWhat is rain?\\n' | scratchlm chat runs/mine > answers.txt

Without CHECKPOINT: runs/default/sft if it has a valid checkpoint, else the run directory
under runs/ (one or two levels down) that saved a checkpoint last.
On a terminal it is a REPL (/help lists its commands; Ctrl-C stops an answer). With piped
input each line is one message and each answer one output line. See docs/chat.md.
"""

EPILOG_GENERATE = """examples:
  scratchlm generate runs/default/pretrain --prompt 'Water boils'
  scratchlm generate runs/mine --prompt 'Once upon a time' --n 4 --seed 1 --top-p 0.9

Prints the prompt followed by its continuation; with --n > 1 the samples run as one
batch and each is printed after a line '--- i ---'.
"""


def add_chat_checkpoint(p: argparse.ArgumentParser) -> None:
    """The optional CHECKPOINT argument of commands that talk to a chat model."""
    p.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="checkpoint or run directory (default: the newest model under runs/)",
    )


def _add_sampling(p: argparse.ArgumentParser) -> None:
    """The sampling flags both commands share (see scratchlm.sampling)."""
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus mass to keep (1 = off)")
    g.add_argument("--min-p", type=float, default=0.0, help="min-p filter (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="0 = off")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="0 = off")
    g.add_argument("--max-new-tokens", type=int, default=256, help="answer budget (default: 256)")
    g.add_argument("--seed", type=int, default=None, help="for reproducible samples")
    g.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)"
    )
    add_model_options(p)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Where the model runs and in what form: --device and --int8."""
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--int8",
        action="store_true",
        help="quantize the weights to int8 after loading: about 2x faster answers on a CPU "
        "once the weights outgrow its cache (preset small and up), slightly different "
        "ones (docs/model.md)",
    )


def _sample_config(args: argparse.Namespace) -> Any:
    from scratchlm.config import SampleConfig

    return SampleConfig(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        stop=args.stop,
    )


def load_chat_model(path: Any, device: str, int8: bool = False) -> tuple[Any, Any]:
    """The model, prepared for generation (``int8``: with int8 weights), and its
    tokenizer from a checkpoint or run directory."""
    from scratchlm.checkpoint import load_model
    from scratchlm.errors import TokenizerError
    from scratchlm.model import prepare_for_inference
    from scratchlm.train.runtime import pick_device

    model, tokenizer = load_model(path, device=pick_device(device))
    if tokenizer is None:
        raise TokenizerError(f"checkpoint {path} has no tokenizer.json: save it with one")
    return prepare_for_inference(model, int8=int8), tokenizer


def _write_stream(pieces: Any) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()  # token by token
    sys.stdout.write("\n")
    sys.stdout.flush()


def _chat(args: argparse.Namespace) -> int:
    from scratchlm.chat import default_chat_checkpoint
    from scratchlm.chat_repl import ChatSession, run_repl

    sample = _sample_config(args)  # bad settings fail before the model loads
    path = args.checkpoint if args.checkpoint is not None else default_chat_checkpoint()
    model, tokenizer = load_chat_model(path, args.device, args.int8)
    session = ChatSession(model, tokenizer, sample, system=args.system, name=str(path))
    if args.prompt is not None:
        _write_stream(session.send(args.prompt))
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_line_editing()
    run_repl(session, input_stream=sys.stdin, output_stream=sys.stdout, interactive=interactive)
    return 0


def _enable_line_editing() -> None:
    """Load readline (absent on some platforms), which gives input() editing and history."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("readline") is not None:
        importlib.import_module("readline")


def _generate(args: argparse.Namespace) -> int:
    from scratchlm.errors import ConfigError
    from scratchlm.textgen import generate, stream

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    sample = _sample_config(args)
    model, tokenizer = load_chat_model(args.checkpoint, args.device, args.int8)
    if args.n == 1:
        sys.stdout.write(args.prompt)
        _write_stream(stream(model, tokenizer, args.prompt, sample))
        return 0
    # One batch: the rows share one generator, so with a seed they still differ.
    texts = generate(model, tokenizer, [args.prompt] * args.n, sample)
    for i, text in enumerate(texts, start=1):
        print(f"--- {i} ---")
        print(args.prompt + text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``chat`` and ``generate`` to the top-level subparsers."""
    p = sub.add_parser(
        "chat",
        help="talk to an instruction-tuned model",
        description="Chat with an instruction-tuned model: a REPL on a terminal, one answer "
        "per line with piped input, or one answer with --prompt.",
        epilog=EPILOG_CHAT,
        formatter_class=FMT,
    )
    add_chat_checkpoint(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="system message")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="answer this one message, exit")
    _add_sampling(p)
    p.set_defaults(func=_chat)

    p = sub.add_parser(
        "generate",
        help="continue a prompt with any model (raw completion)",
        description="Continue a prompt with a model, instruction-tuned or not.",
        epilog=EPILOG_GENERATE,
        formatter_class=FMT,
    )
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument(
        "--prompt",
        default="",
        metavar="TEXT",
        help="text to continue (default: empty, start a new document)",
    )
    p.add_argument("--n", type=int, default=1, help="number of samples (default: 1)")
    _add_sampling(p)
    p.set_defaults(func=_generate)
