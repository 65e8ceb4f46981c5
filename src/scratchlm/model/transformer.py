"""The decoder-only Transformer language model, top to bottom: ids in, logits out.

In order: norm -> rope -> attention -> MLP -> block -> model (docs/model.md walks it).
Names follow Hugging Face's Llama (embed_tokens, layers.N.self_attn.q_proj, ..., norm,
lm_head), so export is close to a rename. Shapes: B batch, T new positions, S = past +
T key slots, H query heads, Hkv key/value heads, D head_dim, V vocabulary. Variants
(LayerNorm, DyT, GELU and ReLU^2 MLPs, CoPE, logit soft-capping) and the written-out
reference kernels are in layers.py; the inference-only speed-ups in inference.py, which
training never sees.

Packed rows: ``segment_ids`` (B, T) splits each row into runs of equal ids (several
conversations in one training row); a token attends only within its own segment, and
positions restart at 0 where one starts, so each gets the logits it would get alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scratchlm.config import ModelConfig
from scratchlm.errors import ScratchLMError
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.layers import (
    IMPLS,
    CoPE,
    DyT,
    Embedding,
    GeluMLP,
    LayerNorm,
    Linear,
    ReLU2MLP,
    scaled_dot_product_attention,
    silu,
    softcap,
    softmax,
)
from scratchlm.model.lora import LoraLinear
from scratchlm.model.loss import LOSS_CHUNK, cross_entropy, linear_cross_entropy
from scratchlm.model.masks import build_attention_mask, causal_mask, segment_positions

# ------------------------------------------------------------------ norm


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich, 2019). Computed in float32
    so bf16 activations do not lose the small variances."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:  # (..., d) -> (..., d)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def make_norm(kind: str, d: int, eps: float, bias: bool = True) -> nn.Module:
    """The norm layer a config names: ``rmsnorm``, or a variant (layers.py)."""
    if kind == "rmsnorm":
        return RMSNorm(d, eps)
    if kind == "layernorm":
        return LayerNorm(d, eps, bias=bias)
    assert kind == "dyt", kind
    return DyT(d)


# ------------------------------------------------------------------ rope


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each channel pair (i, i + D/2) of x (..., T, D) by its angle, given as
    cos, sin (..., T, D) (broadcast): Hugging Face's half-split ("rotate_half") layout."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., 2021): the cos/sin of position *
    frequency, precomputed for positions 0..max_seq_len-1. A rotated query and key then
    score by the distance between their positions only."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10_000.0) -> None:
        super().__init__()
        # Channel pair i turns at theta^(-2i/head_dim) per position, in float32 computed
        # exactly as Hugging Face's Llama does, so imported models get identical angles.
        pair = torch.arange(0, head_dim, 2, dtype=torch.int64).float()  # (D/2,)
        speed = 1.0 / theta ** (pair / head_dim)  # (D/2,)
        positions = torch.arange(max_seq_len, dtype=torch.int64).float()
        angles = positions[:, None] * speed  # (max_seq_len, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (max_seq_len, D)
        # Not saved with the weights: they are a function of the config.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin for positions (B, T), each (B, 1, T, D) to broadcast over heads."""
        return self.cos[positions].to(dtype)[:, None], self.sin[positions].to(dtype)[:, None]


# ------------------------------------------------------------------ attention


class MultiHeadSelfAttention(nn.Module):
    """Causal self-attention with grouped-query heads, optional QK-norm, RoPE or CoPE.
    ``impl``: "fast" (torch's fused SDPA) or "reference" (written out, layers.py)."""

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
        self.dropout = c.attention_dropout_p
        self.impl = "fast"

    def forward(
        self,
        x: Tensor,
        rotary: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """x (B, T, d_model) -> (B, T, d_model). rotary: cos, sin (B, 1, T, D) or None.
        mask: from ``build_attention_mask``. cache: earlier keys/values; this call appends its
        own at ``layer``."""
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
        if self.impl == "fast" and self.cope is None:
            # No mask means plain causal attention: is_causal when the queries are all
            # the keys, and nothing to hide for one new query.
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout,
                is_causal=mask is None and T == S and T > 1,
                enable_gqa=self.n_heads != self.n_kv_heads,
            )  # fmt: skip
        # The readable path: repeat each key/value head for its group of query heads.
        rep = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B,H,S,D)
        mask = causal_mask(T, S, q.device) if mask is None else mask
        if self.cope is None:
            return scaled_dot_product_attention(q, k, v, mask, dropout_p=dropout)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
        scores = self.cope(q, scores.masked_fill(~mask, float("-inf")))
        probs = softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # (B, H, T, S)
        return F.dropout(probs, dropout) @ v if dropout else probs @ v


# ------------------------------------------------------------------ MLP


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer, 2020), as in Llama. ``impl``: "fast"
    (torch's fused SiLU) or "reference" (``silu``, written out in layers.py)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, std: float = 0.02) -> None:
        super().__init__()
        self.gate_proj = Linear(d_model, d_ff, bias, std)
        self.up_proj = Linear(d_model, d_ff, bias, std)
        self.down_proj = Linear(d_ff, d_model, bias, std)
        self.impl = "fast"

    def forward(self, x: Tensor) -> Tensor:  # (..., d_model) -> (..., d_model)
        gate = self.gate_proj(x)  # (..., d_ff)
        gate = silu(gate) if self.impl == "reference" else F.silu(gate)
        return self.down_proj(gate * self.up_proj(x))


# ------------------------------------------------------------------ block


class TransformerBlock(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        # Residual projections start smaller so the residual stream's variance stays
        # flat with depth (GPT-2's 1/sqrt(2 * n_layers) scaling).
        residual_std = c.init_std / math.sqrt(2 * c.depth)
        self.input_layernorm = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        self.self_attn = MultiHeadSelfAttention(c, residual_std)
        self.post_attention_layernorm = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        mlp = {"swiglu": SwiGLU, "gelu": GeluMLP, "relu2": ReLU2MLP}[c.ffn]
        self.mlp = mlp(c.d_model, c.ffn_dim, c.bias, c.init_std)
        self.mlp.down_proj.reset_parameters(residual_std)
        if c.zero_init_proj:  # each block starts as the identity; only init changes
            nn.init.zeros_(self.self_attn.o_proj.weight)
            nn.init.zeros_(self.mlp.down_proj.weight)
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self,
        x: Tensor,
        rotary: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:  # (B, T, d_model) -> (B, T, d_model)
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), rotary, mask, cache, layer))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


# ------------------------------------------------------------------ model


class TransformerLM(nn.Module):
    """A decoder-only language model built from a ModelConfig."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed_tokens = Embedding(c.vocab_size, c.d_model, c.init_std)
        self.embed_positions = (
            Embedding(c.context_length, c.d_model, c.init_std) if c.position == "learned" else None
        )
        rope = c.position == "rope"
        self.rotary = RotaryEmbedding(c.head_dim, c.context_length, c.rope_theta) if rope else None
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(TransformerBlock(c) for _ in range(c.n_layers))
        # Recursive depth: block i is applied shared_depth times, application r adding
        # depth_scales[i * shared_depth + r] times its change to the residual stream.
        self.depth_scales = nn.Parameter(torch.ones(c.depth)) if c.shared_depth > 1 else None
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        self.lm_head = Linear(c.d_model, c.vocab_size, bias=False, std=c.init_std)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Training only keeps each block's input and recomputes the block in backward
        # (``--checkpoint-activations``): the same numbers for about a third more compute.
        self.checkpoint_activations = False

    def forward(
        self,
        ids: Tensor,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
        attention_mask: Tensor | None = None,
        last_only: bool = False,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """ids (B, T) -> logits (B, T, V), or (B, 1, V) if ``last_only``.

        cache: a KVCache of earlier positions (padding recorded on it by whoever pads,
        ``set_padding``); this call appends to it. positions: (B, T) (default: cache
        length + 0..T-1, or the position within its segment). attention_mask: (B, T)
        bool, False at padding, without a cache. segment_ids: (B, T) packed rows, without
        a cache. Ids and lengths are validated where they enter (prompts, token files).
        """
        x = self.hidden_states(ids, cache, positions, attention_mask, segment_ids)
        if last_only:
            x = x[:, -1:]  # (B, 1, d_model)
        logits = self.lm_head(x)  # (B, T or 1, V)
        cap = self.config.logit_softcap
        return logits if cap is None else softcap(logits, cap)

    def loss(
        self,
        ids: Tensor,
        targets: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        reduction: str = "mean",
        chunk_size: int = LOSS_CHUNK,
    ) -> Tensor:
        """Next-token cross-entropy over the targets that are not -100, their mean (or
        with ``reduction="sum"`` their sum): ids, targets (B, T). The fused projection +
        loss never holds all (B, T, V) logits, only ``chunk_size`` rows of them at a
        time; equal to cross_entropy(self(ids), targets). segment_ids (B, T): packed
        rows, as in ``forward``."""
        hidden = self.hidden_states(
            ids, attention_mask=attention_mask, segment_ids=segment_ids
        )  # (B, T, d_model)
        if isinstance(self.lm_head, LoraLinear):
            # An output layer with a LoRA adapter (model/lora.py): the adapter must see
            # the hidden states, so the loss goes through its forward, all logits at once.
            logits = self.lm_head(hidden)  # (B, T, V)
            cap = self.config.logit_softcap
            logits = logits if cap is None else softcap(logits, cap)
            return cross_entropy(logits, targets, reduction=reduction)
        return linear_cross_entropy(
            hidden, self.lm_head.weight, targets, chunk_size=chunk_size, reduction=reduction,
            softcap=self.config.logit_softcap,
        )  # fmt: skip

    def hidden_states(
        self,
        ids: Tensor,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """ids (B, T) -> the final normalised hidden states (B, T, d_model), the input of
        the output projection. Arguments as in ``forward``."""
        c = self.config
        assert ids.dim() == 2, f"ids must be (batch, time), got shape {tuple(ids.shape)}"
        B, T = ids.shape
        past = cache.length if cache is not None else 0
        assert past + T <= c.context_length, f"{past} + {T} positions > {c.context_length}"
        assert segment_ids is None or cache is None, "segment_ids cannot be used with a KV cache"
        assert attention_mask is None or cache is None, "with a cache: cache.set_padding(mask)"
        assert segment_ids is None or segment_ids.shape == ids.shape, (
            f"segment_ids {tuple(segment_ids.shape)} must have the shape of ids {(B, T)}"
        )
        if cache is not None:
            cache.check_room(T)
        segments = None  # (B, T) segment number of each token in packed rows
        if segment_ids is not None:
            in_segment, segments = segment_positions(segment_ids)  # (B, T) each
            positions = in_segment if positions is None else positions
        if positions is None:
            positions = torch.arange(past, past + T, device=ids.device).expand(B, T)
        keys_valid = cache.keys_valid(past + T) if cache is not None else attention_mask
        mask = build_attention_mask(T, past + T, keys_valid, segments, ids.device)

        x = self.embed_tokens(ids)  # (B, T, d_model)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions)
        x = self.dropout(x)
        rotary = self.rotary(positions, x.dtype) if self.rotary is not None else None
        blocks = [block for block in self.layers for _ in range(c.shared_depth)]
        recompute = self.checkpoint_activations and torch.is_grad_enabled() and cache is None
        for layer, block in enumerate(blocks):
            if recompute:  # non-reentrant: replays the same dropout masks and autocast
                y = checkpoint(block, x, rotary, mask, cache, layer, use_reentrant=False)
            else:
                y = block(x, rotary, mask, cache, layer)  # (B, T, d_model)
            x = y if self.depth_scales is None else x + self.depth_scales[layer] * (y - x)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)  # (B, T, d_model)

    # ------------------------------------------------------------------ facts

    def set_impl(self, impl: str) -> None:
        """Run torch's fused kernels (``fast``, the default) or the written-out reference
        kernels (``reference``: attention, SiLU, GELU) in every layer."""
        if impl not in IMPLS:
            raise ScratchLMError(f"impl {impl!r} is not one of {', '.join(IMPLS)}")
        for block in self.layers:
            block.self_attn.impl = block.mlp.impl = impl

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count. ``non_embedding`` leaves out the input token and position
        embeddings (the output projection counts unless it is tied to the input)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
            if self.embed_positions is not None:
                n -= self.embed_positions.weight.numel()
            if self.config.tie_embeddings:  # the shared matrix is the output projection
                n += self.lm_head.weight.numel()
        return n

    def flops_per_token(self, training: bool = True, seq_len: int | None = None) -> float:
        """FLOPs per token: 2 per weight per token forward (a multiply and an add), plus
        attention's q.k and p.v at ``seq_len`` (default: the context length); x3 for
        training (backward costs twice the forward). For MFU."""
        c = self.config
        t = seq_len or c.context_length
        weights = self.num_parameters(non_embedding=True)
        if self.config.shared_depth > 1:  # shared blocks run shared_depth times
            block_params = sum(p.numel() for p in self.layers.parameters())
            weights += block_params * (c.shared_depth - 1)
        forward = 2 * weights + 2 * 2 * c.depth * c.d_model * t
        return 3 * forward if training else forward
