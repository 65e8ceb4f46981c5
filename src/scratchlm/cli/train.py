"""``scratchlm train``: the default pipeline with no arguments, else a training run."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scratchlm import pipeline
from scratchlm.cli.config_flags import add_config_flags, given_settings
from scratchlm.config import ModelConfig
from scratchlm.console import live_progress
from scratchlm.errors import ConfigError
from scratchlm.train.assembly import nothing_to_resume
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import SFT_DEFAULTS, load_run_config, resolve_config
from scratchlm.train.objective import Objective
from scratchlm.train.state import TrainResult
from scratchlm.train.trainer import Trainer
from scratchlm.tune.lora import ADAPTER_DIR, export_adapter

EPILOG = """examples:
  scratchlm train                                   # the default run on the built-in data
  scratchlm train --data data/ --time-budget 15m     # preset mini, sized by the clock
  scratchlm train --data data/ --preset small --steps 2000 --out runs/small
  scratchlm train --config run.toml --lr 3e-4        # a file's settings, one flag changed
  scratchlm train --resume runs/small                # continue after a crash or Ctrl-C
  torchrun --nproc_per_node=4 -m scratchlm train --data data/ --out runs/ddp

Every setting can live in a TOML or JSON file (names as below with _ for -, model fields
in a [model] table); flags override the file; the resolved settings are saved as
RUN_DIR/train_config.json. Rerunning the same command resumes from the last checkpoint.
"""

# TrainConfig fields that are flags of one command only.
PRETRAIN_ONLY = frozenset({"data", "preset", "init_from", "tokenizer"})  # sft: from --from
SFT_ONLY = frozenset({"conversations", "val_fraction", "skip_bad"})
DPO_ONLY = frozenset({"val_data", "beta", "dpo_loss", "sft_weight"})


def _model_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word such as layernorm


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the command line set."""
    flags = given_settings(args, TrainConfig)
    if args.model:
        flags["model"] = dict(args.model)
    return flags


def run_training(
    args: argparse.Namespace,
    flags: dict[str, Any],
    defaults: dict[str, Any],
    command: str,
    objective: Callable[[TrainConfig], Objective] | None = None,
) -> int:
    """Resolve the settings (a resumed run's own, the file's, the flags), train, and
    print how it ended; ``objective`` makes the run's objective from its settings
    (default: next-token prediction)."""
    base = None
    if args.resume:
        base = load_run_config(args.resume)
        if base is None:
            raise nothing_to_resume(args.resume)
        flags.update(out=args.resume, resume=True)
    config = resolve_config(args.config, flags, base, defaults=defaults)
    made = objective(config) if objective is not None else None
    result = Trainer(config, echo=print, objective=made).run()
    where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
    if result.interrupted:
        print(
            f"stopped by {result.interrupted} at step {result.step}{where}; "
            f"continue with: scratchlm {command} --resume {config.out}"
        )
        return 130 if result.interrupted == "SIGINT" else 143
    print(done_line(result))
    if config.lora and result.checkpoint is not None:
        _write_adapter(result.checkpoint, Path(config.out) / ADAPTER_DIR)
    return 0


def done_line(result: TrainResult) -> str:
    """``done: 400 steps, 3,276,800 tokens, loss 2.1234, validation loss 2.3456;
    checkpoint runs/x/checkpoints/step_00000400`` (a run that took no step says so)."""
    trained = "no steps taken"
    if result.loss is not None:
        trained = f"{result.step} steps, {result.tokens:,} tokens, loss {result.loss:.4f}"
    val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
    return f"done: {trained}{val}{where}"


def _write_adapter(checkpoint: Path, out: Path) -> None:
    """A LoRA run's adapters, alone, in PEFT's format (the run itself is complete
    without them: a model PEFT cannot load them onto only gets a note)."""
    try:
        export_adapter(checkpoint, out, force=True)
    except ConfigError as e:
        print(f"no PEFT adapter written: {e}")
        return
    print(f"wrote PEFT adapter {out} (scratchlm lora merge RUN OUT: a merged checkpoint)")


def _train(args: argparse.Namespace) -> int:
    if not (args.data or args.resume or args.config):
        out = Path(args.out or pipeline.DefaultRun().out_dir)
        progress = live_progress(quiet=args.progress is False)
        pipeline.run_default(pipeline.DefaultRun(out_dir=out), progress=progress)
        return 0
    return run_training(args, _flags(args), {}, "train")


def _sft(args: argparse.Namespace) -> int:
    check_tuning_args(args, "sft", "instruction tuning starts from a pretrained model")
    return run_training(args, _flags(args), SFT_DEFAULTS, "sft")


def check_tuning_args(args: argparse.Namespace, command: str, starts_from: str) -> None:
    """ConfigError for a flag ``add_tuning_flags`` refuses, or a run with neither --from
    nor --resume; ``starts_from`` says what the command needs ("instruction tuning
    starts from a pretrained model")."""
    if args.refused:
        raise ConfigError(
            f"{command} takes no {args.refused}: the model, its preset and its tokenizer "
            "come from the checkpoint given with --from"
        )
    if not (args.init_from or args.resume):
        raise ConfigError(f"{starts_from}: pass --from DIR")


class Refused(argparse.Action):
    """A flag that means nothing to this command: recorded, then refused in one line."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, option)


def add_training_flags(
    p: argparse.ArgumentParser, skip: frozenset[str], defaults: dict[str, Any]
) -> None:
    p.add_argument("--config", help="a TOML or JSON file of settings")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument(
        "--model",
        type=_model_override,
        action="append",
        metavar="KEY=VALUE",
        help="change one model field of the preset, e.g. --model n_layers=2 (repeatable; "
        f"fields: {', '.join(f.name for f in dataclasses.fields(ModelConfig))})",
    )
    add_config_flags(p, TrainConfig, skip=skip, defaults=defaults)


def add_tuning_flags(
    p: argparse.ArgumentParser, skip: frozenset[str], defaults: dict[str, Any]
) -> None:
    """The flags of a command that tunes a trained model (sft, dpo): --from CHECKPOINT,
    the training flags but ``skip``, and the flags that would choose another model or
    tokenizer, which ``check_tuning_args`` refuses in one line."""
    p.add_argument("--from", dest="init_from", metavar="CHECKPOINT", help="a checkpoint or run dir")
    p.add_argument(
        *("--preset", "--init-from", "--tokenizer"),
        dest="refused",
        nargs="?",
        action=Refused,
        help=argparse.SUPPRESS,
    )
    add_training_flags(p, skip, defaults)
    p.set_defaults(refused=None)


SFT_EPILOG = """examples:
  scratchlm sft --from runs/small --data chats.jsonl --out runs/small-chat
  scratchlm sft --from runs/default/pretrain --data builtin:chat --steps 300
  scratchlm sft --resume runs/small-chat

Conversation files: JSONL with {"messages": [{"role", "content"}, ...]} or {"prompt",
"completion"}, a JSON list of "User: ... Assistant: ..." strings, or CSV with
question/answer columns (docs/chat_format.md). The tokenizer gets the chat tokens and the
model grows rows for them. Defaults differ from pretraining (shown above).
"""


def train_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train a model on a prepared token directory (see `scratchlm prepare`). With no "
        "arguments: the default pipeline on the built-in data in runs/default (or --out), "
        "reusing the stages a previous run finished."
    )
    p.epilog = EPILOG
    add_training_flags(p, SFT_ONLY | DPO_ONLY, {})
    p.set_defaults(func=_train)


def sft_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Instruction tuning: the training loop on conversations, with the loss on the "
        "assistant's words only. Rerunning the same command resumes."
    )
    p.epilog = SFT_EPILOG
    add_tuning_flags(p, PRETRAIN_ONLY | DPO_ONLY, SFT_DEFAULTS)
    p.set_defaults(func=_sft)


PARSERS = {"train": train_parser, "sft": sft_parser}
