"""GGML's Q8_0 quantization, both ways, written out in numpy.

A Q8_0 row of ``n`` values (``n`` a multiple of 32) is ``n / 32`` blocks of 34 bytes:

    scale d   float16, max|x| / 127 over the block's 32 values
    values q  32 x int8, round(x / d) (halves away from zero), so x ~= d * q

The rounding follows ggml-quants.c exactly: the reciprocal ``1 / d`` is taken in float32
before d is rounded to float16, and values are multiplied by it, so the bytes equal those
of llama.cpp's quantizer (and gguf-py's ``gguf.quants.quantize``), as the tests check.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32  # values per block
BLOCK_BYTES = 2 + BLOCK  # float16 scale + 32 int8 values


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """``x`` (rows, cols) float, cols a multiple of 32 -> uint8 (rows, cols / 32 * 34)."""
    rows, cols = x.shape
    assert cols % BLOCK == 0, f"Q8_0 needs a multiple of {BLOCK} columns, got {cols}"
    blocks = x.astype(np.float32).reshape(-1, BLOCK)  # (n_blocks, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inverse = np.where(d == 0, np.float32(0), np.float32(1) / d)  # an all-zero block: q = 0
    scaled = blocks * inverse
    magnitude = np.abs(scaled)
    whole = np.floor(magnitude)
    rounded = whole + (magnitude - whole >= 0.5)  # half away from zero, as C's roundf
    q = (np.sign(scaled) * rounded).astype(np.int8)
    packed = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return packed.reshape(rows, cols // BLOCK * BLOCK_BYTES)


def dequantize_q8_0(raw: np.ndarray, cols: int) -> np.ndarray:
    """uint8 Q8_0 rows (rows, cols / 32 * 34) -> float32 (rows, cols): d * q per block."""
    assert cols % BLOCK == 0 and raw.shape[-1] == cols // BLOCK * BLOCK_BYTES, (raw.shape, cols)
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, BLOCK_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)  # (n_blocks, 32)
    return (d * q).reshape(-1, cols)
