"""Rotary position embedding: HF half-split layout, the relative-position property."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from scratchlm.model import RotaryEmbedding, rope


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(99)


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
    got = rope(x, torch.tensor(positions), theta=theta)
    assert_close(got, expected, rtol=1e-10, atol=1e-10)
    table = RotaryEmbedding(head_dim, 128, theta)
    assert_close(table(x.float(), torch.tensor(positions)), expected.float(), rtol=1e-5, atol=1e-5)


def test_position_zero_is_identity(gen):
    x = torch.randn(3, 5, 8, generator=gen)
    assert_close(rope(x, torch.zeros(3, 5, dtype=torch.long)), x)


def test_rope_function_equals_module(gen):
    head_dim, max_len = 16, 64
    module = RotaryEmbedding(head_dim, max_len, theta=10_000.0)
    x = torch.randn(2, 3, 10, head_dim, generator=gen)
    positions = torch.randint(0, max_len, (2, 3, 10), generator=gen)
    assert_close(module(x, positions), rope(x, positions), rtol=1e-5, atol=1e-5)


def test_module_angles_shape_for_heads(gen):
    module = RotaryEmbedding(8, 32)
    positions = torch.tensor([[0, 1, 2], [5, 6, 7]])
    cos, sin = module.angles(positions, torch.float32)
    assert cos.shape == sin.shape == (2, 1, 3, 8)
    # The two halves repeat the same angles (half-split layout).
    assert torch.equal(cos[..., :4], cos[..., 4:])
    assert_close(cos[1, 0, 2, 1], torch.tensor(math.cos(7 * 10_000 ** (-2 / 8))))
    assert_close(sin[1, 0, 2, 1], torch.tensor(math.sin(7 * 10_000 ** (-2 / 8))))


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

    def score(m: int, n: int) -> float:
        qm = rope(q[None], torch.tensor([m]), theta)[0]
        kn = rope(k[None], torch.tensor([n]), theta)[0]
        return float(qm @ kn)

    for m, n in [(5, 2), (3, 3), (0, 9), (40, 1)]:
        base = score(m, n)
        for offset in (1, 7, 100, 1000):
            assert score(m + offset, n + offset) == pytest.approx(base, rel=1e-9, abs=1e-9)
    # ... and it does depend on the distance (the test could fail).
    assert abs(score(5, 2) - score(6, 2)) > 1e-3


def test_scores_depend_only_on_distance_float32_module(gen):
    # Batched, in float32 through the precomputed tables the model uses.
    module = RotaryEmbedding(32, 256)
    q = torch.randn(6, 32, generator=gen)
    k = torch.randn(6, 32, generator=gen)
    pos_q = torch.tensor([10, 20, 30, 40, 50, 60])
    pos_k = torch.tensor([3, 20, 0, 33, 12, 59])
    base = (module(q, pos_q) * module(k, pos_k)).sum(-1)
    for offset in (1, 17, 150):
        shifted = (module(q, pos_q + offset) * module(k, pos_k + offset)).sum(-1)
        assert_close(shifted, base, rtol=1e-4, atol=1e-4)


def test_positions_with_leading_batch_dims(gen):
    # Each row of a batch gets its own positions, e.g. left-padded prompts.
    x = torch.randn(2, 3, 4, 8, generator=gen, dtype=torch.float64)  # (B, H, T, D)
    positions = torch.tensor([[[0, 1, 2, 3]] * 3, [[5, 6, 7, 8]] * 3])  # (B, H, T)
    y = rope(x, positions)
    for b in range(2):
        for h in range(3):
            expected = rope_by_hand(x[b, h], positions[b, h].tolist(), 10_000.0)
            assert_close(y[b, h], expected, rtol=1e-10, atol=1e-10)
    # Positions broadcast across a head dim of size 1.
    y_broadcast = rope(x, positions[:, :1])
    assert_close(y_broadcast, y)


def test_rope_keeps_dtype(gen):
    x = torch.randn(2, 4, 8, generator=gen).to(torch.bfloat16)
    positions = torch.arange(4).expand(2, 4)
    assert rope(x, positions).dtype == torch.bfloat16
    assert RotaryEmbedding(8, 16)(x, positions).dtype == torch.bfloat16
