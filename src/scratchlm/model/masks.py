"""Attention masks: causal, within a packed row's segments, and over real keys only.

Boolean masks, True where a query may attend a key; ``None`` stands for plain causal
attention, which the fused kernel does without a mask (model/transformer.py uses them).
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(t: int, s: int, device: torch.device | None = None) -> Tensor:
    """(t, s) bool: query i (the last t of s positions) may attend key j <= s - t + i."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


def segment_positions(segment_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Packed rows: segment ids (B, T) -> each token's position in its segment and its
    segment's number in the row, both (B, T). A segment is a run of equal ids."""
    starts = torch.ones_like(segment_ids, dtype=torch.bool)  # (B, T) first of each run
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    index = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)  # (B, T)
    first = torch.where(starts, index, 0).cummax(dim=1).values  # (B, T) its segment's start
    return index - first, starts.cumsum(dim=1)


def build_attention_mask(
    t: int, s: int, keys_valid: Tensor | None, segments: Tensor | None, device: torch.device
) -> Tensor | None:
    """The boolean mask (B or 1, 1, t, s) for t queries, the last t of s key slots: causal,
    real keys only (keys_valid (B, s), False at padding or at slots a row of a ragged
    batch has not written: the serving engine's slot cache), and within one segment
    (segments (B, t) segment numbers, packed rows, s == t). None means plain causal
    attention, which the fused kernel does without a mask."""
    if keys_valid is None and segments is None and (t == s or t == 1):
        return None
    mask = causal_mask(t, s, device)[None, None]  # (1, 1, t, s)
    if segments is not None:
        mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])  # (B,1,t,t)
    if keys_valid is not None:
        mask = mask & keys_valid[:, None, None, :]  # (B, 1, t, s)
        # A padding query may see no key at all; let such a query see itself so the
        # softmax stays finite (its output is never used). Only such a query: in a
        # ragged batch (rows of different lengths, newest at each row's own slot) a
        # real query's own slot is not at s - t + i, and that slot may be unwritten.
        past = s - t
        itself = torch.arange(s, device=device) == past + torch.arange(t, device=device)[:, None]
        mask = mask | (itself & ~mask.any(-1, keepdim=True))  # (B, 1, t, s)
    return mask
