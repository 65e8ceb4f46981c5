"""The decoder-only Transformer language model: ids in, next-token logits out.

One forward pass, top to bottom: token embedding (+ learned positions), then pre-norm
blocks (x + attention(norm(x)), then x + mlp(norm(x))), a final norm, and the output
projection to vocabulary logits. Names follow Hugging Face's Llama (embed_tokens,
layers.N.self_attn, layers.N.mlp, input_layernorm, post_attention_layernorm, norm,
lm_head), so export is close to a rename.

Packed rows: ``segment_ids`` (B, T) splits each row into segments (runs of equal ids),
e.g. several conversations packed into one training row. A token then attends only to
earlier tokens of its own segment, and positions restart at 0 where a segment starts, so
each packed sequence gets exactly the logits it would get alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from scratchlm.config import ModelConfig
from scratchlm.errors import ScratchLMError
from scratchlm.model.attention import IMPLS, MultiHeadSelfAttention, causal_mask
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.layers import Embedding, GeluMLP, Linear, SwiGLU, make_norm
from scratchlm.model.loss import linear_cross_entropy
from scratchlm.model.rope import RotaryEmbedding


def segment_starts(segment_ids: Tensor) -> Tensor:
    """(B, T) ids -> (B, T) bool, True where a segment starts: the first token of a row
    and every token whose id differs from the one before it."""
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return starts


def segment_positions(starts: Tensor) -> Tensor:
    """(B, T) bool segment starts -> (B, T) int64 position of each token in its segment."""
    index = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)  # (B, T)
    # The start of each token's segment: the latest start at or before it.
    first = torch.where(starts, index, 0).cummax(dim=1).values  # (B, T)
    return index - first


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
        mlp = SwiGLU if c.ffn == "swiglu" else GeluMLP
        self.mlp = mlp(c.d_model, c.d_ff, c.bias, c.init_std)
        self.mlp.down_proj.reset_parameters(residual_std)
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


class TransformerLM(nn.Module):
    """A decoder-only language model built from a ModelConfig."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed_tokens = Embedding(c.vocab_size, c.d_model, c.init_std)
        self.embed_positions = (
            Embedding(c.context_length, c.d_model, c.init_std) if c.position == "learned" else None
        )
        self.rotary = (
            RotaryEmbedding(c.head_dim, c.context_length, c.rope_theta)
            if c.position == "rope"
            else None
        )
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(TransformerBlock(c) for _ in range(c.n_layers))
        # Recursive depth: block i is applied shared_depth times, application r adding
        # depth_scales[i * shared_depth + r] times its change to the residual stream.
        self.depth_scales = nn.Parameter(torch.ones(c.depth)) if c.shared_depth > 1 else None
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        self.lm_head = Linear(c.d_model, c.vocab_size, bias=False, std=c.init_std)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.check_inputs = True  # validates ids (one host sync per call); off for speed

    def forward(
        self,
        ids: Tensor,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
        attention_mask: Tensor | None = None,
        last_only: bool = False,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """ids (B, T) -> logits (B, T, vocab_size), or (B, 1, vocab_size) if ``last_only``.

        cache: a KVCache holding earlier positions; this call appends to it.
        positions: (B, T) position of each token (default: cache length + 0..T-1, or the
        position within its segment when ``segment_ids`` is given).
        attention_mask: (B, T) bool, False for padding tokens that nothing may attend to.
        segment_ids: (B, T) int64 for packed rows: tokens attend only within their own
        segment (a run of equal ids). Not with a cache.
        """
        x = self.hidden_states(ids, cache, positions, attention_mask, segment_ids)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)

    def loss(
        self,
        ids: Tensor,
        targets: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """Mean (or, with ``reduction="sum"``, summed) next-token cross-entropy: ids (B, T), targets (B, T) with -100 where no
        loss is wanted. Uses the fused projection + loss (``linear_cross_entropy``), which
        never holds all (B, T, V) logits; equal to cross_entropy(self(ids), targets).
        segment_ids (B, T): packed rows, as in ``forward``; the loss is then the mean over
        the target tokens of all segments."""
        hidden = self.hidden_states(
            ids, attention_mask=attention_mask, segment_ids=segment_ids
        )  # (B, T, d_model)
        return linear_cross_entropy(hidden, self.lm_head.weight, targets, reduction=reduction)

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
        past = cache.length if cache is not None else 0
        self._check(ids, past, cache, segment_ids)
        B, T = ids.shape
        # Segment k of a row is the k-th run of equal ids: (B, T) run numbers.
        starts = segment_starts(segment_ids) if segment_ids is not None else None
        segments = starts.cumsum(dim=1) if starts is not None else None
        if positions is None and starts is not None:
            positions = segment_positions(starts)
        elif positions is None:
            positions = torch.arange(past, past + T, device=ids.device).expand(B, T)
        x = self.embed_tokens(ids)  # (B, T, d_model)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions)
        x = self.dropout(x)
        rotary = self.rotary.angles(positions, x.dtype) if self.rotary is not None else None
        mask = self._mask(T, past, attention_mask, cache, ids.device, segments)

        for i, block in enumerate(self.layers):
            for r in range(c.shared_depth):
                layer = i * c.shared_depth + r
                if self.depth_scales is None:
                    x = block(x, rotary, mask, cache, layer)
                else:
                    x = x + self.depth_scales[layer] * (block(x, rotary, mask, cache, layer) - x)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    def _check(
        self, ids: Tensor, past: int, cache: KVCache | None, segment_ids: Tensor | None
    ) -> None:
        c = self.config
        if ids.dim() != 2:
            raise ScratchLMError(f"ids must be (batch, time), got shape {tuple(ids.shape)}")
        if segment_ids is not None and cache is not None:
            raise ScratchLMError(
                "segment_ids (packed rows) cannot be used with a KV cache: "
                "run packed rows without a cache, or one sequence per row with it"
            )
        if segment_ids is not None and segment_ids.shape != ids.shape:
            raise ScratchLMError(
                f"segment_ids must have the shape of ids {tuple(ids.shape)}, "
                f"got {tuple(segment_ids.shape)}"
            )
        if past + ids.shape[1] > c.context_length:
            raise ScratchLMError(
                f"sequence of {past + ids.shape[1]} tokens is longer than the model's context "
                f"of {c.context_length}; truncate it or use a sliding window"
            )
        if cache is not None:
            cache.check_room(ids.shape[1])
        if self.check_inputs and ids.numel():
            lo, hi = int(ids.min()), int(ids.max())  # syncs with the device
            if lo < 0 or hi >= c.vocab_size:
                bad = lo if lo < 0 else hi
                raise ScratchLMError(
                    f"token id {bad} is outside the model's vocabulary of {c.vocab_size}; "
                    "was the text encoded with this model's tokenizer?"
                )

    def _mask(
        self,
        T: int,
        past: int,
        attention_mask: Tensor | None,
        cache: KVCache | None,
        device: torch.device,
        segments: Tensor | None = None,
    ) -> Tensor | None:
        """The boolean attention mask (B or 1, 1, T, past + T), or None when plain causal
        attention is meant (the fast kernels handle that case without a mask).
        segments: (B, T) segment number of each token (packed rows; never with a cache):
        causal and within one segment, a block-diagonal mask."""
        if attention_mask is not None and cache is not None:
            cache.set_padding(attention_mask.bool())
        keys_valid = None  # (B, S): which keys are real tokens
        if cache is not None and cache.key_mask is not None:
            keys_valid = cache.key_mask[:, : past + T]
        elif attention_mask is not None:
            keys_valid = attention_mask.bool()
        if keys_valid is None and segments is None and (past == 0 or T == 1):
            return None
        mask = causal_mask(T, past + T, device)[None, None]  # (1, 1, T, S)
        if segments is not None:  # no cache here, so S == T
            same = segments[:, None, :, None] == segments[:, None, None, :]  # (B, 1, T, T)
            mask = mask & same
        if keys_valid is not None:
            mask = mask & keys_valid[:, None, None, :]
            # A padding query may see no key at all; let every query see itself so the
            # softmax stays finite (its output is never used).
            diagonal = torch.arange(past + T, device=device) == past + torch.arange(
                T, device=device
            ).unsqueeze(1)
            mask = mask | diagonal
        return mask

    # ------------------------------------------------------------------ facts

    def set_attention_impl(self, impl: str) -> None:
        """``sdpa`` (PyTorch's fused kernel, default) or ``reference`` (written out)."""
        if impl not in IMPLS:
            raise ScratchLMError(f"attention impl {impl!r} is not one of {', '.join(IMPLS)}")
        for block in self.layers:
            block.self_attn.impl = impl

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
