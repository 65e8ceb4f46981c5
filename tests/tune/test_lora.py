"""LoRA adapters (model/lora.py through scratchlm.tune.lora): wrapping and freezing, the
identity at initialisation, merge/unmerge exactness, parameter counts, spec parsing."""

import json

import pytest
import torch

from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError
from scratchlm.model import TransformerLM
from scratchlm.model.layers import Linear
from scratchlm.tune.lora import (
    LoraConfig,
    LoraLinear,
    adapters_disabled,
    apply_lora,
    lora_parameters,
    merge_adapters,
    merge_lora,
    parse_lora_spec,
    unmerge_adapters,
)

BASE = dict(vocab_size=61, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


def tiny(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**{**BASE, **overrides})).eval()


def ids(batch: int = 2, t: int = 12) -> torch.Tensor:
    return torch.randint(
        0, BASE["vocab_size"], (batch, t), generator=torch.Generator().manual_seed(1)
    )


def randomize_b(model: TransformerLM) -> None:
    """Give every B a non-zero value, as training would (B = 0 hides every bug)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_wraps_the_named_layers_and_freezes_the_rest():
    model = tiny()
    names = apply_lora(model, LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj")))
    assert names == [
        "layers.0.self_attn.q_proj",
        "layers.0.self_attn.v_proj",
        "layers.1.self_attn.q_proj",
        "layers.1.self_attn.v_proj",
    ]
    for name in names:
        assert isinstance(model.get_submodule(name), LoraLinear)
    assert isinstance(model.layers[0].self_attn.k_proj, Linear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{w}" for n in names for w in ("lora_A", "lora_B")}
    # The state dict is the base model's plus the adapters.
    plain = set(tiny().state_dict())
    assert set(model.state_dict()) == plain | trainable


def test_trainable_parameter_count_is_r_times_in_plus_out():
    model = tiny()
    r, d = 4, BASE["d_model"]
    kv = BASE["n_kv_heads"] * (d // BASE["n_heads"])
    apply_lora(model, LoraConfig(r=r, targets=("q_proj", "v_proj")))
    per_layer = r * (d + d) + r * (d + kv)  # q: d -> d, v: d -> kv
    assert sum(p.numel() for p in lora_parameters(model)) == BASE["n_layers"] * per_layer
    assert (
        sum(p.numel() for p in model.parameters() if p.requires_grad)
        == BASE["n_layers"] * per_layer
    )


def test_all_linear_leaves_the_output_layer_unless_named():
    model = tiny(tie_embeddings=False)
    names = apply_lora(model, LoraConfig(targets=("all-linear",)))
    assert len(names) == BASE["n_layers"] * 7 and "lm_head" not in names
    model = tiny(tie_embeddings=False)
    assert apply_lora(model, LoraConfig(targets=("lm_head",))) == ["lm_head"]


def test_zero_b_gives_the_base_models_logits():
    model, x = tiny(), ids()
    before = model(x)
    apply_lora(model, LoraConfig(r=4, targets=("all-linear",)))
    assert torch.equal(model(x), before)
    assert all(p.abs().sum() > 0 for p in lora_parameters(model)[::2])  # A is random


def test_adapters_change_the_output_and_disabling_restores_the_base():
    model, x = tiny(), ids()
    base = model(x)
    apply_lora(model, LoraConfig(r=4, targets=("q_proj", "v_proj", "down_proj")))
    randomize_b(model)
    adapted = model(x)
    assert (adapted - base).abs().max() > 1e-3
    with adapters_disabled(model):
        torch.testing.assert_close(model(x), base, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x), adapted, rtol=0, atol=0)


def test_forward_is_the_lora_formula():
    """y = x W^T + b + scale * x A^T B^T, written independently."""
    torch.manual_seed(3)
    base = Linear(6, 5, bias=True)
    with torch.no_grad():
        base.bias.normal_()
    layer = LoraLinear(base, r=2, alpha=3.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6)
    want = x @ base.weight.T + base.bias + 1.5 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), want)


def test_only_adapters_get_gradients():
    model, x = tiny(), ids()
    apply_lora(model, LoraConfig(r=4))
    model.loss(x, x).backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.grad is not None
        else:
            assert p.grad is None, name
    # B = 0: A's gradient is zero at the first step, B's is not.
    assert all(m.lora_B.grad.abs().sum() > 0 for m in model.modules() if isinstance(m, LoraLinear))


def test_an_adapter_on_the_output_layer_is_trained_by_the_loss():
    # The fused loss reads the output weight directly; a LoRA output layer must go
    # through its adapter instead, or its adapter would get no gradient.
    model, x = tiny(tie_embeddings=False), ids()
    apply_lora(model, LoraConfig(r=4, targets=("q_proj", "lm_head")))
    randomize_b(model)
    targets = x.clone()
    targets[0, :5] = -100
    loss = model.loss(x, targets)
    logits = model(x)  # (B, T, V), through the adapters
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=-100
    )
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert model.lm_head.lora_A.grad.abs().sum() > 0
    assert model.lm_head.lora_B.grad.abs().sum() > 0


@pytest.mark.parametrize("bias", [False, True])
def test_merge_and_unmerge_are_exact_in_fp32(bias):
    model, x = tiny(bias=bias), ids()
    apply_lora(model, LoraConfig(r=4, alpha=16, targets=("all-linear",)))
    randomize_b(model)
    adapted = model(x)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    merge_adapters(model)
    torch.testing.assert_close(model(x), adapted, rtol=0, atol=1e-6)
    unmerge_adapters(model)
    torch.testing.assert_close(model(x), adapted, rtol=0, atol=1e-6)
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], rtol=0, atol=1e-6)
    merge_lora(model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(x), adapted, rtol=0, atol=1e-6)
    # Merged: the same keys as a plain model (an ordinary checkpoint).
    assert set(model.state_dict()) == set(tiny(bias=bias).state_dict())


def test_merge_keeps_a_tied_output_layer_tied():
    model = tiny(tie_embeddings=True)
    apply_lora(model, LoraConfig(targets=("all-linear",)))
    merge_lora(model)
    assert model.lm_head.weight is model.embed_tokens.weight


def test_lm_head_of_a_tied_model_is_refused():
    with pytest.raises(ConfigError, match="tied embeddings"):
        apply_lora(tiny(tie_embeddings=True), LoraConfig(targets=("lm_head",)))


def test_a_target_that_matches_nothing_is_an_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"'qproj' matches no Linear.*q_proj"):
        apply_lora(tiny(), LoraConfig(targets=("q_proj", "qproj")))


def test_applying_twice_is_refused():
    model = tiny()
    apply_lora(model, LoraConfig())
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model, LoraConfig())


def test_a_full_module_name_picks_one_layer():
    model = tiny()
    assert apply_lora(model, LoraConfig(targets=("layers.1.mlp.up_proj",))) == [
        "layers.1.mlp.up_proj"
    ]


def test_dropout_applies_in_training_only():
    model, x = tiny(), ids()
    apply_lora(model, LoraConfig(r=4, dropout=0.5))
    randomize_b(model)
    evaluated = model(x)
    torch.testing.assert_close(model(x), evaluated, rtol=0, atol=0)
    model.train()
    assert (model(x) - evaluated).abs().max() > 1e-4


# ------------------------------------------------------------------ config and spec


def test_spec_parses_every_setting():
    c = parse_lora_spec("r=8,alpha=16,dropout=0.05,targets=q_proj,v_proj")
    assert c == LoraConfig(r=8, alpha=16.0, dropout=0.05, targets=("q_proj", "v_proj"))
    assert parse_lora_spec("base=int8,r=2").base == "int8"
    assert parse_lora_spec("base=bf16").base == "bf16"
    assert parse_lora_spec("targets=all-linear,r=2") == LoraConfig(r=2, targets=("all-linear",))
    assert parse_lora_spec("r=4") == LoraConfig(r=4)
    assert parse_lora_spec(c.spec()) == c


def test_config_round_trips_through_json():
    c = LoraConfig(r=2, alpha=4, dropout=0.1, targets=("q_proj", "lm_head"))
    assert LoraConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty LoRA spec"),
        ("rank=8", r"unknown LoRA setting 'rank'.*r, alpha, dropout, base, targets"),
        ("r=0", "positive integer"),
        ("r=2.5", "positive integer"),
        ("r=eight", r"r='eight'.*not a number"),
        ("alpha=-1", "alpha must be a positive"),
        ("dropout=1", r"dropout must be in \[0, 1\)"),
        ("r=8,8", "cannot read '8'"),
        ("r=8,r=4", "given twice"),
        ("targets=", "targets must be module names"),
        ("base=int4", "base='int4' is not one of float, bf16, int8"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_lora_spec(spec)


def test_unknown_json_setting_is_refused():
    with pytest.raises(ConfigError, match="unknown LoRA setting 'rank'"):
        LoraConfig.from_dict({"rank": 8})
