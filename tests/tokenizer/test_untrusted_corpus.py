"""Tokenizer training on pathological input stays bounded, and bad input is refused in
one line (issue 13, item 8): a huge line without whitespace, a binary file, --workers 0."""

from __future__ import annotations

import random
import string
from collections import Counter

import pytest

from scratchlm.cli import main
from scratchlm.errors import ConfigError, DataError
from scratchlm.tokenizer import GPT2_PATTERN, train_bpe
from scratchlm.tokenizer.corpus import (
    MAX_PIECES,
    MAX_PRETOKEN_CHARS,
    corpus_files,
    count_pretokens,
)

LINE = "abcdefghij" * 300_000  # 3 MB, one pre-token to the GPT-2 pattern


@pytest.fixture
def long_line(tmp_path):
    path = tmp_path / "line.txt"
    path.write_text(LINE + "\n")
    return path


def test_a_long_pretoken_is_counted_in_pieces_of_at_most_the_cap(long_line):
    counted = count_pretokens(
        [long_line], [], GPT2_PATTERN, num_workers=1, chunk_size=1 << 20, max_pretoken_chars=256
    )
    assert max(len(word) for word in counted.counts) == 256
    # The pre-token's first MAX_PIECES pieces of 256 characters, and the newline.
    pieces = [LINE[i : i + 256] for i in range(0, 256 * MAX_PIECES, 256)]
    assert counted.counts == Counter([*pieces, "\n"])


def test_random_text_without_spaces_adds_a_bounded_number_of_characters(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "blob.txt"
    path.write_text("".join(rng.choices(string.ascii_letters, k=2_000_000)))
    counted = count_pretokens([path], [], GPT2_PATTERN, num_workers=1)
    learned = sum(len(w) * c for w, c in counted.counts.items())
    assert learned == MAX_PIECES * MAX_PRETOKEN_CHARS


def test_the_default_cap_holds_and_ordinary_text_is_unaffected(long_line, tmp_path):
    counted = count_pretokens([long_line], [], GPT2_PATTERN, num_workers=1)
    assert max(len(word) for word in counted.counts) == MAX_PRETOKEN_CHARS
    prose = tmp_path / "prose.txt"
    prose.write_text("The quick brown fox, 1234 times.\n    indented\n" * 100)
    capped = count_pretokens([prose], [], GPT2_PATTERN, num_workers=1)
    uncapped = count_pretokens([prose], [], GPT2_PATTERN, num_workers=1, max_pretoken_chars=10**9)
    assert capped.counts == uncapped.counts


def test_training_on_a_long_line_is_bounded_and_deterministic(long_line):
    first = train_bpe(long_line, 280, num_workers=1, max_pretoken_chars=256)
    again = train_bpe(long_line, 280, num_workers=1, max_pretoken_chars=256)
    assert first == again
    vocab, merges = first
    assert len(merges) == 280 - 256 and max(len(t) for t in vocab.values()) <= 256


def test_bad_bounds_are_refused(long_line):
    with pytest.raises(ConfigError, match="max_pretoken_chars"):
        count_pretokens([long_line], [], GPT2_PATTERN, max_pretoken_chars=0)
    for workers in (0, -1):
        with pytest.raises(ConfigError, match=f"workers must be an integer >= 1.*got {workers}"):
            train_bpe(long_line, 300, num_workers=workers)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("scratchlm: error: "), err
    return err


def test_tokenizer_train_refuses_a_binary_file_like_prepare(tmp_path, capsys):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"text\x00\x01\x02" * 100)
    with pytest.raises(DataError, match="looks binary"):
        corpus_files(binary)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(binary), "--vocab-size", "300", "--out", str(out)]) == 2
    assert "looks binary" in _one_error_line(capsys)
    assert not out.exists()


def test_tokenizer_train_refuses_workers_zero(long_line, tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", str(long_line), "--vocab-size", "300", "--out", str(out)]
    assert main([*argv, "--workers", "0"]) == 2
    assert "workers must be an integer >= 1" in _one_error_line(capsys)
    assert not out.exists()
