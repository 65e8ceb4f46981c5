"""Hugging Face ``LlamaForCausalLM`` <-> TransformerLM: the config fields and the key map.

Our RoPE/RMSNorm/SwiGLU model *is* Llama: same half-split RoPE, RMSNorm in float32,
SwiGLU MLP, grouped-query attention and module names, so the key map is a rename.
"""

from __future__ import annotations

from typing import Any

from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError
from scratchlm.export.keymap import KeyMapping, rename

ARCHITECTURE = "LlamaForCausalLM"
MODEL_TYPE = "llama"
# Tensors some Llama checkpoints carry that are not weights (older transformers saved them).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

LAYER_KEYS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def key_map(c: ModelConfig) -> list[KeyMapping]:
    """HF name <- our name, for every tensor written (a tied lm_head is not: HF ties it)."""
    keys = [rename("model.embed_tokens.weight", "embed_tokens.weight")]
    for i in range(c.n_layers):
        keys += [rename(f"model.layers.{i}.{k}", f"layers.{i}.{k}") for k in LAYER_KEYS]
    keys.append(rename("model.norm.weight", "norm.weight"))
    if not c.tie_embeddings:
        keys.append(rename("lm_head.weight", "lm_head.weight"))
    return keys


def unsupported(c: ModelConfig) -> list[str]:
    """Each option of ``c`` that Llama cannot represent, with the reason."""
    problems = [
        f"{name}={getattr(c, name)!r} (Llama needs {need!r})"
        for name, need in (("position", "rope"), ("norm", "rmsnorm"), ("ffn", "swiglu"))
        if getattr(c, name) != need
    ]
    if c.bias:
        problems.append("bias=True (Llama's projections and norms have no bias)")
    if c.qk_norm:
        problems.append("qk_norm=True (Llama has no QK-norm)")
    if c.shared_depth > 1:
        problems.append(f"shared_depth={c.shared_depth} (Llama applies each block once)")
    if c.logit_softcap is not None:
        problems.append(f"logit_softcap={c.logit_softcap} (Llama does not cap its logits)")
    return problems


def hf_config(c: ModelConfig, bos: int | None, eos: int | None, dtype: str) -> dict[str, Any]:
    """config.json for ``c``. RoPE's base is written both the transformers 5 way
    (rope_parameters) and the 4.x way (rope_theta), so either version reads it."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.context_length,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        # HF Llama has dropout on attention probabilities only; ours also drops on the
        # residual branches. Either way it only matters in training.
        "attention_dropout": c.attention_dropout_p,
        "initializer_range": c.init_std,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": None,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def model_config(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig for a Llama config.json, refusing what our model would compute
    differently."""
    _refuse_if(hf.get("hidden_act", "silu") != "silu", f"hidden_act={hf.get('hidden_act')!r}")
    _refuse_if(hf.get("attention_bias", False), "attention_bias=true")
    _refuse_if(hf.get("mlp_bias", False), "mlp_bias=true")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    _refuse_if(rope_type != "default", f"RoPE scaling (rope_type={rope_type!r})")
    _refuse_if(rope.get("partial_rotary_factor", 1.0) != 1.0, "partial_rotary_factor")
    d_model, n_heads = _required(hf, "hidden_size"), _required(hf, "num_attention_heads")
    head_dim = hf.get("head_dim") or d_model // n_heads
    _refuse_if(
        head_dim * n_heads != d_model,
        f"head_dim={head_dim} with hidden_size={d_model} and {n_heads} heads (scratchlm "
        "derives head_dim = hidden_size / num_attention_heads)",
    )
    return ModelConfig(
        vocab_size=_required(hf, "vocab_size"),
        context_length=hf.get("max_position_embeddings", 2048),
        d_model=d_model,
        n_layers=_required(hf, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_ff=_required(hf, "intermediate_size"),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        ffn="swiglu",
        position="rope",
        rope_theta=float(rope.get("rope_theta") or hf.get("rope_theta") or 10_000.0),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bias=False,
        dropout=float(hf.get("attention_dropout", 0.0)),
        init_std=hf.get("initializer_range", 0.02),
    )


def _required(hf: dict[str, Any], key: str) -> Any:
    if key not in hf:
        raise ConfigError(f"Llama config.json has no {key!r}")
    return hf[key]


def _refuse_if(condition: Any, what: str) -> None:
    if condition:
        raise ConfigError(f"unsupported Llama option {what}: scratchlm's model cannot compute it")
