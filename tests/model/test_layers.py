"""The building blocks against written-out references and torch.nn.functional."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from scratchlm.model import (
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

# Std of a normal truncated at +-3 std, as a fraction of the untruncated std:
# sqrt(1 - 2 * 3 * pdf(3) / (cdf(3) - cdf(-3))).
_PDF3 = math.exp(-4.5) / math.sqrt(2 * math.pi)
_MASS3 = math.erf(3 / math.sqrt(2))
TRUNC3_STD_RATIO = math.sqrt(1 - 6 * _PDF3 / _MASS3)  # about 0.9866


def randomize(module: torch.nn.Module, generator: torch.Generator, std: float = 0.5) -> None:
    """Give every parameter random values, so ones/zeros inits cannot hide mistakes."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std + (1.0 if p.dim() == 1 else 0))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ------------------------------------------------------------------ Linear, Embedding


@pytest.mark.parametrize("bias", [False, True])
def test_linear_shape_and_formula(gen, bias):
    torch.manual_seed(0)
    layer = Linear(6, 4, bias=bias)
    assert layer.weight.shape == (4, 6)  # (out_features, in_features)
    assert (layer.bias is not None) == bias
    if bias:
        assert layer.bias.shape == (4,)
        assert torch.all(layer.bias == 0)  # zero init
    randomize(layer, gen)
    x = torch.randn(2, 3, 6, generator=gen)
    expected = x @ layer.weight.T + (layer.bias if bias else 0)
    y = layer(x)
    assert y.shape == (2, 3, 4)
    assert_close(y, expected)
    # And entry by entry, as a plain sum.
    w = layer.weight
    b = layer.bias if bias else torch.zeros(4)
    by_hand = sum(x[1, 2, i] * w[3, i] for i in range(6)) + b[3]
    assert_close(y[1, 2, 3], by_hand)


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_linear_truncated_normal_init(std):
    torch.manual_seed(0)
    w = Linear(512, 256, std=std).weight.detach()
    assert w.abs().max() <= 3 * std * (1 + 1e-6)
    assert abs(w.mean().item()) < 0.01 * std
    # 131k samples: the std estimate is within ~0.3 % of the truth.
    assert w.std().item() == pytest.approx(TRUNC3_STD_RATIO * std, rel=0.02)
    # Not a uniform or a clipped normal: few values sit near the bounds.
    assert (w.abs() > 2.5 * std).float().mean().item() < 0.02


def test_linear_default_init_is_seeded():
    torch.manual_seed(5)
    a = Linear(8, 8).weight.detach().clone()
    torch.manual_seed(5)
    b = Linear(8, 8).weight.detach().clone()
    assert torch.equal(a, b)


def test_embedding_lookup(gen):
    torch.manual_seed(0)
    emb = Embedding(11, 5)
    assert emb.weight.shape == (11, 5)
    assert emb.weight.abs().max() <= 3 * 0.02 * (1 + 1e-6)
    ids = torch.tensor([[0, 3, 10], [3, 3, 7]])
    out = emb(ids)
    assert out.shape == (2, 3, 5)
    assert_close(out, F.embedding(ids, emb.weight))
    assert torch.equal(out[1, 2], emb.weight[7])
    assert torch.equal(out[0, 1], out[1, 0])


# ------------------------------------------------------------------ softmax, activations


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_matches_torch(gen, dim):
    x = torch.randn(4, 5, 6, generator=gen) * 3
    assert_close(softmax(x, dim=dim), torch.softmax(x, dim=dim))


def test_softmax_large_inputs_stay_finite():
    x = torch.tensor([[1e4, 1e4 - 1.0, 0.0], [-1e4, 1e4, 1e4], [3e38, 3e38, 3e38]])
    y = softmax(x, dim=-1)
    assert torch.isfinite(y).all()
    e = math.e
    assert_close(y[0], torch.tensor([e / (e + 1), 1 / (e + 1), 0.0]))
    assert_close(y[1], torch.tensor([0.0, 0.5, 0.5]))
    assert_close(y[2], torch.full((3,), 1 / 3))


def test_softmax_with_some_and_all_minus_inf():
    inf = float("inf")
    x = torch.tensor([[-inf, -inf, -inf], [0.0, -inf, 0.0], [-inf, 2.0, -inf]])
    y = softmax(x, dim=-1)
    assert not torch.isnan(y).any()
    assert torch.equal(y[0], torch.zeros(3))  # nothing to attend to: zeros, not NaN
    assert_close(y[1], torch.tensor([0.5, 0.0, 0.5]))
    assert_close(y[2], torch.tensor([0.0, 1.0, 0.0]))


def test_softmax_gradient_matches_torch(gen):
    x = torch.randn(3, 7, generator=gen, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    weights = torch.randn(3, 7, generator=gen)
    (softmax(x, -1) * weights).sum().backward()
    (torch.softmax(x_ref, -1) * weights).sum().backward()
    assert_close(x.grad, x_ref.grad)


def test_silu_and_gelu_match_torch(gen):
    x = torch.linspace(-8, 8, 401)
    x = torch.cat([x, torch.randn(100, generator=gen) * 3])
    assert_close(silu(x), F.silu(x))
    assert_close(gelu(x), F.gelu(x, approximate="tanh"))
    # And the written-out formulas, in float64 where a wrong constant cannot hide.
    x = x.double()
    assert_close(silu(x), x / (1 + torch.exp(-x)), rtol=1e-12, atol=1e-12)
    c = math.sqrt(2 / math.pi)
    expected = 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x**3)))
    assert_close(gelu(x), expected, rtol=1e-12, atol=1e-12)
    assert_close(gelu(x), F.gelu(x, approximate="tanh"), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ norms


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty_like(x)
    flat, flat_out = x.reshape(-1, x.shape[-1]), out.view(-1, x.shape[-1])
    for row in range(flat.shape[0]):
        ms = sum(float(v) ** 2 for v in flat[row]) / flat.shape[1]
        flat_out[row] = flat[row] / math.sqrt(ms + eps) * weight
    return out


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_rmsnorm_matches_formula(gen, eps):
    norm = RMSNorm(8, eps=eps)
    assert torch.equal(norm.weight, torch.ones(8))
    randomize(norm, gen)
    x = torch.randn(2, 3, 8, generator=gen) * 0.3
    y = norm(x)
    assert_close(y, rms_norm_reference(x, norm.weight.detach(), eps))
    if hasattr(F, "rms_norm"):
        assert_close(y, F.rms_norm(x, (8,), norm.weight, eps=eps))


def test_rmsnorm_bf16_in_bf16_out(gen):
    norm = RMSNorm(16)
    randomize(norm, gen)
    x32 = torch.randn(4, 16, generator=gen) * 1e-3  # small variance, where bf16 math hurts
    x16 = x32.to(torch.bfloat16)
    y16 = norm(x16)
    assert y16.dtype == torch.bfloat16
    expected = rms_norm_reference(x16.float(), norm.weight.detach(), norm.eps)
    # Computed in float32, so only the final rounding to bf16 remains (rel 2^-8).
    assert_close(y16.float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(gen, bias):
    norm = LayerNorm(10, eps=1e-5, bias=bias)
    assert (norm.bias is not None) == bias
    randomize(norm, gen)
    x = torch.randn(3, 4, 10, generator=gen) * 2 + 1
    expected = F.layer_norm(x, (10,), norm.weight, norm.bias, eps=1e-5)
    assert_close(norm(x), expected)
    ref = torch.nn.LayerNorm(10, eps=1e-5, bias=bias)
    with torch.no_grad():
        ref.weight.copy_(norm.weight)
        if bias:
            ref.bias.copy_(norm.bias)
    assert_close(norm(x), ref(x))


def test_layernorm_bf16_in_bf16_out(gen):
    norm = LayerNorm(16)
    x = torch.randn(4, 16, generator=gen).to(torch.bfloat16)
    y = norm(x)
    assert y.dtype == torch.bfloat16
    assert_close(y.float(), F.layer_norm(x.float(), (16,)), rtol=1e-2, atol=2e-2)


def test_dyt_formula(gen):
    norm = DyT(6, alpha_init=0.7)
    assert norm.alpha.item() == pytest.approx(0.7)
    assert norm.alpha.dim() == 0  # one learned scalar
    x = torch.randn(2, 5, 6, generator=gen) * 3
    assert_close(norm(x), torch.tanh(0.7 * x))  # weight 1, bias 0 at init
    randomize(norm, gen)
    a, w, b = norm.alpha.detach(), norm.weight.detach(), norm.bias.detach()
    expected = torch.empty_like(x)
    for idx in range(6):
        expected[..., idx] = w[idx] * torch.tanh(a * x[..., idx]) + b[idx]
    assert_close(norm(x), expected)


# ------------------------------------------------------------------ MLPs


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_matches_formula(gen, bias, impl):
    mlp = SwiGLU(8, 12, bias=bias)
    mlp.impl = impl  # F.silu, or silu written out
    assert mlp.gate_proj.weight.shape == (12, 8)
    assert mlp.up_proj.weight.shape == (12, 8)
    assert mlp.down_proj.weight.shape == (8, 12)
    randomize(mlp, gen)
    x = torch.randn(2, 3, 8, generator=gen)

    def lin(layer, t):
        out = t @ layer.weight.T
        return out + layer.bias if layer.bias is not None else out

    g = lin(mlp.gate_proj, x)
    expected = lin(mlp.down_proj, g * torch.sigmoid(g) * lin(mlp.up_proj, x))
    assert_close(mlp(x), expected)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_gelu_mlp_matches_formula(gen, impl):
    mlp = GeluMLP(8, 32, bias=True)
    mlp.impl = impl  # F.gelu, or gelu written out
    randomize(mlp, gen)
    x = torch.randn(2, 3, 8, generator=gen)
    h = x @ mlp.up_proj.weight.T + mlp.up_proj.bias
    c = math.sqrt(2 / math.pi)
    h = 0.5 * h * (1 + torch.tanh(c * (h + 0.044715 * h**3)))
    assert_close(mlp(x), h @ mlp.down_proj.weight.T + mlp.down_proj.bias)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Linear(6, 6, bias=True),
        lambda: RMSNorm(6),
        lambda: LayerNorm(6),
        lambda: DyT(6),
        lambda: SwiGLU(6, 10, bias=True),
        lambda: GeluMLP(6, 10),
    ],
    ids=["linear", "rmsnorm", "layernorm", "dyt", "swiglu", "gelu_mlp"],
)
def test_gradients_flow_to_every_parameter_and_input(gen, make):
    module = make()
    randomize(module, gen)
    x = torch.randn(3, 6, generator=gen, requires_grad=True)
    target = torch.randn(3, 6, generator=gen)
    (module(x) * target).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_norm_gradients_match_torch(gen):
    x = torch.randn(4, 6, generator=gen, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    norm = LayerNorm(6)
    randomize(norm, gen)
    target = torch.randn(4, 6, generator=gen)
    (norm(x) * target).sum().backward()
    w = norm.weight.detach().clone().requires_grad_(True)
    b = norm.bias.detach().clone().requires_grad_(True)
    (F.layer_norm(x_ref, (6,), w, b, 1e-5) * target).sum().backward()
    assert_close(x.grad, x_ref.grad)
    assert_close(norm.weight.grad, w.grad)
    assert_close(norm.bias.grad, b.grad)


def test_linear_weight_is_a_plain_row_major_out_by_in_matrix():
    # What training, the optimizer, FSDP and checkpoints see: no inference layout.
    layer = Linear(5, 3)
    assert layer.weight.shape == (3, 5) and layer.weight.is_contiguous()
    other = Linear(5, 3)
    other.load_state_dict({"weight": torch.arange(15.0).reshape(3, 5)})
    assert torch.equal(other.weight, torch.arange(15.0).reshape(3, 5))
    x = torch.randn(4, 5)
    assert torch.equal(other(x), F.linear(x, other.weight))
