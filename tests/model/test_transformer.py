"""TransformerLM: every config option, input errors, parameter and FLOP counts,
initialisation, and that it learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomize_neutral_params
from torch.testing import assert_close

from scratchlm.config import ModelConfig, SampleConfig, preset
from scratchlm.errors import ScratchLMError
from scratchlm.generate import generate_ids
from scratchlm.model import KVCache, TransformerLM

# Smaller than the tiny preset: d_model 32, context 16, vocab 50.
BASE = dict(vocab_size=50, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


def make_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**BASE, **overrides})


def make_model(config: ModelConfig, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    model = TransformerLM(config)
    return randomize_neutral_params(model, seed + 1).eval()


def random_ids(config: ModelConfig, B: int, T: int, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (B, T), generator=gen)


OPTIONS = [
    dict(),
    dict(norm="layernorm"),
    dict(norm="layernorm", bias=True),
    dict(norm="dyt"),
    dict(ffn="gelu"),
    dict(position="learned"),
    dict(position="cope"),
    dict(position="none"),
    dict(tie_embeddings=True),
    dict(bias=True),
    dict(qk_norm=True),
    dict(shared_depth=2),
    dict(shared_depth=3, n_layers=1),
    dict(n_kv_heads=1),
    dict(n_kv_heads=4),
    dict(dropout=0.1),
    dict(d_ff=40),
    dict(ffn="relu2"),
    dict(ffn="relu2", bias=True),
    dict(zero_init_proj=True),
    dict(logit_softcap=5.0),
    # GPT-2 classic in miniature.
    dict(norm="layernorm", ffn="gelu", position="learned", bias=True, tie_embeddings=True),
]


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda d: str(d) or "default")
def test_every_option_runs_forward_and_backward(overrides):
    config = make_config(**overrides)
    model = make_model(config).train()
    ids = random_ids(config, 2, 9)
    logits = model(ids)
    assert logits.shape == (2, 9, config.vocab_size)
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_tied_embeddings_share_one_tensor():
    model = make_model(make_config(tie_embeddings=True))
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = make_model(make_config())
    assert untied.lm_head.weight is not untied.embed_tokens.weight


def test_hf_module_names():
    keys = set(make_model(make_config(qk_norm=True)).state_dict())
    for key in (
        "embed_tokens.weight",
        "layers.1.input_layernorm.weight",
        "layers.1.self_attn.q_proj.weight",
        "layers.1.self_attn.k_proj.weight",
        "layers.1.self_attn.v_proj.weight",
        "layers.1.self_attn.o_proj.weight",
        "layers.1.self_attn.q_norm.weight",
        "layers.1.post_attention_layernorm.weight",
        "layers.1.mlp.gate_proj.weight",
        "layers.1.mlp.up_proj.weight",
        "layers.1.mlp.down_proj.weight",
        "norm.weight",
        "lm_head.weight",
    ):
        assert key in keys, key
    assert not any("rotary" in k for k in keys)  # rope tables are not weights


def test_last_only():
    config = make_config()
    model = make_model(config)
    ids = random_ids(config, 2, 7)
    assert_close(model(ids, last_only=True), model(ids)[:, -1:])


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(qk_norm=True, n_kv_heads=1),
        dict(position="learned"),
        dict(ffn="gelu"),
        dict(ffn="relu2"),
    ],
)
def test_reference_kernels_give_the_same_logits_and_gradients(overrides):
    # The written-out attention, SiLU and GELU (layers.py) against torch's fused kernels.
    config = make_config(**overrides)
    model = make_model(config)
    ids = random_ids(config, 3, 11)
    results = {}
    for impl in ("fast", "reference"):
        model.set_impl(impl)
        assert all(b.self_attn.impl == b.mlp.impl == impl for b in model.layers)
        model.zero_grad()
        logits = model(ids)
        (logits * torch.linspace(-1, 1, config.vocab_size)).sum().backward()
        results[impl] = logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (fast, fast_grads), (readable, readable_grads) = results["fast"], results["reference"]
    assert_close(readable, fast, rtol=1e-5, atol=1e-5)
    for name, grad in fast_grads.items():
        assert_close(readable_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_unknown_impl():
    model = make_model(make_config())
    with pytest.raises(ScratchLMError, match="flash"):
        model.set_impl("flash")


@pytest.mark.parametrize("position", ["rope", "learned", "cope", "none"])
@pytest.mark.parametrize("shared_depth", [1, 2])
def test_model_is_causal(position, shared_depth):
    config = make_config(position=position, shared_depth=shared_depth)
    model = make_model(config)
    ids = random_ids(config, 1, 10)
    logits = model(ids)
    for t in (3, 9):
        changed = ids.clone()
        changed[0, t] = (ids[0, t] + 1) % config.vocab_size
        new = model(changed)
        assert_close(new[:, :t], logits[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(new[:, t], logits[:, t])


def test_positions_matter_only_when_there_are_positions():
    # Without a positional encoding one layer of causal attention sees the earlier
    # tokens as a bag: the last logits do not change when they are permuted. (With two
    # layers they would: the earlier positions' own prefixes change.) With positions,
    # they do change.
    ids = torch.tensor([[5, 9, 2, 7, 3]])
    permuted = torch.tensor([[2, 7, 9, 5, 3]])
    for position, same in (("none", True), ("rope", False), ("learned", False)):
        model = make_model(make_config(position=position, n_layers=1))
        a, b = model(ids)[:, -1], model(permuted)[:, -1]
        assert torch.allclose(a, b, atol=1e-5) == same, position


# ------------------------------------------------------------------ bad inputs


def test_id_outside_vocab_is_refused_where_prompts_enter():
    # The model does not check ids (that would sync with the device every call); the
    # generation engine checks the prompts, naming both numbers.
    config = make_config()
    model = make_model(config)
    with pytest.raises(ScratchLMError) as info:
        next(generate_ids(model, [[1, 2, 57]]))
    assert "57" in str(info.value)
    assert "50" in str(info.value)
    with pytest.raises(ScratchLMError, match="-1"):
        next(generate_ids(model, [[1, -1, 3]]))
    with pytest.raises(ScratchLMError, match="50"):  # the first id past the end
        next(generate_ids(model, [[50]]))
    assert next(generate_ids(model, [[49]], SampleConfig(max_new_tokens=1)))[0] in range(50)


def test_sequence_longer_than_context_is_an_internal_error_naming_both_numbers():
    # Prompts are fitted to the context where they enter (tests/test_generate.py); inside,
    # the model only asserts.
    config = make_config()
    model = make_model(config)
    with pytest.raises(AssertionError) as info:
        model(torch.zeros(1, 17, dtype=torch.long))
    assert "17" in str(info.value)
    assert "16" in str(info.value)
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 50)
    # With a cache, the cached positions count too.
    cache = KVCache.for_model(config, batch_size=1)
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(AssertionError) as info:
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache)
    assert "10 + 7" in str(info.value)
    assert "16" in str(info.value)


def test_ids_must_be_two_dimensional():
    model = make_model(make_config())
    with pytest.raises(AssertionError, match="batch"):
        model(torch.zeros(5, dtype=torch.long))


# ------------------------------------------------------------------ dropout


def test_dropout_only_in_training():
    config = make_config(dropout=0.5)
    model = make_model(config)
    ids = random_ids(config, 2, 8)
    model.train()
    torch.manual_seed(0)
    a = model(ids)
    b = model(ids)
    assert not torch.allclose(a, b)
    model.eval()
    c, d = model(ids), model(ids)
    assert torch.equal(c, d)
    # In eval mode dropout is the identity: same logits as the same weights without it.
    plain = TransformerLM(config.replace(dropout=0.0)).eval()
    plain.load_state_dict(model.state_dict())
    assert_close(plain(ids), c)


def test_attention_dropout_drops_attention_probabilities_only():
    """attention_dropout=0 with dropout>0: attention is deterministic in training, the
    residual dropout is not; None follows dropout."""
    config = make_config(dropout=0.5, attention_dropout=0.0)
    model = make_model(config).train()
    attention = model.layers[0].self_attn
    x = torch.randn(2, 8, config.d_model)
    assert torch.equal(attention(x), attention(x))
    ids = random_ids(config, 2, 8)
    assert not torch.allclose(model(ids), model(ids))  # the residual branches still drop

    only_attention = make_model(make_config(dropout=0.0, attention_dropout=0.5)).train()
    attention = only_attention.layers[0].self_attn
    assert not torch.allclose(attention(x), attention(x))
    assert make_config(dropout=0.3).attention_dropout_p == 0.3
    assert make_config(dropout=0.3, attention_dropout=0.1).attention_dropout_p == 0.1


# ------------------------------------------------------------------ parameter counts


def norm_params(c: ModelConfig) -> int:
    if c.norm == "rmsnorm":
        return c.d_model  # weight
    if c.norm == "layernorm":
        return c.d_model * (2 if c.bias else 1)  # weight (+ bias)
    return 2 * c.d_model + 1  # DyT: weight, bias, alpha


def expected_parameters(c: ModelConfig) -> tuple[int, int]:
    """(total, non-embedding), counted by hand from the architecture."""
    d, hd, q_dim, kv_dim = c.d_model, c.head_dim, c.n_heads * c.head_dim, c.kv_heads * c.head_dim
    attn = d * q_dim + 2 * d * kv_dim + q_dim * d  # q, k, v, o
    if c.bias:
        attn += q_dim + 2 * kv_dim + d
    if c.qk_norm:
        attn += 2 * hd
    if c.position == "cope":
        attn += hd * c.context_length  # one position table per layer
    if c.ffn == "swiglu":
        mlp = 3 * d * c.ffn_dim + ((2 * c.ffn_dim + d) if c.bias else 0)
    else:
        mlp = 2 * d * c.ffn_dim + ((c.ffn_dim + d) if c.bias else 0)
    block = attn + mlp + 2 * norm_params(c)
    embeddings = c.vocab_size * d + (c.context_length * d if c.position == "learned" else 0)
    lm_head = c.vocab_size * d
    scales = c.depth if c.shared_depth > 1 else 0
    total = embeddings + c.n_layers * block + norm_params(c) + scales
    if not c.tie_embeddings:
        total += lm_head
    non_embedding = c.n_layers * block + norm_params(c) + scales + lm_head
    return total, non_embedding


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda d: str(d) or "default")
def test_num_parameters_matches_hand_count(overrides):
    config = make_config(**overrides)
    model = make_model(config)
    total, non_embedding = expected_parameters(config)
    assert model.num_parameters() == total
    assert model.num_parameters(non_embedding=True) == non_embedding


def test_num_parameters_worked_example():
    # vocab 50, d 32, 2 layers, 4 heads of 8, 2 kv heads, d_ff 64, RMSNorm, SwiGLU, RoPE:
    #   per layer: q 32*32 + k 32*16 + v 32*16 + o 32*32 = 3072, mlp 3*32*64 = 6144,
    #              two norms 64 -> 9280;  2 layers = 18560;  final norm 32
    #   token embedding 50*32 = 1600;  lm_head 50*32 = 1600
    model = make_model(make_config(d_ff=64))
    assert model.num_parameters() == 1600 + 18560 + 32 + 1600 == 21792
    assert model.num_parameters(non_embedding=True) == 18560 + 32 + 1600 == 20192
    # Learned positions add context * d = 16 * 32 = 512 embedding parameters.
    learned = make_model(make_config(d_ff=64, position="learned"))
    assert learned.num_parameters() == 21792 + 512
    assert learned.num_parameters(non_embedding=True) == 20192


def test_small_preset_parameter_count():
    # 4 layers x (4*512^2 attention + 3*512*1344 SwiGLU) = 4 x 3,112,960 = 12,451,840
    # + RMSNorm weights 4*2*512 + 512 = 4,608 + lm_head 10000*512 = 5,120,000
    # = 17,576,448 non-embedding; + token embedding 5,120,000 = 22,696,448 in all.
    with torch.device("meta"):  # counts need no memory or init time
        model = TransformerLM(preset("small"))
    assert model.num_parameters(non_embedding=True) == 17_576_448
    assert model.num_parameters() == 22_696_448


def test_gpt2_classic_has_gpt2_parameter_count():
    # GPT-2 124M: 124,439,808 parameters with the output tied to the token embedding
    # (wte 50257*768 + wpe 1024*768 + 12 * 7,087,872 + ln_f 2*768).
    with torch.device("meta"):
        model = TransformerLM(preset("gpt2-classic"))
    assert model.num_parameters() == 124_439_808
    # Non-embedding leaves out wpe and counts the tied matrix once, as the output layer.
    assert model.num_parameters(non_embedding=True) == 124_439_808 - 1024 * 768


# ------------------------------------------------------------------ FLOPs


def test_flops_per_token_formula():
    config = make_config(d_ff=64)
    model = make_model(config)
    n = 20192  # non-embedding parameters, counted in the worked example above
    # Forward: 2 FLOPs per weight, plus q.k and p.v: 2 * 2 * n_layers * d_model * T.
    forward_16 = 2 * n + 2 * 2 * 2 * 32 * 16
    assert model.flops_per_token(training=False) == forward_16
    assert model.flops_per_token() == 3 * forward_16
    forward_5 = 2 * n + 2 * 2 * 2 * 32 * 5
    assert model.flops_per_token(training=False, seq_len=5) == forward_5
    assert model.flops_per_token(training=True, seq_len=5) == 3 * forward_5


def test_flops_per_token_shared_depth_counts_each_application():
    config = make_config(d_ff=64, n_layers=1, shared_depth=3)
    model = make_model(config)
    block = 9280  # one block, see the worked example
    # Each token runs the block 3 times; lm_head, final norm and 3 depth scales once.
    weights = 3 * block + 32 + 50 * 32 + 3
    assert model.flops_per_token(training=False) == 2 * weights + 2 * 2 * 3 * 32 * 16


# ------------------------------------------------------------------ init and training


def test_residual_projections_start_smaller():
    torch.manual_seed(0)
    config = preset("tiny")
    model = TransformerLM(config)
    expected_residual = config.init_std / (2 * config.depth) ** 0.5
    for layer in model.layers:
        q_std = layer.self_attn.q_proj.weight.std().item()
        o_std = layer.self_attn.o_proj.weight.std().item()
        down_std = layer.mlp.down_proj.weight.std().item()
        assert q_std == pytest.approx(config.init_std, rel=0.1)
        assert o_std < 0.8 * q_std
        assert down_std < 0.8 * q_std
        assert o_std == pytest.approx(expected_residual, rel=0.1)
        assert down_std == pytest.approx(expected_residual, rel=0.1)
        assert layer.mlp.up_proj.weight.std().item() == pytest.approx(config.init_std, rel=0.1)


def test_zero_init_proj_starts_each_block_as_the_identity():
    config = make_config(zero_init_proj=True, ffn="relu2")
    torch.manual_seed(0)
    model = TransformerLM(config)  # as built: make_model would randomise the zeros
    for layer in model.layers:
        assert not layer.self_attn.o_proj.weight.any()
        assert not layer.mlp.down_proj.weight.any()
        assert layer.self_attn.q_proj.weight.std() > 0.5 * config.init_std  # only those two
        assert layer.mlp.up_proj.weight.std() > 0.5 * config.init_std
    # Every block adds nothing yet: the logits are those of the embeddings alone.
    ids = random_ids(config, 2, 9)
    logits = model(ids)
    assert_close(logits, model.lm_head(model.norm(model.embed_tokens(ids))))
    # ...but the zeroed projections get a gradient, so training moves them first.
    logits.logsumexp(-1).sum().backward()
    for layer in model.layers:
        assert layer.self_attn.o_proj.weight.grad.abs().sum() > 0
        assert layer.mlp.down_proj.weight.grad.abs().sum() > 0


def test_relu2_mlp_is_down_of_squared_relu_of_up():
    config = make_config(ffn="relu2")
    model = make_model(config)
    mlp = model.layers[0].mlp
    assert not hasattr(mlp, "gate_proj") and mlp.up_proj.out_features == 4 * config.d_model
    x = torch.randn(3, config.d_model)
    up = x @ mlp.up_proj.weight.t()
    expected = (torch.where(up > 0, up, 0.0) ** 2) @ mlp.down_proj.weight.t()
    assert_close(mlp(x), expected)


def test_logit_softcap_caps_the_logits_of_the_same_weights():
    config = make_config(init_std=0.5)
    model = make_model(config)
    capped = TransformerLM(config.replace(logit_softcap=2.0)).eval()
    capped.load_state_dict(model.state_dict())
    ids = random_ids(config, 2, 9)
    raw = model(ids)
    assert raw.abs().max() > 4.0  # big enough for the cap to bend them
    assert_close(capped(ids), 2.0 * torch.tanh(raw / 2.0))
    assert capped(ids).abs().max() < 2.0


def test_loss_falls_on_a_repeated_sequence():
    torch.manual_seed(0)
    config = make_config(d_ff=64)
    model = TransformerLM(config).train()
    pattern = torch.tensor([3, 14, 15, 9, 26, 5, 35, 8])
    ids = pattern.repeat(2, 2)  # (2, 16)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(30):
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.1)
    assert losses[-1] < 0.25 * losses[0]
