"""The fused decoding layers compute what the training layers do: a prepared model
(fused blocks, attention, SwiGLU and RMSNorm) against the model it came from, for a
prompt and for cached decoding steps, with either kernel set, for a left-padded batch
whose rows sit at different positions (products split across threads), and with int8
weights; the stacked weights are the originals'; ``rotate`` is ``apply_rotary``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from scratchlm.config import ModelConfig
from scratchlm.model import KVCache, TransformerLM, inference, prepare_for_inference
from scratchlm.model.decode_blocks import (
    FusedAttention,
    FusedBlock,
    FusedRMSNorm,
    FusedSwiGLU,
    rotate,
)
from scratchlm.model.quantize import Int8Linear
from scratchlm.model.transformer import apply_rotary

CONFIG = dict(vocab_size=61, context_length=24, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
CASES = {
    "gqa": {},
    "qk_norm": dict(qk_norm=True),
    "bias": dict(bias=True),
    "no_position": dict(position="none"),
}


def model_pair(**overrides) -> tuple[TransformerLM, TransformerLM]:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**{**CONFIG, **overrides})).eval()
    with torch.no_grad():  # norms away from 1 and biases away from 0: they must count
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.3 * torch.randn(p.shape))
    return model, prepare_for_inference(copy.deepcopy(model))


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_layers_compute_the_training_layers(case, impl):
    model, fused = model_pair(**CASES[case])
    model.set_impl(impl)
    fused.set_impl(impl)
    block = fused.layers[0]
    assert isinstance(block, FusedBlock)
    assert isinstance(block.self_attn, FusedAttention) and block.self_attn.impl == impl
    assert isinstance(block.mlp, FusedSwiGLU) and block.mlp.mlp.impl == impl
    assert isinstance(block.input_layernorm, FusedRMSNorm)
    ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert_close(fused(ids), model(ids), rtol=1e-5, atol=1e-5)  # a prompt
        caches = [KVCache.for_model(m.config, 2) for m in (model, fused)]
        for m, cache in zip((model, fused), caches, strict=True):
            m(ids[:, :5], cache)
        for t in range(5, 12):  # decoding steps, one position each
            step = ids[:, t : t + 1]
            assert_close(fused(step, caches[1]), model(step, caches[0]), rtol=1e-5, atol=1e-5)


def test_stacked_weights_are_the_originals():
    model, fused = model_pair(bias=True)
    attn, block = model.layers[1].self_attn, fused.layers[1]
    want = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    assert torch.equal(block.self_attn.qkv.decode_weight, want)
    assert torch.equal(block.self_attn.qkv.bias, torch.cat([attn.q_proj.bias, attn.k_proj.bias,
                                                            attn.v_proj.bias]))  # fmt: skip
    mlp = model.layers[1].mlp
    want = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
    assert torch.equal(block.mlp.gate_up.decode_weight, want)
    assert not hasattr(block.self_attn.attn, "q_proj")  # not kept twice


@pytest.mark.parametrize("shape", [(1, 4, 1, 8), (3, 6, 5, 16), (2, 3, 7, 2)])
def test_rotate_is_apply_rotary(shape):
    gen = torch.Generator().manual_seed(2)
    B, _, T, D = shape
    x = torch.randn(shape, generator=gen)
    angles = torch.randn(B, 1, T, D // 2, generator=gen) * 10
    angles = torch.cat([angles, angles], dim=-1)  # (B, 1, T, D): RoPE's layout
    sign = torch.cat([-torch.ones(D // 2), torch.ones(D // 2)])
    got = rotate(x, angles.cos(), angles.sin(), sign)
    assert_close(got, apply_rotary(x, angles.cos(), angles.sin()), rtol=1e-6, atol=1e-6)


def left_padded(vocab: int, lengths: list[int], seed: int = 3):
    """ids (B, T) left-padded with 0, attention mask (B, T), positions (B, T) from 0 at
    each row's first real token."""
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    pads = torch.tensor([T - n for n in lengths])
    ids = torch.randint(0, vocab, (len(lengths), T), generator=gen)
    mask = torch.arange(T)[None] >= pads[:, None]
    ids = ids.masked_fill(~mask, 0)
    positions = (torch.arange(T)[None] - pads[:, None]).clamp(min=0)
    return ids, mask, positions


def decode_steps(model, ids, mask, positions, more):
    """The prompt (left-padded) into a fresh cache, then one token per row a step,
    each row at its own next position: the logits of every step, (B, 1 + steps, V)."""
    cache = KVCache.for_model(model.config, ids.shape[0])
    cache.set_padding(mask)
    out = [model(ids, cache, positions, last_only=True)]
    last = positions[:, -1:]
    for t in range(more.shape[1]):
        out.append(model(more[:, t : t + 1], cache, last + 1 + t))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("case", ["gqa", "qk_norm", "bias"])
def test_ragged_batch_decodes_as_the_training_model(case, threads, monkeypatch):
    """Rows of 7, 2 and 4 prompt tokens decode six steps together, each at its own
    position, with every product split across two threads: the prepared model's logits
    are the training model's at every step."""
    model, fused = model_pair(**CASES[case])
    monkeypatch.setattr(inference, "SPLIT_MIN_WEIGHTS", 1)  # tiny weights: split anyway
    threads(2)
    ids, mask, positions = left_padded(61, [7, 2, 4])
    more = torch.randint(0, 61, (3, 6), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = decode_steps(model, ids, mask, positions, more)
        got = decode_steps(fused, ids, mask, positions, more)
    assert got.shape == (3, 7, 61)
    assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [False, True])
def test_int8_fused_layers_compute_the_unfused_int8_layers(kernel, monkeypatch):
    """int8 weights with the fused layers against int8 weights in the training layers
    (``in_place=False`` does not fuse): per-row scales do not change when rows are
    stacked. With the products in float32 (the readable path) they agree to float32
    rounding; with torch's int8 kernel, whose activations are bfloat16, to bfloat16's."""
    model, _ = model_pair()
    if not kernel:  # every product on the readable path
        monkeypatch.setattr(Int8Linear, "takes_fast_path", lambda self, x: False)
    unfused = prepare_for_inference(model, int8=True, in_place=False)
    fused = prepare_for_inference(copy.deepcopy(model), int8=True)
    qkv = fused.layers[0].self_attn.qkv
    assert isinstance(qkv, Int8Linear)
    with torch.inference_mode():
        assert qkv.takes_fast_path(torch.zeros(2, 1, 32)) == kernel  # decoding steps
    assert hasattr(unfused.layers[0].self_attn, "q_proj")  # the training layers
    ids, mask, positions = left_padded(61, [5, 3])
    more = torch.randint(0, 61, (2, 5), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want = decode_steps(unfused, ids, mask, positions, more)
        got = decode_steps(fused, ids, mask, positions, more)
    if kernel:  # bfloat16 activations: within 1% of the largest logit
        assert_close(got, want, rtol=0, atol=0.01 * want.abs().max().item())
    else:
        assert_close(got, want, rtol=1e-5, atol=1e-5)
