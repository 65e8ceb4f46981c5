"""Rotary position embedding (Su et al., 2021) in Hugging Face's half-split layout.

Each pair of channels (i, i + head_dim/2) of a query or key is rotated by the angle
position * theta^(-2i/head_dim). A dot product of a rotated query and key then depends on
their positions only through the distance between them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rope_frequencies(
    head_dim: int, theta: float = 10_000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Angular speed of each channel pair: (head_dim/2,).

    In float32 this is computed exactly as Hugging Face's Llama does, so imported and
    exported models get bit-identical angles (float64 tables drift ~3e-5 from HF's at 2k).
    """
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype) / head_dim)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (..., T, D) by angles given as cos, sin (..., T, D), broadcast."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


def rope(x: Tensor, positions: Tensor, theta: float = 10_000.0) -> Tensor:
    """Rotate ``x`` of shape (..., T, head_dim) by token positions of shape (..., T).

    The plain function: computes the angles each call. The model uses RotaryEmbedding,
    which reads them from a precomputed table.
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    freqs = rope_frequencies(x.shape[-1], theta, dtype).to(x.device)
    angles = positions.to(dtype)[..., None] * freqs  # (..., T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., T, D)
    return apply_rotary(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype))


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions 0..max_seq_len-1."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10_000.0) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        positions = torch.arange(max_seq_len, dtype=torch.int64).float()
        angles = positions[:, None] * rope_frequencies(head_dim, theta)  # (max_seq_len, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (max_seq_len, D)
        # Not saved with the weights: they are a function of the config.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def angles(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin for positions (B, T), shaped (B, 1, T, D) to broadcast over heads."""
        cos = self.cos[positions].to(dtype)[:, None]
        sin = self.sin[positions].to(dtype)[:, None]
        return cos, sin

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate x (..., T, D) by positions (..., T), like ``rope``."""
        return apply_rotary(x, self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype))
