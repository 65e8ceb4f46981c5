"""Settings from outside the code: a TOML or JSON file, the settings a run directory
saved, and the layering of a run's settings (defaults, then a phase's defaults, then the
file, then the flags given)."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from scratchlm.errors import ConfigError
from scratchlm.train.config import TrainConfig

# Instruction tuning starts from a trained model: a lower peak learning rate, fewer steps,
# and no fixed prompts: it samples answers to questions held out of its own conversations.
SFT_DEFAULTS: dict[str, Any] = {
    "phase": "sft",
    "out": "runs/sft",
    "steps": 300,
    "optimizer": "adamw",  # small steps from a trained model; Muon is for pretraining
    "lr": 3e-4,
    "grad_accum": 1,
    "batch_size": 16,
    # Validation scores only the answers, a few dozen tokens each: 256 held-out
    # conversations score about as many tokens as pretraining's 32 windows.
    "eval_windows": 256,
    "sample_prompts": [],
    "sample_tokens": 48,
}

# Preference tuning (DPO) starts from an instruction-tuned model and moves it little: a
# low learning rate, few steps, a beta that keeps it near the reference and an SFT loss
# that keeps the chosen (taught) answers likely (docs/dpo.md: what was measured); it
# samples answers to held-out questions like SFT.
DPO_DEFAULTS: dict[str, Any] = {
    "phase": "dpo",
    "out": "runs/dpo",
    "conversations": ["builtin:preferences"],
    "val_data": ["builtin:preferences_heldout"],
    "beta": 0.5,
    "sft_weight": 1.0,
    "steps": 60,
    "optimizer": "adamw",
    "lr": 1e-4,
    "batch_size": 8,
    "grad_accum": 1,
    "eval_every": 20,
    "sample_prompts": [],
    "sample_tokens": 48,
}


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in a TOML (``.toml``) or JSON file, as a dict (not yet validated).
    Model fields may sit in a ``[model]`` table."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return data


def resolve_config(
    file: str | os.PathLike | None = None,
    flags: dict[str, Any] | None = None,
    base: TrainConfig | None = None,
    *,
    defaults: dict[str, Any] | None = None,
) -> TrainConfig:
    """``base`` (else the defaults with ``defaults`` on top, e.g. SFT_DEFAULTS), then the
    file's settings, then the flags that were given (None values: flags not passed)."""
    data = base.to_dict() if base is not None else {**TrainConfig().to_dict(), **(defaults or {})}
    if file is not None:
        data.update(read_config_file(file))
    data.update({k: v for k, v in (flags or {}).items() if v is not None})
    return TrainConfig.from_dict(data)


CONFIG_FILE = "train_config.json"


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig | None:
    """The resolved settings saved in a run directory, or None when it has none."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}; move the run directory away") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is damaged: expected a JSON object; move the run directory away")
    return TrainConfig.from_dict(data)


def sft_config(**settings: Any) -> TrainConfig:
    """The settings of an instruction-tuning run: the defaults, SFT_DEFAULTS, ``settings``."""
    return resolve_config(flags=settings, defaults=SFT_DEFAULTS)
