"""Token files: what ``prepare`` writes and the trainer reads.

A data directory holds::

    train.bin   token ids of the training documents, each document followed by the
                end-of-text id; raw little-endian uint16 (vocab_size <= 65536) or uint32
    val.bin     the same for the validation documents
    meta.json   format version, tokenizer fingerprint, vocab size, dtype, end-of-text id,
                per split: tokens, documents, bytes of text and bytes per token; the
                source files (size, sha256), the settings used, the UTF-8 repairs, and a
                fingerprint of all that (``data_fingerprint``), which a resumed run compares

``open_tokens`` maps a split read-only (``np.memmap``): nothing is loaded until indexed.
The tokenizer fingerprint is the SHA-256 of the tokenizer's canonical JSON (metadata left
out), so token files are never read with a tokenizer whose ids mean something else.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.errors import DataError
from scratchlm.tokenizer import Tokenizer
from scratchlm.tokenizer.files import tokenizer_to_dict

FORMAT = "scratchlm-tokens"
VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned little-endian type that holds every id below ``vocab_size``."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """SHA-256 (hex) of the tokenizer's canonical JSON: vocab, merges, special tokens and
    pattern. Free-form metadata is left out: it does not change any id."""
    data = {k: v for k, v in tokenizer_to_dict(tok).items() if k != "metadata"}
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def data_fingerprint(meta: dict[str, Any]) -> str:
    """SHA-256 (hex) of what the token files hold: the content (size and SHA-256) of every
    source file in order, the tokenizer's fingerprint, the settings and the resulting
    token counts. Paths are left out, so a moved or copied directory keeps its
    fingerprint, and text prepared again under the same path gets another. ``prepare``
    records it as ``fingerprint``; for a meta.json written before that, it is computed
    from the same fields here."""
    recorded = meta.get("fingerprint")
    if isinstance(recorded, str):
        return recorded
    sources = [(s.get("size"), s.get("sha256")) for s in meta.get("sources") or []]
    splits = {
        name: [split.get(k) for k in ("tokens", "documents", "bytes")]
        for name, split in (meta.get("splits") or {}).items()
    }
    content = [
        sources,
        meta.get("tokenizer_fingerprint"),
        meta.get("settings"),
        meta.get("split_rule"),
        meta.get("dtype"),
        splits,
    ]
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``meta.json`` of a data directory written by ``prepare``."""
    file = Path(data_dir) / META_FILE
    redo = "run `scratchlm prepare` to write it again"
    if not file.is_file():
        raise DataError(
            f"{data_dir} has no {META_FILE}: it is not a prepared data directory; {redo}"
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {file} ({e}); {redo}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{file} is not a scratchlm token-file description; {redo}")
    if meta.get("version") != VERSION:
        raise DataError(
            f"{file} has format version {meta.get('version')}, this scratchlm reads version "
            f"{VERSION}; {redo}"
        )
    try:
        np.dtype(meta["dtype"])
        for split in SPLITS:
            int(meta["splits"][split]["tokens"])
        str(meta["tokenizer_fingerprint"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{file} is damaged or incomplete ({type(e).__name__}: {e}); {redo}"
        ) from None
    return meta


def split_file(data_dir: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return Path(data_dir) / f"{split}.bin"


def check_split_size(data_dir: str | os.PathLike, meta: dict[str, Any], split: str) -> Path:
    """The split's file, after checking that its size matches meta.json."""
    file = split_file(data_dir, split)
    expected = int(meta["splits"][split]["tokens"]) * np.dtype(meta["dtype"]).itemsize
    try:
        size = file.stat().st_size
    except OSError:
        raise DataError(f"{file} is missing; run `scratchlm prepare` again") from None
    if size != expected:
        raise DataError(
            f"{file} has {size} bytes but {META_FILE} says {expected}: the directory is "
            "damaged; run `scratchlm prepare` again"
        )
    return file


def open_tokens(
    data_dir: str | os.PathLike, split: str = "train", tokenizer: Tokenizer | None = None
) -> np.memmap:
    """Map one split read-only: a 1-D array of token ids, shape (n_tokens,).

    With ``tokenizer``, refuses files made with a different one (their ids would mean
    other text).
    """
    meta = read_meta(data_dir)
    if tokenizer is not None:
        have, want = meta["tokenizer_fingerprint"], tokenizer_fingerprint(tokenizer)
        if have != want:
            raise DataError(
                f"{data_dir} was prepared with tokenizer {have[:12]}, not this one "
                f"({want[:12]}): run `scratchlm prepare` again with this tokenizer"
            )
    file = check_split_size(data_dir, meta, split)
    if int(meta["splits"][split]["tokens"]) == 0:
        raise DataError(f"{file} holds no tokens; run `scratchlm prepare` with more documents")
    tokens = np.memmap(file, dtype=np.dtype(meta["dtype"]), mode="r")
    advice = getattr(mmap, "MADV_RANDOM", None)  # Linux and macOS; not Windows
    if advice is not None and tokens._mmap is not None:
        # Training reads a few hundred bytes at random places: without this hint the
        # kernel reads ahead megabytes around each window (docs/benchmarks.md, cold files).
        tokens._mmap.madvise(advice)
    return tokens
