"""``scratchlm chat`` and ``scratchlm generate``: talk to a model, or let it continue text."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Any

from scratchlm.chat import default_chat_checkpoint
from scratchlm.chat_repl import ChatSession, run_repl
from scratchlm.checkpoint import load_model
from scratchlm.cli.config_flags import add_config_flags, given_settings
from scratchlm.config import SampleConfig
from scratchlm.console import CountProgress
from scratchlm.errors import ConfigError, ScratchLMError, TokenizerError
from scratchlm.model import prepare_for_inference
from scratchlm.textgen import batch_rows, generate_samples, stream
from scratchlm.train.runtime import pick_device

EPILOG_CHAT = """examples:
  scratchlm chat                                  # the newest model under runs/ (see below)
  scratchlm chat runs/default/sft --temperature 0
  scratchlm chat runs/mine --system 'You are terse.' --prompt 'Why is the sky blue?'
  printf 'Hi!\\nWhat is rain?\\n' | scratchlm chat runs/mine > answers.txt

Without CHECKPOINT: runs/default/sft if it has a valid checkpoint, else the run directory
under runs/ (one or two levels down) that saved a checkpoint last.
On a terminal it is a REPL (/help lists its commands; Ctrl-C stops an answer). With piped
input each line is one message and each answer one output line; the exit status is 2
when any message could not be answered. See docs/chat.md.
"""

EPILOG_GENERATE = """examples:
  scratchlm generate runs/default/pretrain --prompt 'Water boils'
  scratchlm generate runs/mine --prompt 'Once upon a time' --n 4 --seed 1 --top-p 0.9

Prints the prompt followed by its continuation; with --n > 1 the samples run in batches
(as many rows as fit 1 GB of KV cache, at most 64) and each is printed after a line
'--- i ---' as soon as its batch is done.
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
    """The sampling flags both commands share: SampleConfig's fields (scratchlm.sampling)."""
    add_config_flags(p.add_argument_group("sampling"), SampleConfig)
    add_model_options(p)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Where the model runs and in what form: --device, and --int8 or --bf16."""
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--int8",
        action="store_true",
        help="quantize the weights to int8 after loading: about 2x faster answers on a CPU "
        "once the weights outgrow its cache (preset small and up), slightly different "
        "ones (docs/model.md)",
    )
    weights.add_argument(
        "--bf16",
        action="store_true",
        help="keep a bfloat16 copy of the weights for generating: half the bytes to read "
        "per token, logits rounded to bfloat16's precision (docs/model.md)",
    )


def sample_config(args: argparse.Namespace) -> SampleConfig:
    """The sampling settings: SampleConfig's defaults under the flags given."""
    return SampleConfig(**given_settings(args, SampleConfig))


def load_chat_model(
    path: Any, device: str, int8: bool = False, bf16: bool = False
) -> tuple[Any, Any]:
    """The model, prepared for generation (``int8``: with int8 weights; ``bf16``: with
    bfloat16 ones), and its tokenizer from a checkpoint or run directory."""
    model, tokenizer = load_model(path, device=pick_device(device))
    if tokenizer is None:
        raise TokenizerError(f"checkpoint {path} has no tokenizer.json: save it with one")
    return prepare_for_inference(model, int8=int8, bf16=bf16), tokenizer


def _write_stream(pieces: Any) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()  # token by token
    sys.stdout.write("\n")
    sys.stdout.flush()


def _chat(args: argparse.Namespace) -> int:
    sample = sample_config(args)  # bad settings fail before the model loads
    path = args.checkpoint if args.checkpoint is not None else default_chat_checkpoint()
    model, tokenizer = load_chat_model(path, args.device, args.int8, args.bf16)
    session = ChatSession(model, tokenizer, sample, system=args.system, name=str(path))
    if args.prompt is not None:
        _write_stream(session.send(args.prompt))
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_line_editing()
    sent, failed = run_repl(
        session, input_stream=sys.stdin, output_stream=sys.stdout, interactive=interactive
    )
    if failed and not interactive:  # a script must see that answers are missing
        raise ScratchLMError(
            f"{failed} of {sent} message(s) could not be answered (errors above; each "
            "got an empty output line)"
        )
    return 0


def _enable_line_editing() -> None:
    """Load readline (absent on some platforms), which gives input() editing and history."""
    if importlib.util.find_spec("readline") is not None:
        importlib.import_module("readline")


def _generate(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    sample = sample_config(args)
    model, tokenizer = load_chat_model(args.checkpoint, args.device, args.int8, args.bf16)
    if args.n == 1:
        sys.stdout.write(args.prompt)
        _write_stream(stream(model, tokenizer, args.prompt, sample))
        return 0
    # Batches of bounded memory, printed as each completes; all rows share one
    # generator, so with a seed they still differ.
    total = -(-args.n // batch_rows(model)) * sample.max_new_tokens  # tokens, all batches
    with CountProgress(total, f"sampling {args.n}", "tokens") as progress:
        texts = generate_samples(
            model,
            tokenizer,
            args.prompt,
            args.n,
            sample,
            on_step=lambda steps, ended: progress.update(min(steps, progress.total)),
        )
        for i, text in enumerate(texts, start=1):
            print(f"--- {i} ---")
            print(args.prompt + text, flush=True)
    return 0


def chat_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Chat with an instruction-tuned model: a REPL on a terminal, one answer per line "
        "with piped input, or one answer with --prompt."
    )
    p.epilog = EPILOG_CHAT
    add_chat_checkpoint(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="system message")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="answer this one message, exit")
    _add_sampling(p)
    p.set_defaults(func=_chat)


def generate_parser(p: argparse.ArgumentParser) -> None:
    p.description = "Continue a prompt with a model, instruction-tuned or not."
    p.epilog = EPILOG_GENERATE
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument(
        "--prompt",
        default="",
        metavar="TEXT",
        help="text to continue (default: empty, start a new document)",
    )
    p.add_argument("--n", type=int, default=1, help="number of samples (default: %(default)s)")
    _add_sampling(p)
    p.set_defaults(func=_generate)


PARSERS = {"chat": chat_parser, "generate": generate_parser}
