"""Run assembly: the pieces a ``TrainConfig`` names, built before the first step.

The tokenizer (the data's, or for instruction tuning the starting checkpoint's with the
chat tokens added), the model (new, or loaded from ``init_from``), and the decision
whether a run directory is resumed. The optimizer is ``train.optim.build_optimizer``.
Kept apart from the config so that ``TrainConfig`` stays plain settings and the trainer
reads as a loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scratchlm.atomic import human_bytes
from scratchlm.chat_format import chat_tokenizer
from scratchlm.checkpoint import (
    CheckpointManager,
    RunInUseError,
    RunLock,
    load_model,
    read_config,
    resolve_checkpoint,
)
from scratchlm.checkpoint.files import STATE_JSON, TOKENIZER, read_json
from scratchlm.checkpoint.fits import physical_memory
from scratchlm.config import ModelConfig
from scratchlm.data import data_fingerprint, read_meta, tokenizer_fingerprint
from scratchlm.errors import ConfigError
from scratchlm.model import TransformerLM
from scratchlm.model.lora import apply_lora
from scratchlm.model.lora_config import parse_lora_spec
from scratchlm.model.resize import grow_vocab
from scratchlm.tokenizer import load_tokenizer
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import CONFIG_FILE, load_run_config

# Fields that may change between a run and its resumption: they do not change the
# meaning of the steps already taken (a longer run, more frequent checkpoints, ...).
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "tokens",
        "eval_every",
        "checkpoint_every",
        "keep_last",
        "log_every",
        "sample_prompts",
        "sample_tokens",
        "progress",
        "tensorboard",
        "device",
        "compile",
        "checkpoint_activations",
        "resume",
        "max_rollbacks",
        "max_skips",
    }
)
# Fields that name where things are. A resumed run compares what they hold, not how they
# are spelled (a run directory given as ./runs/a or moved elsewhere is the same run): the
# data's and the tokenizer's fingerprints and the model, recorded in each checkpoint.
PATH_SETTINGS = frozenset({"out", "data", "tokenizer", "init_from", "conversations", "val_data"})


def run_tokenizer(config: TrainConfig) -> Any:
    """The run's tokenizer: ``config.tokenizer``, else the copy in the data directory (for
    instruction tuning: the starting checkpoint's, with the chat tokens added)."""
    if config.phase != "pretrain" and not config.tokenizer:
        path = resolve_checkpoint(config.init_from) / "tokenizer.json"
        if not path.exists():
            raise ConfigError(f"the checkpoint {path.parent} holds no tokenizer.json")
        return chat_tokenizer(load_tokenizer(path))
    path = Path(config.tokenizer) if config.tokenizer else Path(config.data) / "tokenizer.json"
    if not path.exists():
        raise ConfigError(
            f"no tokenizer at {path}: pass --tokenizer DIR (the one `scratchlm prepare` used)"
        )
    return load_tokenizer(path)


def build_model(config: TrainConfig, tokenizer: Any) -> TransformerLM:
    """A new TransformerLM for the run, or the one in ``config.init_from`` (with rows
    added for tokens the tokenizer has and the checkpoint lacks, e.g. the chat tokens);
    with ``config.lora``, frozen and wrapped with new LoRA adapters (model/lora.py).
    ``config.checkpoint_activations`` sets whether its blocks recompute activations."""
    model = _base_model(config, tokenizer)
    model.checkpoint_activations = config.checkpoint_activations
    if config.lora:
        apply_lora(model, parse_lora_spec(config.lora))
    return model


def _base_model(config: TrainConfig, tokenizer: Any) -> TransformerLM:
    if not config.init_from:
        model_config = config.model_config(tokenizer.vocab_size)
        check_fits_in_memory(model_config)
        return TransformerLM(model_config)
    model, _ = load_model(config.init_from)
    # A loaded model keeps its architecture: an override it contradicts would be
    # silently ignored while train_config.json recorded it.
    loaded = model.config.to_dict()
    for key, value in config.model.items():
        if key not in loaded:
            raise ConfigError(f"unknown model field {key!r} (fields: {', '.join(loaded)})")
        if loaded[key] != value:
            raise ConfigError(
                f"model {key}={value!r} contradicts the model loaded from {config.init_from} "
                f"({key}={loaded[key]!r}): a loaded model keeps its architecture; leave "
                "the model override out"
            )
    model.train()
    if model.config.vocab_size < tokenizer.vocab_size:  # new (chat) tokens: new rows
        grow_vocab(model, tokenizer.vocab_size)
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ConfigError(
            f"the model in {config.init_from} has a vocabulary of "
            f"{model.config.vocab_size}, the tokenizer {tokenizer.vocab_size}"
        )
    return model


def check_fits_in_memory(config: ModelConfig) -> None:
    """ConfigError when training a model of ``config`` certainly cannot fit in this
    machine's memory, before anything is allocated (the allocator would fail with a
    traceback, or the kernel kill the process)."""
    total = physical_memory()
    if total is None:
        return
    params, buffers = _sizes(config)
    # float32 weights, gradients and two AdamW moments, and the buffers: a lower bound.
    needed = 16 * params + 4 * buffers
    if needed > total:
        raise ConfigError(
            f"a model of {params:,} parameters (d_model={config.d_model}, "
            f"n_layers={config.n_layers}, vocab_size={config.vocab_size}, context_length="
            f"{config.context_length}) needs more than {human_bytes(needed)} to train, and "
            f"this machine has {human_bytes(total)}: choose a smaller preset or --model sizes"
        )


def _sizes(config: ModelConfig) -> tuple[int, int]:
    """Parameters and buffer elements of ``TransformerLM(config)``, counted on the meta
    device (nothing allocated) from models of one and two layers: building all
    ``n_layers`` would take as long as the model is deep."""
    with torch.device("meta"):
        one = TransformerLM(dataclasses.replace(config, n_layers=1))
        two = TransformerLM(dataclasses.replace(config, n_layers=2))
    per_layer = two.num_parameters() - one.num_parameters()
    params = one.num_parameters() + (config.n_layers - 1) * per_layer
    return params, sum(b.numel() for b in one.buffers())


def check_resumable(saved: TrainConfig, wanted: TrainConfig) -> None:
    """ConfigError unless ``wanted`` only changes settings a resumed run may change.
    Paths (``PATH_SETTINGS``) are not compared as text: ``resume_point`` compares what
    they hold with what the checkpoint recorded."""
    a, b = saved.to_dict(), wanted.to_dict()
    free = RESUMABLE_CHANGES | PATH_SETTINGS
    changed = sorted(k for k in a if k not in free and a[k] != b[k])
    if changed:
        detail = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in changed[:3])
        raise ConfigError(
            f"the run in {wanted.out} was started with other settings ({detail}); "
            "resume it with the same settings or choose a new --out"
        )


def run_fingerprints(
    config: TrainConfig, tokenizer: Any, sampler: Any, val: tuple[Tensor, Tensor]
) -> dict[str, str]:
    """What the run's steps depend on besides its settings, by content (SHA-256), never
    by path: ``{"data": ..., "tokenizer": ...}``. Checkpoints record it; a resume
    compares it. Pretraining data: the fingerprint in the data's meta.json; conversations:
    the packed training rows and the validation rows they became."""
    if config.phase == "sft":
        rows = sampler.rows
        data = _tensors_digest(rows.x, rows.y, rows.segment_ids, *val)
    else:
        data = data_fingerprint(read_meta(config.data))
    return {"data": data, "tokenizer": tokenizer_fingerprint(tokenizer)}


def _tensors_digest(*tensors: Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resume_point(
    checkpoints: CheckpointManager, fingerprints: dict[str, str], model: TransformerLM
) -> Path | None:
    """The checkpoint a resumed run continues from (None: the run has none yet).
    CheckpointError when every checkpoint is unreadable; ConfigError when the newest
    valid one was trained on other data, with another tokenizer or another model."""
    path = checkpoints.resume_point()
    if path is None:
        return None
    run = f"cannot resume {checkpoints.run_dir}: its checkpoint {path.name}"
    state_file = path / STATE_JSON
    state = read_json(state_file, "the trainer state") if state_file.is_file() else {}
    recorded = state.get("fingerprints") if isinstance(state, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    if "tokenizer" not in recorded and (path / TOKENIZER).is_file():  # an older checkpoint
        recorded["tokenizer"] = tokenizer_fingerprint(load_tokenizer(path / TOKENIZER))
    for what, other in (("data", "on other data"), ("tokenizer", "with another tokenizer")):
        was, now = recorded.get(what), fingerprints[what]
        if was is not None and was != now:
            raise ConfigError(
                f"{run} was trained {other} (fingerprint {was[:12]}, now {now[:12]}); "
                f"resume with the {what} it was trained with, or start a new run in "
                "another --out"
            )
    saved = read_config(path)["model"]
    ours = model.config
    if saved is not None and _resolved(saved) != ours.resolved():
        differ = sorted(k for k, v in ours.to_dict().items() if saved.get(k) != v)
        detail = ", ".join(f"{k}={saved.get(k)!r}, now {getattr(ours, k)!r}" for k in differ[:3])
        raise ConfigError(
            f"{run} holds another model ({detail}); resume with the model settings it was "
            "started with, or start a new run in another --out"
        )
    return path


def _resolved(saved: dict[str, Any]) -> ModelConfig | None:
    try:  # d_ff None and d_ff 1344 may build the same model
        return ModelConfig.from_dict(saved).resolved()
    except ConfigError:  # a config this version cannot build is not ours
        return None


def is_resuming(config: TrainConfig, run_dir: Path) -> bool:
    """True when ``run_dir`` holds a run started with compatible settings (ConfigError
    when they differ); False for a new run (ConfigError if ``resume`` was asked for)."""
    saved = load_run_config(run_dir)
    if saved is not None:
        check_resumable(saved, config)
        return True
    if config.resume:
        raise nothing_to_resume(run_dir)
    return False


def lock_run_dir(lock: RunLock, *, resuming: bool) -> None:
    """Hold the run directory's lock before the first write (the trainer took it while
    assembling when the directory existed). A run another process started there in the
    meantime is not overwritten."""
    if lock.held:
        return
    lock.acquire()
    if not resuming and (lock.run_dir / CONFIG_FILE).exists():
        raise RunInUseError(
            f"another process started a run in {lock.run_dir} while this one was getting "
            "ready: run the same command again to resume it, or choose another --out"
        )


def nothing_to_resume(run_dir: str | os.PathLike) -> ConfigError:
    return ConfigError(
        f"nothing to resume in {run_dir}: it holds no {CONFIG_FILE}; "
        "start a new run without --resume"
    )
