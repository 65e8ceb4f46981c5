"""Saving and loading one checkpoint directory.

    step_00001000/
      model.safetensors                     weights (contiguous, a tied tensor stored once)
      config.json                           format_version, model config (or null), step, created,
                                            lora (a LoRA model's LoraConfig; absent otherwise)
      tokenizer.json                        when a tokenizer was given
      trainer_state/optimizer.safetensors   optimizer state tensors ("state.{index}.{name}")
      trainer_state/optimizer.json          the rest of the optimizer state dict
      trainer_state/state.json              the caller's JSON state (step, tokens seen, losses...)
      trainer_state/tensors.safetensors     the caller's tensors (RNG states, sampler state...)
      manifest.json                         SHA-256 and size of every other file

The folder is built under a temporary name beside its destination, every file fsync'ed,
and renamed into place, so a crash leaves the old state or the complete new checkpoint.
Loading reads safetensors and JSON only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from scratchlm.atomic import naming_write_errors, write_dir_atomically
from scratchlm.checkpoint.files import (
    CONFIG,
    FORMAT_VERSION,
    OPTIMIZER_JSON,
    OPTIMIZER_TENSORS,
    STATE_JSON,
    STATE_TENSORS,
    TOKENIZER,
    WEIGHTS,
    check_format_version,
    fsync_dir,
    read_json,
    save_tensors,
    verify_checkpoint,
    write_json,
    write_manifest,
)
from scratchlm.checkpoint.state import (
    load_optimizer,
    load_weights,
    optimizer_to_save,
    storable,
    unwrap_module,
    weights_metadata,
    weights_to_save,
)
from scratchlm.config import ModelConfig
from scratchlm.errors import CheckpointError, ConfigError
from scratchlm.model.inference import refuse_prepared
from scratchlm.model.lora import lora_config_of
from scratchlm.model.lora_config import LoraConfig
from scratchlm.tokenizer.files import save_tokenizer

log = logging.getLogger(__name__)


def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    path: str | os.PathLike,
    *,
    tokenizer: Any = None,
    model_config: ModelConfig | None = None,
    train_state: dict[str, Any] | None = None,
    tensors: dict[str, Tensor] | None = None,
    force: bool = False,
) -> Path:
    """Write a checkpoint directory at ``path``; returns it.

    model: any torch module (a DDP or torch.compile wrapper is unwrapped).
    optimizer: any torch optimizer, or None for weights only.
    model_config: what ``load_model`` rebuilds the model from; defaults to
        ``model.config`` when that is a ModelConfig, else null (a generic module).
    train_state: JSON-able dict (step, tokens seen, losses, resolved configs...).
    tensors: extra tensors, e.g. ``capture_rng_state()`` and a sampler's state.
    An existing ``path`` raises OutputExistsError unless ``force``; it is then replaced
    only once the new checkpoint is complete. A failed write (a full disk, an I/O error)
    raises WriteError naming the checkpoint and the cause, and leaves no partial folder.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"step must be an integer >= 0, got {step!r}")
    model = unwrap_module(model)
    refuse_prepared(model, "saved as a checkpoint")
    if model_config is None and isinstance(getattr(model, "config", None), ModelConfig):
        model_config = model.config
    config = {
        "format_version": FORMAT_VERSION,
        "model": model_config.to_dict() if model_config is not None else None,
        "step": step,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    lora = lora_config_of(model)
    if lora is not None:  # the weights hold adapters: load_model wraps the model first
        config["lora"] = lora.to_dict()
    # Everything is gathered (and checked) before the first byte is written.
    weights, aliases = weights_to_save(model)
    opt = optimizer_to_save(optimizer) if optimizer is not None else None
    if train_state is not None and not isinstance(train_state, dict):
        raise CheckpointError(f"train_state must be a dict, got {type(train_state).__name__}")
    try:
        state_text = json.dumps(train_state, indent=2) if train_state is not None else None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"train_state cannot be saved as JSON: {e}") from None
    extra = storable(tensors) if tensors else None
    tensor_sets = (weights, opt[0] if opt is not None else {}, extra or {})
    needed = sum(t.numel() * t.element_size() for d in tensor_sets for t in d.values())

    def fill(tmp: Path) -> None:
        save_tensors(weights, tmp / WEIGHTS, metadata=weights_metadata(aliases))
        write_json(tmp / CONFIG, config)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp / TOKENIZER)
        if opt is not None:
            (tmp / OPTIMIZER_TENSORS).parent.mkdir(exist_ok=True)
            save_tensors(opt[0], tmp / OPTIMIZER_TENSORS)
            write_json(tmp / OPTIMIZER_JSON, opt[1])
        if state_text is not None:
            (tmp / STATE_JSON).parent.mkdir(exist_ok=True)
            (tmp / STATE_JSON).write_text(state_text + "\n", encoding="utf-8")
        if extra is not None:
            (tmp / STATE_TENSORS).parent.mkdir(exist_ok=True)
            save_tensors(extra, tmp / STATE_TENSORS)
        write_manifest(tmp)  # last: hashes and fsyncs everything above

    path = Path(path)
    with naming_write_errors(f"the checkpoint {path.name}", path.parent, needed=needed):
        out = write_dir_atomically(path, fill, force=force)
        fsync_dir(out.parent)  # make the rename itself durable
    return out


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's config.json: ``{"format_version", "model": dict | None, "step",
    "created"}``, checked for the format version and the types of model and step."""
    file = Path(path) / CONFIG
    config = read_json(file, "the checkpoint config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} is damaged: expected a JSON object")
    check_format_version(config.get("format_version"), file)
    step = config.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise CheckpointError(f"{file} is damaged: 'step' is {step!r}, not an integer")
    if not isinstance(config.get("model"), dict | None):
        raise CheckpointError(f"{file} is damaged: 'model' must be an object or null")
    return config


def read_lora_config(config: dict[str, Any], file: Path) -> LoraConfig | None:
    """The LoraConfig recorded in a checkpoint's config.json (``read_config``), or None
    for a model without adapters."""
    lora = config.get("lora")
    if lora is None:
        return None
    try:
        return LoraConfig.from_dict(lora)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{file} is damaged: its 'lora' entry is not valid ({e})") from None


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    verify: bool = True,
) -> int:
    """Load a checkpoint's weights into ``model`` (strictly: every key, every shape) and,
    when given, its state into ``optimizer``; returns the checkpoint's step.

    ``verify`` checks the manifest first, so a damaged file fails here with its name
    rather than as a puzzling tensor error.
    """
    folder = Path(path)
    if verify:
        verify_checkpoint(folder)
    config = read_config(folder)
    model = unwrap_module(model)
    _warn_if_config_differs(model, config, folder)
    load_weights(model, folder / WEIGHTS)
    if optimizer is not None:
        if not (folder / OPTIMIZER_JSON).is_file():
            raise CheckpointError(
                f"checkpoint {folder} holds no optimizer state: pass optimizer=None to load "
                "the weights only"
            )
        json_part = read_json(folder / OPTIMIZER_JSON, "the optimizer state")
        load_optimizer(optimizer, folder / OPTIMIZER_TENSORS, folder / OPTIMIZER_JSON, json_part)
    return config["step"]


def _warn_if_config_differs(model: nn.Module, config: dict[str, Any], folder: Path) -> None:
    """Equal shapes can hide a different model (another rope_theta, norm_eps...)."""
    ours = getattr(model, "config", None)
    if not isinstance(ours, ModelConfig) or config["model"] is None:
        return
    saved = config["model"]
    try:  # d_ff None and d_ff 1344 may build the same model
        if ModelConfig.from_dict(saved).resolved() == ours.resolved():
            return
    except ConfigError:  # a config this version cannot build: compare field by field
        pass
    differ = sorted(k for k, v in ours.to_dict().items() if k in saved and saved[k] != v)
    if differ:
        log.warning(
            "checkpoint %s was saved with a different model config: %s",
            folder,
            ", ".join(f"{k}={saved[k]!r} (model: {getattr(ours, k)!r})" for k in differ),
        )


def read_train_state(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(state.json, tensors.safetensors)`` of a checkpoint's trainer_state; each is
    empty when the checkpoint does not have it."""
    folder = Path(path)
    state: dict[str, Any] = {}
    if (folder / STATE_JSON).is_file():
        state = read_json(folder / STATE_JSON, "the trainer state")
        if not isinstance(state, dict):
            raise CheckpointError(f"{folder / STATE_JSON} is damaged: expected a JSON object")
    tensors: dict[str, Tensor] = {}
    if (folder / STATE_TENSORS).is_file():
        try:
            tensors = load_file(folder / STATE_TENSORS)
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"cannot read {folder / STATE_TENSORS}: {e}") from None
    return state, tensors
