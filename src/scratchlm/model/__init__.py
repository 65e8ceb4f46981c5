"""The Transformer (transformer.py, the forward pass in one file), the layers, variants
and reference kernels beside it (layers.py), the KV cache, the loss, and the one
inference-only step (inference.py: ``prepare_for_inference``)."""

from scratchlm.model.inference import DecodeLinear, prepare_for_inference
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.layers import (
    CoPE,
    DyT,
    Embedding,
    GeluMLP,
    LayerNorm,
    Linear,
    gelu,
    scaled_dot_product_attention,
    silu,
    softmax,
)
from scratchlm.model.masks import causal_mask
from scratchlm.model.quantize import Int8Linear
from scratchlm.model.transformer import (
    MultiHeadSelfAttention,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    TransformerBlock,
    TransformerLM,
    apply_rotary,
)

__all__ = [
    "CoPE",
    "DecodeLinear",
    "DyT",
    "Embedding",
    "GeluMLP",
    "Int8Linear",
    "KVCache",
    "LayerNorm",
    "Linear",
    "MultiHeadSelfAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "TransformerBlock",
    "TransformerLM",
    "apply_rotary",
    "causal_mask",
    "gelu",
    "prepare_for_inference",
    "scaled_dot_product_attention",
    "silu",
    "softmax",
]
