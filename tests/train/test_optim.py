"""The optimizers against torch's and against hand-written updates, the weight-decay
groups, build_optimizer's choice of implementation, and gradient clipping."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from scratchlm.config import preset
from scratchlm.errors import ConfigError
from scratchlm.model import Linear, TransformerLM
from scratchlm.train import optim
from scratchlm.train.config import TrainConfig
from scratchlm.train.optim import (
    SGD,
    AdamW,
    build_optimizer,
    clip_grad_norm,
    fused_adamw_supported,
    param_groups,
)

# ----------------------------------------------------------------------------- problems


class Regression(nn.Module):
    """y = down(relu(up(x)) * gain): scratchlm Linear layers, a bias, and a norm-like
    gain."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.up = Linear(8, 16, bias=True)
        self.gain = nn.Parameter(torch.ones(16))
        self.down = Linear(16, 3)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.up.weight.copy_(torch.randn(16, 8, generator=gen) * 0.3)
            self.up.bias.copy_(torch.randn(16, generator=gen) * 0.1)
            self.down.weight.copy_(torch.randn(3, 16, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 8) -> (N, 3)
        return self.down(torch.relu(self.up(x)) * self.gain)


def regression_data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=gen)
    y = torch.sin(x[:, :3]) + 0.1 * torch.randn(64, 3, generator=gen)
    return x, y


def regression_groups(model: Regression) -> list[dict]:
    """Three groups with different lr and weight decay."""
    return [
        {"params": [model.up.weight, model.down.weight], "lr": 3e-2, "weight_decay": 0.1},
        {"params": [model.up.bias], "lr": 1e-2, "weight_decay": 0.0},
        {"params": [model.gain]},  # optimizer defaults
    ]


def regression_loss(model: nn.Module, data) -> torch.Tensor:
    x, y = data
    return (model(x) - y).pow(2).mean()


def train(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model).backward()
        optimizer.step()


def assert_same_params(a: nn.Module, b: nn.Module, rtol: float) -> None:
    """Each parameter of a equals b's within rtol relative to the parameter's scale."""
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        scale = pb.detach().abs().max().item()
        diff = (pa - pb).abs().max().item()
        assert diff <= rtol * scale, f"{name}: max difference {diff:.3g} at scale {scale:.3g}"


def tiny_model(seed: int = 0, **overrides) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(preset("tiny", **overrides))


def tiny_loss_fn(seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 512, (2, 17), generator=gen)
    return lambda model: model.loss(ids[:, :-1], ids[:, 1:])


# ----------------------------------------------------------------------------- AdamW


def test_adamw_matches_torch_adamw_over_many_steps_with_groups():
    data = regression_data()
    ours_model, torch_model = Regression(0), Regression(0)
    ours = AdamW(regression_groups(ours_model), lr=5e-3, betas=(0.8, 0.95), weight_decay=0.05)
    ref = torch.optim.AdamW(
        regression_groups(torch_model), lr=5e-3, betas=(0.8, 0.95), weight_decay=0.05
    )
    train(ours_model, ours, lambda m: regression_loss(m, data), 100)
    train(torch_model, ref, lambda m: regression_loss(m, data), 100)
    assert_same_params(ours_model, torch_model, rtol=1e-6)
    # The problem moved: the comparison is not between two untouched models.
    assert (ours_model.up.weight - Regression(0).up.weight).abs().max() > 0.1


def test_adamw_update_written_out_for_one_step():
    # One step from zero state: m = (1 - b1) g, v = (1 - b2) g^2, so after bias correction
    # the update is lr * g / (|g| + eps), after the decay p * (1 - lr * wd).
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    p.grad = torch.tensor([0.5, 0.25, -4.0])
    lr, wd, eps = 0.1, 0.2, 1e-8
    AdamW([p], lr=lr, betas=(0.9, 0.99), eps=eps, weight_decay=wd).step()
    start, g = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 0.25, -4.0])
    expected = start * (1 - lr * wd) - lr * g / (g.abs() + eps)
    torch.testing.assert_close(p.detach(), expected)


def test_adamw_state_has_torch_keys_and_types():
    data = regression_data()
    ours_model, torch_model = Regression(0), Regression(0)
    ours, ref = AdamW(ours_model.parameters()), torch.optim.AdamW(torch_model.parameters())
    train(ours_model, ours, lambda m: regression_loss(m, data), 2)
    train(torch_model, ref, lambda m: regression_loss(m, data), 2)
    for p_ours, p_ref in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        s_ours, s_ref = ours.state[p_ours], ref.state[p_ref]
        assert set(s_ours) == set(s_ref) == {"step", "exp_avg", "exp_avg_sq"}
        for key in s_ref:
            assert s_ours[key].dtype == s_ref[key].dtype
            assert s_ours[key].shape == s_ref[key].shape
            assert s_ours[key].device == s_ref[key].device
        assert s_ours["step"].dtype == torch.float32 and s_ours["step"].dim() == 0
        assert s_ours["step"].item() == 2.0


def make_ours(model: Regression) -> AdamW:
    return AdamW(regression_groups(model), lr=5e-3, weight_decay=0.05)


def make_torch(model: Regression) -> torch.optim.AdamW:
    return torch.optim.AdamW(regression_groups(model), lr=5e-3, weight_decay=0.05)


@pytest.mark.parametrize(
    "first, second", [(make_ours, make_torch), (make_torch, make_ours)], ids=["ours", "torch"]
)
def test_adamw_state_dict_interchange(first, second):
    data = regression_data()
    loss_fn = lambda m: regression_loss(m, data)  # noqa: E731

    # Reference: one optimizer all the way, 30 steps.
    straight = Regression(0)
    train(straight, first(straight), loss_fn, 30)

    # 15 steps, hand the parameters and optimizer state over, 15 more steps.
    resumed = Regression(0)
    before = first(resumed)
    train(resumed, before, loss_fn, 15)
    saved = copy.deepcopy(before.state_dict())
    after = second(resumed)
    after.load_state_dict(saved)
    for p in resumed.parameters():
        assert after.state[p]["step"].item() == 15.0
    train(resumed, after, loss_fn, 15)
    assert_same_params(resumed, straight, rtol=1e-6)

    # Without the state the continuation differs: the test can tell.
    fresh = Regression(0)
    train(fresh, first(fresh), loss_fn, 15)
    train(fresh, second(fresh), loss_fn, 15)
    assert (fresh.up.weight - straight.up.weight).abs().max() > 1e-4


def test_adamw_refuses_state_with_options_it_does_not_implement():
    ref = torch.optim.AdamW([nn.Parameter(torch.ones(2))], amsgrad=True)
    ours = AdamW([nn.Parameter(torch.ones(2))])
    with pytest.raises(ConfigError, match="amsgrad"):
        ours.load_state_dict(ref.state_dict())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas"),
        ({"betas": (0.9, -0.1)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_adamw_validates_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AdamW([nn.Parameter(torch.ones(2))], **kwargs)


def test_adamw_validates_group_overrides():
    p, q = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    with pytest.raises(ConfigError, match="lr"):
        AdamW([{"params": [p]}, {"params": [q], "lr": -1.0}])


# ----------------------------------------------------------------------------- fast path


def three_implementations(make_model, lr: float):
    """(ours, torch fused, torch default) optimizers over three copies of one model,
    each with two groups of different lr (the no-decay group at lr / 3)."""
    out = []
    for fused in (False, True, "torch-default"):
        model = make_model()
        if fused == "torch-default":
            opt = torch.optim.AdamW(param_groups(model, 0.1), lr=lr, betas=(0.9, 0.95))
        else:
            opt = build_optimizer(
                model, TrainConfig(optimizer="adamw", lr=lr, weight_decay=0.1, fused=fused)
            )
        opt.param_groups[1]["lr"] = lr / 3
        out.append((model, opt))
    return out


@pytest.mark.parametrize("problem", ["regression", "tiny_model"])
def test_ours_fused_and_default_adamw_agree_after_20_steps(problem):
    if problem == "regression":
        data = regression_data()
        make, loss_fn, lr = (lambda: Regression(0)), (lambda m: regression_loss(m, data)), 1e-2
    else:
        make, loss_fn, lr = tiny_model, tiny_loss_fn(), 1e-3
    (ours_m, ours), (fused_m, fused), (default_m, default) = three_implementations(make, lr)
    assert isinstance(ours, AdamW)
    assert isinstance(fused, torch.optim.AdamW) and fused.defaults["fused"]
    start = copy.deepcopy(ours_m)
    for model, opt in ((ours_m, ours), (fused_m, fused), (default_m, default)):
        train(model, opt, loss_fn, 20)
    # Ours performs torch's single-tensor/foreach operations in the same order; the fused
    # kernel rounds differently, and training feeds each rounding difference back into
    # the next gradient, hence a few float32 ulps on the tiny model.
    assert_same_params(ours_m, default_m, rtol=1e-6)
    assert_same_params(ours_m, fused_m, rtol=1e-6 if problem == "regression" else 5e-6)
    pairs = zip(ours_m.parameters(), start.parameters(), strict=True)
    moved = max((a - b).abs().max().item() for a, b in pairs)
    assert moved > 3 * lr  # the models trained: Adam moves a weight by up to ~lr per step


def test_fused_step_equals_ours_for_gradients_set_by_hand():
    # torch's fused CPU kernel pairs elements by memory position: it is right because
    # every parameter is a plain row-major tensor, like the gradients set here.
    results = []
    for fused in (False, True):
        model = Regression(0)
        opt = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-2, fused=fused))
        gen = torch.Generator().manual_seed(3)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)  # contiguous, unlike Linear weights
            opt.step()
        results.append(model)
    assert all(p.is_contiguous() for p in results[0].parameters())
    assert_same_params(results[0], results[1], rtol=1e-6)


def test_build_optimizer_choices(monkeypatch):
    model = Regression(0)
    assert fused_adamw_supported(model.parameters())  # CPU fused AdamW exists since 2.4
    auto = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3))
    assert isinstance(auto, torch.optim.AdamW) and auto.defaults["fused"]
    assert auto.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in auto.param_groups] == [0.1, 0.0]
    assert isinstance(
        build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, fused=False)), AdamW
    )
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", lr=1e-3, weight_decay=0.01))
    assert isinstance(sgd, SGD) and [g["weight_decay"] for g in sgd.param_groups] == [0.01, 0.0]

    # Where torch has no fused kernel, auto falls back to ours and fused=True refuses.
    monkeypatch.setattr(optim, "fused_adamw_supported", lambda params: False)
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3)), AdamW)
    with pytest.raises(ConfigError, match="fused"):
        build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, fused=True))


def test_fused_support_detection_refuses_what_has_no_kernel():
    assert not fused_adamw_supported([])
    assert not fused_adamw_supported([torch.zeros(3, dtype=torch.int64)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"optimizer": "adam"}, "adam"),
        ({"optimizer": "sgd", "fused": True}, "fused"),
        ({"lr": -1.0}, "lr"),
        ({"lr": -1.0, "fused": True}, "lr"),  # checked before torch's optimizer is built
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_build_optimizer_validates(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_optimizer(Regression(0), TrainConfig(**{"lr": 1e-3, **kwargs}))


# ----------------------------------------------------------------------------- SGD


def reference_sgd(params, grads_per_step, lr, momentum, weight_decay, sqrt_decay):
    """The update written out on plain tensors."""
    params = [p.clone() for p in params]
    buffers = [None] * len(params)
    for t, grads in enumerate(grads_per_step, start=1):
        step_size = lr / math.sqrt(t) if sqrt_decay else lr
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            d = g + weight_decay * p
            if momentum:
                buffers[i] = d.clone() if buffers[i] is None else momentum * buffers[i] + d
                d = buffers[i]
            params[i] = p - step_size * d
    return params


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("sqrt_decay", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sgd_matches_hand_written_update(momentum, sqrt_decay, weight_decay):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    grads = [[torch.randn(p.shape, generator=gen) for p in start] for _ in range(6)]
    params = [nn.Parameter(p.clone()) for p in start]
    opt = SGD(params, lr=0.1, momentum=momentum, weight_decay=weight_decay, sqrt_decay=sqrt_decay)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
        assert torch.equal(params[0].grad, step_grads[0])  # the gradient is left as it was
    expected = reference_sgd(start, grads, 0.1, momentum, weight_decay, sqrt_decay)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e)


def test_sgd_sqrt_decay_step_sizes():
    # A constant gradient of 1: the parameter moves by lr / sqrt(t) at step t.
    p = nn.Parameter(torch.zeros(1))
    opt = SGD([p], lr=0.5, sqrt_decay=True)
    positions = []
    for _ in range(4):
        p.grad = torch.ones(1)
        opt.step()
        positions.append(p.item())
    expected = [-0.5 * sum(1 / math.sqrt(t) for t in range(1, n + 1)) for n in range(1, 5)]
    assert positions == pytest.approx(expected, rel=1e-6)


def test_sgd_without_sqrt_decay_matches_torch_sgd():
    data = regression_data()
    a, b = Regression(0), Regression(0)
    train(
        a,
        SGD(a.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01),
        lambda m: regression_loss(m, data),
        30,
    )
    train(
        b,
        torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01),
        lambda m: regression_loss(m, data),
        30,
    )
    assert_same_params(a, b, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -0.1}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.5}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
    ],
)
def test_sgd_validates_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SGD([nn.Parameter(torch.ones(2))], **kwargs)


# ----------------------------------------------------------------------------- groups


def linear_weight_ids(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, Linear | nn.Linear)}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": True}, {"norm": "layernorm", "bias": True, "position": "learned"}],
)
def test_param_groups_of_the_transformer(overrides):
    model = tiny_model(**overrides)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids))  # each parameter once
    assert set(ids) == {id(p) for p in model.parameters()}  # and every one

    embedding = model.embed_tokens.weight
    tables = [embedding] + ([model.embed_positions.weight] if model.embed_positions else [])
    assert all(any(t is p for p in no_decay["params"]) for t in tables)
    assert all(p.dim() < 2 for p in no_decay["params"] if not any(p is t for t in tables))
    assert {id(p) for p in decay["params"]} == linear_weight_ids(model) - {id(embedding)}
    assert all(p.dim() == 2 for p in decay["params"])
    lm_head_decayed = any(p is model.lm_head.weight for p in decay["params"])
    if overrides.get("tie_embeddings"):
        assert model.lm_head.weight is embedding and not lm_head_decayed
    else:
        assert lm_head_decayed
    if overrides.get("bias"):
        biases = [m.bias for m in model.modules() if getattr(m, "bias", None) is not None]
        assert biases and all(any(b is p for p in no_decay["params"]) for b in biases)


def test_param_groups_of_torch_modules_and_frozen_parameters():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[3].weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.3)
    assert [id(p) for p in decay["params"]] == [id(model[1].weight)]
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].weight),
        id(model[1].bias),
        id(model[2].weight),
        id(model[2].bias),
        id(model[3].bias),
    }


def test_param_groups_rejects_negative_weight_decay():
    with pytest.raises(ConfigError, match="weight_decay"):
        param_groups(Regression(0), -0.1)


# ----------------------------------------------------------------------------- clipping


def params_with_grads(seed: int, scale: float) -> list[nn.Parameter]:
    """Five parameters of mixed shapes, one without a gradient."""
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(s)) for s in [(3, 4), (7,), (2, 2, 2), (5,), ()]]
    for i, p in enumerate(params):
        if i != 1:
            p.grad = torch.randn(p.shape, generator=gen) * scale
    return params


@pytest.mark.parametrize("scale", [0.01, 10.0])  # below and above max_norm
@pytest.mark.parametrize("foreach", [None, True])
def test_clip_readable_and_fast_agree(scale, foreach):
    readable, fast = params_with_grads(0, scale), params_with_grads(0, scale)
    grads_before = [p.grad.clone() if p.grad is not None else None for p in readable]
    expected_norm = torch.cat([g.flatten() for g in grads_before if g is not None]).norm()

    norm_readable = clip_grad_norm(readable, 1.0, foreach=False)
    norm_fast = clip_grad_norm(iter(fast), 1.0, foreach=foreach)  # any iterable
    assert norm_readable.dim() == 0 and norm_fast.dim() == 0
    torch.testing.assert_close(norm_readable, expected_norm)
    torch.testing.assert_close(norm_fast, expected_norm)
    for a, b, g in zip(readable, fast, grads_before, strict=True):
        if g is None:
            assert a.grad is None and b.grad is None
            continue
        torch.testing.assert_close(a.grad, b.grad)
        if scale < 1:  # below the limit: untouched
            assert torch.equal(a.grad, g)
        else:
            torch.testing.assert_close(a.grad, g * (1.0 / (expected_norm + 1e-6)))
    if scale > 1:
        after = torch.cat([p.grad.flatten() for p in readable if p.grad is not None]).norm()
        assert after.item() == pytest.approx(1.0, rel=1e-5)


def test_clip_hand_computed():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    norm = clip_grad_norm([p], 1.0, foreach=False)
    assert norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]), rtol=1e-5, atol=0)


@pytest.mark.parametrize("foreach", [False, None])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_clip_non_finite_norm_is_reported(foreach, bad):
    params = params_with_grads(0, 1.0)
    params[0].grad[1, 2] = bad
    norm = clip_grad_norm(params, 1.0, foreach=foreach)
    assert not torch.isfinite(norm)


@pytest.mark.parametrize("foreach", [False, None])
def test_clip_without_gradients_returns_zero(foreach):
    params = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))]
    norm = clip_grad_norm(params, 1.0, foreach=foreach)
    assert torch.equal(norm, torch.tensor(0.0))
    assert torch.equal(clip_grad_norm([], 1.0, foreach=foreach), torch.tensor(0.0))


def test_clip_accepts_a_single_tensor_and_validates():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([0.0, 2.0])
    assert clip_grad_norm(p, 1.0, foreach=False).item() == pytest.approx(2.0)
    assert p.grad[1].item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ConfigError, match="max_norm"):
        clip_grad_norm([p], -1.0)
