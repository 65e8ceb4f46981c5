"""Bounded generation and honest exit codes (issue 13, item 8): ``generate --n`` runs
in batches of bounded memory and streams them out; piped chat exits non-zero when
messages could not be answered."""

from __future__ import annotations

import io
import itertools

import pytest
import torch

from scratchlm import textgen
from scratchlm.chat_format import chat_tokenizer
from scratchlm.checkpoint import save_checkpoint
from scratchlm.cli import main
from scratchlm.config import preset
from scratchlm.model import TransformerLM
from scratchlm.textgen import generate, generate_samples
from scratchlm.tokenizer import CharTokenizer

EOT = "<|endoftext|>"
LETTERS = "abcdefghijklmnopqrstuvwxyz!?. "


# Tiny models on shared cores: one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(tok) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(preset("tiny", vocab_size=tok.vocab_size, context_length=32)).eval()


@pytest.fixture(scope="module")
def base():
    tok = CharTokenizer(LETTERS, [EOT])
    return _tiny(tok), tok


@pytest.fixture
def batch_sizes(monkeypatch):
    """The number of rows of every batch the engine is given."""
    seen: list[int] = []
    engine = textgen.generate_ids

    def recording(model, prompts, *args, **kwargs):
        seen.append(len(prompts))
        return engine(model, prompts, *args, **kwargs)

    monkeypatch.setattr(textgen, "generate_ids", recording)
    return seen


def test_samples_come_in_bounded_batches_from_one_generator(base, batch_sizes, monkeypatch):
    model, tok = base
    monkeypatch.setattr(textgen, "MAX_BATCH_ROWS", 3)
    settings = dict(temperature=1.0, max_new_tokens=8, seed=1)
    texts = list(generate_samples(model, tok, "the", 7, **settings))
    assert batch_sizes == [3, 3, 1] and len(texts) == 7
    assert len(set(texts)) == 7  # one generator: later batches do not repeat the first
    batch_sizes.clear()
    assert texts[:3] == generate(model, tok, ["the"] * 3, **settings)


def test_a_huge_n_never_builds_a_huge_batch(base, batch_sizes):
    model, tok = base
    first = list(itertools.islice(generate_samples(model, tok, "a", 100_000, max_new_tokens=2), 5))
    assert len(first) == 5 and batch_sizes == [textgen.MAX_BATCH_ROWS]


def test_batch_rows_follow_the_kv_cache_budget(base, monkeypatch):
    model, _ = base
    c = model.config
    per_row = 2 * c.depth * c.kv_heads * c.context_length * c.head_dim * 4
    monkeypatch.setattr(textgen, "BATCH_CACHE_BYTES", 5 * per_row + 1)
    assert textgen.batch_rows(model) == 5
    monkeypatch.setattr(textgen, "BATCH_CACHE_BYTES", 1)
    assert textgen.batch_rows(model) == 1


def test_generate_n_prints_every_batch(base, tmp_path, batch_sizes, monkeypatch, capsys):
    model, tok = base
    path = save_checkpoint(model, None, 0, tmp_path / "ckpt", tokenizer=tok)
    monkeypatch.setattr(textgen, "MAX_BATCH_ROWS", 2)
    argv = ["generate", str(path), "--prompt", "the", "--n", "5", "--seed", "3"]
    assert main([*argv, "--max-new-tokens", "6", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0::2] == [f"--- {i} ---" for i in range(1, 6)]
    assert batch_sizes == [2, 2, 1]


@pytest.fixture
def chat_checkpoint(tmp_path):
    tok = chat_tokenizer(CharTokenizer(LETTERS, [EOT]))
    return save_checkpoint(_tiny(tok), None, 0, tmp_path / "chat", tokenizer=tok)


@pytest.mark.parametrize(
    ("lines", "code", "failed"),
    [
        ("hello\nok\n", 0, None),
        ("HELLO\nWORLD\n", 2, "2 of 2 message(s) could not be answered"),
        ("hello\nWORLD\n", 2, "1 of 2 message(s) could not be answered"),
    ],
)
def test_piped_chat_exits_non_zero_when_messages_fail(
    chat_checkpoint, monkeypatch, capsys, lines, code, failed
):
    """Upper-case letters are not in the tokenizer: those messages cannot be answered."""
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    argv = ["chat", str(chat_checkpoint), "--max-new-tokens", "4", "--device", "cpu"]
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out.count("\n") == 2  # still one output line per message
    if failed is None:
        assert err == ""
    else:
        assert err.strip().splitlines()[-1] == f"scratchlm: error: {failed} " + (
            "(errors above; each got an empty output line)"
        )
