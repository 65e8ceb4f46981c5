"""The frozen base of LoRA in int8 ("QLoRA-lite"): LoRA trains only the adapters, so the
base weights are read, never updated, and can be stored in a quarter of the memory.

QLoRA (Dettmers et al., 2023) keeps the frozen base in 4-bit NF4 and computes in
bf16. Here the base uses the int8 format of ``model/quantize.py`` (one absmax scale per
output row, w ~ q * scale), so ``FrozenInt8Linear`` computes

    y = (x q^T) * scale (+ b)

and, for the gradient that flows back to the earlier layers (their adapters need it),

    dL/dx = (dL/dy * scale) q

``Int8Matmul`` writes that backward by hand so that autograd keeps only the int8 ``q``
for it, not the float copy the forward made (torch's own matmul would save that copy,
which brings the float weights back in memory until the backward pass). The float
weights exist one layer at a time, while that layer computes.

Only the hidden layers' Linear weights are quantized; the embedding, the norms and the
output layer keep their float weights, as in QLoRA. Quantizing changes the base model
(by at most half a scale step per weight); merging the adapters gives the dequantized
weights plus the update, in float.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scratchlm.model.layers import Linear
from scratchlm.model.quantize import dequantize_weight, quantize_weight

OUTPUT_LAYER = "lm_head"


class Int8Matmul(torch.autograd.Function):
    """x (..., in), q (out, in) int8, scale (out,) -> x q^T * scale (..., out); the
    backward gives x's gradient only (q and scale are frozen)."""

    @staticmethod
    def forward(ctx, x: Tensor, q: Tensor, scale: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(q, scale)
        return (x @ q.t().to(x.dtype)) * scale.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        q, scale = ctx.saved_tensors
        return (grad * scale.to(grad.dtype)) @ q.to(grad.dtype), None, None


class FrozenInt8Linear(nn.Module):
    """A frozen Linear stored as int8 rows with one float32 scale each, for training
    around it (its input's gradient flows through; it has none of its own)."""

    def __init__(self, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("qweight", q.contiguous())  # (out, in) int8
        self.register_buffer("scale", scale.float())  # (out,)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: Linear) -> FrozenInt8Linear:
        return cls(*quantize_weight(linear.weight), linear.bias)

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        y = Int8Matmul.apply(x, self.qweight, self.scale)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> Tensor:
        """The weight it stands for, (out, in) float32."""
        return dequantize_weight(self.qweight, self.scale)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, int8, frozen"


def quantize_base(model: nn.Module) -> list[str]:
    """Replace every Linear but the output layer by a ``FrozenInt8Linear``, in place;
    returns their names. The float weights are released as each layer is replaced."""
    names = [n for n, m in model.named_modules() if isinstance(m, Linear) and n != OUTPUT_LAYER]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FrozenInt8Linear.from_linear(getattr(parent, child)))
    return names
