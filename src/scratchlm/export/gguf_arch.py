"""The two GGUF architectures scratchlm writes and reads: ``llama`` and ``gpt2``.

For each: which of our configurations it represents (the same checks as the Hugging Face
export, ``hf_llama.unsupported`` / ``hf_gpt2.unsupported``), the hyperparameters llama.cpp
reads under ``{arch}.*``, and the key map from llama.cpp's tensor names to ours (the
``KeyMapping`` of ``export.keymap``: GPT-2's ``attn_qkv`` is q, k and v concatenated, held
(out, in) like every GGUF matrix, so nothing is transposed).

One difference is in the numbers, not the names: our RoPE rotates the two halves of each
head (x[i], x[i + d/2]), llama.cpp's ``llama`` rotates adjacent pairs (x[2i], x[2i + 1]).
The rows of ``attn_q`` / ``attn_k`` are permuted on export (``permute_rows``) so llama.cpp
computes our attention, and back on import (``unpermute_rows``), as llama.cpp's own
converter does for Hugging Face checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError, ScratchLMError
from scratchlm.export import hf_gpt2, hf_llama
from scratchlm.export.keymap import KeyMapping, rename

LLAMA, GPT2 = "llama", "gpt2"
ARCHITECTURES = (LLAMA, GPT2)

# Per layer: llama.cpp's name <- ours (the tensors of one block).
LLAMA_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GPT2_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def architecture_of(c: ModelConfig) -> str:
    """``llama`` or ``gpt2`` for a configuration GGUF represents exactly; ConfigError
    naming every option that stands in the way otherwise."""
    if c.position == "rope":
        arch, problems = LLAMA, hf_llama.unsupported(c)
    elif c.position == "learned":
        arch, problems = GPT2, hf_gpt2.unsupported(c)
    else:
        raise ConfigError(
            f"position={c.position!r} has no GGUF architecture: export supports "
            "position='rope' (as llama) and position='learned' (as gpt2)"
        )
    if problems:
        raise ConfigError(
            f"cannot export to GGUF {arch} (chosen for position={c.position!r}): "
            + "; ".join(problems)
        )
    return arch


def hyperparameters(arch: str, c: ModelConfig) -> dict[str, int | float]:
    """The ``{arch}.*`` metadata llama.cpp needs, by key without the prefix."""
    common = {
        "context_length": c.context_length,
        "embedding_length": c.d_model,
        "block_count": c.n_layers,
        "feed_forward_length": c.ffn_dim,
        "attention.head_count": c.n_heads,
        "vocab_size": c.vocab_size,
    }
    if arch == GPT2:
        return {**common, "attention.layer_norm_epsilon": float(c.norm_eps)}
    return {
        **common,
        "attention.head_count_kv": c.kv_heads,
        "attention.layer_norm_rms_epsilon": float(c.norm_eps),
        "rope.freq_base": float(c.rope_theta),
        "rope.dimension_count": c.head_dim,
        "attention.key_length": c.head_dim,
        "attention.value_length": c.head_dim,
    }


def model_config(
    arch: str, read: Mapping[str, Any], vocab_size: int, has_output: bool
) -> ModelConfig:
    """Our ModelConfig from the ``{arch}.*`` metadata (``read``: key without the prefix ->
    value), the file's vocabulary size, and whether it has its own ``output.weight``
    (else the output matrix is the tied token embedding)."""

    def need(key: str) -> Any:
        if key not in read:
            raise ScratchLMError(f"the GGUF file lacks the metadata key {arch}.{key}")
        value = read[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScratchLMError(f"GGUF metadata {arch}.{key} = {value!r} is not a number")
        return value

    d_model, n_heads = need("embedding_length"), need("attention.head_count")
    common = dict(
        context_length=need("context_length"),
        d_model=d_model,
        n_layers=need("block_count"),
        n_heads=n_heads,
        d_ff=need("feed_forward_length"),
        tie_embeddings=not has_output,
        vocab_size=vocab_size,
    )
    if arch == GPT2:
        return ModelConfig(
            **common,
            norm="layernorm",
            norm_eps=need("attention.layer_norm_epsilon"),
            ffn="gelu",
            position="learned",
            bias=True,
        )
    head_dim = d_model // n_heads if n_heads else 0
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if key in read and need(key) != head_dim:
            raise ScratchLMError(
                f"GGUF {arch}.{key} = {read[key]} but embedding_length / head_count = "
                f"{head_dim}: scratchlm rotates and attends over whole heads of that size"
            )
    scaling = read.get("rope.scaling.type", "none")
    if scaling != "none":
        raise ScratchLMError(f"GGUF {arch}.rope.scaling.type = {scaling!r}: not supported")
    return ModelConfig(
        **common,
        n_kv_heads=need("attention.head_count_kv") if "attention.head_count_kv" in read else None,
        norm="rmsnorm",
        norm_eps=need("attention.layer_norm_rms_epsilon"),
        ffn="swiglu",
        position="rope",
        rope_theta=float(need("rope.freq_base")) if "rope.freq_base" in read else 10_000.0,
        bias=False,
    )


def key_map(arch: str, c: ModelConfig) -> list[KeyMapping]:
    """llama.cpp's tensor name <- ours, for every tensor in the file (a tied output
    matrix is not written: llama.cpp then uses token_embd)."""
    keys = [rename("token_embd.weight", "embed_tokens.weight")]
    if arch == GPT2:
        keys.append(rename("position_embd.weight", "embed_positions.weight"))
    for i in range(c.n_layers):
        blk, ours = f"blk.{i}", f"layers.{i}"
        if arch == LLAMA:
            keys += [rename(f"{blk}.{g}", f"{ours}.{o}") for g, o in LLAMA_LAYER.items()]
            continue
        for kind in ("weight", "bias"):
            qkv = tuple(f"{ours}.self_attn.{p}_proj.{kind}" for p in "qkv")
            keys.append(KeyMapping(f"{blk}.attn_qkv.{kind}", qkv))
            keys += [
                rename(f"{blk}.{g}.{kind}", f"{ours}.{o}.{kind}") for g, o in GPT2_LAYER.items()
            ]
    keys.append(rename("output_norm.weight", "norm.weight"))
    if arch == GPT2:
        keys.append(rename("output_norm.bias", "norm.bias"))
    if not c.tie_embeddings:
        keys.append(rename("output.weight", "lm_head.weight"))
    return keys


def rope_heads(arch: str, name: str, c: ModelConfig) -> int | None:
    """How many heads tensor ``name``'s rows hold when its rows must be permuted for
    llama.cpp's RoPE (attn_q: n_heads, attn_k: n_kv_heads); None for every other tensor."""
    if arch != LLAMA:
        return None
    if name.endswith(".attn_q.weight"):
        return c.n_heads
    if name.endswith(".attn_k.weight"):
        return c.kv_heads
    return None


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """(n_heads * d, in) rows of half-split RoPE heads -> interleaved pairs: within each
    head, row i of the first half and row i of the second half become rows 2i, 2i + 1."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of ``permute_rows``."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
