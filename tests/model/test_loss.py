"""The loss functions against torch's cross-entropy, values and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.config import preset
from scratchlm.errors import DataError
from scratchlm.model import TransformerLM
from scratchlm.model.layers import softcap
from scratchlm.model.loss import bits_per_byte, cross_entropy, linear_cross_entropy


def test_cross_entropy_matches_torch_and_ignores_targets():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 11, generator=gen)
    targets = torch.randint(0, 11, (4, 7), generator=gen)
    targets[0, :3] = -100
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(cross_entropy(logits, targets), expected)


def test_cross_entropy_is_stable_for_huge_logits():
    # exp(1e4) overflows float32; the max-subtracted form must not. Row 0: the target has
    # all the mass (loss 0). Row 1: two equal top logits (loss log 2). Float32 keeps
    # about 3 decimals at 3e4, hence the tolerance.
    logits = torch.tensor([[1e4, 0.0, -1e4], [3e4, 3e4, 0.0]])
    targets = torch.tensor([0, 1])
    got = cross_entropy(logits, targets)
    assert torch.isfinite(got)
    assert abs(got.item() - math.log(2.0) / 2) < 1e-3


def test_all_targets_ignored_gives_zero_loss_and_zero_gradients():
    logits = torch.randn(3, 5, requires_grad=True)
    targets = torch.full((3,), -100)
    loss = cross_entropy(logits, targets)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
    h = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(5, 4, requires_grad=True)
    fused = linear_cross_entropy(h, w, targets)
    fused.backward()
    assert fused.item() == 0.0
    assert torch.count_nonzero(h.grad) == 0 and torch.count_nonzero(w.grad) == 0


@pytest.mark.parametrize("n, chunk", [(10, 3), (10, 10), (10, 64), (37, 8)])
@pytest.mark.parametrize("ignore", [False, True])
def test_linear_cross_entropy_matches_the_unfused_loss(n, chunk, ignore):
    gen = torch.Generator().manual_seed(n + chunk)
    h = torch.randn(n, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 9, (n,), generator=gen)
    if ignore:
        targets[::3] = -100
    expected = F.cross_entropy(h @ w.t(), targets, ignore_index=-100)
    grad_h, grad_w = torch.autograd.grad(expected * 2.5, (h, w))
    got = linear_cross_entropy(h, w, targets, chunk_size=chunk)
    got_h, got_w = torch.autograd.grad(got * 2.5, (h, w))  # the upstream gradient scales
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_h, grad_h)
    torch.testing.assert_close(got_w, grad_w)


@pytest.mark.parametrize("chunk", [3, 64])
def test_sum_reduction_is_the_mean_times_the_kept_targets(chunk):
    gen = torch.Generator().manual_seed(chunk)
    h = torch.randn(12, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (12,), generator=gen)
    targets[1::4] = -100  # 9 targets kept
    expected = F.cross_entropy(h @ w.t(), targets, ignore_index=-100, reduction="sum")
    grad_h, grad_w = torch.autograd.grad(expected, (h, w))
    got = linear_cross_entropy(h, w, targets, chunk_size=chunk, reduction="sum")
    got_h, got_w = torch.autograd.grad(got, (h, w))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_h, grad_h)
    torch.testing.assert_close(got_w, grad_w)
    logits = (h @ w.t()).detach()
    torch.testing.assert_close(cross_entropy(logits, targets, reduction="sum"), expected.detach())
    torch.testing.assert_close(
        cross_entropy(logits, targets, reduction="sum") / 9, cross_entropy(logits, targets)
    )


def test_linear_cross_entropy_without_gradients_still_gives_the_loss():
    h, w = torch.randn(5, 3), torch.randn(4, 3)
    targets = torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        got = linear_cross_entropy(h, w, targets, chunk_size=2)
    torch.testing.assert_close(got, F.cross_entropy(h @ w.t(), targets))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk", [4, 64])
def test_linear_cross_entropy_with_a_softcap_matches_the_capped_logits(chunk, reduction):
    # Logits of order 10 against a cap of 3: the cap bends them hard, so a gradient
    # missing the tanh's derivative would be far off.
    gen = torch.Generator().manual_seed(chunk)
    h = torch.randn(11, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (4 * torch.randn(9, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 9, (11,), generator=gen)
    targets[::4] = -100
    capped = 3.0 * torch.tanh((h @ w.t()) / 3.0)
    assert capped.abs().max() < 3.0 < (h @ w.t()).abs().max()
    expected = F.cross_entropy(capped, targets, ignore_index=-100, reduction=reduction)
    grad_h, grad_w = torch.autograd.grad(expected * 1.5, (h, w))
    got = linear_cross_entropy(h, w, targets, chunk_size=chunk, reduction=reduction, softcap=3.0)
    got_h, got_w = torch.autograd.grad(got * 1.5, (h, w))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_h, grad_h)
    torch.testing.assert_close(got_w, grad_w)
    uncapped = F.cross_entropy(h @ w.t(), targets, ignore_index=-100, reduction=reduction)
    assert abs(got.item() - uncapped.item()) > 0.1  # the cap changed the loss


def test_softcap_bounds_logits_and_is_near_identity_for_small_ones():
    x = torch.tensor([-1e4, -30.0, -0.01, 0.0, 0.01, 30.0, 1e4])
    y = softcap(x, 15.0)
    assert y.abs().max() <= 15.0 and torch.equal(y.sign(), x.sign())
    torch.testing.assert_close(y[2:5], x[2:5], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("tie, cap", [(False, None), (True, None), (False, 2.0)])
def test_model_loss_equals_cross_entropy_of_its_logits(tie, cap):
    torch.manual_seed(0)
    config = preset(
        "tiny", vocab_size=50, context_length=16, tie_embeddings=tie, logit_softcap=cap,
        init_std=0.3 if cap else 0.02,  # with the cap: logits big enough for it to bend
    )  # fmt: skip
    model = TransformerLM(config)
    ids = torch.randint(0, 50, (2, 16))
    if cap:  # the raw logits reach past the cap, so capping changes them
        assert model.lm_head(model.hidden_states(ids)).abs().max() > 1.5 * cap
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    expected = F.cross_entropy(model(ids).reshape(-1, 50), targets.reshape(-1))
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    got = model.loss(ids, targets)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, expected)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)
    summed = model.loss(ids, targets, reduction="sum")  # 2 rows x 15 targets
    torch.testing.assert_close(summed, expected * 30, rtol=1e-5, atol=1e-4)


def test_bits_per_byte_of_a_uniform_byte_model_is_eight():
    # A model that spreads its probability evenly over 256 byte tokens pays ln 256 nats
    # per token; at one byte per token that is log2 256 = 8 bits per byte.
    targets = torch.randint(0, 256, (4, 9), generator=torch.Generator().manual_seed(0))
    loss = cross_entropy(torch.zeros(4, 9, 256), targets).item()
    assert loss == pytest.approx(math.log(256))
    assert bits_per_byte(loss, 1.0) == pytest.approx(8.0)
    assert bits_per_byte(loss, 4.0) == pytest.approx(2.0)  # 4 bytes per token: a quarter
    assert bits_per_byte(math.log(2) * 3, 1.5) == pytest.approx(2.0)


@pytest.mark.parametrize("bytes_per_token", [0.0, -1.0, float("nan")])
def test_bits_per_byte_rejects_impossible_bytes_per_token(bytes_per_token):
    with pytest.raises(DataError, match="bytes_per_token"):
        bits_per_byte(2.0, bytes_per_token)
