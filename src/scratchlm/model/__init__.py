"""The Transformer and its building blocks, each written out and importable."""

from scratchlm.model.attention import (
    MultiHeadSelfAttention,
    causal_mask,
    scaled_dot_product_attention,
)
from scratchlm.model.cope import CoPE
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.layers import (
    DyT,
    Embedding,
    GeluMLP,
    LayerNorm,
    Linear,
    RMSNorm,
    SwiGLU,
    gelu,
    silu,
    softmax,
)
from scratchlm.model.quantize import Int8Linear, quantize_int8
from scratchlm.model.rope import RotaryEmbedding, rope
from scratchlm.model.transformer import TransformerBlock, TransformerLM

__all__ = [
    "CoPE",
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
    "causal_mask",
    "gelu",
    "quantize_int8",
    "rope",
    "scaled_dot_product_attention",
    "silu",
    "softmax",
]
