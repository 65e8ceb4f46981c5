"""Tokenizer files: our own readable ``tokenizer.json``, and ``load_tokenizer``, the one
function that loads a tokenizer from any format we read (the only place that knows them).

Our format is JSON a person can read: each token is shown as text, with a backslash
escape for what is not printable (``\\n`` is ``\\x0a``, a lone byte of a multi-byte
character is ``\\xe3``, a backslash is ``\\\\``). It is versioned, never pickled::

    {"format": "scratchlm-tokenizer", "version": 1, "type": "bpe",
     "pattern": "...", "special_tokens": {"<|endoftext|>": 10000},
     "vocab": {"0": "\\x00", ..., "256": " t", ...}, "merges": [[" ", "t"], ...],
     "metadata": {"trained_on": [...], ...}}

Files are written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scratchlm.atomic import atomic_write_text, write_dir_atomically
from scratchlm.errors import TokenizerError
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.char import CharTokenizer
from scratchlm.tokenizer.gpt2 import load_gpt2_files
from scratchlm.tokenizer.hf import from_hf_tokenizer_json
from scratchlm.tokenizer.protocol import Tokenizer

FORMAT = "scratchlm-tokenizer"
VERSION = 1
FILENAME = "tokenizer.json"
# GPT-2's two files, as OpenAI published them and as Hugging Face names them.
GPT2_FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))


def escape_token(token: bytes) -> str:
    """Token bytes -> readable text; ``unescape_token`` inverts it exactly."""
    out = []
    for ch in token.decode("utf-8", errors="surrogateescape"):
        if "\udc80" <= ch <= "\udcff":  # a byte that is not part of valid UTF-8
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def unescape_token(text: str) -> bytes:
    """Readable text from ``escape_token`` -> token bytes."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
        elif text.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif text.startswith("\\x", i) and len(text) >= i + 4:
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            raise TokenizerError(f"bad escape in token {text!r} at index {i}")
    return bytes(out)


def tokenizer_file(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/tokenizer.json``."""
    path = Path(path)
    return path / FILENAME if path.is_dir() or path.suffix != ".json" else path


def write_tokenizer_dir(tok: Tokenizer, out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """Save ``tok`` as ``out_dir/tokenizer.json``, building the folder under a temporary
    name and renaming it into place. An existing ``out_dir`` is refused unless ``force``,
    and then replaced only once the new one is complete."""
    out = write_dir_atomically(out_dir, lambda tmp: save_tokenizer(tok, tmp), force=force)
    return out / FILENAME


def tokenizer_to_dict(tok: Tokenizer) -> dict[str, Any]:
    """The JSON-ready form of a BPETokenizer or CharTokenizer."""
    if isinstance(tok, CharTokenizer):
        return {"format": FORMAT, "version": VERSION, "type": "char", **tok.to_dict()}
    if not isinstance(tok, BPETokenizer):
        raise TokenizerError(
            f"cannot save a {type(tok).__name__}: only BPETokenizer and CharTokenizer have "
            "a file format"
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "type": "bpe",
        "pattern": tok.pattern,
        "special_tokens": tok.special_tokens,
        "vocab": {str(i): escape_token(t) for i, t in sorted(tok.vocab.items())},
        "merges": [[escape_token(a), escape_token(b)] for a, b in tok.merges],
        "metadata": tok.metadata,
    }


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Write ``tok`` in our format as ``path`` (a ``.json`` file name) or
    ``path/tokenizer.json``; returns the file written. ``load_tokenizer`` reads it back."""
    file = tokenizer_file(path)
    atomic_write_text(file, json.dumps(tokenizer_to_dict(tok), ensure_ascii=False, indent=1))
    return file


def load_tokenizer(path: str | os.PathLike, **kwargs: Any) -> BPETokenizer | CharTokenizer:
    """Load a tokenizer from any format we read: our BPE or char ``tokenizer.json``, a
    Hugging Face ``tokenizer.json`` (byte-level BPE), or a folder holding one of them or
    GPT-2's two files (``encoder.json`` + ``vocab.bpe``, or HF's names for them,
    ``vocab.json`` + ``merges.txt``). ``kwargs`` go to the tokenizer's constructor."""
    path = Path(path)
    if not path.exists():
        raise TokenizerError(f"tokenizer path {path} does not exist")
    if path.is_dir() and not (path / FILENAME).exists():
        for encoder, merges in GPT2_FILE_PAIRS:
            if (path / encoder).is_file() and (path / merges).is_file():
                return load_gpt2_files(path / encoder, path / merges, **kwargs)
        pairs = " or ".join(" + ".join(pair) for pair in GPT2_FILE_PAIRS)
        raise TokenizerError(f"{path} has no {FILENAME} (nor GPT-2's {pairs})")
    file = tokenizer_file(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file {file}: {e}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{file} is not a tokenizer file (expected a JSON object)")
    if data.get("format") != FORMAT:
        if "model" in data and "added_tokens" in data:
            return from_hf_tokenizer_json(data, **kwargs)
        raise TokenizerError(f"{file} is not a scratchlm or Hugging Face tokenizer file")
    if data.get("version") != VERSION:
        raise TokenizerError(
            f"{file} has format version {data.get('version')}; this scratchlm reads "
            f"version {VERSION}: upgrade scratchlm"
        )
    try:
        if data["type"] == "char":
            return CharTokenizer.from_dict(data)
        if data["type"] != "bpe":
            raise TokenizerError(f"{file}: unknown tokenizer type {data['type']!r}")
        vocab = {int(i): unescape_token(t) for i, t in data["vocab"].items()}
        merges = [(unescape_token(a), unescape_token(b)) for a, b in data["merges"]]
        return BPETokenizer(
            vocab,
            merges,
            list(data["special_tokens"]),
            pattern=data["pattern"],
            metadata=data.get("metadata"),
            **kwargs,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TokenizerError(f"{file} is damaged or incomplete ({type(e).__name__}: {e})") from None
