"""Attention, written out, and the multi-head self-attention layer built on it.

``scaled_dot_product_attention`` is the textbook formula: softmax(q k^T / sqrt(d)) v,
with a boolean mask (True = may attend). The layer uses PyTorch's fused kernel for the
same math by default (``impl="sdpa"``); a test proves the two agree, forward and
backward, with masks, grouped-query attention and a KV cache.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.config import ModelConfig
from scratchlm.model.cope import CoPE
from scratchlm.model.layers import Linear, RMSNorm, softmax
from scratchlm.model.rope import apply_rotary

if TYPE_CHECKING:
    from scratchlm.model.kv_cache import KVCache

IMPLS = ("sdpa", "reference")


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """softmax(q k^T * scale, masked) v for any leading batch dims (Vaswani et al., 2017).

    q (..., Tq, D), k (..., S, D), v (..., S, Dv), mask bool broadcastable to
    (..., Tq, S) with True where a query may attend. Returns (..., Tq, Dv).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = softmax(scores, dim=-1)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


def causal_mask(t: int, s: int, device: torch.device | None = None) -> Tensor:
    """(t, s) bool: query i (the last t of s positions) may attend key j <= s - t + i."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


class MultiHeadSelfAttention(nn.Module):
    """Causal self-attention with grouped-query heads, optional QK-norm, RoPE or CoPE.

    Projections are named as in Hugging Face's Llama (q_proj, k_proj, v_proj, o_proj).
    """

    def __init__(self, config: ModelConfig, residual_std: float) -> None:
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.kv_heads, c.head_dim
        self.q_proj = Linear(c.d_model, c.n_heads * c.head_dim, c.bias, c.init_std)
        self.k_proj = Linear(c.d_model, c.kv_heads * c.head_dim, c.bias, c.init_std)
        self.v_proj = Linear(c.d_model, c.kv_heads * c.head_dim, c.bias, c.init_std)
        self.o_proj = Linear(c.n_heads * c.head_dim, c.d_model, c.bias, residual_std)
        self.q_norm = RMSNorm(c.head_dim, c.norm_eps) if c.qk_norm else None
        self.k_norm = RMSNorm(c.head_dim, c.norm_eps) if c.qk_norm else None
        self.cope = CoPE(c.context_length, c.head_dim) if c.position == "cope" else None
        self.dropout = c.dropout
        self.impl = "sdpa"

    def forward(
        self,
        x: Tensor,
        rotary: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """x (B, T, d_model) -> (B, T, d_model).

        rotary: cos, sin (B, 1, T, head_dim) or None. mask: bool (B or 1, 1, T, S) with
        True = may attend, or None for plain causal attention over the S keys.
        cache: keys/values of earlier positions; this call appends its own at ``layer``.
        """
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B,H,T,D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, S, D) with S = past + T
        y = self._attend(q, k, v, mask)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        T, S = q.shape[-2], k.shape[-2]
        dropout = self.dropout if self.training else 0.0
        if self.impl == "sdpa" and self.cope is None:
            # Fused kernel. No mask means plain causal attention: is_causal when the
            # queries are all the keys, and nothing to hide for one new query.
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=mask is None and T == S and T > 1,
                enable_gqa=self.n_heads != self.n_kv_heads,
            )
        # The readable path: repeat each key/value head for its group of query heads.
        rep = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if mask is None:
            mask = causal_mask(T, S, q.device)
        if self.cope is None:
            return scaled_dot_product_attention(q, k, v, mask, dropout_p=dropout)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
        scores = self.cope(q, scores.masked_fill(~mask, float("-inf")))
        probs = softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return F.dropout(probs, dropout) @ v if dropout else probs @ v
