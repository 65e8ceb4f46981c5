"""LoRA on an int8 base ("QLoRA-lite", model/lora_int8.py): the frozen hidden layers
stored as int8, the hand-written backward equal to autograd's, adapters training on top,
checkpoints and merging."""

import pytest
import torch

from scratchlm.checkpoint import load_model, save_checkpoint
from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError
from scratchlm.model import TransformerLM
from scratchlm.model.layers import Linear
from scratchlm.model.lora_int8 import FrozenInt8Linear, Int8Matmul
from scratchlm.model.quantize import dequantize_weight, quantize_weight
from scratchlm.tune.lora import (
    LoraConfig,
    LoraLinear,
    adapters_disabled,
    apply_lora,
    lora_parameters,
    merge_adapters,
    merge_lora,
)

BASE = dict(vocab_size=61, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


def tiny() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**BASE)).eval()


def ids() -> torch.Tensor:
    return torch.randint(0, BASE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))


def test_int8_matmul_forward_and_backward_match_the_dequantized_weight():
    torch.manual_seed(0)
    q, scale = quantize_weight(torch.randn(7, 16))
    w = dequantize_weight(q, scale, torch.float64)  # (7, 16)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    y = Int8Matmul.apply(x, q, scale)
    x2 = x.detach().clone().requires_grad_(True)
    want = x2 @ w.t()
    torch.testing.assert_close(y, want)
    g = torch.randn_like(y)
    y.backward(g)
    want.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)


def test_int8_base_quantizes_every_hidden_linear_and_wraps_the_targets():
    model = tiny()
    names = apply_lora(model, LoraConfig(r=4, base="int8"))
    assert all(model.get_submodule(n).quantized for n in names)
    others = [m for m in model.modules() if isinstance(m, FrozenInt8Linear)]
    assert len(others) == BASE["n_layers"] * 5  # k, o, gate, up, down
    assert not any(isinstance(m, Linear) for m in model.layers.modules())
    state = model.state_dict()
    assert state["layers.0.self_attn.q_proj.qweight"].dtype == torch.int8
    assert "layers.0.self_attn.q_proj.weight" not in state


def test_zero_b_gives_the_dequantized_models_logits_and_adapters_train():
    reference, model, x = tiny(), tiny(), ids()
    apply_lora(model, LoraConfig(r=4, base="int8", targets=("all-linear",)))
    with torch.no_grad():  # the float model with the int8 weights, dequantized
        for name, m in reference.named_modules():
            if isinstance(m, Linear) and name != "lm_head":
                m.weight.copy_(dequantize_weight(*quantize_weight(m.weight)))
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)
    model.train()
    model.loss(x, x).backward()
    assert all(p.grad is not None for p in lora_parameters(model))
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_merging_an_int8_base_gives_a_float_model_with_the_same_logits():
    model, x = tiny(), ids()
    apply_lora(model, LoraConfig(r=4, alpha=8, base="int8", targets=("q_proj", "down_proj")))
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.05)
    adapted = model(x)
    with pytest.raises(ConfigError, match="int8 base cannot be merged in place"):
        merge_adapters(model)
    merge_lora(model)
    assert not any(isinstance(m, LoraLinear | FrozenInt8Linear) for m in model.modules())
    torch.testing.assert_close(model(x), adapted, rtol=0, atol=1e-5)


def test_an_int8_lora_checkpoint_round_trips(tmp_path):
    model, x = tiny(), ids()
    apply_lora(model, LoraConfig(r=2, base="int8"))
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.05)
    save_checkpoint(model, None, 3, tmp_path / "ckpt")
    wrapped, _ = load_model(tmp_path / "ckpt", merge_adapters=False)
    torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=0)
    merged, _ = load_model(tmp_path / "ckpt")
    torch.testing.assert_close(merged(x), model(x), rtol=0, atol=1e-5)
    with adapters_disabled(wrapped):
        base = wrapped(x)
    assert (base - model(x)).abs().max() > 1e-4
