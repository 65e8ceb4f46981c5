"""Activation checkpointing (``model.checkpoint_activations``): the same loss and gradients
as the plain backward pass, with fewer activations kept between forward and backward."""

import pytest
import torch

from scratchlm.config import ModelConfig
from scratchlm.model import TransformerLM
from scratchlm.model.lora import LoraConfig, apply_lora

BASE = dict(vocab_size=97, context_length=24, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2)


def model_and_batch(lora: bool, **overrides) -> tuple[TransformerLM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**{**BASE, **overrides})).train()
    if lora:
        apply_lora(model, LoraConfig(r=4, dropout=0.1, targets=("all-linear",)))
        with torch.no_grad():  # B starts at zero: give the adapters something to send back
            for name, p in model.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_(0, 0.05)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, BASE["vocab_size"], (3, 20), generator=g)
    targets = torch.randint(0, BASE["vocab_size"], (3, 20), generator=g)
    targets[0, :5] = -100  # an SFT-like mask
    return model, ids, targets


def loss_and_grads(model, ids, targets, checkpoint: bool, autocast: bool = False):
    model.checkpoint_activations = checkpoint
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same dropout masks in both runs
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model.loss(ids, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpointing_gives_the_same_loss_and_gradients(lora, dropout):
    model, ids, targets = model_and_batch(lora, dropout=dropout)
    loss, grads = loss_and_grads(model, ids, targets, checkpoint=False)
    loss_ckpt, grads_ckpt = loss_and_grads(model, ids, targets, checkpoint=True)
    assert grads, "nothing was trained"
    assert grads.keys() == grads_ckpt.keys()
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_under_bf16_autocast_recomputes_in_bf16():
    model, ids, targets = model_and_batch(lora=True, dropout=0.1)
    loss, grads = loss_and_grads(model, ids, targets, checkpoint=False, autocast=True)
    loss_ckpt, grads_ckpt = loss_and_grads(model, ids, targets, checkpoint=True, autocast=True)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-6)
    for name in grads:  # the recomputation runs the same bf16 products
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-3, atol=1e-5, msg=name)


def saved_bytes(model, ids, targets) -> int:
    """Bytes of the tensors autograd keeps for backward that are not parameters."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(ids, targets)
    return sum(kept.values())


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_checkpointing_keeps_far_fewer_activations(lora):
    model, ids, targets = model_and_batch(lora, n_layers=6)
    plain = saved_bytes(model, ids, targets)
    model.checkpoint_activations = True
    kept = saved_bytes(model, ids, targets)
    # Each block keeps its input (B, T, d) instead of a dozen tensors as large or larger.
    assert kept < plain / 3, (kept, plain)


def test_a_forward_without_gradients_is_unchanged():
    model, ids, _ = model_and_batch(lora=False)
    model.checkpoint_activations = True
    with torch.no_grad():
        expected = model(ids)
    model.checkpoint_activations = False
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, rtol=0, atol=0)
