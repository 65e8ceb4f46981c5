"""``scratchlm dpo``: preference tuning of an instruction-tuned model (DPO)."""

from __future__ import annotations

import argparse

from scratchlm.cli.config_flags import given_settings
from scratchlm.cli.train import PRETRAIN_ONLY, add_tuning_flags, check_tuning_args, run_training
from scratchlm.errors import ConfigError
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import DPO_DEFAULTS
from scratchlm.tune.dpo import DPOObjective

EPILOG = """examples:
  scratchlm dpo --from runs/default/sft             # the built-in preference pairs
  scratchlm dpo --from runs/chat --data prefs.jsonl --beta 0.1 --out runs/chat-dpo
  scratchlm dpo --from runs/chat --data prefs.jsonl --loss ipo
  scratchlm dpo --from runs/chat --data prefs.jsonl --sft-weight 0   # DPO alone, no SFT loss
  scratchlm dpo --resume runs/chat-dpo

Preference files: JSONL with {"prompt", "chosen", "rejected"} (strings, or lists of chat
messages), or {"chosen": [...], "rejected": [...]} conversations sharing their opening
messages (the prompt). Without --data: the built-in pairs (builtin:preferences, held
out: builtin:preferences_heldout). The reference model is the starting one; its
log-probabilities are computed once and cached in the run directory (docs/dpo.md).
"""


def _dpo(args: argparse.Namespace) -> int:
    check_tuning_args(args, "dpo", "preference tuning starts from a tuned model")
    flags = given_settings(args, TrainConfig)
    if args.model:
        raise ConfigError("dpo keeps the architecture of the model given with --from")
    if "conversations" in flags and "val_data" not in flags:
        flags["val_data"] = []  # the user's own pairs: held out by --val-fraction
    return run_training(args, flags, DPO_DEFAULTS, "dpo", DPOObjective)


def dpo_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Preference tuning (DPO): the training loop on chosen/rejected answer pairs, "
        "against the starting model as the reference. Rerunning the same command resumes."
    )
    p.epilog = EPILOG
    add_tuning_flags(p, PRETRAIN_ONLY, DPO_DEFAULTS)
    p.set_defaults(func=_dpo)


PARSERS = {"dpo": dpo_parser}
