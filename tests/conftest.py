"""Shared fixtures: small corpora written to tmp_path and independent reference helpers.

The reference helpers here (pre-tokenizing a text, encoding with a merge list) are written
separately from the library on purpose, so tests compare the library against a second,
obviously-correct computation instead of against its own output.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import regex
import torch
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps an example database and caches under ./.hypothesis, and its
# per-example deadline is a wall-clock assertion: neither belongs in a hermetic suite.
settings.register_profile(
    "scratchlm",
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("scratchlm")
_hypothesis_home: list[str] = []


def pytest_configure(config):
    """Send Hypothesis's caches to a temporary folder, removed when the session ends."""
    _hypothesis_home.append(tempfile.mkdtemp(prefix="scratchlm-hypothesis-"))
    set_hypothesis_home_dir(_hypothesis_home[-1])


def pytest_unconfigure(config):
    for folder in _hypothesis_home:
        shutil.rmtree(folder, ignore_errors=True)


EOT = "<|endoftext|>"
EOT2 = "<|endoftext|><|endoftext|>"

# Mixed text: English, punctuation, digits, tabs and double spaces, \r\n, Japanese, emoji
# (with a skin tone and a ZWJ family), combining marks, Greek, control characters, special
# tokens (one a prefix of another), a run of one letter and a long run of spaces.
MIXED_TEXT = (
    "The quick brown fox jumps over the lazy dog. It's 2024, and 1234567 numbers!\n"
    "Hello,   world!\tTabs\tand  double  spaces.\r\nWindows line\r\n"
    "日本語のテキストです。東京は大きい都市です。\n"
    "Emoji: 😀👍🏽 👨\u200d👩\u200d👧 and café, naïve, e\u0301 (combining), Ωμέγα.\n"
    "Control: \x01\x07\x1b[0m done\n"
    f"{EOT}Second document starts here.{EOT}{EOT}Third one, isn't it?\n"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa " + " " * 60 + "x\n"
    "We'll see: they're here, you've been, I'd go, I'm in, he'd've. 3.14159 + 2 = 5.14159\n"
)

# The worked example of tests/tokenizer/test_train_bpe.py.
WORKED_TEXT = (
    "low low low low low lower lower newest newest newest newest newest newest widest widest widest"
)


@pytest.fixture
def mixed_text() -> str:
    return MIXED_TEXT


@pytest.fixture
def mixed_corpus(tmp_path):
    """A 14 KB file of MIXED_TEXT repeated with small variations (no NUL bytes)."""
    path = tmp_path / "mixed.txt"
    parts = [MIXED_TEXT.replace("2024", str(2000 + i)) for i in range(24)]
    path.write_text("".join(parts), encoding="utf-8", newline="")
    return path


@pytest.fixture
def worked_corpus(tmp_path):
    path = tmp_path / "worked.txt"
    path.write_text(WORKED_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_bpe(tmp_path_factory):
    """``trained_bpe(pattern="gpt2") -> (vocab, merges)``: a byte-level BPE trained once
    per session on MIXED_TEXT plus the built-in science corpus (about 85 KB), 800 tokens,
    special tokens EOT and EOT2."""
    from scratchlm.builtin import builtin_corpus
    from scratchlm.tokenizer import train_bpe

    folder = tmp_path_factory.mktemp("trained_bpe")
    mixed = folder / "mixed.txt"
    mixed.write_bytes(MIXED_TEXT.encode() * 4)
    cache: dict[str, tuple] = {}

    def get(pattern: str = "gpt2"):
        if pattern not in cache:
            cache[pattern] = train_bpe(
                [mixed, builtin_corpus()], 800, [EOT, EOT2], pattern=pattern, num_workers=1
            )
        return cache[pattern]

    return get


@pytest.fixture(autouse=True)
def _restore_scratchlm_logger():
    """``cli.main`` configures the "scratchlm" logger (its own handler, no propagation);
    put it back so that caplog in later tests still sees the library's records."""
    logger = logging.getLogger("scratchlm")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def reference_pieces(
    text: str, special_tokens: Sequence[str], pattern: str
) -> list[tuple[str, bool]]:
    """``(piece, is_special)`` for ``text``: cut out special tokens (longest first), then
    split the text between them with ``pattern``."""
    alternatives = sorted(set(special_tokens), key=len, reverse=True)
    parts = (
        regex.split("(" + "|".join(regex.escape(t) for t in alternatives) + ")", text)
        if alternatives
        else [text]
    )
    split = regex.compile(pattern)
    out: list[tuple[str, bool]] = []
    for k, part in enumerate(parts):
        if k % 2 == 1:  # a captured special token
            out.append((part, True))
        else:
            out.extend((p, False) for p in split.findall(part))
    return out


def reference_pretokens(text: str, special_tokens: Sequence[str], pattern: str) -> list[str]:
    """The pre-tokens of ``text`` (special tokens are boundaries and not returned)."""
    return [
        p for p, is_special in reference_pieces(text, special_tokens, pattern) if not is_special
    ]


def reference_bpe_word(word: bytes, merges: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """Encode one pre-token the textbook way: repeatedly merge (all occurrences of) the
    adjacent pair that was learned earliest."""
    rank = {pair: i for i, pair in reversed(list(enumerate(merges)))}
    parts = [bytes([b]) for b in word]
    while len(parts) > 1:
        pairs = [p for p in itertools.pairwise(parts) if p in rank]
        if not pairs:
            break
        best = min(pairs, key=rank.__getitem__)
        out, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                out.append(parts[i] + parts[i + 1])
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


@pytest.fixture
def reference_encode() -> Callable[..., list[int]]:
    """``reference_encode(text, vocab, merges, special_tokens, pattern) -> ids``, written
    independently of BPETokenizer (specials must already be in ``vocab``)."""

    def encode(text, vocab, merges, special_tokens, pattern):
        id_of = {t: i for i, t in sorted(vocab.items(), reverse=True)}
        ids: list[int] = []
        for piece, is_special in reference_pieces(text, special_tokens, pattern):
            if is_special:
                ids.append(id_of[piece.encode("utf-8")])
            else:
                ids.extend(id_of[t] for t in reference_bpe_word(piece.encode("utf-8"), merges))
        return ids

    return encode


@pytest.fixture
def reference_pieces_fn():
    return reference_pieces


@pytest.fixture
def reference_counts() -> Callable[[str, Sequence[str], str], Counter]:
    def counts(text, special_tokens, pattern):
        return Counter(reference_pretokens(text, special_tokens, pattern))

    return counts


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models run one op at a time far faster than
    split over two busy shared cores. Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
