"""Shared set-up of the data tests: one small tokenizer and small corpora in tmp_path."""

from __future__ import annotations

import pytest

from scratchlm.tokenizer import BPETokenizer, save_tokenizer, train_bpe

EOT = "<|endoftext|>"

TRAINING_TEXT = (
    "The sun warms the ground, and warm air rises into the sky. Clouds form when the air "
    "cools and water vapour turns into tiny drops. Rain falls when the drops grow heavy.\n"
    "Plants drink water through their roots and make sugar from light. Animals eat plants, "
    "and other animals eat them. 123 456 7890! Café, naïve, 日本語, emoji 😀.\n"
)


@pytest.fixture(scope="package")
def tok(tmp_path_factory):
    """A byte-level BPE (vocab 300) with the end-of-text special token, trained once."""
    path = tmp_path_factory.mktemp("tok") / "train.txt"
    path.write_text(TRAINING_TEXT * 8, encoding="utf-8")
    vocab, merges = train_bpe(path, 300, [EOT], num_workers=1)
    return BPETokenizer(vocab, merges, [EOT])


@pytest.fixture(scope="package")
def tok_dir(tok, tmp_path_factory):
    """The same tokenizer saved as a folder."""
    folder = tmp_path_factory.mktemp("tokdir")
    save_tokenizer(tok, folder)
    return folder
