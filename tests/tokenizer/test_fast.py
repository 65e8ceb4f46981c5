"""The tiktoken fast path: identical ids to the pure-Python encoder where it is used, and a
fallback (with a reason) wherever the two could differ."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchlm.builtin import builtin_corpus
from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import GPT2_PATTERN, GPT4_PATTERN, BPETokenizer, train_bpe
from scratchlm.tokenizer.fast import tiktoken_incompatibility
from scratchlm.tokenizer.train_bpe import build_vocab

EOT = "<|endoftext|>"
EOT2 = "<|endoftext|><|endoftext|>"
SPECIALS = [EOT, EOT2]
PATTERNS = pytest.mark.parametrize(
    ("name", "pattern"), [("gpt2", GPT2_PATTERN), ("gpt4", GPT4_PATTERN)], ids=["gpt2", "gpt4"]
)

# Any valid Unicode, unassigned code points (Cn) included: the fast path must give the
# same ids or step aside for such text (see test_same_ids_with_recently_assigned_letters).
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
PIECES = [" the", "'s", "'LL", "  ", "\n", "\r\n", "\t", "12345", "日本語。", "😀", EOT, EOT2]
mixed_text_st = st.lists(st.one_of(st.sampled_from(PIECES), any_text), max_size=20).map("".join)


@pytest.fixture
def tiktoken():
    return pytest.importorskip("tiktoken")


def both_paths(vocab, merges, specials=SPECIALS, pattern=GPT2_PATTERN):
    slow = BPETokenizer(vocab, merges, specials, pattern=pattern, use_tiktoken=False)
    fast = BPETokenizer(vocab, merges, specials, pattern=pattern)
    return slow, fast


# --------------------------------------------------------------------- parity


@PATTERNS
def test_trained_tokenizer_uses_tiktoken(tiktoken, trained_bpe, name, pattern):
    vocab, merges = trained_bpe(name)
    slow, fast = both_paths(vocab, merges, pattern=pattern)
    assert tiktoken_incompatibility(slow) is None
    assert fast.uses_tiktoken and not slow.uses_tiktoken
    assert BPETokenizer(vocab, merges, SPECIALS, pattern=pattern, use_tiktoken=True).uses_tiktoken


@PATTERNS
def test_same_ids_on_corpora(tiktoken, trained_bpe, mixed_text, name, pattern):
    vocab, merges = trained_bpe(name)
    slow, fast = both_paths(vocab, merges, pattern=pattern)
    science = builtin_corpus().read_bytes().decode("utf-8")
    for text in (mixed_text, science, mixed_text * 3 + science):
        assert fast.encode(text) == slow.encode(text)
        assert fast.encode(text, allow_special=False) == slow.encode(text, allow_special=False)


@pytest.fixture(scope="module")
def trained_paths(trained_bpe):
    """``trained_paths(name) -> (slow, fast)``, built once per pattern."""
    cache = {}

    def get(name, pattern):
        if name not in cache:
            cache[name] = both_paths(*trained_bpe(name), pattern=pattern)
        return cache[name]

    return get


@PATTERNS
@given(text=mixed_text_st)
def test_same_ids_on_any_text(tiktoken, trained_paths, name, pattern, text):
    slow, fast = trained_paths(name, pattern)
    assert fast.encode(text) == slow.encode(text)
    assert fast.encode(text, allow_special=False) == slow.encode(text, allow_special=False)
    assert fast.decode(fast.encode(text)) == text


@pytest.mark.parametrize("specials", [[], [EOT], [EOT, EOT2]], ids=["none", "one", "nested"])
def test_same_ids_with_any_set_of_special_tokens(tiktoken, trained_bpe, mixed_text, specials):
    # No specials: all in tiktoken. One: tiktoken splits it in Rust. A prefix pair:
    # split in Python first (longest match), the text between encoded by tiktoken.
    vocab, merges = trained_bpe()
    vocab = {i: t for i, t in vocab.items() if i < 256 + len(merges)}  # drop EOT, EOT2
    slow, fast = both_paths(vocab, merges, specials)
    assert fast.uses_tiktoken
    for allow in (True, False):
        assert fast.encode(mixed_text, allow_special=allow) == slow.encode(
            mixed_text, allow_special=allow
        )


# Letters that the `regex` module's Unicode tables know but older tables (Python 3.11's
# unicodedata, and the Rust regex tables inside tiktoken) call unassigned. Text holding
# them must still get identical ids, or the fast path must not be used for it.
NEW_LETTERS = ["\u0558", "\u088f", "\u0c5c", "\ua7ce", "\U00010940", "\U00018d80"]


@pytest.mark.parametrize("letter", NEW_LETTERS, ids=[f"U+{ord(c):04X}" for c in NEW_LETTERS])
def test_same_ids_with_recently_assigned_letters(tiktoken, tmp_path, letter):
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(f"ab{letter}cd" for _ in range(50)), encoding="utf-8")
    vocab, merges = train_bpe(path, 300, [EOT], num_workers=1)
    slow, fast = both_paths(vocab, merges, [EOT])
    text = f"ab{letter}cd and ab{letter}cd"
    assert fast.encode(text) == slow.encode(text)


# ----------------------------------------------------------------- incompatibilities


def test_ids_not_in_merge_order(tiktoken, trained_bpe, mixed_text):
    vocab, merges = trained_bpe()
    # Swap the ids of the first two merged tokens: merge 0 now makes id 257.
    swapped = dict(vocab)
    swapped[256], swapped[257] = vocab[257], vocab[256]
    slow, fast = both_paths(swapped, merges)
    assert "increase" in tiktoken_incompatibility(slow)
    assert not fast.uses_tiktoken
    base = BPETokenizer(vocab, merges, SPECIALS, use_tiktoken=False)
    swap = {256: 257, 257: 256}
    assert fast.encode(mixed_text) == [swap.get(i, i) for i in base.encode(mixed_text)]
    with pytest.raises(TokenizerError, match="increase"):
        BPETokenizer(swapped, merges, SPECIALS, use_tiktoken=True)


def test_custom_pattern(tiktoken, trained_bpe, reference_encode, mixed_text):
    vocab, merges = trained_bpe()
    pattern = r"\S+|\s+"
    slow, fast = both_paths(vocab, merges, pattern=pattern)
    assert "pattern" in tiktoken_incompatibility(slow)
    assert not fast.uses_tiktoken
    assert fast.encode(mixed_text) == reference_encode(
        mixed_text, fast.vocab, merges, SPECIALS, pattern
    )


def test_token_that_tiktoken_would_build_differently(tiktoken):
    # Merges: (b,c) -> "bc" 256, (a,b) -> "ab" 257, (ab,c) -> "abc" 258. tiktoken joins the
    # pair whose concatenation has the lowest rank: on "abc" it joins "bc" (256) first and
    # then "abc" (258), one token; our encoder applies (b,c) and then finds no (a, bc)
    # merge, so "abc" is [a, bc] = [97, 256], and "cab" is [c, ab] = [99, 257].
    merges = [(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")]
    vocab = build_vocab(merges)
    slow, fast = both_paths(vocab, merges, [])
    assert "abc" in tiktoken_incompatibility(slow)
    assert not fast.uses_tiktoken
    assert fast.encode("abc") == [97, 256]
    assert fast.encode("cab") == [99, 257]
    raw = tiktoken.Encoding(
        name="raw",
        pat_str=GPT2_PATTERN,
        mergeable_ranks={t: i for i, t in vocab.items()},
        special_tokens={},
    )
    assert raw.encode_ordinary("abc") == [258]  # what the fast path would have said


def test_other_incompatibilities(trained_bpe, mixed_text):
    vocab, merges = trained_bpe()
    base = BPETokenizer(vocab, merges, SPECIALS, use_tiktoken=False)
    expected = base.encode(mixed_text)

    duplicate = {**vocab, 900: vocab[300]}  # a second id for the same bytes
    tok = BPETokenizer(duplicate, merges, SPECIALS)
    assert "same bytes" in tiktoken_incompatibility(tok)
    assert not tok.uses_tiktoken and tok.encode(mixed_text) == expected

    extra = {**vocab, 900: b"never merged"}  # a token no merge makes
    tok = BPETokenizer(extra, merges, SPECIALS)
    assert "neither a single byte nor made by a merge" in tiktoken_incompatibility(tok)
    assert not tok.uses_tiktoken and tok.encode(mixed_text) == expected

    twice = [*merges, merges[0]]  # the same merge listed twice
    tok = BPETokenizer(vocab, twice, SPECIALS)
    assert "two different merges" in tiktoken_incompatibility(tok)
    assert not tok.uses_tiktoken and tok.encode(mixed_text) == expected


def test_without_tiktoken_installed(trained_bpe, monkeypatch, mixed_text):
    vocab, merges = trained_bpe()
    expected = BPETokenizer(vocab, merges, SPECIALS, use_tiktoken=False).encode(mixed_text)
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # makes `import tiktoken` fail
    tok = BPETokenizer(vocab, merges, SPECIALS)
    assert not tok.uses_tiktoken
    assert tok.encode(mixed_text) == expected
    with pytest.raises(TokenizerError, match="not installed"):
        BPETokenizer(vocab, merges, SPECIALS, use_tiktoken=True)
