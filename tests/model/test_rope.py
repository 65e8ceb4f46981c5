"""Rotary position embedding: HF half-split layout, the relative-position property.

The model's one entry point: ``RotaryEmbedding(positions, dtype)`` gives cos, sin from
float32 tables (bit-identical to Hugging Face's), ``apply_rotary`` rotates by them."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from scratchlm.model import RotaryEmbedding, apply_rotary

F32 = {"rtol": 1e-4, "atol": 1e-4}  # float32 angles: ~1e-5 rad at position 127


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(99)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10_000.0) -> torch.Tensor:
    """x (..., T, D) rotated by positions (..., T) through the model's table."""
    table = RotaryEmbedding(x.shape[-1], int(positions.max()) + 1, theta)
    cos, sin = table(positions.reshape(1, -1), x.dtype)  # (1, 1, N, D)
    shape = (*positions.shape, x.shape[-1])
    return apply_rotary(x, cos.reshape(shape), sin.reshape(shape))


def rope_by_hand(x: torch.Tensor, positions: list[int], theta: float) -> torch.Tensor:
    """x (T, D): rotate channel pair (i, i + D/2) by positions[t] * theta^(-2i/D), one
    pair at a time (Hugging Face Llama's rotate_half layout)."""
    T, D = x.shape
    half = D // 2
    out = torch.empty_like(x)
    for t in range(T):
        for i in range(half):
            angle = positions[t] * theta ** (-2 * i / D)
            c, s = math.cos(angle), math.sin(angle)
            a, b = float(x[t, i]), float(x[t, i + half])
            out[t, i] = a * c - b * s
            out[t, i + half] = a * s + b * c
    return out


@pytest.mark.parametrize(("head_dim", "theta"), [(8, 10_000.0), (6, 500.0), (16, 1e6)])
def test_rope_matches_pairwise_rotation(gen, head_dim, theta):
    positions = [0, 1, 2, 7, 30, 127]
    x = torch.randn(len(positions), head_dim, generator=gen, dtype=torch.float64)
    expected = rope_by_hand(x, positions, theta)
    assert_close(rope(x, torch.tensor(positions), theta=theta), expected, **F32)
    assert_close(rope(x.float(), torch.tensor(positions), theta), expected.float(), **F32)


def test_position_zero_is_identity(gen):
    x = torch.randn(3, 5, 8, generator=gen)
    assert_close(rope(x, torch.zeros(3, 5, dtype=torch.long)), x)


def test_table_shape_for_heads(gen):
    module = RotaryEmbedding(8, 32)
    positions = torch.tensor([[0, 1, 2], [5, 6, 7]])
    cos, sin = module(positions, torch.float32)
    assert cos.shape == sin.shape == (2, 1, 3, 8)
    # The two halves repeat the same angles (half-split layout).
    assert torch.equal(cos[..., :4], cos[..., 4:])
    assert_close(cos[1, 0, 2, 1], torch.tensor(math.cos(7 * 10_000 ** (-2 / 8))))
    assert_close(sin[1, 0, 2, 1], torch.tensor(math.sin(7 * 10_000 ** (-2 / 8))))
    assert module(positions, torch.bfloat16)[0].dtype == torch.bfloat16


def test_module_buffers_are_not_saved():
    module = RotaryEmbedding(8, 32)
    assert module.state_dict() == {}


def test_norms_preserved(gen):
    x = torch.randn(4, 2, 20, 32, generator=gen)
    positions = torch.randint(0, 1000, (4, 2, 20), generator=gen)
    y = rope(x, positions)
    assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    # Each channel pair keeps its own length too.
    pair = lambda t: t[..., :16] ** 2 + t[..., 16:] ** 2  # noqa: E731
    assert_close(pair(y), pair(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("theta", [10_000.0, 100.0])
def test_scores_depend_only_on_distance(gen, theta):
    head_dim = 16
    q = torch.randn(head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(head_dim, generator=gen, dtype=torch.float64)
    table = RotaryEmbedding(head_dim, 1100, theta)

    def score(m: int, n: int) -> float:
        cos, sin = table(torch.tensor([[m, n]]), torch.float64)  # (1, 1, 2, D)
        qm = apply_rotary(q, cos[0, 0, 0], sin[0, 0, 0])
        kn = apply_rotary(k, cos[0, 0, 1], sin[0, 0, 1])
        return float(qm @ kn)

    for m, n in [(5, 2), (3, 3), (0, 9), (40, 1)]:
        base = score(m, n)
        for offset in (1, 7, 100, 1000):
            # float32 angles: at position 1000 each is off by up to ~6e-5 rad.
            assert score(m + offset, n + offset) == pytest.approx(base, abs=2e-3)
    # ... and it does depend on the distance (the test could fail).
    assert abs(score(5, 2) - score(6, 2)) > 1e-2


def test_positions_with_leading_batch_dims(gen):
    # Each row of a batch gets its own positions, e.g. left-padded prompts.
    x = torch.randn(2, 3, 4, 8, generator=gen, dtype=torch.float64)  # (B, H, T, D)
    positions = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])  # (B, T)
    cos, sin = RotaryEmbedding(8, 16)(positions, x.dtype)  # (B, 1, T, D): over the heads
    y = apply_rotary(x, cos, sin)
    for b in range(2):
        for h in range(3):
            expected = rope_by_hand(x[b, h], positions[b].tolist(), 10_000.0)
            assert_close(y[b, h], expected, **F32)


def test_rope_keeps_dtype(gen):
    x = torch.randn(2, 4, 8, generator=gen).to(torch.bfloat16)
    positions = torch.arange(4).expand(2, 4)
    assert rope(x, positions).dtype == torch.bfloat16
