"""The fused decoding layers compute what the training layers do: a prepared model
(fused attention, SwiGLU and RMSNorm) against the model it came from, for a prompt and
for cached decoding steps, with either kernel set; the stacked weights are the
originals'."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from scratchlm.config import ModelConfig
from scratchlm.model import KVCache, TransformerLM, prepare_for_inference
from scratchlm.model.decode_blocks import FusedAttention, FusedRMSNorm, FusedSwiGLU

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
