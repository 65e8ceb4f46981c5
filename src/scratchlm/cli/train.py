"""``scratchlm train``: the default pipeline with no arguments, else a training run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

FMT = argparse.RawDescriptionHelpFormatter

EPILOG = """examples:
  scratchlm train                                   # the default run on the built-in data
  scratchlm train --data data/ --preset small --steps 2000 --out runs/small
  scratchlm train --config run.toml --lr 3e-4        # a file's settings, one flag changed
  scratchlm train --resume runs/small                # continue after a crash or Ctrl-C
  torchrun --nproc_per_node=4 -m scratchlm train --data data/ --out runs/ddp

Every setting can live in a TOML or JSON file (names as below with _ for -, model fields
in a [model] table); flags override the file; the resolved settings are saved as
RUN_DIR/train_config.json. Rerunning the same command resumes from the last checkpoint.
"""

# (flag, type, help): each flag sets the TrainConfig field of the same name.
FLAGS: list[tuple[str, Any, str]] = [
    ("--tokenizer", str, "tokenizer directory (default: DATA_DIR/tokenizer.json)"),
    ("--preset", str, "model preset: tiny, small, gpt2-small, ... (default: small)"),
    ("--init-from", str, "start from this checkpoint's weights instead of random ones"),
    ("--steps", int, "optimizer updates (default: 1000)"),
    ("--tokens", int, "train on this many tokens instead of --steps"),
    ("--batch-size", int, "windows per micro-batch per process (default: 8)"),
    ("--grad-accum", int, "micro-batches per update (default: 1)"),
    ("--context-length", int, "tokens per window (default: the preset's)"),
    ("--optimizer", str, "adamw (default) or sgd"),
    ("--lr", float, "peak learning rate (default: 1e-3)"),
    ("--min-lr", float, "final learning rate (default: lr / 10)"),
    ("--schedule", str, "cosine (default), linear or constant, after a linear warmup"),
    ("--warmup-steps", int, "warmup updates (default: a tenth of the run, at most 100)"),
    ("--weight-decay", float, "decoupled weight decay of matrices (default: 0.1)"),
    ("--grad-clip", float, "clip the gradient's global norm to this (0 = off; default 1)"),
    ("--device", str, "auto (default), cpu, cuda, cuda:N or mps"),
    ("--precision", str, "auto (default: bf16 on GPUs that have it), fp32, bf16 or fp16"),
    ("--seed", int, "seed of initialisation and data order (default: 1337)"),
    ("--eval-every", int, "updates between evaluations (default: a tenth of the run)"),
    ("--eval-windows", int, "validation windows per evaluation (default: 32)"),
    ("--sample-tokens", int, "tokens per sample at each evaluation (default: 32; 0 = none)"),
    ("--checkpoint-every", int, "updates between checkpoints (default: a fifth of the run)"),
    ("--keep-last", int, "checkpoints kept besides the best (default: 3)"),
    ("--log-every", int, "updates between metric records (default: 10)"),
]


def _model_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word such as layernorm


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the command line set (None: not given)."""
    names = [flag.lstrip("-").replace("-", "_") for flag, _, _ in FLAGS]
    flags = {name: getattr(args, name) for name in names}
    flags["out"] = args.out
    if args.model:
        flags["model"] = dict(args.model)
    if args.sample_prompt:
        flags["sample_prompts"] = args.sample_prompt
    for name in ("compile", "fsdp", "tensorboard"):
        if getattr(args, name):
            flags[name] = True
    if args.quiet:
        flags["progress"] = False
    return flags


def _run(
    args: argparse.Namespace, flags: dict[str, Any], defaults: dict[str, Any], command: str
) -> int:
    from scratchlm.train.assembly import nothing_to_resume
    from scratchlm.train.config import load_run_config, resolve_config
    from scratchlm.train.trainer import Trainer

    base = None
    if args.resume:
        base = load_run_config(args.resume)
        if base is None:
            raise nothing_to_resume(args.resume)
        flags.update(out=args.resume, resume=True)
    config = resolve_config(args.config, flags, base, defaults=defaults)
    result = Trainer(config, echo=print).run()
    where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
    if result.interrupted:
        print(
            f"stopped by {result.interrupted} at step {result.step}{where}; "
            f"continue with: scratchlm {command} --resume {config.out}"
        )
        return 130 if result.interrupted == "SIGINT" else 143
    val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    loss = f"loss {result.loss:.4f}" if result.loss is not None else "no steps taken"
    print(f"done: {result.step} steps, {result.tokens:,} tokens, {loss}{val}{where}")
    return 0


def _train(args: argparse.Namespace) -> int:
    if not (args.data or args.resume or args.config):
        from scratchlm.pipeline import DefaultRun, run_default

        run_default(DefaultRun(out_dir=Path(args.out or "runs/default")), progress=not args.quiet)
        return 0
    flags = _flags(args)
    flags["data"] = args.data
    return _run(args, flags, {}, "train")


def _sft(args: argparse.Namespace) -> int:
    from scratchlm.errors import ConfigError
    from scratchlm.train.config import SFT_DEFAULTS

    if not (args.from_checkpoint or args.resume):
        raise ConfigError("instruction tuning starts from a pretrained model: pass --from DIR")
    flags = _flags(args)
    flags.update(
        init_from=args.from_checkpoint,
        conversations=args.data,
        val_fraction=args.val_fraction,
        skip_bad=True if args.skip_bad else None,
    )
    if not args.resume and not args.out:
        flags["out"] = "runs/sft"
    return _run(args, flags, SFT_DEFAULTS, "sft")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a TOML or JSON file of settings")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    for flag, kind, text in FLAGS:
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument(
        "--model",
        type=_model_override,
        action="append",
        metavar="KEY=VALUE",
        help="change one model field of the preset, e.g. --model n_layers=2 (repeatable)",
    )
    p.add_argument(
        "--sample-prompt", action="append", metavar="TEXT", help="a prompt to sample from"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training model")
    p.add_argument("--fsdp", action="store_true", help="shard the model across processes")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


SFT_EPILOG = """examples:
  scratchlm sft --from runs/small --data chats.jsonl --out runs/small-chat
  scratchlm sft --from runs/default/pretrain --data builtin:chat --steps 300
  scratchlm sft --resume runs/small-chat

Conversation files: JSONL with {"messages": [{"role", "content"}, ...]} or {"prompt",
"completion"}, a JSON list of "User: ... Assistant: ..." strings, or CSV with
question/answer columns (docs/chat_format.md). The tokenizer gets the chat tokens and the
model grows rows for them. Defaults differ from pretraining: lr 3e-4, 300 steps, batch 16.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``sft`` to the top-level subparsers."""
    p = sub.add_parser(
        "train",
        help="pretrain a model (no arguments: the default run on the built-in data)",
        description="Train a model on a prepared token directory (see `scratchlm prepare`). "
        "With no arguments: the default pipeline on the built-in data, reusing the stages "
        "a previous run finished.",
        epilog=EPILOG,
        formatter_class=FMT,
    )
    p.add_argument("--data", help="prepared data directory (train.bin, val.bin, meta.json)")
    p.add_argument("--out", help="run directory (default: runs/train; runs/default without --data)")
    _add_training_flags(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "sft",
        help="instruction-tune a pretrained model on conversations",
        description="Instruction tuning: the training loop on conversations, with the loss "
        "on the assistant's words only. Rerunning the same command resumes.",
        epilog=SFT_EPILOG,
        formatter_class=FMT,
    )
    p.add_argument(
        "--from", dest="from_checkpoint", metavar="CHECKPOINT", help="a checkpoint or run dir"
    )
    p.add_argument("--data", nargs="+", metavar="FILE", help="conversation files (or builtin:chat)")
    p.add_argument("--out", help="run directory (default: runs/sft)")
    p.add_argument("--val-fraction", type=float, help="conversations held out (default: 0.1)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed records, with a count")
    _add_training_flags(p)
    p.set_defaults(func=_sft)
