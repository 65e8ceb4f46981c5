"""Weight-only int8 quantization: a smaller, faster model for generating on a CPU.

Decoding one token multiplies a single row of activations by every weight matrix, so
its speed is set by the bytes of weights read from memory per token, not by the
arithmetic. Storing each Linear's weight as int8 reads 4x fewer bytes.

Symmetric, one scale per output row (absmax):

    scale[o] = max_i |w[o, i]| / 127        q[o, i] = round(w[o, i] / scale[o])  in [-127, 127]
    w[o, i] ~ q[o, i] * scale[o]            (error at most scale[o] / 2 per weight)

and, since each output's sum uses one row of w, the scale factors out of it:

    y[o] = sum_i x[i] * w[o, i] ~ scale[o] * sum_i x[i] * q[o, i]

``Int8Linear.forward`` computes that in one of two ways. The readable path is the last
formula: multiply by q (as floats of the activations' dtype), then scale each output.
The fast path, for decoding steps on a CPU, is PyTorch's fused kernel
``_weight_int8pack_mm``, which reads the int8 weights directly and takes bfloat16
activations; a test proves the two agree to bfloat16's precision.

Only the weights are quantized: embeddings, norms and the KV cache keep their dtype.
It is an inference transform, applied by ``prepare_for_inference(model, int8=True)``
(model/inference.py): a quantized model cannot be trained, saved as a checkpoint or
exported (keep the float checkpoint it came from).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scratchlm.errors import ScratchLMError
from scratchlm.model.layers import Linear

# The fused kernel serves decoding steps: one new position per sequence, x (B, 1, in),
# for batches of up to this many sequences. It computes each row on its own (a row's
# result does not depend on the others), so a batched row equals that sequence run
# alone. Its cost grows in proportion to the rows, while a float matrix product gets
# cheaper per row, so prompts (many positions at once) and larger batches take the
# readable path (docs/benchmarks.md).
FAST_MAX_ROWS = 32
# The fused CPU kernel reads in_features in blocks of 16 and does not check it: other
# widths return garbage or crash the process (torch 2.13), so they take the readable path.
FAST_IN_MULTIPLE = 16


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight (out, in) float -> q (out, in) int8 in [-127, 127], scale (out,) float32.

    An all-zero row gets scale 1 (its q is all zero), so dequantizing never divides by 0.
    """
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0  # (out,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def dequantize_weight(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """q (out, in) int8, scale (out,) -> the approximate weight (out, in) in ``dtype``."""
    return q.to(dtype) * scale.to(dtype)[:, None]


class Int8Linear(nn.Module):
    """A Linear whose weight is stored as int8 rows with one float32 scale each:
    y = x W^T (+ b) with W = q * scale[:, None]. Built with ``from_linear``."""

    def __init__(self, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("qweight", q.contiguous())  # (out, in) int8
        self.register_buffer("scale", scale.float())  # (out,)
        # The fused kernel wants its scales in the activations' dtype (bfloat16).
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        # Whether forward may take the fused kernel (it still checks device and rows).
        self.use_fast_kernel = (
            hasattr(torch.ops.aten, "_weight_int8pack_mm")
            and self.in_features % FAST_IN_MULTIPLE == 0
        )

    @classmethod
    def from_linear(cls, linear: Linear | nn.Linear) -> Int8Linear:
        return cls(*quantize_weight(linear.weight), linear.bias)  # on the weight's device

    @property
    def weight(self) -> Tensor:
        raise ScratchLMError(
            "this model's weights are quantized to int8 for generation: train, save or "
            "export the float model it was quantized from"
        )

    def takes_fast_path(self, x: Tensor) -> bool:
        """Whether ``forward(x)`` uses the fused kernel: on a CPU, for a decoding step
        (x (B, 1, in), or one row (1, in)) of at most FAST_MAX_ROWS sequences, without
        autograd (the kernel has no backward)."""
        return (
            self.use_fast_kernel
            and x.is_cpu
            and x.dim() >= 2
            and x.shape[-2] == 1
            and x.numel() <= FAST_MAX_ROWS * self.in_features
            and not torch.is_grad_enabled()
        )

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        if self.takes_fast_path(x):
            rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # (N, in)
            y = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scale_bf16)
            y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)  # (..., out)
        else:
            y = (x @ self.qweight.t().to(x.dtype)) * self.scale.to(x.dtype)  # (..., out)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, int8, bias={self.bias is not None}"
