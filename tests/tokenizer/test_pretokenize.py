"""Pre-tokenization: the split patterns, special-token splitting, safe cut points, and the
chunked corpus reader whose chunks must count like the whole file."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchlm.tokenizer import GPT2_PATTERN, GPT4_PATTERN, PATTERNS
from scratchlm.tokenizer.corpus import count_chunk, iter_chunks
from scratchlm.tokenizer.pretokenize import (
    compile_pattern,
    decode_utf8,
    find_cut,
    last_safe_cut,
    last_safe_cut_bytes,
    resolve_pattern,
    special_token_regex,
    split_special,
)

EOT = "<|endoftext|>"
EOT2 = "<|endoftext|><|endoftext|>"
SPECIALS = [EOT, EOT2]

# Pieces that exercise every branch of the patterns and every kind of boundary. None is
# longer than ~40 bytes and none holds a letter followed by whitespace, so texts built
# from them have a safe cut only where the tests put one.
FRAGMENTS = [
    "the",
    " cat",
    "Hello",
    ",",
    "!?",
    "...",
    "'s",
    "'ll",
    "'RE",
    " ",
    "  ",
    " " * 17,
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\u3000",  # ideographic space
    "12345",
    " 7",
    "3.14",
    "日本語のテキスト",
    "。",
    "😀",
    "👨\u200d👩\u200d👧",
    "e\u0301",
    "\x01\x1b",
    EOT,
    EOT2,
    "<|endoftext|",
    "<|",
    "|>",
    "endoftext",
]


@st.composite
def fragment_texts(draw, *, safe_every: bool):
    """Text from FRAGMENTS; with ``safe_every`` a "z " (a safe cut) ends each segment of
    at most eight fragments, so the chunk reader never has to force a cut."""
    segments = draw(
        st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=8), min_size=1, max_size=40)
    )
    joiner = "z " if safe_every else ""
    return "".join("".join(seg) + joiner for seg in segments)


# --------------------------------------------------------------------------- patterns


def test_gpt2_pattern_by_hand():
    # "  x": whitespace before a word leaves its last space to the word (\s+(?!\S)).
    assert compile_pattern("gpt2").findall("Hello world's 123  x\n") == [
        "Hello",
        " world",
        "'s",
        " 123",
        " ",
        " x",
        "\n",
    ]
    assert compile_pattern(GPT2_PATTERN).findall("I'M") == ["I", "'", "M"]  # case-sensitive


def test_gpt4_pattern_by_hand():
    # Numbers go in groups of at most three and take no leading space.
    assert compile_pattern("gpt4").findall("Hello world's 12345  x\n") == [
        "Hello",
        " world",
        "'s",
        " ",
        "123",
        "45",
        " ",
        " x",
        "\n",
    ]
    assert compile_pattern(GPT4_PATTERN).findall("I'M") == ["I", "'M"]  # case-insensitive
    # Punctuation keeps the newlines that follow it.
    assert compile_pattern(GPT4_PATTERN).findall("end.\n\nNext") == ["end", ".\n\n", "Next"]


def test_pattern_names():
    assert PATTERNS == {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
    assert resolve_pattern("gpt2") == GPT2_PATTERN
    assert resolve_pattern(r"\w+") == r"\w+"


# ---------------------------------------------------------------------- special tokens


def test_special_regex_prefers_the_longest_token():
    special = special_token_regex(SPECIALS)
    text = "a" + EOT * 3 + "b"
    assert list(split_special(text, special)) == [
        ("a", False),
        (EOT2, True),
        (EOT, True),
        ("b", False),
    ]
    as_bytes = special_token_regex(SPECIALS, as_bytes=True)
    assert as_bytes.findall(text.encode()) == [EOT2.encode(), EOT.encode()]
    assert special_token_regex([]) is None


def test_special_tokens_are_literal_text():
    # Regex metacharacters in a special token are matched literally.
    special = special_token_regex(["[.*]", "a+b"])
    assert list(split_special("x[.*]yaab a+b", special)) == [
        ("x", False),
        ("[.*]", True),
        ("yaab ", False),
        ("a+b", True),
    ]


def test_split_special_never_yields_empty_pieces():
    special = special_token_regex(SPECIALS)
    assert list(split_special(EOT + EOT, special)) == [(EOT2, True)]
    assert list(split_special("", special)) == []
    assert list(split_special("", None)) == []
    assert list(split_special("plain", None)) == [("plain", False)]


@given(fragment_texts(safe_every=False))
def test_split_special_reassembles(text):
    pieces = list(split_special(text, special_token_regex(SPECIALS)))
    assert "".join(p for p, _ in pieces) == text
    assert all(p for p, _ in pieces)
    assert all(p in SPECIALS for p, is_special in pieces if is_special)
    # No special token hides in an ordinary piece (pieces are maximal between matches).
    assert not any(EOT in p for p, is_special in pieces if not is_special)


# ------------------------------------------------------------------------ UTF-8 repair


def test_decode_utf8_by_hand():
    assert decode_utf8("héllo 日本".encode()) == ("héllo 日本", 0)
    assert decode_utf8(b"a\xffb") == ("a\ufffdb", 1)
    assert decode_utf8(b"\x80\x80") == ("\ufffd\ufffd", 2)
    # A character cut short at the end: its two bytes become one U+FFFD.
    assert decode_utf8(b"ab \xe3\x81") == ("ab \ufffd", 2)


@given(st.binary(max_size=64))
def test_decode_utf8_matches_the_codec(data):
    text, bad = decode_utf8(data)
    assert text == data.decode("utf-8", errors="replace")
    if b"\xef\xbf\xbd" not in data:  # no genuine U+FFFD in the input
        assert bad == len(data) - len(text.replace("\ufffd", "").encode())


# ------------------------------------------------------------------------- safe cuts


def test_last_safe_cut_by_hand():
    # Before whitespace that follows a letter or digit (any script) ...
    assert last_safe_cut("hello world", 11) == 5
    assert last_safe_cut("ab cd ef", 4) == 2
    assert last_safe_cut("x 42\tz", 6) == 4
    assert last_safe_cut("日本 語", 4) == 2
    # ... or after a newline with non-whitespace on both sides.
    assert last_safe_cut("日本。\n語", 5) == 4
    assert last_safe_cut("end!\n\nNext", 10) is None  # "\n\n": no side is non-space
    assert last_safe_cut("日本。 語", 5) is None  # punctuation before a space: no cut
    assert last_safe_cut("   ", 3) is None
    assert last_safe_cut("", 0) is None
    assert last_safe_cut_bytes(b"hello world", 11) == 5
    assert last_safe_cut_bytes("日本 語".encode(), 10) == 6  # in bytes
    assert last_safe_cut_bytes("日本。\n語".encode(), 13) == 10


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN], ids=["gpt2", "gpt4"])
@given(buf=fragment_texts(safe_every=True), rest=fragment_texts(safe_every=False))
def test_find_cut_splits_like_the_whole(reference_pieces_fn, pattern, buf, rest):
    text = buf + rest
    whole = reference_pieces_fn(text, SPECIALS, pattern)
    for data, special in (
        (buf, special_token_regex(SPECIALS)),
        (buf.encode(), special_token_regex(SPECIALS, as_bytes=True)),
    ):
        max_special = len(EOT2) if isinstance(data, str) else len(EOT2.encode())
        cut = find_cut(data, special, max_special)
        if cut is None:
            continue
        assert 0 < cut <= len(data)
        if isinstance(data, bytes):
            cut = len(data[:cut].decode())  # the same cut, in characters
        left = reference_pieces_fn(text[:cut], SPECIALS, pattern)
        right = reference_pieces_fn(text[cut:], SPECIALS, pattern)
        assert left + right == whole


# ---------------------------------------------------------------------- chunked reading


def check_chunks(path, specials, chunk_size, reference_counts, pattern=GPT2_PATTERN):
    """Chunks concatenate to the file, and count (and split specials) like the whole."""
    data = path.read_bytes()
    chunks = list(iter_chunks(path, specials, chunk_size, pattern=pattern))
    assert b"".join(chunks) == data
    assert all(chunks)
    text = data.decode("utf-8")
    counted = Counter()
    for chunk in chunks:
        counted.update(count_chunk(chunk, specials, pattern).counts)
    assert counted == reference_counts(text, specials, pattern)
    if specials:
        special = special_token_regex(specials)
        found = [t for c in chunks for t in special.findall(c.decode("utf-8"))]
        assert found == special.findall(text)
    return chunks


def test_chunks_of_mixed_corpus(mixed_corpus, reference_counts):
    chunks = check_chunks(mixed_corpus, SPECIALS, 64, reference_counts)
    assert len(chunks) > 100  # a tiny chunk size really gives many chunks
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        whole = count_chunk(mixed_corpus.read_bytes(), SPECIALS, pattern).counts
        text = mixed_corpus.read_bytes().decode()
        assert whole == reference_counts(text, SPECIALS, pattern)


@pytest.mark.parametrize("chunk_size", [30, 47, 64, 100])
def test_chunks_around_prefix_special_tokens(tmp_path, reference_counts, chunk_size):
    # Runs of 1 to 5 <|endoftext|>: the longest match must win in every chunk too.
    text = "".join(f"doc {k} words" + EOT * (k % 5 + 1) for k in range(60))
    path = tmp_path / "specials.txt"
    path.write_text(text)
    check_chunks(path, SPECIALS, chunk_size, reference_counts)


@pytest.mark.parametrize(
    "text",
    [
        # Long whitespace runs (shorter than the 16 chunks after which a cut is forced).
        "".join(f"word{k}" + " " * (k * 37 % 300) + "\t" * (k % 3) + "x" for k in range(40)),
        # Digit runs and a file without any newline.
        " ".join(str(7**k) for k in range(200)),
        # Japanese, which has no safe cut of its own, between ASCII words.
        "".join(f"part{k} 日本語のテキストです。東京は大きい都市です。\n" for k in range(40)),
        # \r\n line ends and a trailing run of newlines.
        "line one\r\nline two\r\n" * 40 + "\n" * 30,
    ],
    ids=["whitespace", "digits-no-newline", "japanese", "crlf"],
)
@pytest.mark.parametrize("specials", [[], SPECIALS], ids=["plain", "specials"])
def test_chunks_of_awkward_text(tmp_path, reference_counts, text, specials):
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode())
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        check_chunks(path, specials, 64, reference_counts, pattern)


@given(text=fragment_texts(safe_every=True), chunk_size=st.integers(32, 160))
def test_chunks_count_like_the_whole(tmp_path, reference_counts, text, chunk_size):
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode())
    check_chunks(path, SPECIALS, chunk_size, reference_counts)


@pytest.mark.parametrize("specials", [SPECIALS, []], ids=["specials", "no-specials"])
def test_text_without_any_safe_cut_is_still_chunked(tmp_path, specials):
    """No letter+whitespace anywhere: the reader must cut anyway after 16 chunks (never
    inside a UTF-8 character) instead of buffering the whole file, and must not crash."""
    data = ("日本語。" * 600).encode()  # 7200 bytes, no ASCII at all
    path = tmp_path / "nocut.txt"
    path.write_bytes(data)
    chunks = list(iter_chunks(path, specials, 64))
    assert b"".join(chunks) == data
    assert len(chunks) > 1
    assert max(map(len, chunks)) <= 17 * 64
    for chunk in chunks:
        chunk.decode("utf-8")  # raises if a character was cut in half


def test_chunk_size_larger_than_file(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("just a few words" + EOT + "and more")
    assert list(iter_chunks(path, SPECIALS, 1 << 20)) == [path.read_bytes()]


def test_count_chunk_does_not_count_special_tokens():
    counts = count_chunk((EOT + "hi" + EOT2 + " hi").encode(), SPECIALS, GPT2_PATTERN)
    assert counts.counts == Counter({"hi": 1, " hi": 1})
    assert counts.bad_bytes == 0
    assert counts.n_bytes == len(EOT) + 2 + len(EOT2) + 3
