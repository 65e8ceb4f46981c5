"""A tiny random model with a real BPE tokenizer, shared by the evaluation tests."""

from __future__ import annotations

import pytest
import torch

from scratchlm.config import ModelConfig
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import BPETokenizer, train_bpe

EOT = "<|endoftext|>"
VOCAB = 400  # 256 bytes + merges + <|endoftext|>
CONTEXT = 48  # short, so long requests and texts cross the window
TEXT = (
    "Once upon a time there was a little robot who liked to count the stars. "
    "Question: What did the robot count? Answer: the stars, every night.\n"
    "Café, naïve, 日本語のテキスト, emoji 🤖 and tabs\tand newlines\n"
) * 30


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> BPETokenizer:
    corpus = tmp_path_factory.mktemp("corpus") / "text.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    vocab, merges = train_bpe(corpus, VOCAB, [EOT], num_workers=1)
    return BPETokenizer(vocab, merges, [EOT])


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> TransformerLM:
    """Random weights (norms too), large enough that its choices differ."""
    config = ModelConfig(
        vocab_size=tiny_tokenizer.vocab_size,  # every id decodes
        context_length=CONTEXT,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=96,
    )
    model = TransformerLM(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm = p.dim() == 1 and "norm" in name
            p.copy_(1.0 + 0.1 * noise if is_norm else 0.3 * noise)
    return model.eval()
