"""grow_vocab: old tokens behave exactly as before, new rows start at the mean."""

from __future__ import annotations

import pytest
import torch

from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError
from scratchlm.model import TransformerLM
from scratchlm.model.resize import grow_vocab

OLD, NEW = 50, 54


def tiny(tie: bool, **overrides) -> TransformerLM:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=OLD,
        context_length=16,
        d_model=32,
        n_layers=2,
        n_heads=4,
        tie_embeddings=tie,
        **overrides,
    )
    return TransformerLM(config).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_old_logits_unchanged_new_rows_are_the_mean(tie):
    model = tiny(tie)
    ids = torch.randint(0, OLD, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids)
    embed_old = model.embed_tokens.weight.detach().clone()
    head_old = model.lm_head.weight.detach().clone()
    old_config = model.config

    assert grow_vocab(model, NEW) is model
    assert model.config.vocab_size == NEW
    assert old_config.vocab_size == OLD  # a config shared with other models is left alone
    assert model.embed_tokens.weight.shape == (NEW, 32)
    assert model.lm_head.weight.shape == (NEW, 32)
    assert torch.equal(model.embed_tokens.weight[:OLD], embed_old)
    assert torch.equal(model.lm_head.weight[:OLD], head_old)
    torch.testing.assert_close(
        model.embed_tokens.weight[OLD:], embed_old.mean(0).expand(NEW - OLD, -1)
    )
    torch.testing.assert_close(model.lm_head.weight[OLD:], head_old.mean(0).expand(NEW - OLD, -1))

    with torch.no_grad():
        after = model(ids)
    assert after.shape == (2, 9, NEW)
    torch.testing.assert_close(after[..., :OLD], before, rtol=1e-6, atol=1e-6)
    # A new token's logit is the mean of the old logits (its output row is their mean).
    torch.testing.assert_close(
        after[..., OLD:], before.mean(-1, keepdim=True).expand(-1, -1, NEW - OLD)
    )


def test_tied_stays_tied_and_trains_as_one_matrix():
    model = tiny(True)
    grow_vocab(model, NEW)
    assert model.lm_head.weight is model.embed_tokens.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # one parameter, as before the resize
    model.train()
    model(torch.tensor([[NEW - 1, 3, NEW - 2]])).sum().backward()
    assert model.embed_tokens.weight.grad is not None


def test_untied_weights_grow_as_plain_parameters():
    model = tiny(False)
    grow_vocab(model, NEW)
    head = model.lm_head.weight
    assert head.is_contiguous() and head.shape == (NEW, model.config.d_model)
    assert model.embed_tokens.weight.is_contiguous()
    assert model.lm_head.out_features == NEW and model.embed_tokens.num_embeddings == NEW
    assert head.requires_grad and model.embed_tokens.weight.requires_grad
    assert {id(p) for p in model.parameters()} >= {id(head), id(model.embed_tokens.weight)}


def test_forward_and_loss_work_with_new_ids():
    model = tiny(False)
    with pytest.raises(IndexError):  # the table has no row for it yet
        model(torch.tensor([[NEW - 1]]))
    grow_vocab(model, NEW)
    ids = torch.tensor([[1, NEW - 1, 2, NEW - 3]])
    logits = model(ids)
    assert logits.shape == (1, 4, NEW) and torch.isfinite(logits).all()
    loss = model.loss(ids, torch.tensor([[NEW - 1, 2, NEW - 3, 0]]))
    assert torch.isfinite(loss)


def test_bf16_model_keeps_dtype():
    model = tiny(False).to(torch.bfloat16)
    grow_vocab(model, NEW)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.bfloat16


def test_same_size_is_a_no_op_and_shrinking_is_refused():
    model = tiny(False)
    weight = model.embed_tokens.weight
    assert grow_vocab(model, OLD) is model
    assert model.embed_tokens.weight is weight
    with pytest.raises(ConfigError, match="from 50 to 49"):
        grow_vocab(model, OLD - 1)
    assert model.config.vocab_size == OLD
