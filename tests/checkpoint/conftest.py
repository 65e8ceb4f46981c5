"""Tiny models, optimizers and tokenizers the checkpoint tests save and load."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from scratchlm.config import preset
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. 0123456789!\n"
EOT = "<|endoftext|>"


@pytest.fixture
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer.train([TEXT], [EOT])


@pytest.fixture
def make_model(char_tokenizer) -> Callable[..., TransformerLM]:
    """``make_model(seed=0, **config overrides)``: a tiny TransformerLM whose vocabulary
    fits ``char_tokenizer``."""

    def make(seed: int = 0, **overrides) -> TransformerLM:
        torch.manual_seed(seed)
        config = preset(
            "tiny", vocab_size=char_tokenizer.vocab_size, n_layers=1, context_length=32
        ).replace(**overrides)
        return TransformerLM(config)

    return make


def _batch(vocab_size: int, seed: int, batch_size: int = 2, length: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, length + 1), generator=g)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    ids = _batch(model.config.vocab_size, seed)
    optimizer.zero_grad(set_to_none=True)
    model.loss(ids[:, :-1], ids[:, 1:]).backward()
    optimizer.step()


@pytest.fixture
def batch() -> Callable[..., torch.Tensor]:
    """``batch(vocab_size, seed) -> ids (2, 9)``, the same ids for the same seed."""
    return _batch


@pytest.fixture
def train_step() -> Callable[[nn.Module, torch.optim.Optimizer, int], None]:
    """``train_step(model, optimizer, seed)``: one update of next-token loss on the
    batch drawn from ``seed``."""
    return _train_step


@pytest.fixture
def trained(make_model):
    """``trained(steps=2, **overrides) -> (model, AdamW)`` after ``steps`` updates, so
    the optimizer holds moments and a step count."""

    def make(steps: int = 2, **overrides):
        model = make_model(**overrides)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        for s in range(steps):
            _train_step(model, optimizer, seed=100 + s)
        return model, optimizer

    return make
