"""LoRA adapters in PEFT's format, the one the Hugging Face ecosystem loads.

    adapter/
      adapter_config.json          peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
                                   lora_dropout, target_modules, bias "none", ...
      adapter_model.safetensors    base_model.model.<HF module>.lora_A.weight  (r, in)
                                   base_model.model.<HF module>.lora_B.weight  (out, r)

``<HF module>`` is the name the layer has in our Hugging Face export (``export/hf.py``):
``layers.0.self_attn.q_proj`` is Llama's ``model.layers.0.self_attn.q_proj``. PEFT's
LoRA layer computes ``base(x) + lora_B(lora_A(dropout(x))) * lora_alpha / r``, our
formula, so ``peft.PeftModel.from_pretrained(hf_model, "adapter")`` on the export of the
base model computes what our model does (tests/tune/test_lora_peft.py).

Only the Llama architecture (position=rope) is written: GPT-2 fuses q, k and v into one
``c_attn`` layer, which one set of rank-r adapters per projection does not map onto;
merge the adapters (``scratchlm lora merge``) and export the merged model instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from scratchlm.atomic import naming_write_errors, write_dir_atomically
from scratchlm.checkpoint.files import save_tensors, write_json
from scratchlm.errors import ConfigError
from scratchlm.export import architecture_for
from scratchlm.model.layers import Linear
from scratchlm.model.lora import lora_config_of, lora_modules
from scratchlm.model.lora_config import OUTPUT_LAYER, LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps a LoraModel wrapping the HF model


def hf_module_names(model: nn.Module) -> dict[str, str]:
    """Our name -> the HF export's name of every LoRA-wrapped layer. ConfigError when the
    model exports as an architecture whose layers are not ours renamed (GPT-2)."""
    arch = architecture_for(model.config)
    renames = {
        m.ours[0].removesuffix(".weight"): m.hf.removesuffix(".weight")
        for m in arch.key_map(model.config)
        if len(m.ours) == 1 and not m.transposed
    }
    renames.setdefault(OUTPUT_LAYER, OUTPUT_LAYER)  # a tied head is not in the key map
    names = {}
    for ours in lora_modules(model):
        if ours not in renames:
            raise ConfigError(
                f"the layer {ours} has no counterpart of its own in the Hugging Face "
                f"{arch.ARCHITECTURE} export, so PEFT cannot load an adapter on it: merge "
                "the adapters (scratchlm lora merge) and export the merged model"
            )
        names[ours] = renames[ours]
    return names


def peft_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The adapters under PEFT's names, contiguous CPU copies."""
    tensors = {}
    for ours, hf in hf_module_names(model).items():
        m = lora_modules(model)[ours]
        for which in ("lora_A", "lora_B"):
            key = f"{PEFT_PREFIX}{hf}.{which}.weight"
            tensors[key] = getattr(m, which).detach().cpu().contiguous()
    return tensors


def peft_target_modules(model: nn.Module, names: dict[str, str]) -> list[str]:
    """PEFT's ``target_modules``: the short names (q_proj, v_proj) when they pick exactly
    the wrapped layers, as PEFT matches a name by its ending; else the full HF names."""
    short = sorted({ours.rpartition(".")[2] for ours in names})
    candidates = {
        n
        for n, m in model.named_modules()
        if (isinstance(m, Linear) or n in names) and n.rpartition(".")[2] in short
    }
    return short if candidates == set(names) else sorted(names.values())


def peft_adapter_config(
    lora: LoraConfig, target_modules: list[str], base_model: str | None = None
) -> dict[str, Any]:
    """adapter_config.json: the fields PEFT's LoraConfig reads (others keep its defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def write_peft_adapter(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``model``'s adapters (a LoRA model: ``apply_lora`` or ``load_model(...,
    merge_adapters=False)``) as a PEFT adapter folder; returns it. ``base_model`` goes
    into ``base_model_name_or_path`` (the HF folder or hub name of the base model)."""
    lora = lora_config_of(model)
    if lora is None:
        raise ConfigError("this model has no LoRA adapters to write")
    names = hf_module_names(model)
    tensors = peft_tensors(model)
    config = peft_adapter_config(lora, peft_target_modules(model, names), base_model)

    def fill(tmp: Path) -> None:
        save_tensors(tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        write_json(tmp / ADAPTER_CONFIG, config)

    out = Path(out_dir)
    with naming_write_errors(f"the adapter {out.name}", out.parent):
        return write_dir_atomically(out, fill, force=force)
