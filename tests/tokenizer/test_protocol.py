"""Both tokenizers keep the ``Tokenizer`` contract the layers above rely on."""

from __future__ import annotations

import inspect

import pytest

from scratchlm.tokenizer import BPETokenizer, CharTokenizer, Tokenizer

MEMBERS = {
    "vocab",
    "vocab_size",
    "special_tokens",
    "encode",
    "encode_iterable",
    "decode",
    "id_to_token",
}


def test_the_protocol_lists_the_contract():
    assert {n for n in vars(Tokenizer) if not n.startswith("_")} == MEMBERS


@pytest.mark.parametrize(
    "tok",
    [
        BPETokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]),
        CharTokenizer("héllo 日本", ["<|endoftext|>"]),
    ],
    ids=["bpe", "char"],
)
def test_both_tokenizers_have_every_member(tok):
    for name in MEMBERS:
        want = getattr(Tokenizer, name)
        if isinstance(want, property):
            assert hasattr(tok, name), name
        else:
            # The same parameters (allow_special too), so any caller works with either.
            have = inspect.signature(getattr(tok, name)).parameters
            assert have.keys() == inspect.signature(want).parameters.keys() - {"self"}, name
    text = "héllo<|endoftext|>日本"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert list(tok.encode_iterable(["hé", "llo<|endof", "text|>日本"])) == ids
    assert b"".join(tok.id_to_token(i) for i in ids).decode() == text
    assert tok.vocab_size == max(tok.vocab) + 1
    assert tok.special_tokens["<|endoftext|>"] in tok.vocab
