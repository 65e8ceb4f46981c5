"""LoRA for users: the adapters (``model/lora.py``, re-exported here), merging a LoRA
run into an ordinary checkpoint, and writing its adapters in PEFT's format
(``tune/peft_files.py``).

    from scratchlm.tune.lora import LoraConfig, apply_lora, lora_parameters, merge_lora

    names = apply_lora(model, LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj")))
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-3)
    ...                                     # train: only A and B change
    with adapters_disabled(model): ...      # the base model's outputs
    merge_lora(model)                       # an ordinary TransformerLM again
"""

from __future__ import annotations

from scratchlm.model.lora import (
    ALL_LINEAR,
    LoraConfig,
    LoraLinear,
    adapters_disabled,
    apply_lora,
    lora_config_of,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    merge_adapters,
    merge_lora,
    parse_lora_spec,
    target_modules,
    trainable_parameters,
    unmerge_adapters,
)

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
    "target_modules",
    "trainable_parameters",
    "unmerge_adapters",
]
