"""Weight-only int8: the quantization error bound, the readable product against the
fused kernel, a quantized model against its float original, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from scratchlm.config import preset
from scratchlm.errors import ScratchLMError
from scratchlm.model import Int8Linear, KVCache, Linear, TransformerLM, prepare_for_inference
from scratchlm.model.inference import is_prepared
from scratchlm.model.quantize import FAST_MAX_ROWS, dequantize_weight, quantize_weight


def quantize_int8(model: TransformerLM) -> TransformerLM:
    return prepare_for_inference(model, int8=True)


def random_linear(n_in: int, n_out: int, bias: bool = False, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    lin = Linear(n_in, n_out, bias=bias)
    if bias:
        with torch.no_grad():
            lin.bias.normal_()
    return lin


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_quantized_weights_are_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(37, 64) * torch.rand(37, 1) * 3  # rows of different magnitude
    w[5] = 0.0  # an all-zero row
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (37,)
    assert int(q.abs().max()) == 127
    error = (dequantize_weight(q, scale) - w).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    nonzero = torch.arange(37) != 5
    assert bool((q[nonzero].abs().amax(dim=1) == 127).all())  # each row uses the full range
    assert float(scale[5]) == 1.0 and bool((q[5] == 0).all())


def test_weights_on_the_grid_come_back_exactly():
    gen = torch.Generator().manual_seed(1)
    steps = torch.tensor([2.0**-7, 2.0**-3, 1.0])[:, None]  # exact in float32
    q = torch.randint(-127, 128, (3, 32), generator=gen)
    q[:, 0] = 127  # every row reaches the top of the range, so its scale is its step
    w = q.float() * steps
    q2, scale = quantize_weight(w)
    assert torch.equal(q2.long(), q) and torch.equal(dequantize_weight(q2, scale), w)


@pytest.mark.parametrize("bias", [False, True])
def test_readable_path_is_the_dequantized_product(bias):
    lin = random_linear(48, 24, bias=bias)
    qlin = Int8Linear.from_linear(lin)
    x = torch.randn(2, 40, 48)  # two prompts of 40 positions: not a decoding step
    assert not qlin.takes_fast_path(x)
    w = dequantize_weight(qlin.qweight, qlin.scale)
    torch.testing.assert_close(qlin(x), F.linear(x, w, lin.bias), rtol=1e-5, atol=1e-5)
    # ... and close to the float layer it came from (int8 keeps ~2 significant digits)
    assert relative_error(qlin(x), lin(x)) < 0.02


@pytest.mark.parametrize(
    "shape,n_in,n_out,bias",
    [
        ((1, 1, 512), 512, 1344, False),  # one decode step of the `small` preset
        ((1, 1, 1344), 1344, 512, False),
        ((3, 1, 64), 64, 37, True),  # a batch of three, odd widths out
        ((2, 1, 16), 16, 5, False),
        ((1, 48), 48, 7, False),  # one row, 2-D
        ((FAST_MAX_ROWS, 1, 64), 64, 100, True),  # the largest batch it takes
    ],
)
def test_fused_kernel_agrees_with_the_readable_path(shape, n_in, n_out, bias):
    qlin = Int8Linear.from_linear(random_linear(n_in, n_out, bias=bias, seed=n_in))
    x = torch.randn(shape)
    with torch.inference_mode():
        assert qlin.takes_fast_path(x)
        fast = qlin(x)
        qlin.use_fast_kernel = False
        readable = qlin(x)
    assert fast.shape == readable.shape == (*shape[:-1], n_out) and fast.dtype == x.dtype
    # The kernel multiplies bfloat16 activations (8 significant bits) by the same int8.
    assert relative_error(fast, readable) < 6e-3


def test_fused_kernel_is_not_used_where_it_cannot_be():
    odd = Int8Linear.from_linear(random_linear(24, 8))  # in_features not a multiple of 16
    ok = Int8Linear.from_linear(random_linear(64, 8))
    one_row = torch.randn(1, 64)
    with torch.inference_mode():
        assert not odd.use_fast_kernel and not odd.takes_fast_path(torch.randn(1, 24))
        x = torch.randn(3, 24)
        w = dequantize_weight(odd.qweight, odd.scale)
        torch.testing.assert_close(odd(x), x @ w.t(), rtol=1e-5, atol=1e-5)
        assert ok.takes_fast_path(one_row)
        assert not ok.takes_fast_path(torch.randn(2, 64))  # two positions of one sequence
        assert not ok.takes_fast_path(torch.randn(1, 5, 64))  # a prompt
        assert not ok.takes_fast_path(torch.randn(FAST_MAX_ROWS + 1, 1, 64))
    assert not ok.takes_fast_path(one_row)  # autograd on: the kernel has no backward


def test_fused_kernel_computes_each_row_on_its_own():
    """A decoding step's rows come out bit for bit as each row alone, so batching never
    changes a sequence's logits."""
    qlin = Int8Linear.from_linear(random_linear(512, 1344))
    x = torch.randn(FAST_MAX_ROWS, 1, 512)
    with torch.inference_mode():
        batch = qlin(x)
        alone = torch.cat([qlin(x[i : i + 1]) for i in range(FAST_MAX_ROWS)])
    assert torch.equal(batch, alone)


def tiny_model(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(preset("tiny", **overrides)).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_quantize_replaces_every_linear(tie):
    model = tiny_model(tie_embeddings=tie)
    embedding = model.embed_tokens.weight.detach().clone()
    n_linear = sum(isinstance(m, Linear) for m in model.modules())
    quantize_int8(model)
    assert not any(isinstance(m, Linear) for m in model.modules())
    # q, k, v stacked into one product and gate, up into another (model/decode_blocks.py)
    fused = 3 * model.config.n_layers
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == n_linear - fused
    assert is_prepared(model) and not model.training
    assert torch.equal(model.embed_tokens.weight, embedding)  # the embedding stays float
    with pytest.raises(ScratchLMError, match="already prepared"):
        quantize_int8(model)


def test_quantized_model_stays_close_to_the_float_one():
    model = tiny_model()
    quantized = quantize_int8(copy.deepcopy(model))
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref, got = model(ids), quantized(ids)
    assert relative_error(got, ref) < 0.02
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean()
    assert float(agree) > 0.9


def test_quantized_cached_decode_matches_the_full_forward():
    """Decoding token by token (fused kernel, one row a step) gives the logits of one
    forward pass over the whole sequence (readable path, 40 rows)."""
    model = quantize_int8(tiny_model())
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        full = model(ids)  # (1, 40, V)
        cache = KVCache.for_model(model.config, 1)
        steps = [model(ids[:, :8], cache)[:, -1:]]
        steps += [model(ids[:, t : t + 1], cache) for t in range(8, 40)]
    assert relative_error(torch.cat(steps, dim=1), full[:, 7:]) < 6e-3
