"""ModelConfig: JSON round trip, derived defaults, validation messages, presets."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from scratchlm.checkpoint import load_model, save_checkpoint
from scratchlm.checkpoint.files import write_manifest
from scratchlm.config import PRESETS, ModelConfig, preset
from scratchlm.errors import ConfigError, ScratchLMError
from scratchlm.export import hf_llama
from scratchlm.model import TransformerLM


def test_config_error_is_a_scratchlm_error():
    assert issubclass(ConfigError, ScratchLMError)


# ------------------------------------------------------------------ JSON round trip


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_to_dict_from_dict_round_trip(name):
    config = preset(name)
    data = config.to_dict()
    json.dumps(data)  # plain JSON types only
    assert ModelConfig.from_dict(data) == config


def test_round_trip_keeps_every_non_default_field():
    config = ModelConfig(
        vocab_size=300, context_length=40, d_model=48, n_layers=3, n_heads=6, n_kv_heads=2,
        d_ff=100, norm="layernorm", norm_eps=1e-6, ffn="gelu", position="learned",
        rope_theta=500.0, tie_embeddings=True, bias=True, qk_norm=True, shared_depth=2,
        dropout=0.25, init_std=0.03, zero_init_proj=True, logit_softcap=30.0,
    )  # fmt: skip
    back = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    # Every field is in the dict, under its own name.
    assert set(config.to_dict()) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_save_load_round_trip(tmp_path):
    config = preset("tiny", position="cope", qk_norm=True, shared_depth=3)
    path = tmp_path / "config.json"
    config.save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["shared_depth"] == 3
    assert ModelConfig.load(path) == config


def test_load_accepts_a_model_section(tmp_path):
    config = preset("tiny")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": config.to_dict(), "format": 1}), encoding="utf-8")
    assert ModelConfig.load(path) == config


def test_load_missing_or_broken_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"nope\.json"):
        ModelConfig.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.json"):
        ModelConfig.load(broken)


def test_from_dict_unknown_field_names_it():
    data = {**preset("tiny").to_dict(), "n_layer": 3, "zzz": 1}
    with pytest.raises(ConfigError, match="n_layer") as info:
        ModelConfig.from_dict(data)
    assert "zzz" in str(info.value)


# ------------------------------------------------------------------ derived defaults


@pytest.mark.parametrize(
    ("d_model", "expected"),
    [
        # 8/3 * d rounded down to a multiple of 64, worked by hand:
        (64, 128),  # 170.67 -> 128
        (128, 320),  # 341.33 -> 320
        (512, 1344),  # 1365.33 -> 1344
        (768, 2048),  # 2048 exactly
        (1024, 2688),  # 2730.67 -> 2688
    ],
)
def test_swiglu_d_ff_default(d_model, expected):
    config = ModelConfig(d_model=d_model, n_heads=4, ffn="swiglu")
    assert config.d_ff is None
    assert config.ffn_dim == expected
    assert config.ffn_dim % 64 == 0


@pytest.mark.parametrize("d_model", [64, 512, 768])
def test_gelu_d_ff_default(d_model):
    assert ModelConfig(d_model=d_model, n_heads=4, ffn="gelu").ffn_dim == 4 * d_model


def test_explicit_d_ff_is_kept():
    assert ModelConfig(d_model=64, n_heads=4, d_ff=77).ffn_dim == 77
    assert ModelConfig(d_model=64, n_heads=4, ffn="gelu", d_ff=77).ffn_dim == 77


def test_n_kv_heads_defaults_to_n_heads():
    config = ModelConfig(d_model=64, n_heads=8)
    assert config.n_kv_heads is None
    assert config.kv_heads == 8
    assert config.n_rep == 1
    gqa = ModelConfig(d_model=64, n_heads=8, n_kv_heads=2)
    assert gqa.kv_heads == 2
    assert gqa.n_rep == 4


def test_derived_properties():
    config = ModelConfig(d_model=96, n_heads=6, n_layers=5, shared_depth=3)
    assert config.head_dim == 16
    assert config.depth == 15


def test_replace_recomputes_reset_defaults():
    config = ModelConfig(d_model=64, n_heads=4, d_ff=100)
    assert config.replace(d_model=128, d_ff=None).ffn_dim == 320
    assert config.replace(ffn="gelu", d_ff=None).ffn_dim == 256
    assert config.replace(n_layers=7).n_layers == 7
    assert config.n_layers == 4  # the original is untouched


@pytest.mark.parametrize("replace", [dataclasses.replace, ModelConfig.replace])
def test_replace_derives_the_derived_values_anew(replace):
    config = ModelConfig(d_model=64, n_heads=4)  # ffn_dim 128, kv_heads 4, head_dim 16
    wider = replace(config, d_model=128)
    # 8/3 * 128 = 341.3, rounded down to a multiple of 64: 320
    assert (wider.ffn_dim, wider.kv_heads, wider.head_dim) == (320, 4, 32)
    more_heads = replace(config, n_heads=8)
    assert (more_heads.kv_heads, more_heads.n_rep, more_heads.head_dim) == (8, 1, 8)
    assert replace(config, ffn="gelu").ffn_dim == 256
    assert replace(config, d_ff=96, n_kv_heads=2).resolved() == ModelConfig(
        d_model=64, n_heads=4, d_ff=96, n_kv_heads=2
    )
    with pytest.raises(ConfigError, match="n_kv_heads=3"):
        replace(config, n_kv_heads=3)


def test_resolved_writes_out_the_derived_values():
    config = ModelConfig(d_model=64, n_heads=8)
    assert (config.resolved().n_kv_heads, config.resolved().d_ff) == (8, 128)
    explicit = ModelConfig(d_model=64, n_heads=8, n_kv_heads=8, d_ff=128)
    assert config != explicit and config.resolved() == explicit.resolved() == explicit


def test_a_config_json_from_before_the_derived_properties_loads_the_same_model(tmp_path):
    """config.json files written before n_kv_heads/d_ff could be null hold the resolved
    numbers (here: preset small as version f4b83ef saved it)."""
    old = {
        "vocab_size": 10000, "context_length": 256, "d_model": 512, "n_layers": 4,
        "n_heads": 16, "n_kv_heads": 16, "d_ff": 1344, "norm": "rmsnorm", "norm_eps": 1e-05,
        "ffn": "swiglu", "position": "rope", "rope_theta": 10000.0, "tie_embeddings": False,
        "bias": False, "qk_norm": False, "shared_depth": 1, "dropout": 0.0, "init_std": 0.02,
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    loaded = ModelConfig.load(path)
    assert loaded.resolved() == preset("small").resolved()
    assert (loaded.kv_heads, loaded.ffn_dim) == (16, 1344)
    # Fields added since (the speedrun options) take their defaults: the same model.
    assert (loaded.ffn, loaded.zero_init_proj, loaded.logit_softcap) == ("swiglu", False, None)


def test_a_checkpoint_saved_before_the_speedrun_options_still_loads(tmp_path):
    model = TransformerLM(preset("tiny", vocab_size=40, context_length=16))
    ckpt = save_checkpoint(model, None, 0, tmp_path / "ckpt")
    path = ckpt / "config.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    for name in ("zero_init_proj", "logit_softcap"):
        del saved["model"][name]  # as a checkpoint from before they existed
    path.write_text(json.dumps(saved), encoding="utf-8")
    write_manifest(ckpt)  # the edited file's new checksum
    loaded, _ = load_model(ckpt)
    assert loaded.config == model.config
    ids = torch.randint(0, 40, (1, 16))
    torch.testing.assert_close(loaded(ids), model.eval()(ids))


def test_relu2_d_ff_default_is_four_times_d_model():
    assert ModelConfig(d_model=96, n_heads=4, ffn="relu2").ffn_dim == 384


@pytest.mark.parametrize("cap", [0, -1.0, float("nan"), float("inf"), "30", True])
def test_logit_softcap_must_be_a_positive_number(cap):
    with pytest.raises(ConfigError, match="logit_softcap"):
        ModelConfig(logit_softcap=cap)


def test_zero_init_proj_must_be_a_bool():
    with pytest.raises(ConfigError, match="zero_init_proj"):
        ModelConfig(zero_init_proj="yes")


def test_the_default_preset_ties_its_embeddings_starts_blocks_as_identity_and_exports():
    """mini, the default of `scratchlm train --data`, carries the two speedrun options that
    won their ablations (docs/training.md), and none that a Llama export refuses."""
    config = preset("mini", vocab_size=64)
    assert hf_llama.unsupported(config) == []
    model = TransformerLM(config)
    assert model.lm_head.weight is model.embed_tokens.weight
    for block in model.layers:
        assert not block.self_attn.o_proj.weight.any() and not block.mlp.down_proj.weight.any()
    ids = torch.tensor([[1, 2, 3]])
    hidden = model.embed_tokens(ids)  # every block adds nothing yet: logits = norm(x) E^T
    torch.testing.assert_close(model(ids), model.lm_head(model.norm(hidden)))


def test_null_derived_fields_round_trip_through_json():
    config = ModelConfig(d_model=64, n_heads=4)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["d_ff"] is None and data["n_kv_heads"] is None
    assert ModelConfig.from_dict(data) == config


@pytest.mark.parametrize("name", ["d_ff", "n_kv_heads"])
def test_zero_is_no_longer_a_derive_me_value(name):
    with pytest.raises(ConfigError, match=f"{name} must be a positive integer, or null"):
        ModelConfig(d_model=64, n_heads=4, **{name: 0})


# ------------------------------------------------------------------ validation


def test_d_model_not_divisible_by_n_heads():
    with pytest.raises(ConfigError, match="d_model=100") as info:
        ModelConfig(d_model=100, n_heads=16)
    assert "n_heads=16" in str(info.value)


def test_n_heads_not_multiple_of_n_kv_heads():
    with pytest.raises(ConfigError, match="n_heads=8") as info:
        ModelConfig(d_model=64, n_heads=8, n_kv_heads=3)
    assert "n_kv_heads=3" in str(info.value)


def test_negative_n_kv_heads():
    with pytest.raises(ConfigError, match="n_kv_heads=-2"):
        ModelConfig(d_model=64, n_heads=8, n_kv_heads=-2)


def test_odd_head_dim_with_rope():
    # d_model 12 / 4 heads = head_dim 3: RoPE rotates channel pairs.
    with pytest.raises(ConfigError, match="RoPE") as info:
        ModelConfig(d_model=12, n_heads=4, d_ff=16, position="rope")
    message = str(info.value)
    assert "12" in message
    assert "4" in message
    assert "3" in message


@pytest.mark.parametrize("position", ["learned", "none", "cope"])
def test_odd_head_dim_is_fine_without_rope(position):
    assert ModelConfig(d_model=12, n_heads=4, d_ff=16, position=position).head_dim == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [("norm", "batchnorm"), ("ffn", "geglu"), ("position", "alibi")],
)
def test_unknown_choice_names_the_value_and_the_options(field, value):
    with pytest.raises(ConfigError, match=value) as info:
        ModelConfig(**{field: value})
    message = str(info.value)
    assert field in message
    allowed = {
        "norm": ("rmsnorm", "layernorm", "dyt"),
        "ffn": ("swiglu", "gelu", "relu2"),
        "position": ("rope", "learned", "cope", "none"),
    }[field]
    for option in allowed:
        assert option in message


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range(dropout):
    with pytest.raises(ConfigError, match="dropout") as info:
        ModelConfig(dropout=dropout)
    assert str(dropout) in str(info.value)


@pytest.mark.parametrize("p", [-0.1, 1.0, "0.1", True])
def test_attention_dropout_out_of_range(p):
    with pytest.raises(ConfigError, match="attention_dropout"):
        ModelConfig(attention_dropout=p)


@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.99])
def test_dropout_in_range(dropout):
    assert ModelConfig(dropout=dropout).dropout == dropout


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vocab_size", 0),
        ("context_length", -1),
        ("d_model", 0),
        ("n_layers", 0),
        ("n_heads", 0),
        ("d_ff", -5),
        ("vocab_size", 1.5),
    ],
)
def test_non_positive_sizes(field, value):
    with pytest.raises(ConfigError, match=field) as info:
        ModelConfig(**{field: value})
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("shared_depth", 0), ("rope_theta", 0.0), ("norm_eps", 0.0), ("init_std", -0.02)],
)
def test_other_bad_values(field, value):
    with pytest.raises(ConfigError, match=field) as info:
        ModelConfig(**{field: value})
    assert str(value) in str(info.value)


def test_from_dict_validates():
    data = {**preset("tiny").to_dict(), "n_kv_heads": 3}
    with pytest.raises(ConfigError, match="n_kv_heads=3"):
        ModelConfig.from_dict(data)


# ------------------------------------------------------------------ presets


def test_preset_with_overrides():
    config = preset("tiny", n_layers=3, position="learned")
    assert config.n_layers == 3
    assert config.position == "learned"
    assert config.d_model == PRESETS["tiny"]["d_model"]
    # The table itself is not modified by overrides.
    assert "position" not in PRESETS["tiny"]
    assert preset("tiny").n_layers == PRESETS["tiny"]["n_layers"]


def test_preset_overrides_are_validated():
    with pytest.raises(ConfigError, match="n_heads=5"):
        preset("tiny", n_heads=5)


def test_unknown_preset_names_it_and_the_choices():
    with pytest.raises(ConfigError, match="gpt5") as info:
        preset("gpt5")
    for name in PRESETS:
        assert name in str(info.value)


def test_presets_have_the_documented_shapes():
    small = preset("small")
    assert (small.d_model, small.n_layers, small.n_heads, small.d_ff, small.context_length) == (
        512,
        4,
        16,
        1344,
        256,
    )
    classic = preset("gpt2-classic")
    assert (classic.norm, classic.ffn, classic.position) == ("layernorm", "gelu", "learned")
    assert classic.bias
    assert classic.tie_embeddings
    assert (classic.d_model, classic.n_layers, classic.n_heads) == (768, 12, 12)
    assert classic.ffn_dim == 3072
    for name in ("gpt2-small", "gpt2-medium"):
        config = preset(name)
        assert (config.norm, config.ffn, config.position) == ("rmsnorm", "swiglu", "rope")


def test_replace_lets_derived_fields_follow():
    gpt2 = preset("gpt2-medium")  # 16 heads; n_kv_heads and d_ff derived
    changed = gpt2.replace(n_heads=8)
    assert (changed.n_heads, changed.kv_heads) == (8, 8)
    # 8/3 * 256 = 682.7, rounded down to a multiple of 64: 640
    assert gpt2.replace(d_model=256).ffn_dim == 640
    assert gpt2.replace(n_heads=8, n_kv_heads=4).kv_heads == 4
    gqa = preset("tiny")  # n_heads 4, n_kv_heads 2: an explicit choice, kept
    assert gqa.replace(d_model=128).kv_heads == 2
    explicit = ModelConfig(d_model=512, n_heads=16, d_ff=1000)
    assert explicit.replace(d_model=256).ffn_dim == 1000
    # The small preset states TinyStories' d_ff of 1344: kept, as preset("small", d_model=256)
    small = preset("small")
    assert small.replace(d_model=256) == preset("small", d_model=256)
    assert small.replace(d_model=256).ffn_dim == 1344
