"""Hugging Face ``GPT2LMHeadModel`` <-> TransformerLM: the config fields and the key map.

Our classic recipe (learned positions, LayerNorm, tanh-GELU MLP, biases) computes what
GPT-2 does. Two differences in storage, stated per entry of the key map: GPT-2's
``Conv1D`` holds weights as (in, out), and ``c_attn`` is q, k, v fused into one.
"""

from __future__ import annotations

from typing import Any

from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError
from scratchlm.export.keymap import KeyMapping, rename

ARCHITECTURE = "GPT2LMHeadModel"
MODEL_TYPE = "gpt2"
# The causal-mask buffers older transformers saved with every GPT-2 layer.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# Activations that are GELU's tanh approximation, the one our GeluMLP computes.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def _layer(i: int) -> list[KeyMapping]:
    """GPT-2 block i (transformer.h.i) <- our layers.i."""
    hf, ours = f"transformer.h.{i}", f"layers.{i}"
    qkv = ("q_proj", "k_proj", "v_proj")
    return [
        rename(f"{hf}.ln_1.weight", f"{ours}.input_layernorm.weight"),
        rename(f"{hf}.ln_1.bias", f"{ours}.input_layernorm.bias"),
        KeyMapping(
            f"{hf}.attn.c_attn.weight",
            tuple(f"{ours}.self_attn.{p}.weight" for p in qkv),
            transposed=True,
        ),
        KeyMapping(f"{hf}.attn.c_attn.bias", tuple(f"{ours}.self_attn.{p}.bias" for p in qkv)),
        KeyMapping(f"{hf}.attn.c_proj.weight", (f"{ours}.self_attn.o_proj.weight",), True),
        rename(f"{hf}.attn.c_proj.bias", f"{ours}.self_attn.o_proj.bias"),
        rename(f"{hf}.ln_2.weight", f"{ours}.post_attention_layernorm.weight"),
        rename(f"{hf}.ln_2.bias", f"{ours}.post_attention_layernorm.bias"),
        KeyMapping(f"{hf}.mlp.c_fc.weight", (f"{ours}.mlp.up_proj.weight",), True),
        rename(f"{hf}.mlp.c_fc.bias", f"{ours}.mlp.up_proj.bias"),
        KeyMapping(f"{hf}.mlp.c_proj.weight", (f"{ours}.mlp.down_proj.weight",), True),
        rename(f"{hf}.mlp.c_proj.bias", f"{ours}.mlp.down_proj.bias"),
    ]


def key_map(c: ModelConfig) -> list[KeyMapping]:
    """HF name <- our name(s), for every tensor written (a tied lm_head is not: HF ties it)."""
    keys = [
        rename("transformer.wte.weight", "embed_tokens.weight"),
        rename("transformer.wpe.weight", "embed_positions.weight"),
    ]
    for i in range(c.n_layers):
        keys += _layer(i)
    keys += [
        rename("transformer.ln_f.weight", "norm.weight"),
        rename("transformer.ln_f.bias", "norm.bias"),
    ]
    if not c.tie_embeddings:
        keys.append(rename("lm_head.weight", "lm_head.weight"))
    return keys


def normalize_key(key: str) -> str:
    """Checkpoints saved from ``GPT2Model`` (OpenAI's originals) lack the ``transformer.``
    prefix of ``GPT2LMHeadModel``'s names."""
    return key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"


def unsupported(c: ModelConfig) -> list[str]:
    """Each option of ``c`` that GPT-2 cannot represent, with the reason."""
    problems = [
        f"{name}={getattr(c, name)!r} (GPT-2 needs {need!r})"
        for name, need in (("position", "learned"), ("norm", "layernorm"), ("ffn", "gelu"))
        if getattr(c, name) != need
    ]
    if not c.bias:
        problems.append("bias=False (GPT-2's projections and norms all have biases)")
    if c.kv_heads != c.n_heads:
        problems.append(
            f"n_kv_heads={c.kv_heads} with n_heads={c.n_heads} (GPT-2 has no grouped-query "
            "attention)"
        )
    if c.qk_norm:
        problems.append("qk_norm=True (GPT-2 has no QK-norm)")
    if c.shared_depth > 1:
        problems.append(f"shared_depth={c.shared_depth} (GPT-2 applies each block once)")
    if c.logit_softcap is not None:
        problems.append(f"logit_softcap={c.logit_softcap} (GPT-2 does not cap its logits)")
    return problems


def hf_config(c: ModelConfig, bos: int | None, eos: int | None, dtype: str) -> dict[str, Any]:
    """config.json for ``c``. GPT-2's three dropouts sit where our one does."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": c.vocab_size,
        "n_positions": c.context_length,
        "n_embd": c.d_model,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_inner": c.ffn_dim,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": c.norm_eps,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.attention_dropout_p,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "initializer_range": c.init_std,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def model_config(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig for a GPT-2 config.json, refusing what our model would compute
    differently."""
    act = hf.get("activation_function", "gelu_new")
    _refuse_if(act not in TANH_GELUS, f"activation_function={act!r} (only tanh GELU)")
    _refuse_if(not hf.get("scale_attn_weights", True), "scale_attn_weights=false")
    _refuse_if(hf.get("scale_attn_by_inverse_layer_idx"), "scale_attn_by_inverse_layer_idx=true")
    _refuse_if(hf.get("add_cross_attention"), "add_cross_attention=true")
    d_model = _required(hf, "n_embd")
    return ModelConfig(
        vocab_size=_required(hf, "vocab_size"),
        context_length=hf.get("n_positions", 1024),
        d_model=d_model,
        n_layers=_required(hf, "n_layer"),
        n_heads=_required(hf, "n_head"),
        d_ff=hf.get("n_inner") or 4 * d_model,
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        ffn="gelu",
        position="learned",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bias=True,
        # Our one dropout acts where GPT-2's residual dropout does (and on attention
        # probabilities and embeddings); the three are equal in published GPT-2s.
        dropout=float(hf.get("resid_pdrop", 0.1)),
        init_std=hf.get("initializer_range", 0.02),
    )


def _required(hf: dict[str, Any], key: str) -> Any:
    if key not in hf:
        raise ConfigError(f"GPT-2 config.json has no {key!r}")
    return hf[key]


def _refuse_if(condition: Any, what: str) -> None:
    if condition:
        raise ConfigError(f"unsupported GPT-2 option {what}: scratchlm's model cannot compute it")
