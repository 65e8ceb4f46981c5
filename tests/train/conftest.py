"""A tiny prepared data directory for training tests: a BPE tokenizer of 300 tokens
trained on the built-in corpus, and its token files (built once per session)."""

from __future__ import annotations

import pytest
from train_helpers import TINY

from scratchlm.builtin import END_OF_TEXT, builtin_corpus
from scratchlm.tokenizer import BPETokenizer, train_bpe
from scratchlm.tokenizer.files import write_tokenizer_dir


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Path of a data directory holding train.bin, val.bin, meta.json, tokenizer.json."""
    from scratchlm.data import prepare

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
    """The checkpoint of a tiny model pretrained for a few steps on ``prepared`` (the
    starting point of instruction-tuning tests)."""
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.trainer import Trainer

    out = tmp_path_factory.mktemp("base") / "run"
    config = TrainConfig(data=str(prepared), out=str(out), preset="tiny", model=dict(TINY),
                         context_length=64, steps=5, batch_size=4, warmup_steps=1,
                         eval_every=0, eval_windows=2, sample_tokens=0, progress=False,
                         device="cpu", optimizer="adamw", precision="fp32",
                         grad_accum=1)  # fmt: skip
    return Trainer(config).run().checkpoint


@pytest.fixture
def tiny_config(prepared, tmp_path):
    """A TrainConfig for a short CPU run of a tiny model; tests replace fields."""
    from scratchlm.train.config import TrainConfig

    return TrainConfig(
        data=str(prepared),
        out=str(tmp_path / "run"),
        preset="tiny",
        model=dict(TINY),
        context_length=32,
        steps=30,
        batch_size=4,
        lr=3e-3,
        warmup_steps=3,
        eval_every=10,
        eval_windows=8,
        checkpoint_every=10,
        log_every=1,
        sample_tokens=4,
        progress=False,
        device="cpu",
        precision="fp32",  # the numbers tests compare do not depend on the CPU's bf16 unit
        optimizer="adamw",
        grad_accum=1,
        seed=7,
    )
