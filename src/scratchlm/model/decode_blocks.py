"""Fused layers for generation only: fewer, larger torch calls per decoding step.

A decoding step of the ``small`` model runs a few hundred small torch operations, each
with a fixed cost in dispatch (and, for a product split across the threads, in waking
them), which the step pays on top of streaming the weights. ``prepare_for_inference``
swaps these in for the training layers; each computes the same function as the layer it
replaces, to float rounding (tests/model/test_decode_blocks.py):

- ``FusedBlock``: the block's two residual steps without the dropout layers (a prepared
  model only generates, in eval mode, where dropout is the identity);
- ``FusedAttention``: q, k and v from one product with the three weights stacked
  (W_qkv = [W_q; W_k; W_v], one product instead of three), and RoPE applied to the
  query and key heads together when there is no QK-norm between them, in three calls
  (``rotate``) instead of the readable ``apply_rotary``'s seven;
- ``FusedSwiGLU``: gate and up from one product (W = [W_gate; W_up]);
- ``FusedRMSNorm``: RMSNorm as torch's single ``rms_norm`` call instead of the
  written-out formula's six operations.

The products themselves (``DecodeLinear`` or ``Int8Linear``, model/inference.py) are
built by ``prepare_for_inference`` and handed in; this module only arranges the calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.kv_cache import KVCache
from scratchlm.model.layers import silu
from scratchlm.model.transformer import (
    MultiHeadSelfAttention,
    RMSNorm,
    SwiGLU,
    TransformerBlock,
)


def rotate(x: Tensor, cos: Tensor, sin: Tensor, sign: Tensor) -> Tensor:
    """``apply_rotary`` (transformer.py) in three calls: rotate_half(x) = (-x2, x1) is x
    rolled by half its width, (x2, x1), times ``sign`` (-1 on the first half, +1 on the
    second), so x * cos + rotate_half(x) * sin = x * cos + roll(x) * (sin * sign).
    x (..., T, D); cos, sin (..., T, D) (broadcast); sign (D,). Equal to float rounding
    (one fused multiply-add in place of a product and a sum)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin * sign)


class FusedBlock(nn.Module):
    """``TransformerBlock`` without its dropout layers: x + attn(norm(x)), then
    x + mlp(norm(x)). Keeps the block's own layers (fused or not) under their names."""

    def __init__(self, block: TransformerBlock) -> None:
        super().__init__()
        self.input_layernorm = block.input_layernorm
        self.self_attn = block.self_attn
        self.post_attention_layernorm = block.post_attention_layernorm
        self.mlp = block.mlp

    def forward(
        self,
        x: Tensor,
        rotary: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:  # (B, T, d_model) -> (B, T, d_model)
        x = x + self.self_attn(self.input_layernorm(x), rotary, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class FusedAttention(nn.Module):
    """``MultiHeadSelfAttention`` with q, k, v from one product ``qkv`` (d_model ->
    (H + 2 Hkv) D). Keeps the original's output projection, QK-norms and attention
    kernel (``attn``, whose q/k/v projections are dropped)."""

    def __init__(self, attn: MultiHeadSelfAttention, qkv: nn.Module) -> None:
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj"):
            delattr(attn, name)  # their weights live on, stacked, in qkv
        self.attn, self.qkv = attn, qkv
        self.heads = (attn.n_heads, attn.n_kv_heads, attn.n_kv_heads)
        self.n_stacked = sum(self.heads)  # H + 2 Hkv
        half = attn.head_dim // 2  # RoPE's half-split: -1 on the first half, +1 on the second
        sign = torch.cat([-torch.ones(half), torch.ones(attn.head_dim - half)])
        device = next(iter(qkv.buffers())).device  # the stacked weight's
        self.register_buffer("rope_sign", sign.to(device), persistent=False)  # (D,)

    @property
    def impl(self) -> str:  # TransformerLM.set_impl reaches the attention kernel
        return self.attn.impl

    @impl.setter
    def impl(self, value: str) -> None:
        self.attn.impl = value

    def forward(
        self,
        x: Tensor,
        rotary: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """As ``MultiHeadSelfAttention.forward``: x (B, T, d_model) -> (B, T, d_model)."""
        a = self.attn
        B, T, _ = x.shape
        qkv = self.qkv(x)  # (B, T, (H + 2 Hkv) D)
        if T == 1:  # one position: (B, 1, H + 2 Hkv, D) is (B, H + 2 Hkv, 1, D) in memory
            heads = qkv.view(B, self.n_stacked, 1, a.head_dim)
        else:
            heads = qkv.view(B, T, self.n_stacked, a.head_dim).transpose(1, 2)
        if a.q_norm is None and rotary is not None:  # rotate q and k heads in one go
            qk, v = heads.split([self.heads[0] + self.heads[1], self.heads[2]], dim=1)
            q, k = rotate(qk, *rotary, self.rope_sign).split(self.heads[:2], dim=1)
        else:
            q, k, v = heads.split(self.heads, dim=1)  # (B, H, T, D), (B, Hkv, T, D) x 2
            if a.q_norm is not None:
                q, k = a.q_norm(q), a.k_norm(k)
            if rotary is not None:
                q, k = rotate(q, *rotary, self.rope_sign), rotate(k, *rotary, self.rope_sign)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, S, D)
        y = a._attend(q, k, v, mask)  # (B, H, T, D)
        y = y.reshape(B, 1, -1) if T == 1 else y.transpose(1, 2).reshape(B, T, -1)
        return a.o_proj(y)  # (B, T, H D) -> (B, T, d_model)


class FusedSwiGLU(nn.Module):
    """``SwiGLU`` with gate and up from one product ``gate_up`` (d_model -> 2 d_ff);
    keeps the original's down projection and SiLU kernel (``mlp``)."""

    def __init__(self, mlp: SwiGLU, gate_up: nn.Module) -> None:
        super().__init__()
        for name in ("gate_proj", "up_proj"):
            delattr(mlp, name)
        self.mlp, self.gate_up = mlp, gate_up

    @property
    def impl(self) -> str:
        return self.mlp.impl

    @impl.setter
    def impl(self, value: str) -> None:
        self.mlp.impl = value

    def forward(self, x: Tensor) -> Tensor:  # (..., d_model) -> (..., d_model)
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (..., d_ff) each
        gate = silu(gate) if self.mlp.impl == "reference" else F.silu(gate)
        return self.mlp.down_proj(gate * up)


class FusedRMSNorm(nn.Module):
    """``RMSNorm`` as one kernel, in float32 like the original: the same weight (shared,
    not copied) and eps."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps
        self.shape = list(norm.weight.shape)  # (d,)

    def forward(self, x: Tensor) -> Tensor:  # (..., d) -> (..., d)
        if x.dtype == self.weight.dtype == torch.float32:  # decoding: no casts to make
            return torch.rms_norm(x, self.shape, self.weight, self.eps)
        y = F.rms_norm(x.float(), self.shape, self.weight.float(), self.eps)
        return y.to(x.dtype)
