"""Shared set-up of the tuning tests: one thread, a tiny pretrained model (LoRA), and a
tiny chat model for the preference-tuning tests: a BPE tokenizer of 300 tokens trained on
the built-in corpus, with the chat tokens, and a random tiny model saved as a checkpoint
(built once per session). Also puts tests/train on the path: its helpers
(``train_helpers``) run and watch training processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))

from dpo_helpers import CONTEXT
from dpo_helpers import TINY as CHAT_TINY


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """Tiny shapes gain nothing from intra-op threads, and on a busy machine two threads
    wait on each other (these tests ran 10x slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def threads():
    """Set torch's thread count for one test (call it with the count); restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# A model small enough to train a few dozen steps in about a second.
TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "d_ff": 64}


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A data directory (train.bin, val.bin, meta.json, tokenizer.json): a BPE tokenizer
    of 300 tokens trained on the built-in corpus, and its token files."""
    from scratchlm.builtin import END_OF_TEXT, builtin_corpus
    from scratchlm.data import prepare
    from scratchlm.tokenizer import BPETokenizer, train_bpe
    from scratchlm.tokenizer.files import write_tokenizer_dir

    root = tmp_path_factory.mktemp("prepared")
    vocab, merges = train_bpe(builtin_corpus(), 300, [END_OF_TEXT])
    tok = BPETokenizer(vocab, merges, [END_OF_TEXT])
    write_tokenizer_dir(tok, root / "tok")
    prepare(
        [str(builtin_corpus())], tok, root / "data", val_fraction=0.1, workers=1, progress=False
    )
    return root / "data"


@pytest.fixture(scope="session")
def pretrained(prepared, tmp_path_factory):
    """The checkpoint of a tiny model pretrained for a few steps on ``prepared``."""
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.trainer import Trainer

    out = tmp_path_factory.mktemp("base") / "run"
    config = TrainConfig(data=str(prepared), out=str(out), preset="tiny", model=dict(TINY),
                         context_length=64, steps=5, batch_size=4, warmup_steps=1,
                         eval_every=0, eval_windows=2, sample_tokens=0, progress=False,
                         device="cpu", optimizer="adamw", precision="fp32",
                         grad_accum=1)  # fmt: skip
    return Trainer(config).run().checkpoint


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
        preset("tiny", vocab_size=chat_tok.vocab_size, context_length=CONTEXT, **CHAT_TINY)
    )
    path = tmp_path_factory.mktemp("chat") / "step_00000001"
    save_checkpoint(model, None, 1, path, tokenizer=chat_tok)
    return path
