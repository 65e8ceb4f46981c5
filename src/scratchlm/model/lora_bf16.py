"""The frozen base of LoRA in bfloat16: half the memory of float32 weights, and no
per-step copies of them under bf16 autocast.

LoRA never updates the base weights, so they need no float32 master copy (what float32
keeps for training is the small updates an optimizer adds; the base gets none). Under
bf16 autocast every matrix product rounds its float32 weight to bf16 anyway, and for a
weight that requires no gradient autocast caches nothing: each forward makes a fresh
bf16 copy of every frozen weight, and autograd keeps it until the backward pass (the
gradient sent back to earlier layers' adapters is multiplied by it). Stored in bf16,
the weight goes into the product as it is: the same numbers as the float32 base under
bf16 autocast, with half its memory and no copies.

``store_base_bf16`` stores every frozen matrix in bf16: each Linear's weight (the output
layer's too) as a ``FrozenBf16Linear``, and the token (and position) embeddings as a
``FrozenBf16Embedding``, whose rows are given back in the dtype the model computes in
(float32), so the residual stream stays float32. Biases and norm gains are vectors, a
rounding error of no memory worth saving: they keep their dtype. The adapters stay
float32 (they are trained). A tied embedding and output layer stay one tensor.

What changes: the embedding rows are rounded to bf16 (at most 2^-9 of each value), which
the products never did; the Linear weights compute as before under bf16 autocast.
Without autocast (fp32 training, evaluation), a frozen bf16 weight is cast to the
input's dtype where it is used, so the base computes as the float model with bf16-rounded
weights. Merging gives those weights in float32 plus the update (model/lora.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.layers import Embedding, Linear


def weight_for(x: Tensor, weight: Tensor) -> Tensor:
    """``weight`` as a product with ``x`` takes it: as stored under autocast (which casts
    the operands itself, and leaves a bf16 weight as it is under bf16 autocast), else in
    ``x``'s dtype (a bf16 weight times float32 activations without autocast)."""
    if weight.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return weight
    return weight.to(x.dtype)


class FrozenBf16Linear(nn.Module):
    """A frozen Linear whose weight (out, in) is stored in bf16; ``bias`` keeps its dtype.
    ``dtype``: the dtype the weight had, which merging gives back."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight  # (out, in) bf16, requires_grad False
        self.bias = bias
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return F.linear(x, weight_for(x, self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, bf16, frozen"


class FrozenBf16Embedding(nn.Module):
    """A frozen lookup table stored in bf16: ids (...) -> rows (..., dim) in ``dtype``
    (the dtype the table had: the model's residual stream keeps it)."""

    def __init__(self, weight: nn.Parameter, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.weight = weight  # (num, dim) bf16, requires_grad False
        self.dtype = dtype

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight[ids].to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} x {self.embedding_dim}, bf16, frozen"


def store_base_bf16(model: nn.Module) -> list[str]:
    """Replace every Linear and Embedding of ``model`` by its frozen bf16 form, in place
    (a tensor shared by two modules, a tied output layer, becomes one bf16 tensor);
    returns their names. Each float weight is released as its module is replaced."""
    stored: dict[int, nn.Parameter] = {}

    def bf16(p: nn.Parameter) -> nn.Parameter:
        if id(p) not in stored:
            stored[id(p)] = nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
        return stored[id(p)]

    names = []
    for name, m in list(model.named_modules()):
        if isinstance(m, Linear):
            frozen: nn.Module = FrozenBf16Linear(bf16(m.weight), m.bias, m.weight.dtype)
        elif isinstance(m, Embedding):
            frozen = FrozenBf16Embedding(bf16(m.weight), m.weight.dtype)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, frozen.train(m.training))
        names.append(name)
    return names


def float_module(m: FrozenBf16Linear | FrozenBf16Embedding, weight: nn.Parameter) -> nn.Module:
    """The plain Linear or Embedding ``m`` stands for, holding ``weight`` (the caller
    makes it, once per shared tensor); ``m``'s bias moves along."""
    with torch.device("meta"):  # no allocation: the weight is moved in
        if isinstance(m, FrozenBf16Linear):
            plain: nn.Module = Linear(m.in_features, m.out_features, bias=m.bias is not None)
            plain.bias = m.bias
        else:
            plain = Embedding(m.num_embeddings, m.embedding_dim)
    plain.weight = weight
    return plain.train(m.training)
