"""BPETokenizer: lossless round trips, encoding against an independent reference encoder,
special tokens, decoding errors, any id assignment, and streaming with encode_iterable."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import scratchlm.tokenizer.bpe as bpe_mod
from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import GPT2_PATTERN, GPT4_PATTERN, BPETokenizer

EOT = "<|endoftext|>"
EOT2 = "<|endoftext|><|endoftext|>"
SPECIALS = [EOT, EOT2]
PATHS = pytest.mark.parametrize("use_tiktoken", [False, None], ids=["python", "default"])

# Any valid Unicode: every category except surrogates (control characters included).
unicode_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
# Text in the spirit of a real corpus, with special tokens, prefixes of them and runs.
PIECES = [
    "The",
    " quick",
    " brown",
    " fox",
    "'s",
    "'ll",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "123",
    "4567",
    ".",
    "!!",
    "日本語",
    "です。",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "e\u0301",
    "\x00",
    "\x1b[0m",
    EOT,
    EOT2,
    "<|endoftext",
    "|>",
]
corpus_like_text = st.lists(st.one_of(st.sampled_from(PIECES), unicode_text), max_size=30).map(
    "".join
)

ROUND_TRIP_EXAMPLES = [
    "",
    "hello world",
    "日本語のテキストです。東京は大きい都市です。",
    "😀👍🏽👨\u200d👩\u200d👧🇯🇵",
    "e\u0301 a\u0300\u0301\u0302 \u0301 leading combining mark",
    "\x00\x01\x02\x07\x08\x0b\x0c\x1b\x7f\x85\u2028\u2029",
    "line\r\nline\r\n\r\n\rlone CR",
    "a" * 5000,
    " " * 3000,
    "\n" * 3000,
    "😀" * 1500,
    "é" * 2000,
    "\ufffd\ufeff\uffff\U0010ffff",
]


@pytest.fixture(scope="module", params=["python", "default"])
def tok(request, trained_bpe):
    vocab, merges = trained_bpe()
    return BPETokenizer(
        vocab, merges, SPECIALS, use_tiktoken=False if request.param == "python" else None
    )


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("text", ROUND_TRIP_EXAMPLES)
def test_round_trip_examples(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    if text:
        assert ids


@given(text=st.one_of(unicode_text, corpus_like_text))
def test_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allow_special=False)) == text


@given(text=st.one_of(unicode_text, corpus_like_text))
@example(text="lower newest" + EOT + EOT + EOT + " widest")
def test_encode_matches_reference_encoder(trained_bpe, reference_encode, text):
    vocab, merges = trained_bpe()
    tok = BPETokenizer(vocab, merges, SPECIALS, use_tiktoken=False)
    assert tok.encode(text) == reference_encode(text, tok.vocab, merges, SPECIALS, GPT2_PATTERN)
    plain = reference_encode(text, tok.vocab, merges, [], GPT2_PATTERN)
    assert tok.encode(text, allow_special=False) == plain
    assert tok.encode_ordinary(text) == plain


@given(text=corpus_like_text)
def test_gpt4_pattern_matches_reference_encoder(trained_bpe, reference_encode, text):
    vocab, merges = trained_bpe("gpt4")
    tok = BPETokenizer(vocab, merges, SPECIALS, pattern="gpt4", use_tiktoken=False)
    assert tok.pattern == GPT4_PATTERN
    assert tok.encode(text) == reference_encode(text, tok.vocab, merges, SPECIALS, GPT4_PATTERN)
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize(
    "pattern", [r"\p{L}+", r"\d|[^\d\s]+", r"\S+\s*|\s+"], ids=["letters", "no-space", "word-space"]
)
@given(text=corpus_like_text)
def test_custom_patterns_are_lossless(trained_bpe, pattern, text):
    """A custom pattern that skips characters (no match for spaces, say) must not lose
    them: the text between matches is encoded too."""
    vocab, merges = trained_bpe()
    tok = BPETokenizer(vocab, merges, SPECIALS, pattern=pattern)
    assert tok.decode(tok.encode(text)) == text


@PATHS
@pytest.mark.parametrize(
    "text", ["abc\ud800def", "\udfff", "ok \ud83d\ude00 (a surrogate pair as two code points)"]
)
def test_lone_surrogates_are_refused(trained_bpe, use_tiktoken, text):
    vocab, merges = trained_bpe()
    tok = BPETokenizer(vocab, merges, SPECIALS, use_tiktoken=use_tiktoken)
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode(text)
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode(text, allow_special=False)
    with pytest.raises(TokenizerError, match="surrogate"):
        list(tok.encode_iterable([text]))


# ---------------------------------------------------------------------- special tokens


def test_special_tokens_are_single_ids(tok):
    eot, eot2 = tok.special_tokens[EOT], tok.special_tokens[EOT2]
    assert tok.encode(EOT) == [eot]
    assert tok.encode(EOT2) == [eot2]  # the longest match wins over its prefix
    assert tok.encode(EOT * 3) == [eot2, eot]
    assert tok.encode("a" + EOT + "b") == [*tok.encode("a"), eot, *tok.encode("b")]
    assert tok.token_to_id(EOT) == eot and tok.id_to_token(eot) == EOT.encode()


def test_special_tokens_as_plain_text(tok):
    ids = tok.encode(EOT2 + " x", allow_special=False)
    special_ids = set(tok.special_tokens.values())
    assert not special_ids & set(ids)
    assert len(ids) > 2  # "<|", "endoftext", "|>" at least
    assert tok.decode(ids) == EOT2 + " x"


@given(text=unicode_text)
def test_ordinary_text_never_gives_special_ids(tok, text):
    special_ids = set(tok.special_tokens.values())
    assert not special_ids & set(tok.encode(text.replace(EOT, "")))
    assert not special_ids & set(tok.encode(text, allow_special=False))


def test_special_ids_from_training_are_reused(trained_bpe):
    vocab, merges = trained_bpe()
    tok = BPETokenizer(vocab, merges, SPECIALS)
    # train_bpe puts the special tokens last, in order: 798 and 799 of 800.
    assert tok.special_tokens == {EOT: 798, EOT2: 799}
    assert tok.vocab_size == 800 and tok.vocab == vocab


def test_missing_special_token_is_appended(trained_bpe):
    vocab, merges = trained_bpe()
    ordinary = {i: t for i, t in vocab.items() if i < 798}
    tok = BPETokenizer(ordinary, merges, ["<|im_start|>", EOT])
    assert tok.special_tokens == {"<|im_start|>": 798, EOT: 799}
    assert tok.vocab[798] == b"<|im_start|>"
    assert tok.encode("<|im_start|>hi" + EOT) == [798, *tok.encode("hi"), 799]
    # Appended after the largest id, even when ids have gaps.
    gappy = {**ordinary, 5000: b"zz"}
    tok = BPETokenizer(gappy, merges, ["<|im_start|>"])
    assert tok.special_tokens == {"<|im_start|>": 5001}
    assert tok.vocab_size == 5002


def test_special_token_that_is_also_an_ordinary_token(trained_bpe):
    """A special token whose bytes merges also make (" the") gets an id of its own, so the
    ordinary token stays usable inside other text."""
    vocab, merges = trained_bpe()
    the = next(i for i, t in vocab.items() if t == b" the")
    plain = BPETokenizer(vocab, merges, SPECIALS, use_tiktoken=False)
    tok = BPETokenizer(vocab, merges, [*SPECIALS, " the"], use_tiktoken=False)
    assert tok.special_tokens[" the"] == 800 != the
    assert tok.encode("in the sky") == [*plain.encode("in"), 800, *plain.encode(" sky")]
    assert tok.encode("in the sky", allow_special=False) == plain.encode("in the sky")
    assert the in tok.encode(" the", allow_special=False)
    assert tok.decode([800, the]) == " the the"


@pytest.mark.parametrize("bad", ["", None, 7])
def test_invalid_special_token_is_refused(trained_bpe, bad):
    vocab, merges = trained_bpe()
    with pytest.raises(TokenizerError, match="special token"):
        BPETokenizer(vocab, merges, [EOT, bad])


# ---------------------------------------------------------------------------- decoding


def test_decode_invalid_utf8_gives_replacement_character(tok):
    # In a trained vocab ids 0-255 are the single bytes.
    assert tok.decode([0xFF]) == "\ufffd"
    assert tok.decode([104, 0xFF, 105]) == "h\ufffdi"
    assert tok.decode([0xC3]) == "\ufffd"  # the first half of "é"
    assert tok.decode([0xC3, 0xA9]) == "é"
    assert tok.decode([0xA9, 0xC3]) == "\ufffd\ufffd"
    assert tok.decode_bytes([0xC3, 0xA9]) == "é".encode()
    assert tok.decode([]) == ""


@pytest.mark.parametrize("bad_id", [800, 123456, -1])
def test_decode_unknown_id_names_it(tok, bad_id):
    with pytest.raises(TokenizerError, match=f"token id {bad_id} "):
        tok.decode([104, bad_id, 105])
    with pytest.raises(TokenizerError, match=str(bad_id)):
        tok.id_to_token(bad_id)


def test_token_lookup(tok):
    assert tok.token_to_id(b"a") == 97
    assert tok.token_to_id(" the") == tok.encode(" the")[0]
    assert tok.id_to_token(tok.token_to_id(" the")) == b" the"
    with pytest.raises(TokenizerError, match="not a token"):
        tok.token_to_id("definitely not one token")


def test_encode_batch(tok):
    texts = ["one", "two three", "", EOT]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, allow_special=False)[3] == tok.encode(EOT, allow_special=False)


# --------------------------------------------------------------------- id assignment


def test_any_id_assignment_works(trained_bpe, mixed_text):
    """GPT-2's vocabulary does not put the single bytes at ids 0-255: scramble the ids
    (reverse their order and spread them out) and the ids must follow the scrambling."""
    vocab, merges = trained_bpe()
    base = BPETokenizer(vocab, merges, SPECIALS, use_tiktoken=False)
    new_id = {i: 3 * (len(vocab) - 1 - i) + 10 for i in vocab}
    scrambled = {new_id[i]: t for i, t in vocab.items()}
    for use_tiktoken in (False, None):
        tok = BPETokenizer(scrambled, merges, SPECIALS, use_tiktoken=use_tiktoken)
        assert not tok.uses_tiktoken  # merged ids no longer increase in merge order
        assert tok.encode(mixed_text) == [new_id[i] for i in base.encode(mixed_text)]
        assert tok.decode(tok.encode(mixed_text)) == mixed_text
        assert tok.special_tokens == {EOT: new_id[798], EOT2: new_id[799]}


def test_vocab_must_hold_every_byte(trained_bpe):
    vocab, merges = trained_bpe()
    without = {i: t for i, t in vocab.items() if t != b"\x80"}
    with pytest.raises(TokenizerError, match="0x80"):
        BPETokenizer(without, merges, SPECIALS)


def test_merge_with_unknown_token_is_refused(trained_bpe):
    vocab, merges = trained_bpe()
    with pytest.raises(TokenizerError, match="merge 1"):
        BPETokenizer(vocab, [merges[0], (b"q", b"zzz")], SPECIALS)


def test_repr_and_sizes(tok):
    assert tok.vocab_size == 800
    assert "vocab_size=800" in repr(tok)


# ------------------------------------------------------------------------ streaming


@pytest.fixture
def small_stream_buffer(monkeypatch):
    """encode_iterable buffers 64 K characters before it looks for a cut: make that 16 so
    that short test texts are cut many times."""
    monkeypatch.setattr(bpe_mod, "STREAM_BUFFER", 16)


def split_at(text: str, cuts) -> list[str]:
    points = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(points)]


@given(data=st.data())
def test_encode_iterable_equals_encode(tok, small_stream_buffer, data):
    text = data.draw(st.one_of(corpus_like_text, unicode_text))
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=20))
    pieces = split_at(text, cuts)
    assert list(tok.encode_iterable(pieces)) == tok.encode(text)
    assert list(tok.encode_iterable(pieces, allow_special=False)) == tok.encode(
        text, allow_special=False
    )


def test_encode_iterable_splits_inside_special_tokens_and_characters(tok, small_stream_buffer):
    text = (
        "words before " + EOT2 + EOT + " after 日本語のテキストです。 and 👨\u200d👩\u200d👧 "
        "family, e\u0301 combining, crlf\r\nend "
    ) * 5
    expected = tok.encode(text)
    # Every single cut position, then every piece of 1, 2, 3 and 7 characters.
    for cut in range(len(text) + 1):
        assert list(tok.encode_iterable([text[:cut], text[cut:]])) == expected, cut
    for size in (1, 2, 3, 7):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(tok.encode_iterable(pieces)) == expected


@pytest.fixture(scope="module")
def word_space_tok(tmp_path_factory):
    """Trained with "\\S+\\s*": a word keeps the whitespace after it, so merges like
    b"the " exist and the GPT patterns' safe cuts (before whitespace after a letter) are
    not safe here."""
    from scratchlm.builtin import builtin_corpus
    from scratchlm.tokenizer import train_bpe

    pattern = r"\S+\s*|\s+"
    vocab, merges = train_bpe(builtin_corpus(), 600, SPECIALS, pattern=pattern, num_workers=1)
    assert any(t.endswith(b" ") and t[:1].isalpha() for t in vocab.values())
    return BPETokenizer(vocab, merges, SPECIALS, pattern=pattern)


@given(data=st.data())
def test_encode_iterable_with_a_custom_pattern(word_space_tok, small_stream_buffer, data):
    text = data.draw(st.one_of(corpus_like_text, st.sampled_from(["the air is cold " * 8])))
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=20))
    expected = word_space_tok.encode(text)
    assert list(word_space_tok.encode_iterable(split_at(text, cuts))) == expected


def test_encode_iterable_with_no_safe_cut_for_a_long_time(tok, small_stream_buffer):
    # Japanese lines ending in "。": no letter is ever followed by whitespace.
    lines = ["これは長い日本語の文章です。\n"] * 300 + ["then english words\n"] * 3
    assert list(tok.encode_iterable(lines)) == tok.encode("".join(lines))
    assert list(tok.encode_iterable(iter(lines))) == tok.encode("".join(lines))


def test_encode_iterable_streams(tok, small_stream_buffer):
    """The ids must come before the input is exhausted (memory stays flat)."""

    def consumed_before_first_id(line: str, n: int = 400) -> int:
        consumed = 0

        def lines():
            nonlocal consumed
            for _ in range(n):
                consumed += 1
                yield line

        next(tok.encode_iterable(lines()))
        return consumed

    assert consumed_before_first_id("the cat sat on the mat.\n") < 50
    assert consumed_before_first_id("日本語の文章です。\n") < 50
