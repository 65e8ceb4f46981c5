"""Split patterns read from files are untrusted: a catastrophically backtracking one
fails within a bounded time, in one line; the known patterns run as before (issue 13,
item 5)."""

from __future__ import annotations

import json
import time

import pytest

import scratchlm.tokenizer.pretokenize as pretokenize
from scratchlm.cli import main
from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import GPT2_PATTERN, GPT4_PATTERN, BPETokenizer, load_tokenizer, train_bpe
from scratchlm.tokenizer.files import save_tokenizer
from scratchlm.tokenizer.hf import to_hf_tokenizer_json

HOSTILE = r"(?:a|aa)+$|."
SLOW_TEXT = "a" * 43 + "b"  # 44 characters: minutes of backtracking without a limit
BENIGN = r"\w+|\s+|[^\w\s]+"


def _byte_tokenizer(pattern: str, **kwargs) -> BPETokenizer:
    return BPETokenizer({i: bytes([i]) for i in range(256)}, [], pattern=pattern, **kwargs)


def test_a_hostile_pattern_from_a_file_fails_in_bounded_time(tmp_path):
    save_tokenizer(_byte_tokenizer(HOSTILE), tmp_path / "tokenizer.json")
    tok = load_tokenizer(tmp_path)  # loading runs no pattern: files of today load as before
    start = time.perf_counter()
    with pytest.raises(TokenizerError, match="backtracks") as caught:
        tok.encode(SLOW_TEXT)
    assert time.perf_counter() - start < pretokenize.match_budget(len(SLOW_TEXT)) + 10
    assert "\n" not in str(caught.value) and "(?:a|aa)+$|." in str(caught.value)


def test_a_hostile_pattern_fails_in_one_line_through_the_cli(tmp_path, capsys):
    save_tokenizer(_byte_tokenizer(HOSTILE), tmp_path / "tokenizer.json")
    assert main(["tokenizer", "encode", str(tmp_path), SLOW_TEXT]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("scratchlm: error: split pattern"), err


def test_a_hostile_pattern_in_a_hugging_face_file_fails_too(tmp_path):
    data = to_hf_tokenizer_json(_byte_tokenizer(BENIGN), verify=False)
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": HOSTILE}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="backtracks"):
        load_tokenizer(tmp_path).encode(SLOW_TEXT)


def test_training_with_a_hostile_pattern_fails_in_bounded_time(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SLOW_TEXT + "\n")
    with pytest.raises(TokenizerError, match="backtracks"):
        train_bpe(corpus, 300, pattern=HOSTILE, num_workers=1)


def test_the_budget_applies_to_custom_patterns_only(monkeypatch):
    """With no time at all, a custom pattern fails unless trusted; the known patterns,
    by name or text, never consult the budget."""
    monkeypatch.setattr(pretokenize, "MATCH_SECONDS", 0.0)
    monkeypatch.setattr(pretokenize, "MATCH_SECONDS_PER_CHAR", 0.0)
    text = "Hello world, it's 2026!\n" * 200
    with pytest.raises(TokenizerError, match="backtracks"):
        _byte_tokenizer(BENIGN).encode(text)
    trusted = _byte_tokenizer(BENIGN, trust_pattern=True).encode(text)
    assert bytes(trusted).decode() == text
    for pattern in ("gpt2", "gpt4", GPT2_PATTERN, GPT4_PATTERN):
        assert pretokenize.is_known_pattern(pattern)
        assert _byte_tokenizer(pattern, use_tiktoken=False).encode(text) == list(text.encode())
    assert not pretokenize.is_known_pattern(BENIGN)


def test_a_custom_pattern_within_its_budget_splits_as_without_one():
    split = pretokenize.compile_pattern(BENIGN)
    text = "Hello world, it's 2026!\n" * 500
    assert pretokenize.split_text(split, text) == pretokenize.split_text(split, text, trusted=True)
    assert "".join(pretokenize.split_text(split, text)) == text


def test_an_invalid_pattern_in_a_file_is_one_line(tmp_path):
    save_tokenizer(_byte_tokenizer(BENIGN), tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["pattern"] = "(unclosed"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="not a valid regular expression") as caught:
        load_tokenizer(tmp_path)
    assert "\n" not in str(caught.value)
