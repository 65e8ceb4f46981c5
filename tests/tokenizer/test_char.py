"""CharTokenizer: one id per character, specials after them, clear errors, save/load."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import CharTokenizer, load_tokenizer, save_tokenizer

EOT = "<|endoftext|>"
EOT2 = "<|endoftext|><|endoftext|>"
ALPHABET = "helo wrd\n日本😀é\r\t"


def test_train_by_hand():
    tok = CharTokenizer.train(["hello world"])
    # Sorted distinct characters: " " d e h l o r w
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.encode("world hello") == [7, 5, 6, 4, 1, 0, 3, 2, 4, 4, 5]
    assert tok.decode([7, 5, 6, 4, 1]) == "world"
    assert tok.vocab == {i: c.encode() for i, c in enumerate(" dehlorw")}


def test_special_tokens_follow_the_characters():
    # Special tokens in the training text are not split into characters.
    tok = CharTokenizer.train(["ab" + EOT + "ca" + EOT2], [EOT, EOT2])
    assert tok.chars == ["a", "b", "c"]
    assert tok.special_tokens == {EOT: 3, EOT2: 4}
    assert tok.vocab_size == 5
    assert tok.encode("a" + EOT + "b") == [0, 3, 1]
    assert tok.encode(EOT * 3) == [4, 3]  # longest match first
    assert tok.decode([4, 3, 2]) == EOT * 3 + "c"
    assert tok.token_to_id(EOT2) == 4 and tok.id_to_token(4) == EOT2.encode()
    assert tok.token_to_id("c") == 2 and tok.id_to_token(2) == b"c"


def test_special_tokens_as_plain_text():
    tok = CharTokenizer.train([EOT + "<|endoftext> x"], [EOT])
    plain = tok.encode(EOT, allow_special=False)
    assert len(plain) == len(EOT) and tok.special_tokens[EOT] not in plain
    assert tok.decode(plain) == EOT


def test_unknown_character_is_a_clear_error():
    tok = CharTokenizer.train(["hello"])
    with pytest.raises(TokenizerError, match=r"'x' \(U\+0078\)"):
        tok.encode("hex")
    with pytest.raises(TokenizerError, match="not a token"):
        tok.token_to_id("x")


def test_unknown_id_is_a_clear_error():
    tok = CharTokenizer.train(["hello"], [EOT])
    with pytest.raises(TokenizerError, match="token id 99 "):
        tok.decode([0, 99])
    with pytest.raises(TokenizerError, match="token id 5 "):
        tok.id_to_token(5)


def test_bad_construction():
    with pytest.raises(TokenizerError, match="empty"):
        CharTokenizer.train(["", EOT], [EOT])
    with pytest.raises(TokenizerError, match="special token"):
        CharTokenizer.train(["abc"], [""])
    with pytest.raises(TokenizerError, match="single characters"):
        CharTokenizer(["a", "bc"])


@given(st.text(ALPHABET))
def test_round_trip(text):
    tok = CharTokenizer.train([ALPHABET], [EOT])
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text)


@given(data=st.data())
def test_encode_iterable_equals_encode(data):
    tok = CharTokenizer.train([ALPHABET, "<|endoftext| >"], [EOT, EOT2])  # its chars, too
    text = data.draw(st.lists(st.sampled_from([*ALPHABET, EOT, EOT2, "<|endoftext|"])).map("".join))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    assert list(tok.encode_iterable(pieces)) == tok.encode(text)
    assert list(tok.encode_iterable(pieces, allow_special=False)) == tok.encode(
        text, allow_special=False
    )


def test_encode_iterable_splits_inside_special_tokens():
    tok = CharTokenizer.train([ALPHABET], [EOT, EOT2])
    text = "hello " + EOT + EOT + EOT + " world" + EOT
    expected = tok.encode(text)
    assert expected[6:8] == [tok.special_tokens[EOT2], tok.special_tokens[EOT]]
    for cut in range(len(text) + 1):
        assert list(tok.encode_iterable([text[:cut], text[cut:]])) == expected, cut
    assert list(tok.encode_iterable(list(text))) == expected


def test_encode_batch():
    tok = CharTokenizer.train(["hello world"])
    assert tok.encode_batch(["he", "", "low"]) == [[3, 2], [], [4, 5, 7]]


def test_save_and_load(tmp_path):
    tok = CharTokenizer.train(["Héllo, 日本😀\n\t" + EOT], [EOT, "<|pad|>"])
    file = save_tokenizer(tok, tmp_path / "char")
    assert file == tmp_path / "char" / "tokenizer.json"
    for loaded in (load_tokenizer(tmp_path / "char"), load_tokenizer(file)):
        assert isinstance(loaded, CharTokenizer)
        assert loaded.chars == tok.chars
        assert loaded.special_tokens == tok.special_tokens
        assert loaded.vocab == tok.vocab
        text = "日本" + EOT + "Héllo<|pad|>"
        assert loaded.encode(text) == tok.encode(text)


def test_a_bpe_file_never_loads_as_a_char_tokenizer(tmp_path, trained_bpe):
    from scratchlm.tokenizer import BPETokenizer

    vocab, merges = trained_bpe()
    save_tokenizer(BPETokenizer(vocab, merges, [EOT, EOT2]), tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and not isinstance(loaded, CharTokenizer)
    assert loaded.vocab == BPETokenizer(vocab, merges, [EOT, EOT2]).vocab
