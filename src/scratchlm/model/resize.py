"""Growing a model's vocabulary, for tokens added after training (the chat tokens, say).

``grow_vocab`` adds rows to the token embedding and the output projection. Old rows are
copied unchanged, so every old token embeds and scores exactly as before (its logit on
the same input is the same number; only the softmax also sees the new logits now). New
rows start as the mean of the old ones: a new token embeds as an "average" token and
its logit starts near the average logit, rather than at a random value that could
dominate the softmax or push hidden states somewhere training never went (Hewitt, 2021,
"Initializing new word embeddings for pretrained language models").
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from scratchlm.errors import ConfigError
from scratchlm.model.transformer import TransformerLM


def grow_vocab(model: TransformerLM, vocab_size: int) -> TransformerLM:
    """Give ``model`` ``vocab_size`` token ids, in place; returns the model.

    The embedding and output rows of the old ids are unchanged; the new rows are the
    mean of the old ones. A tied model keeps one shared matrix. ``model.config`` is
    replaced by a copy with the new ``vocab_size`` (the old config object may be shared
    with other models, so it is not modified). Optimizer state built for the old
    parameters no longer applies: grow first, then build the optimizer (and compile).
    Shrinking would drop trained tokens and raises ConfigError.
    """
    old = model.config.vocab_size
    if not isinstance(vocab_size, int) or vocab_size < old:
        raise ConfigError(
            f"cannot grow the vocabulary from {old} to {vocab_size!r} ids: the new size must "
            "be at least the old one (shrinking would drop trained tokens)"
        )
    if vocab_size == old:
        return model
    with torch.no_grad():
        model.embed_tokens.weight = _grown(model.embed_tokens.weight, vocab_size)
        model.embed_tokens.num_embeddings = vocab_size
        if model.config.tie_embeddings:
            # One matrix serves both ends, so the output rows are the embedding's rows.
            model.lm_head.weight = model.embed_tokens.weight
        else:
            model.lm_head.weight = _grown(model.lm_head.weight, vocab_size)
    model.lm_head.out_features = vocab_size
    model.config = dataclasses.replace(model.config, vocab_size=vocab_size)
    return model


def _grown(old: nn.Parameter, vocab_size: int) -> nn.Parameter:
    """A (vocab_size, d) parameter: ``old``'s (n, d) rows on top, their mean below."""
    new = torch.empty(vocab_size, old.shape[1], dtype=old.dtype, device=old.device)
    n = old.shape[0]
    new[:n] = old
    # The mean in float32: summing thousands of bf16 rows in bf16 loses precision.
    new[n:] = old.float().mean(dim=0).to(new.dtype)
    return nn.Parameter(new, requires_grad=old.requires_grad)
