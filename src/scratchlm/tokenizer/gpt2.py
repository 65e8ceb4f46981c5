"""GPT-2's byte table and its two tokenizer files.

GPT-2's files (and Hugging Face's ``tokenizer.json``) store tokens as strings, each byte
written as one printable character of GPT-2's table (``bytes_to_unicode``). The two
files are ``encoder.json`` (token -> id) and ``vocab.bpe`` (a ``#version`` line, then
one merge ``"a b"`` per line, in merge order).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN


@functools.cache
def byte_tables() -> tuple[dict[int, str], dict[str, int]]:
    b2u = bytes_to_unicode()
    return b2u, {c: b for b, c in b2u.items()}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible table: byte -> one printable, non-whitespace character.

    It exists because GPT-2's files and Hugging Face's ``tokenizer.json`` store tokens
    as JSON strings, and a byte-level token can hold bytes that are not text (a space
    the merges file would split on, control bytes, half of a UTF-8 character). The 188
    bytes that are already printable Latin-1 characters stand for themselves, so
    ``b"hello"`` is stored as ``"hello"``; the other 68 (controls, space, DEL, 0x80-0xA0,
    the soft hyphen 0xAD) take U+0100, U+0101, ... in byte order: space is ``"Ġ"``,
    newline ``"Ċ"``.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    table.update({b: chr(0x100 + n) for n, b in enumerate(shifted)})
    return dict(sorted(table.items()))


def token_to_chars(token: bytes) -> str:
    b2u = byte_tables()[0]
    return "".join(b2u[b] for b in token)


def chars_to_token(text: str, where: str) -> bytes:
    u2b = byte_tables()[1]
    try:
        return bytes(u2b[c] for c in text)
    except KeyError as e:
        raise TokenizerError(
            f"{where}: character {e.args[0]!r} (U+{ord(e.args[0]):04X}) is not in GPT-2's "
            "byte table, so this is not a byte-level BPE vocabulary"
        ) from None


def load_gpt2_files(
    encoder_json: str | os.PathLike,
    vocab_bpe: str | os.PathLike,
    *,
    special_tokens: list[str] | None = None,
    **kwargs: Any,
) -> BPETokenizer:
    """Load GPT-2's ``encoder.json`` + ``vocab.bpe`` as a BPETokenizer.

    ``special_tokens`` defaults to ``<|endoftext|>`` when encoder.json has it; ``kwargs``
    go to BPETokenizer (``pattern`` defaults to GPT-2's, which the files do not store).
    """
    enc_path, bpe_path = Path(encoder_json), Path(vocab_bpe)
    try:
        encoder = json.loads(_read_text(enc_path, "GPT-2 encoder file"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{enc_path}, line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(encoder, dict):
        raise TokenizerError(f"{enc_path} must hold a JSON object {{token: id}}")
    vocab: dict[int, bytes] = {}
    for token, tid in encoder.items():
        if type(tid) is not int or tid < 0:
            raise TokenizerError(f"{enc_path}: token {token!r} has id {tid!r}, not an integer >= 0")
        if tid in vocab:
            raise TokenizerError(f"{enc_path}: id {tid} is given to two tokens (one is {token!r})")
        vocab[tid] = chars_to_token(token, f"{enc_path}: token {token!r}")
    merges = _read_gpt2_merges(bpe_path, set(vocab.values()))
    if special_tokens is None:
        special_tokens = [t for t in ("<|endoftext|>",) if t in encoder]
    kwargs.setdefault("pattern", GPT2_PATTERN)
    kwargs.setdefault("metadata", {"imported_from": [str(enc_path), str(bpe_path)]})
    return BPETokenizer(vocab, merges, special_tokens, **kwargs)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise TokenizerError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{what} {path} is not UTF-8 text ({e.reason})") from None


def _read_gpt2_merges(path: Path, known: set[bytes]) -> list[tuple[bytes, bytes]]:
    merges = []
    # Split on "\n" only: str.splitlines would also split on characters such as U+0085.
    for lineno, line in enumerate(_read_text(path, "GPT-2 merges file").split("\n"), 1):
        line = line.removesuffix("\r")
        if not line or (lineno == 1 and line.startswith("#")):
            continue
        parts = line.split(" ")
        where = f"{path}, line {lineno}"
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{where}: expected a merge 'a b' (two tokens), got {line!r}")
        a, b = (chars_to_token(p, where) for p in parts)
        for token in (a, b, a + b):
            if token not in known:
                raise TokenizerError(
                    f"{where}: merge {line!r} uses {token_to_chars(token)!r}, which is not in "
                    "encoder.json"
                )
        merges.append((a, b))
    return merges
