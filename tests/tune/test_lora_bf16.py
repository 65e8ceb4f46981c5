"""LoRA on a bf16 base (model/lora_bf16.py): every frozen matrix stored in bfloat16, the
same products as the float base under bf16 autocast without keeping bf16 copies of the
weights for backward, merging into float32, checkpoints, and sft --lora base=bf16 with an
exact resume."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.checkpoint import load_model, resolve_checkpoint, save_checkpoint
from scratchlm.cli import main
from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError
from scratchlm.model import TransformerLM
from scratchlm.model.layers import Embedding, Linear
from scratchlm.model.lora_bf16 import FrozenBf16Embedding, FrozenBf16Linear
from scratchlm.tune.lora import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    lora_parameters,
    merge_adapters,
    merge_lora,
    strip_lora,
)

BASE = dict(vocab_size=61, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
TARGETS = ("q_proj", "v_proj", "mlp.down_proj")


def tiny(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**{**BASE, **overrides}))


def adapted(base: str, **overrides) -> TransformerLM:
    """A tiny model with adapters on ``TARGETS`` over a ``base`` ("float" or "bf16") base,
    the adapters given trained-looking values (the same for either base)."""
    model = tiny(**overrides)
    apply_lora(model, LoraConfig(r=4, alpha=8, base=base, targets=TARGETS))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def round_to_bf16(model: TransformerLM, modules: tuple[type, ...]) -> None:
    """Round the weights of ``model``'s ``modules`` (Linear, Embedding, LoraLinear: its
    base weight) to bf16 values, kept in float32."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, modules):
                m.weight.copy_(m.weight.bfloat16().float())


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, BASE["vocab_size"], (3, 10), generator=g)
    targets = torch.randint(0, BASE["vocab_size"], (3, 10), generator=g)
    return ids, targets


def loss_and_grads(model: TransformerLM, autocast: bool) -> tuple[torch.Tensor, list]:
    ids, targets = batch()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model.loss(ids, targets)
    loss.backward()
    return loss.detach(), [p.grad for p in lora_parameters(model)]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_every_frozen_matrix_is_stored_in_bf16_under_its_usual_name(tied):
    float_base = adapted("float", tie_embeddings=tied)
    model = adapted("bf16", tie_embeddings=tied)
    state, names = model.state_dict(), float_base.state_dict()
    assert list(state) == list(names)  # checkpoints and PEFT files name the same tensors
    for name, t in state.items():
        if "lora_" in name:
            assert t.dtype == torch.float32, name  # trained: float32
        elif t.dim() >= 2:
            assert t.dtype == torch.bfloat16, name  # every matrix, embedding and head too
        else:
            assert t.dtype == torch.float32, name  # norm gains keep theirs
    assert isinstance(model.embed_tokens, FrozenBf16Embedding)
    assert isinstance(model.lm_head, FrozenBf16Linear)
    assert all(m.bf16_base for m in model.modules() if isinstance(m, LoraLinear))
    assert (model.lm_head.weight is model.embed_tokens.weight) == tied
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names if "lora_" in n}


def test_under_bf16_autocast_it_computes_what_the_float_base_computes():
    """Autocast rounds the float base's Linear weights to bf16 for every product anyway:
    only the embedding's rounding is new, so the float base with bf16-rounded embedding
    rows computes the same loss and adapter gradients, exactly."""
    reference = adapted("float")
    round_to_bf16(reference, (Embedding,))
    model = adapted("bf16")
    loss, grads = loss_and_grads(model, autocast=True)
    want_loss, want_grads = loss_and_grads(reference, autocast=True)
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=0)
    for g, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, want, rtol=0, atol=0)
    ids, _ = batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(ids), reference(ids), rtol=0, atol=0)


def test_without_autocast_it_is_the_float_model_with_bf16_rounded_weights():
    reference = adapted("float")
    round_to_bf16(reference, (Embedding, Linear, LoraLinear))
    model = adapted("bf16")
    loss, grads = loss_and_grads(model, autocast=False)
    want_loss, want_grads = loss_and_grads(reference, autocast=False)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=0)
    for g, want in zip(grads, want_grads, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, want, rtol=0, atol=0)


def saved_for_backward(model: TransformerLM) -> dict[int, torch.Tensor]:
    """The tensors autograd keeps between forward and backward under bf16 autocast that
    are not the model's own parameters, by storage."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, torch.Tensor] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t
        return t

    ids, targets = batch()
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
        model.loss(ids, targets)
    return kept


def test_autograd_keeps_no_bf16_copy_of_a_frozen_weight():
    """The float base: autocast makes a bf16 copy of each frozen weight per product, and
    autograd keeps it wherever the product's input needs a gradient (to send back to
    earlier adapters: every product but layer 0's q, k, v, whose input comes from the
    frozen embedding, and the output layer's, whose loss keeps no weight). The bf16
    base uses its weights as they are: it keeps exactly those copies' bytes less."""
    float_base, model = adapted("float"), adapted("bf16")
    kept_float, kept = saved_for_backward(float_base), saved_for_backward(model)
    first = [float_base.layers[0].self_attn.q_proj, float_base.layers[0].self_attn.k_proj,
             float_base.layers[0].self_attn.v_proj]  # fmt: skip
    weights = [
        m.weight
        for m in float_base.modules()
        if isinstance(m, Linear | LoraLinear) and m is not float_base.lm_head and m not in first
    ]
    shapes = {tuple(sorted(w.shape)) for w in weights}  # saved transposed or not

    def weight_copies(kept):
        return [t for t in kept.values() if t.dim() == 2 and tuple(sorted(t.shape)) in shapes]

    def nbytes(tensors):
        return sum(t.untyped_storage().nbytes() for t in tensors)

    copies = weight_copies(kept_float)
    assert len(copies) == len(weights) and all(t.dtype == torch.bfloat16 for t in copies)
    assert nbytes(copies) == sum(w.numel() * 2 for w in weights)
    assert weight_copies(kept) == []
    assert nbytes(kept_float.values()) - nbytes(kept.values()) == nbytes(copies)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_merging_gives_a_float32_model_with_the_same_logits(tied):
    model = adapted("bf16", tie_embeddings=tied).eval()
    ids, _ = batch()
    with torch.no_grad():
        wanted = model(ids)
    with pytest.raises(ConfigError, match="bf16 base cannot be merged in place"):
        merge_adapters(model)
    merge_lora(model)
    assert not any(
        isinstance(m, LoraLinear | FrozenBf16Linear | FrozenBf16Embedding) for m in model.modules()
    )
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert (model.lm_head.weight is model.embed_tokens.weight) == tied
    with torch.no_grad():
        torch.testing.assert_close(model(ids), wanted, rtol=0, atol=1e-6)


def test_stripping_gives_the_bf16_rounded_base_in_float32():
    model = adapted("bf16")
    strip_lora(model)
    reference = tiny()
    round_to_bf16(reference, (Embedding, Linear))
    for (name, p), want in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert p.dtype == torch.float32, name
        torch.testing.assert_close(p, want, rtol=0, atol=0, msg=name)


def test_a_bf16_lora_checkpoint_round_trips(tmp_path):
    model = adapted("bf16").eval()
    save_checkpoint(model, None, 3, tmp_path / "ckpt")
    stored = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert stored["layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16  # half the file
    assert stored["layers.0.self_attn.q_proj.lora_A"].dtype == torch.float32
    ids, _ = batch()
    wrapped, _ = load_model(tmp_path / "ckpt", merge_adapters=False)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(ids), model(ids), rtol=0, atol=0)
    merged, _ = load_model(tmp_path / "ckpt")
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), model(ids), rtol=0, atol=1e-6)


ARGS = ["--data", "builtin:chat", "--batch-size", "2", "--eval-windows", "2",
        "--sample-tokens", "0", "--device", "cpu", "--quiet", "--lr", "1e-2",
        "--precision", "bf16", "--warmup-steps", "1", "--log-every", "1",
        "--lora", "r=4,alpha=8,dropout=0.1,base=bf16,targets=all-linear"]  # fmt: skip


def test_sft_on_a_bf16_base_trains_the_adapters_and_resumes_exactly(pretrained, tmp_path):
    run = tmp_path / "run"
    command = ["sft", "--from", str(pretrained), "--out", str(run), *ARGS]
    assert main([*command, "--steps", "6", "--checkpoint-every", "3"]) == 0
    final = resolve_checkpoint(run)
    assert final.name.endswith("6")
    saved = load_file(final / "model.safetensors")
    start = load_file(resolve_checkpoint(pretrained) / "model.safetensors")
    for key, tensor in start.items():  # the frozen base: the start's weights in bf16
        old = tensor.shape[0]  # (the chat tokens added rows to the embedding)
        want = tensor.bfloat16() if tensor.dim() >= 2 else tensor
        torch.testing.assert_close(saved[key][:old], want, rtol=0, atol=0, msg=key)
    assert all(saved[k].abs().sum() > 0 for k in saved if k.endswith("lora_B"))
    # Resume from the step-3 checkpoint: steps 4-6 again give the same weights, bit for bit.
    shutil.copy(final / "model.safetensors", tmp_path / "uninterrupted.safetensors")
    for later in [p for p in run.iterdir() if p.is_dir() and p.name.startswith("step_")]:
        if int(later.name.rpartition("_")[2]) > 3:
            shutil.rmtree(later)
    shutil.rmtree(run / "adapter", ignore_errors=True)
    assert main([*command, "--steps", "6", "--checkpoint-every", "3"]) == 0  # resumes
    again = load_file(resolve_checkpoint(run) / "model.safetensors")
    for key, tensor in load_file(tmp_path / "uninterrupted.safetensors").items():
        torch.testing.assert_close(again[key], tensor, rtol=0, atol=0, msg=key)
    config = json.loads((resolve_checkpoint(run) / "config.json").read_text())
    assert config["lora"]["base"] == "bf16"
