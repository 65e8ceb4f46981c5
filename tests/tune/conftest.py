"""A tiny chat model for the preference-tuning tests: a BPE tokenizer of 300 tokens
trained on the built-in corpus, with the chat tokens, and a random tiny model saved as a
checkpoint (built once per session). Also puts tests/train on the path: its helpers
(``train_helpers``) run and watch training processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))

from dpo_helpers import CONTEXT, TINY


@pytest.fixture(scope="session")
def chat_tok():
    from scratchlm.builtin import END_OF_TEXT, builtin_corpus
    from scratchlm.chat_format import chat_tokenizer
    from scratchlm.tokenizer import BPETokenizer, train_bpe

    vocab, merges = train_bpe(builtin_corpus(), 300, [END_OF_TEXT], num_workers=1)
    return chat_tokenizer(BPETokenizer(vocab, merges, [END_OF_TEXT]))


@pytest.fixture(scope="session")
def tiny_chat_model(chat_tok, tmp_path_factory) -> Path:
    """A checkpoint of a random tiny model with the chat tokenizer: what dpo starts from."""
    from scratchlm.checkpoint import save_checkpoint
    from scratchlm.config import preset
    from scratchlm.model import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(
        preset("tiny", vocab_size=chat_tok.vocab_size, context_length=CONTEXT, **TINY)
    )
    path = tmp_path_factory.mktemp("chat") / "step_00000001"
    save_checkpoint(model, None, 1, path, tokenizer=chat_tok)
    return path
