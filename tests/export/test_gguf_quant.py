"""Our Q8_0 quantizer against gguf-py's reference (bit-exact with ggml-quants.c)."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from scratchlm.export.gguf_quant import dequantize_q8_0, quantize_q8_0  # noqa: E402

Q8_0 = gguf.GGMLQuantizationType.Q8_0


def _matrices() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    scaled = rng.standard_normal((48, 128)) * rng.exponential(1.0, (48, 1))
    scaled[0, :32] = 0.0  # an all-zero block: scale 0, values 0
    scaled[1, :32] = np.linspace(-1, 1, 32)
    # Values landing exactly on .5 after scaling: roundf goes away from zero.
    ties = np.tile(np.array([127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 63.5] * 4), (4, 1))
    tiny = rng.standard_normal((8, 64)) * 1e-6
    huge = rng.standard_normal((8, 64)) * 1e4
    return [m.astype(np.float32) for m in (scaled, ties, tiny, huge)]


@pytest.mark.parametrize("index", range(4), ids=["scaled", "ties", "tiny", "huge"])
def test_q8_0_bytes_equal_gguf_py(index):
    x = _matrices()[index]
    ours = quantize_q8_0(x)
    reference = gguf.quants.quantize(x, Q8_0)
    assert ours.dtype == np.uint8 and ours.shape == reference.shape
    assert np.array_equal(ours, reference)
    back = dequantize_q8_0(ours, x.shape[1])
    assert np.array_equal(back, gguf.quants.dequantize(reference, Q8_0).astype(np.float32))


def test_q8_0_error_is_within_half_a_step_per_block():
    x = _matrices()[0]
    back = dequantize_q8_0(quantize_q8_0(x), x.shape[1])
    blocks, err = x.reshape(-1, 32), np.abs(back - x).reshape(-1, 32)
    step = np.abs(blocks).max(axis=1, keepdims=True) / 127
    # Half a step from rounding, plus the float16 rounding of the scale (2^-11 relative).
    assert (err <= step * (0.5 + 127 * 2**-11) + 1e-12).all()
