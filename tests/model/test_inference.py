"""prepare_for_inference: the split product equals F.linear, DecodeLinear takes it only
where it applies, a prepared model computes what the training model does, the training
model is left alone, and a prepared model refuses training, saving and export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from scratchlm.checkpoint import save_checkpoint
from scratchlm.config import ModelConfig
from scratchlm.errors import ScratchLMError
from scratchlm.export.hf import to_hf
from scratchlm.model import (
    DecodeLinear,
    KVCache,
    Linear,
    TransformerLM,
    inference,
    prepare_for_inference,
)
from scratchlm.model.inference import is_prepared, split_linear, takes_split_path

CONFIG = dict(vocab_size=61, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(11)


def make_model(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**{**CONFIG, **overrides}))


# ------------------------------------------------------------------ the split product


@pytest.mark.parametrize("parts", [2, 3, 4, 5, 7])  # 5, 7: a remainder of 2 and 5 rows
@pytest.mark.parametrize("layout", ["column-major", "row-major"])
@pytest.mark.parametrize("shape", [(1, 12), (5, 12), (3, 1, 12), (2, 4, 12), (0, 12)])
def test_split_linear_equals_the_plain_product(gen, parts, layout, shape):
    weight = torch.randn(12, 12, generator=gen)[:, :7]  # (out 12, in 7), odd widths
    weight = weight.t().contiguous().t() if layout == "column-major" else weight.contiguous()
    x = torch.randn(*shape[:-1], 7, generator=gen)
    y = split_linear(x, weight, parts)
    assert y.shape == (*shape[:-1], 12)
    assert_close(y, F.linear(x, weight), rtol=1e-6, atol=1e-6)


def test_split_path_only_where_it_applies(threads, monkeypatch):
    w = torch.zeros(512, 512)  # 1 MiB: as large as a weight must be
    few, many = torch.zeros(2, 512), torch.zeros(inference.SPLIT_MAX_ROWS + 1, 512)
    threads(2)
    assert not takes_split_path(few, w)  # autograd on: F.linear has the backward
    with torch.no_grad():
        assert takes_split_path(few, w)
        assert takes_split_path(few, w.t().contiguous().t())  # column-major
        assert not takes_split_path(few, w[:256])  # small: stays in the cache
        assert not takes_split_path(many, w)  # prompts: the threaded product
        monkeypatch.setattr(inference, "SPLIT_MIN_WEIGHTS", 1)
        assert takes_split_path(few[:, :8], torch.zeros(7, 8))  # 3 + 3 + 1 left over
        assert not takes_split_path(few[:, :8], torch.zeros(1, 8))  # 1 output, 2 threads
        assert not takes_split_path(few[:, :8], torch.zeros(6, 16)[:, ::2])  # strided
        threads(1)
        assert not takes_split_path(few, w)  # nothing to split across


@pytest.mark.parametrize("bias", [False, True])
def test_decode_linear_splits_few_rows_and_equals_the_linear(gen, threads, bias, monkeypatch):
    monkeypatch.setattr(inference, "SPLIT_MIN_WEIGHTS", 1)  # a small layer, split anyway
    threads(2)
    layer = Linear(8, 6, bias=bias)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    decode = DecodeLinear(layer.weight.detach().t().contiguous().t(), layer.bias)
    calls = []
    monkeypatch.setattr(inference, "split_linear", lambda *a: calls.append(1) or split_linear(*a))
    x = torch.randn(3, 1, 8, generator=gen)  # a decoding step of 3 sequences
    with torch.inference_mode():
        assert_close(decode(x), layer(x), rtol=1e-6, atol=1e-6)
    assert calls == [1]
    prompt = torch.randn(2, 40, 8, generator=gen)  # 80 rows: the plain product
    with torch.inference_mode():
        assert_close(decode(prompt), layer(prompt), rtol=1e-6, atol=1e-6)
    assert calls == [1]


# torch.compile imports torch.jit internals that warn about their own deprecation.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_decode_linear_compiles_without_a_graph_break_where_it_would_split(gen, threads):
    # Inside torch.compile the split path is skipped (torch.get_num_threads cannot be
    # traced): fullgraph=True fails on any graph break.
    threads(2)
    weight = torch.randn(512, 512, generator=gen)
    layer = DecodeLinear(weight.t().contiguous().t())
    x = torch.randn(1, 512, generator=gen)
    with torch.no_grad():
        compiled = torch.compile(layer, fullgraph=True)(x)
        assert_close(compiled, x @ weight.T, rtol=1e-5, atol=1e-4)  # sums of 512 ~N(0,1)


# ------------------------------------------------------------------ the prepared model


@pytest.mark.parametrize("tie", [False, True])
def test_prepare_in_place_swaps_every_linear_and_keeps_the_logits(gen, tie):
    model = make_model(tie_embeddings=tie).eval()
    ids = torch.randint(0, 61, (2, 9), generator=gen)
    expected = model(ids).detach()
    n_linear = sum(isinstance(m, Linear) for m in model.modules())
    assert prepare_for_inference(model) is model
    assert not model.training and is_prepared(model)
    assert not any(isinstance(m, Linear) for m in model.modules())
    # q, k, v stacked into one product, gate and up into another
    fused = sum(isinstance(m, DecodeLinear) for m in model.modules())
    assert fused == n_linear - 3 * model.config.n_layers
    qkv = model.layers[0].self_attn.qkv.decode_weight  # 32 + 2 x 16 outputs
    assert qkv.shape == (64, 32) and qkv.t().is_contiguous()  # its own column-major copy
    head = model.lm_head.decode_weight
    if tie:  # shared with the embedding, not copied
        assert head.data_ptr() == model.embed_tokens.weight.data_ptr()
    else:
        assert head.t().is_contiguous()
    with torch.inference_mode():
        assert_close(model(ids), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ScratchLMError, match="already prepared"):
        prepare_for_inference(model)


def test_not_in_place_leaves_the_training_model_as_it_was(gen):
    model = make_model().train()
    weights = {n: p for n, p in model.named_parameters()}
    prepared = prepare_for_inference(model, in_place=False)
    assert prepared is not model and not prepared.training
    assert model.training and not is_prepared(model)  # still a training model
    assert {n: p for n, p in model.named_parameters()} == weights
    assert all(p.is_contiguous() for p in model.parameters())
    # The weights are shared, not copied: a training step shows in the prepared model.
    q = prepared.layers[0].self_attn.q_proj.decode_weight
    assert q.data_ptr() == model.layers[0].self_attn.q_proj.weight.data_ptr()
    with torch.no_grad():
        model.layers[0].self_attn.q_proj.weight.add_(1.0)
    ids = torch.randint(0, 61, (1, 5), generator=gen)
    with torch.inference_mode():
        assert_close(prepared(ids), model.eval()(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("int8", "why"), [(False, "prepared for generation"), (True, "quantized to int8")]
)
def test_prepared_model_refuses_training_saving_and_export(tmp_path, int8, why):
    model = prepare_for_inference(make_model(), int8=int8)
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ScratchLMError, match=why):
        model.loss(ids, ids)
    with pytest.raises(ScratchLMError, match="cannot be saved as a checkpoint"):
        save_checkpoint(model, None, 0, tmp_path / "ckpt")
    with pytest.raises(ScratchLMError, match="cannot be exported"):
        to_hf(model, None, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    # Nothing an optimizer could pick up: the swapped-in weights are not parameters.
    assert not any("proj" in n or "lm_head" in n for n, _ in model.named_parameters())


# ------------------------------------------------------------------ bfloat16 weights


def test_bf16_decode_linear_splits_and_rounds_only_as_bfloat16_does(gen, threads, monkeypatch):
    monkeypatch.setattr(inference, "SPLIT_MIN_WEIGHTS", 1)
    threads(2)
    weight = torch.randn(12, 40, generator=gen)
    bias = torch.randn(12, generator=gen)
    layer = DecodeLinear(weight.to(torch.bfloat16).t().contiguous().t(), bias)
    x = torch.randn(3, 1, 40, generator=gen)
    with torch.inference_mode():
        y = layer(x)
        assert takes_split_path(x, layer.decode_weight)
        plain = F.linear(x.bfloat16(), layer.decode_weight).float() + bias
    assert y.dtype == torch.float32
    # The split product: the same sums, rounded to bfloat16 (at most one step apart).
    assert_close(y, plain, rtol=2**-7, atol=1e-5)
    # bfloat16 keeps 8 significant bits: each input and weight is off by at most 2^-9
    # of itself, a product of two by about 2^-8, and the output rounding adds 2^-9 of
    # the result (x 1.5 for float32 sums and a second rounding step).
    exact = x @ weight.t()
    bound = 1.5 * (2**-8 * (x.abs() @ weight.abs().t()) + 2**-8 * exact.abs())
    assert ((y - bias - exact).abs() <= bound).all()


@pytest.mark.parametrize("tie", [False, True])
def test_bf16_prepared_model_decodes_close_to_float32(gen, tie):
    """Teacher-forced decoding steps (the same tokens into both), with the KV cache.
    Tolerance: logits within 2% of the largest float32 logit; the greedy token equals
    float32's wherever float32's top two logits are further apart than twice the largest
    difference seen (closer ones may swap: bf16 rounding, not a bug)."""
    model = make_model(tie_embeddings=tie).eval()
    bf16 = prepare_for_inference(make_model(tie_embeddings=tie), bf16=True)
    assert bf16.lm_head.decode_weight.dtype == torch.bfloat16
    assert bf16.embed_tokens.weight.dtype == torch.float32  # only the products' weights
    ids = torch.randint(0, 61, (2, 12), generator=gen)
    with torch.inference_mode():
        want, got = [], []
        for m, out in ((model, want), (bf16, got)):
            cache = KVCache.for_model(m.config, 2)
            out.append(m(ids[:, :4], cache, last_only=True))
            for t in range(4, 12):
                out.append(m(ids[:, t : t + 1], cache))
    want, got = torch.cat(want, 1), torch.cat(got, 1)  # (2, 9, V)
    diff = (got - want).abs().max()
    assert 0 < diff <= 0.02 * want.abs().max()
    top2 = want.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * diff
    assert clear.sum() >= 4  # the check below is not vacuous
    assert torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


def test_int8_and_bf16_together_are_refused():
    with pytest.raises(ScratchLMError, match="one of int8 and bf16"):
        prepare_for_inference(make_model(), int8=True, bf16=True)
