"""tokenizer.json: a readable, versioned format that round-trips exactly; damaged files
give a TokenizerError; output directories are written whole or not at all."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchlm.errors import OutputExistsError, ScratchLMError, TokenizerError
from scratchlm.tokenizer import GPT4_PATTERN, BPETokenizer, load_tokenizer, save_tokenizer
from scratchlm.tokenizer.files import (
    escape_token,
    unescape_token,
    write_tokenizer_dir,
)

EOT = "<|endoftext|>"
EOT2 = "<|endoftext|><|endoftext|>"
SPECIALS = [EOT, EOT2]


@pytest.fixture
def tok(trained_bpe):
    vocab, merges = trained_bpe("gpt4")
    metadata = {"trained_on": ["mixed.txt", "science.txt"], "vocab_size": 800, "note": "日本"}
    return BPETokenizer(vocab, merges, SPECIALS, pattern="gpt4", metadata=metadata)


# ------------------------------------------------------------------ escaping of tokens


def test_escape_by_hand():
    assert escape_token(b" the") == " the"
    assert escape_token(b"\n") == "\\x0a"
    assert escape_token(b"\\") == "\\\\"
    assert escape_token(b"\\x41") == "\\\\x41"  # a literal backslash-x stays literal
    assert escape_token("日本".encode()) == "日本"
    assert escape_token(b"\xe3\x81") == "\\xe3\\x81"  # part of a character
    assert escape_token("\u00a0".encode()) == "\\xc2\\xa0"  # not printable: its bytes
    assert unescape_token("\\x0a") == b"\n"
    assert unescape_token("\\\\x41") == b"\\x41"


def test_escape_every_single_byte():
    for b in range(256):
        escaped = escape_token(bytes([b]))
        assert unescape_token(escaped) == bytes([b])
        assert escaped.isprintable()
    # Printable ASCII other than the backslash is shown as itself.
    assert all(escape_token(bytes([b])) == chr(b) for b in range(0x20, 0x7F) if b != 0x5C)


@given(st.binary(max_size=40))
def test_escape_round_trips_any_bytes(data):
    escaped = escape_token(data)
    assert unescape_token(escaped) == data
    assert escaped.isprintable()


@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=40))
def test_escape_round_trips_any_text(text):
    assert unescape_token(escape_token(text.encode())) == text.encode()


@pytest.mark.parametrize("bad", ["\\", "ab\\", "\\q", "\\x4", "\\xzz"])
def test_bad_escape_is_refused(bad):
    # unescape_token alone may raise ValueError; load_tokenizer turns it into a
    # TokenizerError (see the "bad-escape" case below).
    with pytest.raises((TokenizerError, ValueError)):
        unescape_token(bad)


# ------------------------------------------------------------------- save / load BPE


def test_save_load_round_trip(tok, tmp_path, mixed_text):
    file = save_tokenizer(tok, tmp_path / "tok")
    assert file == tmp_path / "tok" / "tokenizer.json"
    for loaded in (load_tokenizer(tmp_path / "tok"), load_tokenizer(file)):
        assert isinstance(loaded, BPETokenizer)
        assert loaded.vocab == tok.vocab
        assert loaded.merges == tok.merges
        assert loaded.special_tokens == tok.special_tokens == {EOT: 798, EOT2: 799}
        assert loaded.pattern == GPT4_PATTERN
        assert loaded.metadata == tok.metadata
        assert loaded.encode(mixed_text) == tok.encode(mixed_text)
        assert loaded.decode(loaded.encode(mixed_text)) == mixed_text
    # Nothing else was left in the folder (no temporary file).
    assert [p.name for p in (tmp_path / "tok").iterdir()] == ["tokenizer.json"]


def test_save_to_a_file_name(tok, tmp_path):
    file = save_tokenizer(tok, tmp_path / "my-tok.json")
    assert file == tmp_path / "my-tok.json"
    assert load_tokenizer(file).vocab == tok.vocab


def test_file_is_readable(tok, tmp_path):
    data = json.loads(save_tokenizer(tok, tmp_path).read_text(encoding="utf-8"))
    assert data["format"] == "scratchlm-tokenizer"
    assert data["version"] == 1
    assert data["type"] == "bpe"
    assert data["pattern"] == GPT4_PATTERN
    assert data["special_tokens"] == {EOT: 798, EOT2: 799}
    assert data["vocab"]["10"] == "\\x0a"
    assert data["vocab"]["65"] == "A"
    assert data["vocab"]["798"] == EOT
    assert data["merges"][0] == [escape_token(a) for a in tok.merges[0]]
    assert data["metadata"]["note"] == "日本"
    # Tokens are shown as text, not as lists of numbers.
    text = (tmp_path / "tokenizer.json").read_text(encoding="utf-8")
    assert " the" in text and "日本" in text


# ------------------------------------------------------------------ damaged files


def damage(data: dict, how: str) -> str:
    if how == "truncated":
        return json.dumps(data)[:5000]
    if how == "missing-merges":
        del data["merges"]
    elif how == "missing-vocab":
        del data["vocab"]
    elif how == "merge-of-three":
        data["merges"][3] = ["a", "b", "c"]
    elif how == "bad-escape":
        data["vocab"]["300"] = "\\q"
    elif how == "lost-a-byte":
        del data["vocab"]["200"]
    elif how == "unknown-merge":
        data["merges"].append(["zzzq", "qqqz"])
    elif how == "non-int-id":
        data["vocab"]["x"] = data["vocab"].pop("300")
    elif how == "specials-null":
        data["special_tokens"] = None
    elif how == "vocab-is-a-list":
        data["vocab"] = list(data["vocab"].values())
    elif how == "unknown-type":
        data["type"] = "wordpiece"
    return json.dumps(data)


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "missing-merges",
        "missing-vocab",
        "merge-of-three",
        "bad-escape",
        "lost-a-byte",
        "unknown-merge",
        "non-int-id",
        "specials-null",
        "vocab-is-a-list",
        "unknown-type",
    ],
)
def test_damaged_file_is_a_tokenizer_error(tok, tmp_path, how):
    file = save_tokenizer(tok, tmp_path)
    file.write_text(damage(json.loads(file.read_text(encoding="utf-8")), how), encoding="utf-8")
    with pytest.raises(TokenizerError):
        load_tokenizer(file)


def test_wrong_version(tok, tmp_path):
    file = save_tokenizer(tok, tmp_path)
    data = json.loads(file.read_text(encoding="utf-8"))
    data["version"] = 99
    file.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="version 99"):
        load_tokenizer(file)


@pytest.mark.parametrize(
    "content",
    [
        b'{"hello": "world"}',
        b"[1, 2, 3]",
        b"null",
        b'"scratchlm-tokenizer"',
        b"",
        b"\xff\xfe not utf-8",
        b"vocab = {}",
    ],
)
def test_not_a_tokenizer_file(tmp_path, content):
    file = tmp_path / "tokenizer.json"
    file.write_bytes(content)
    with pytest.raises(TokenizerError):
        load_tokenizer(file)
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)  # an empty folder


# -------------------------------------------------------------- writing output folders


def test_write_tokenizer_dir(tok, tmp_path):
    out = tmp_path / "runs" / "tok"
    file = write_tokenizer_dir(tok, out)
    assert file == out / "tokenizer.json"
    assert load_tokenizer(out).vocab == tok.vocab
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tok"]


def test_write_tokenizer_dir_refuses_an_existing_dir(tok, tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="--force"):
        write_tokenizer_dir(tok, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temporary left


def test_write_tokenizer_dir_force_replaces(tok, tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "tokenizer.json").write_text("{}")
    write_tokenizer_dir(tok, out, force=True)
    assert [p.name for p in out.iterdir()] == ["tokenizer.json"]
    assert load_tokenizer(out).merges == tok.merges
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no ".tok.old" left


def test_write_tokenizer_dir_force_over_a_file(tok, tmp_path):
    """--out pointing at an existing *file* with --force: replace it with the folder, or
    refuse with a ScratchLMError; never crash with an OSError and leave debris."""
    out = tmp_path / "tok"
    out.write_text("a file, not a folder")
    try:
        write_tokenizer_dir(tok, out, force=True)
    except ScratchLMError:
        assert out.read_text() == "a file, not a folder"
    else:
        assert load_tokenizer(out).merges == tok.merges
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_char_and_bpe_files_are_told_apart(tok, tmp_path):
    from scratchlm.tokenizer import CharTokenizer

    save_tokenizer(tok, tmp_path / "bpe")
    save_tokenizer(CharTokenizer.train(["abc"]), tmp_path / "char")
    assert isinstance(load_tokenizer(tmp_path / "bpe"), BPETokenizer)
    assert isinstance(load_tokenizer(tmp_path / "char"), CharTokenizer)
    # Any other object satisfying the Tokenizer protocol has no file format.
    with pytest.raises(TokenizerError, match="cannot save a SimpleNamespace"):
        save_tokenizer(SimpleNamespace(special_tokens={}, vocab={}), tmp_path / "other")
    assert not (tmp_path / "other").exists()
