"""Contextual position encoding, CoPE (Golovneva et al., 2024).

Instead of counting tokens, a query counts what its gates let through: for query i and
key j, the gate g_ij = sigmoid(q_i . k_j) says whether key j "counts", and the position
of j seen from i is p_ij = sum over k in [j, i] of g_ik, a real number. Learned
embeddings e[0..n-1] of integer positions are interpolated at p_ij, and q_i . e(p_ij) is
added to the attention logit. Positions can thus count words, sentences or anything the
model learns to gate on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CoPE(nn.Module):
    """Adds contextual-position terms to attention logits, shared across heads."""

    def __init__(self, max_positions: int, head_dim: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.pos_emb = nn.Parameter(torch.zeros(head_dim, max_positions))

    def forward(self, q: Tensor, logits: Tensor) -> Tensor:
        """q (B, H, T, D) and masked attention logits (B, H, T, S), -inf where a query may
        not look, -> the logits plus the position terms (B, H, T, S)."""
        gates = torch.sigmoid(logits)  # masked keys: sigmoid(-inf) = 0, they do not count
        # p_ij = sum_{k >= j} g_ik: a cumulative sum from the right along the keys.
        pos = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.max_positions - 1)
        lo = pos.floor().long()
        hi = pos.ceil().long()
        by_position = q @ self.pos_emb.to(q.dtype)  # (B, H, T, max_positions)
        term_lo = by_position.gather(-1, lo)
        term_hi = by_position.gather(-1, hi)
        w = (pos - lo).to(q.dtype)  # interpolate between the two integer positions
        return logits + term_hi * w + term_lo * (1 - w)
