"""What a tokenizer learned, in numbers a person can read: sizes, longest tokens, how
well it compresses a file, and how it splits a sample sentence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scratchlm.errors import DataError
from scratchlm.tokenizer.files import escape_token
from scratchlm.tokenizer.protocol import Tokenizer


def longest_tokens(tok: Tokenizer, n: int = 10) -> list[bytes]:
    """The ``n`` longest ordinary tokens (ties broken by id)."""
    special = set(tok.special_tokens.values())
    items = [(len(t), -i, t) for i, t in tok.vocab.items() if i not in special]
    return [t for _, _, t in sorted(items, reverse=True)[:n]]


def compression(
    tok: Tokenizer, path: str | os.PathLike, max_bytes: int = 16 << 20
) -> dict[str, float]:
    """Bytes per token over (at most the first ``max_bytes`` of) a text file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    text = data.decode("utf-8", errors="replace")
    n_tokens = len(tok.encode(text))
    return {
        "bytes": len(data),
        "tokens": n_tokens,
        "bytes_per_token": len(data) / max(n_tokens, 1),
    }


def show_split(tok: Tokenizer, text: str, allow_special: bool = True) -> str:
    """``text`` with its tokens separated by ``|``, e.g. ``The| sky| is| blue``. A token
    holding part of a character shows its bytes (``\xe6``), as in tokenizer.json."""
    ids = tok.encode(text, allow_special=allow_special)
    return "|".join(escape_token(tok.id_to_token(i)) for i in ids)


def describe(tok: Tokenizer) -> dict[str, Any]:
    """Size facts of a tokenizer, JSON-ready."""
    return {
        "type": type(tok).__name__,
        "vocab_size": tok.vocab_size,
        "merges": len(getattr(tok, "merges", [])),
        "special_tokens": tok.special_tokens,
        "pattern": getattr(tok, "pattern", None),
        "fast_path": "tiktoken" if getattr(tok, "uses_tiktoken", False) else "python",
    }
