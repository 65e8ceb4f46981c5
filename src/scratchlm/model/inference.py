"""The one inference-only step: ``prepare_for_inference`` turns a model into one for
generating on a CPU, and training never sees what it swaps in.

Decoding multiplies a few rows (one per sequence) by every weight matrix, so its speed is
set by how fast the weights stream from memory, not by the arithmetic. Two changes help,
both only for generation, and both applied here by swapping each ``Linear`` for an
inference module (figures in docs/benchmarks.md):

- ``DecodeLinear``: the weight stored column-major (W^T in memory, which a one-row
  product reads faster) and products of few rows split across the threads
  (``split_linear``), because torch runs a product of so few rows on one core.
- ``Int8Linear`` (model/quantize.py), with ``int8=True``: weights stored as int8.
- with ``bf16=True``, ``DecodeLinear`` holds a bfloat16 copy of the weight: half the
  bytes of float32, activations cast to bfloat16 for the product and back after it.

A third change cuts the step's fixed costs rather than its bytes: the fused layers of
model/decode_blocks.py (q, k, v from one product, gate and up from one, RMSNorm as one
kernel) replace the training layers, for fewer and larger torch calls per step.

A prepared model refuses what needs the training weights (``refuse_prepared``: loss,
save_checkpoint, to_hf): keep the model it was prepared from for those.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.errors import ScratchLMError
from scratchlm.model.decode_blocks import FusedAttention, FusedBlock, FusedRMSNorm, FusedSwiGLU
from scratchlm.model.layers import Linear
from scratchlm.model.quantize import Int8Linear, quantize_weight
from scratchlm.model.transformer import (
    MultiHeadSelfAttention,
    RMSNorm,
    SwiGLU,
    TransformerBlock,
)

# split_linear: at most this many rows (decoding steps of up to 32 sequences).
SPLIT_MAX_ROWS = 32
# Weights smaller than this many entries (1 MiB in float32) stay in the CPU's cache,
# where one core is fast and waking the others costs more than it saves.
SPLIT_MIN_WEIGHTS = 1 << 18


def takes_split_path(x: Tensor, weight: Tensor) -> bool:
    """Whether x (..., in) by weight (out, in) is computed with ``split_linear``: on a
    CPU, without autograd, for at most SPLIT_MAX_ROWS rows and weights of at least
    SPLIT_MIN_WEIGHTS entries, with more than one thread, when the weight is stored in
    one block (row- or column-major), so each thread's part is a view of it. Never
    inside torch.compile, which fuses its own products (and cannot trace the thread
    count)."""
    if torch.compiler.is_compiling() or torch.is_grad_enabled() or not x.is_cpu:
        return False
    threads = torch.get_num_threads()
    out_features, in_features = weight.shape
    # Row- or column-major, read from the strides (weight.t() would be one more op).
    one_block = weight.stride() in ((in_features, 1), (1, out_features))
    return (
        threads > 1
        and out_features >= threads
        and x.numel() <= SPLIT_MAX_ROWS * x.shape[-1]
        and weight.numel() >= SPLIT_MIN_WEIGHTS
        and (one_block or weight.is_contiguous())
    )


def weight_blocks(weight: Tensor, parts: int) -> Tensor:
    """The first parts * n outputs of weight (out, in), n = out // parts, as ``parts``
    blocks (parts, in, n): block p is the view weight[p * n : (p+1) * n] transposed."""
    out_features, in_features = weight.shape
    n = out_features // parts
    return weight[: parts * n].view(parts, n, in_features).transpose(1, 2)


def split_linear(
    x: Tensor, weight: Tensor, parts: int | None = None, blocks: Tensor | None = None
) -> Tensor:
    """x W^T with the outputs split into ``parts`` blocks (default: torch's threads),
    multiplied as one batched product whose batch entries run on separate threads.
    x (..., in), weight (out, in) -> (..., out). Same sums in the same order within each
    output as F.linear, so equal to float rounding (tests/model/test_inference.py).
    ``blocks``: ``weight_blocks(weight, parts)``, when the caller keeps it.

    No copy of the weight: block p is the view weight[p * n : (p+1) * n], n = out // parts.
    When parts does not divide out (GPT-2's 50,257-token vocabulary), the last few rows
    are one small product of their own.
    """
    parts = parts or torch.get_num_threads()
    blocks = weight_blocks(weight, parts) if blocks is None else blocks  # (parts, in, n)
    out_features, in_features = weight.shape
    n = blocks.shape[-1]
    # x @ blocks: torch.matmul broadcasts the rows to every block, one bmm, no copies.
    if x.numel() == in_features:  # one row (a decoding step of one sequence)
        y = torch.matmul(x, blocks).view(*x.shape[:-1], parts * n)  # (..., parts, 1, n)
    else:
        y = torch.matmul(x.reshape(-1, in_features), blocks)  # (parts, M, n)
        y = y.transpose(0, 1).reshape(*x.shape[:-1], parts * n)
    if parts * n < out_features:
        y = torch.cat([y, F.linear(x, weight[parts * n :])], dim=-1)
    return y  # (..., out)


class DecodeLinear(nn.Module):
    """A Linear for generation: y = x W^T (+ b), the product of few rows split across
    the threads. Holds W (out, in) in whatever layout ``prepare_for_inference`` chose
    (column-major for its own copy; a tied weight is shared as it is) and dtype: a
    weight of another dtype than the activations (bfloat16) takes them cast to its
    dtype, and returns the product cast back (the bias added in the activations' dtype)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # Not a parameter and not saved: nothing may train or checkpoint this module.
        self.register_buffer("decode_weight", weight.detach(), persistent=False)  # (out, in)
        self.register_buffer(
            "bias", None if bias is None else bias.detach(), persistent=False
        )  # (out,)
        # (weight, parts, weight_blocks(weight, parts)) of the last split product: the
        # views are taken once, not every step (again if the weight or threads change).
        self._blocks: tuple[Tensor, int, Tensor] | None = None

    @property
    def weight(self) -> Tensor:
        raise ScratchLMError(
            "this model was prepared for generation: train, save or export the model it "
            "was prepared from"
        )

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        w = self.decode_weight
        if w.dtype != x.dtype:  # bfloat16 weights: the product in bfloat16
            rows = x.to(w.dtype)
            y = self._split(rows, w) if takes_split_path(rows, w) else F.linear(rows, w)
            y = y.to(x.dtype)
            return y if self.bias is None else y + self.bias
        if takes_split_path(x, w):
            y = self._split(x, w)
            return y if self.bias is None else y + self.bias
        return F.linear(x, w, self.bias)

    def _split(self, x: Tensor, w: Tensor) -> Tensor:
        parts = torch.get_num_threads()
        kept = self._blocks
        if kept is None or kept[0] is not w or kept[1] != parts:
            kept = self._blocks = (w, parts, weight_blocks(w, parts))
        return split_linear(x, w, parts, kept[2])

    def extra_repr(self) -> str:
        w = self.decode_weight
        kind = "decode" if w.dtype == torch.float32 else f"decode, {w.dtype}"
        return f"{self.in_features} -> {self.out_features}, {kind}, bias={self.bias is not None}"


def prepare_for_inference(
    model: nn.Module, int8: bool = False, in_place: bool = True, bf16: bool = False
) -> nn.Module:
    """``model`` made ready for generation; returned in eval mode.

    Every ``Linear`` becomes a ``DecodeLinear`` whose weight is a column-major copy (a
    weight tied to the embedding is shared, not copied), or with ``int8`` an
    ``Int8Linear`` (a tied output projection gets its own int8 copy), or with ``bf16`` a
    ``DecodeLinear`` holding a column-major bfloat16 copy (a tied output projection gets
    its own; embeddings, norms, activations and the KV cache stay float32). Greedy
    tokens of int8 and bf16 may part from float32's where two top logits are closer
    than their rounding (docs/model.md). In place, the attention, SwiGLU and RMSNorm
    layers also become their fused forms (``fuse_layers``; their stacked weights are new
    copies, in the same dtype and layout as the other products).

    in_place=False leaves ``model`` as it was (still trainable) and returns a new module
    tree that shares its weights without copying or re-laying them out: what the
    generation engine does with a model that was not prepared (a model being trained,
    sampled between steps), which keeps the split product but not the layout.
    Preparing a prepared model is refused.
    """
    if is_prepared(model):
        raise ScratchLMError("this model is already prepared for generation (or quantized)")
    if int8 and bf16:
        raise ScratchLMError("pick one of int8 and bf16 weights for generation, not both")
    if not in_place:
        if not _linears(model):
            return model  # nothing to swap (a stand-in model, say): no copy needed
        # A deep copy whose memo maps every tensor to itself: new modules, shared tensors.
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        model = copy.deepcopy(model, memo=shared)
    others = {  # weights that another layer also uses (a tied embedding)
        id(p)
        for m in model.modules()
        if not isinstance(m, Linear | nn.Linear)
        for p in m.parameters(recurse=False)
    }

    def product(weight: Tensor, bias: Tensor | None) -> nn.Module:
        """The inference module for a copy of ``weight`` (out, in)."""
        if int8:
            return Int8Linear(*quantize_weight(weight), bias)
        dtype = torch.bfloat16 if bf16 else weight.dtype
        # W^T row-major in memory, seen as (out, in): a one-row product reads it faster.
        return DecodeLinear(weight.detach().to(dtype).t().contiguous().t(), bias)

    if in_place:
        fuse_layers(model, product)
    for parent, name, child in _linears(model):
        if int8 or bf16 or (in_place and id(child.weight) not in others):
            new = product(child.weight, child.bias)
        else:  # shared, as it is (a tied weight, or a model left as it was)
            new = DecodeLinear(child.weight, child.bias)
        setattr(parent, name, new)
    return model.eval()


def fuse_layers(model: nn.Module, product: Callable[[Tensor, Tensor | None], nn.Module]) -> None:
    """Swap, in place, each attention for a ``FusedAttention`` (its q, k, v weights
    stacked into one product), each SwiGLU for a ``FusedSwiGLU`` (gate and up stacked),
    each RMSNorm for a ``FusedRMSNorm`` and each block for a ``FusedBlock`` (no dropout
    layers). ``product(weight, bias)`` builds the module
    of a stacked weight (out, in). The other Linears are left for the caller, and so
    are layers whose projections are not plain Linears (an adapter wrapped around one
    must keep computing its own product)."""

    def plain(*layers: nn.Module) -> bool:
        return all(type(layer) in (Linear, nn.Linear) for layer in layers)

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            attention = (
                (child.q_proj, child.k_proj, child.v_proj)
                if isinstance(child, MultiHeadSelfAttention)
                else ()
            )
            if attention and plain(*attention):
                new = FusedAttention(child, product(*_stacked(attention)))
            elif isinstance(child, SwiGLU) and plain(child.gate_proj, child.up_proj):
                new = FusedSwiGLU(child, product(*_stacked((child.gate_proj, child.up_proj))))
            elif type(child) is RMSNorm:
                new = FusedRMSNorm(child)
            else:
                continue
            setattr(parent, name, new)
    # Then the blocks, around the layers they now hold.
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is TransformerBlock:
                setattr(parent, name, FusedBlock(child))


def _stacked(layers: tuple[nn.Module, ...]) -> tuple[Tensor, Tensor | None]:
    """The weights of ``layers`` stacked along the outputs, (sum of out, in), and their
    biases likewise (None if they have none)."""
    weight = torch.cat([layer.weight.detach() for layer in layers])
    biases = [layer.bias for layer in layers]
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    return weight, bias


def _linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, layer) for every training Linear in ``model``."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, Linear | nn.Linear)
    ]


def is_prepared(model: nn.Module) -> bool:
    """Whether ``model`` went through ``prepare_for_inference`` (or holds int8 layers)."""
    return any(isinstance(m, DecodeLinear | Int8Linear) for m in model.modules())


def refuse_prepared(model: nn.Module, action: str) -> None:
    """Raise a clear error when ``action`` (e.g. "saved as a checkpoint") needs the
    training weights that ``prepare_for_inference`` replaced."""
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        raise ScratchLMError(
            f"an int8-quantized model cannot be {action}: use the float model it was "
            "quantized from (quantize again after loading it)"
        )
    if is_prepared(model):
        raise ScratchLMError(
            f"a model prepared for generation cannot be {action}: use the model it was "
            "prepared from"
        )
