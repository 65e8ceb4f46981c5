"""LoRA for users: the adapters (``model/lora.py``, re-exported here), merging a LoRA
run into an ordinary checkpoint (``merge_run``), and writing its adapters in PEFT's
format (``export_adapter``, ``tune/peft_files.py``).

    from scratchlm.tune.lora import LoraConfig, apply_lora, lora_parameters, merge_lora

    names = apply_lora(model, LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj")))
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-3)
    ...                                     # train: only A and B change
    with adapters_disabled(model): ...      # the base model's outputs
    merge_lora(model)                       # an ordinary TransformerLM again
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from scratchlm.checkpoint import load_model, read_config, resolve_checkpoint, save_checkpoint
from scratchlm.errors import CheckpointError
from scratchlm.export import to_hf
from scratchlm.model import TransformerLM
from scratchlm.model.lora import (
    LoraLinear,
    adapters_disabled,
    apply_lora,
    lora_config_of,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    merge_adapters,
    merge_lora,
    strip_lora,
    target_modules,
    trainable_parameters,
    unmerge_adapters,
)
from scratchlm.model.lora_config import ALL_LINEAR, LoraConfig, parse_lora_spec
from scratchlm.tune.peft_files import write_peft_adapter

__all__ = [
    "ALL_LINEAR",
    "LoraConfig",
    "LoraLinear",
    "adapters_disabled",
    "apply_lora",
    "lora_config_of",
    "lora_modules",
    "lora_parameters",
    "lora_state_dict",
    "merge_adapters",
    "merge_lora",
    "parse_lora_spec",
    "strip_lora",
    "target_modules",
    "trainable_parameters",
    "unmerge_adapters",
]

ADAPTER_DIR = "adapter"  # where an sft --lora run writes its PEFT adapter, in the run directory


def load_adapted(source: str | os.PathLike) -> tuple[TransformerLM, Any, Path]:
    """``(model with its adapters, tokenizer, checkpoint folder)`` of a LoRA checkpoint or
    run directory; CheckpointError when it holds no adapters."""
    folder = resolve_checkpoint(source)
    model, tokenizer = load_model(folder, merge_adapters=False)
    if lora_config_of(model) is None:
        raise CheckpointError(
            f"{folder} holds no LoRA adapters (it is an ordinary checkpoint): nothing to "
            "merge or export as an adapter; train some with sft --lora"
        )
    return model, tokenizer, folder


def merge_run(source: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Fold the adapters of a LoRA checkpoint (or a run's latest) into the weights and
    save an ordinary checkpoint at ``out`` (chat, serve, export, sft --from read it)."""
    model, tokenizer, folder = load_adapted(source)
    merge_lora(model)
    step = read_config(folder)["step"]
    return save_checkpoint(model, None, step, out, tokenizer=tokenizer, force=force)


def export_adapter(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    base_hf: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Write the adapters of a LoRA checkpoint as a PEFT adapter folder at ``out``; with
    ``base_hf``, also the model they adapt (its frozen base weights, e.g. with the rows
    sft added for the chat tokens) as a Hugging Face folder there, which
    ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_hf), out)``
    loads."""
    model, tokenizer, _ = load_adapted(source)
    base = Path(base_hf).resolve().as_posix() if base_hf is not None else None
    if base_hf is not None:
        plain = copy.deepcopy(model)
        strip_lora(plain)
        to_hf(plain, tokenizer, base_hf, force=force)
    return write_peft_adapter(model, out, base_model=base, force=force)
