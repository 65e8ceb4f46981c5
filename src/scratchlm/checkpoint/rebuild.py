"""A TransformerLM and its tokenizer rebuilt from a checkpoint alone.

A checkpoint of a LoRA run (config.json has a ``lora`` entry) holds the frozen base
weights and the adapters: the model is wrapped the same way before loading, then, unless
``merge_adapters=False``, the adapters are folded into the weights, so chat, serve,
export and evals get an ordinary model.

The model is built from config.json, so its shapes always match the weights; nothing
about the architecture has to be passed in or remembered. config.json is checked against
the weights' header and the machine's memory first (``fits``): an edited config can
neither allocate what the file does not hold nor die in a raw allocation error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from scratchlm.checkpoint.files import CONFIG, TOKENIZER, WEIGHTS, verify_checkpoint
from scratchlm.checkpoint.fits import check_config_fits
from scratchlm.checkpoint.header import read_header
from scratchlm.checkpoint.io import read_config, read_lora_config
from scratchlm.checkpoint.manager import resolve_checkpoint
from scratchlm.checkpoint.state import check_shapes, load_weights, read_aliases, stored_shapes
from scratchlm.config import ModelConfig
from scratchlm.errors import CheckpointError
from scratchlm.model import TransformerLM
from scratchlm.model.lora import apply_lora, merge_lora
from scratchlm.tokenizer.files import load_tokenizer


def load_model(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", merge_adapters: bool = True
) -> tuple[TransformerLM, Any]:
    """``(model in eval mode, tokenizer or None)`` from a checkpoint directory, or from a
    run directory's latest valid checkpoint. The weights keep the dtype they were saved
    in when all floating-point tensors share one (a bf16 run loads as bf16). LoRA
    adapters are merged into the weights unless ``merge_adapters`` is False (then the
    model keeps its ``LoraLinear`` layers, frozen but for the adapters)."""
    folder = resolve_checkpoint(path)
    if folder == Path(path):  # a run directory's checkpoint was verified when it was chosen
        verify_checkpoint(folder)
    config = read_config(folder)
    if config["model"] is None:
        raise CheckpointError(
            f"checkpoint {folder} holds a generic torch module (no model config): build the "
            "module yourself and load it with load_checkpoint(path, module)"
        )
    model_config = ModelConfig.from_dict(config["model"])
    header = read_header(folder / WEIGHTS)
    shapes = check_config_fits(model_config, [header], folder / CONFIG)
    lora = read_lora_config(config, folder / CONFIG)
    if lora is not None:  # the base's tensors and the adapters'
        with torch.device("meta"):
            wrapped = TransformerLM(model_config)
            apply_lora(wrapped, lora)
        shapes = {name: tuple(t.shape) for name, t in wrapped.state_dict().items()}
    check_shapes(
        folder / WEIGHTS, stored_shapes(header, read_aliases(folder / WEIGHTS, header)), shapes
    )
    tokenizer = None
    if (folder / TOKENIZER).is_file():
        tokenizer = load_tokenizer(folder / TOKENIZER)
        if tokenizer.vocab_size > model_config.vocab_size:
            raise CheckpointError(
                f"checkpoint {folder}: the tokenizer has {tokenizer.vocab_size} ids but the "
                f"model only {model_config.vocab_size}: they do not belong together"
            )
    model = TransformerLM(model_config)
    if lora is not None:
        apply_lora(model, lora)
    stored = load_weights(model, folder / WEIGHTS)
    if lora is not None and merge_adapters:
        merge_lora(model)
    dtypes = {t.dtype for t in stored.values() if t.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    model.to(device=device, dtype=dtype)
    return model.eval(), tokenizer
