"""Helpers of the data tests: small corpora and a reference decoder of token files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"


def make_docs(n: int, tag: str = "") -> list[str]:
    """``n`` distinct small documents with words, digits, newlines and non-ASCII text."""
    animals = ["fox", "owl", "cat", "bee", "elk", "yak", "eel"]
    return [
        f"Document {i}{tag}: the {animals[i % 7]} jumps over {i * 7} hills.\n"
        f"Line two of {i}, naïve café 日本 {i % 3}.\n"
        for i in range(n)
    ]


def write_eot_file(path: Path, docs: list[str]) -> Path:
    """Documents joined by the end-of-text marker, as the benchmark corpora are."""
    path.write_text(EOT.join(docs), encoding="utf-8", newline="")
    return path


def split_at(ids: np.ndarray, eot: int) -> list[list[int]]:
    """Token ids cut after every end-of-text id, which must end the array."""
    ids = [int(i) for i in ids]
    assert ids and ids[-1] == eot, "a token file must end with the end-of-text id"
    docs, current = [], []
    for i in ids:
        if i == eot:
            docs.append(current)
            current = []
        else:
            current.append(i)
    return docs


def content_hash(text: str) -> float:
    """The documented split hash, written independently: blake2b (8 bytes) / 2**64."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
