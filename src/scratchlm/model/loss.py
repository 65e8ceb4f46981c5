"""Cross-entropy, written out, and a fused fast path that never holds all the logits.

The language-model loss is the mean over positions of -log softmax(logits)[target]
(``reduction="sum"`` gives the sum, for a caller that divides by a count of its own: the
trainer divides by the target tokens of the whole step, across micro-batches and ranks).
``cross_entropy`` is that formula, computed stably: log softmax(z)_t = z_t - logsumexp(z),
and logsumexp subtracts the max before exponentiating, so huge logits do not overflow.

``linear_cross_entropy`` fuses the output projection with the loss. For N positions and
a vocabulary of V it never builds the (N, V) logits at once: it works through chunks of
rows, and while a chunk's logits are at hand it also computes their gradient, which for
cross-entropy is simply (softmax - one_hot) / N (without the / N for a sum). Backward
then only scales the gradients it saved. Same numbers as ``cross_entropy(hidden @
weight.T)`` (a test proves it). With ``softcap`` the logits are soft-capped first,
cap * tanh(z / cap) as the model's forward pass does, and the chain rule multiplies the
gradient by the cap's derivative, 1 - tanh(z / cap)^2. What it saves is memory: only one
chunk's logits and their gradient exist at a time, never the (N, V) of a whole batch; the
figures are in docs/benchmarks.md (bench/bench_model.py, table 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scratchlm.errors import DataError
from scratchlm.model.layers import softcap as soft_cap

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum")
LOSS_CHUNK = 256  # rows of logits at a time: (256, V) float32 is 10 MiB at V = 10,000


def _check_reduction(reduction: str) -> None:
    assert reduction in REDUCTIONS, f"reduction must be one of {REDUCTIONS}, got {reduction!r}"


def cross_entropy(
    logits: Tensor, targets: Tensor, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"
) -> Tensor:
    """Mean (or, with ``reduction="sum"``, sum) of -log softmax(logits)[target] over
    targets that are not ``ignore_index``.

    logits (..., V), targets (...) long. Returns a scalar; 0 when every target is
    ignored (a batch with nothing to learn adds nothing).
    """
    _check_reduction(reduction)
    logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> f32
    targets = targets.reshape(-1)  # (N,)
    keep = targets != ignore_index
    logits, targets = logits[keep], targets[keep]
    if targets.numel() == 0:
        return logits.sum() * 0.0
    m = logits.amax(dim=-1, keepdim=True)  # (N, 1): subtracted so exp() cannot overflow
    logsumexp = m.squeeze(-1) + torch.log(torch.exp(logits - m).sum(dim=-1))  # (N,)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    losses = logsumexp - picked  # (N,)
    return losses.sum() if reduction == "sum" else losses.mean()


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = LOSS_CHUNK,
    reduction: str = "mean",
    softcap: float | None = None,
) -> Tensor:
    """``cross_entropy(hidden @ weight.T, targets, reduction=...)`` without materialising
    all logits; with ``softcap``, ``cross_entropy(softcap(hidden @ weight.T, cap), ...)``.

    hidden (..., d), weight (V, d) (the output projection), targets (...) long.
    reduction: "mean" over the kept targets, or "sum". Returns a scalar, differentiable
    with respect to ``hidden`` and ``weight``.
    """
    _check_reduction(reduction)
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, d)
    targets = targets.reshape(-1)  # (N,)
    return _LinearCrossEntropy.apply(
        h, weight, targets, ignore_index, chunk_size, reduction, softcap
    )


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss and its gradients in one chunked pass (gradients computed in forward)."""

    @staticmethod
    def forward(
        ctx,
        h: Tensor,
        weight: Tensor,
        targets: Tensor,
        ignore_index: int,
        chunk: int,
        reduction: str,
        cap: float | None,
    ):
        ctx.weight_dtype = weight.dtype
        if weight.dtype != h.dtype and not torch.is_autocast_enabled(h.device.type):
            # A frozen bf16 output layer (LoRA's bf16 base) without autocast: cast once
            # here, not per chunk. Under autocast the products take it as it is.
            weight = weight.to(h.dtype)
        n_valid = int((targets != ignore_index).sum())  # one host sync per call
        divisor = max(n_valid, 1) if reduction == "mean" else 1
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(h) if want_h else None
        grad_w = None
        if want_w:
            grad_w = torch.zeros_like(
                weight, dtype=torch.promote_types(weight.dtype, torch.float32)
            )
        acc = torch.promote_types(h.dtype, torch.float32)  # accumulate in f32 or f64
        total = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start : start + chunk], targets[start : start + chunk]
            keep = tc != ignore_index
            rows = slice(None)
            if not bool(keep.all()):  # drop ignored rows (the common case keeps all)
                rows = keep.nonzero().squeeze(1)
                hc, tc = hc[rows], tc[rows]
            if tc.numel() == 0:
                continue
            logits = hc @ weight.t()  # (C, V)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # f32 at least
            if cap is not None:
                raw = logits
                logits = soft_cap(raw, cap)  # (C, V)
            picked = logits.gather(1, tc[:, None]).squeeze(1)  # (C,)
            # logsumexp written out in place (torch.logsumexp would allocate a second
            # (C, V) buffer): exp(z - max) overwrites the logits, which then become the
            # softmax, the gradient's main part.
            top = logits.amax(dim=-1)  # (C,)
            exp = logits.sub_(top[:, None]).exp_()  # (C, V), in [0, 1]
            sums = exp.sum(dim=-1)  # (C,) >= 1: the max's own term is 1
            total += (top + sums.log() - picked).sum()
            if not (want_h or want_w):
                continue
            # d(loss)/d(logits) = (softmax - one_hot) / divisor, built in place.
            grad = exp.div_(sums[:, None])
            grad.scatter_add_(1, tc[:, None], torch.full_like(picked, -1.0)[:, None])
            if cap is not None:  # chain rule through cap * tanh(z / cap): 1 - tanh^2
                grad.mul_(raw.div_(cap).tanh_().square_().neg_().add_(1.0))
            grad = grad.div_(divisor).to(hc.dtype)  # (C, V)
            if want_h:
                grad_h[start : start + chunk][rows] = (grad @ weight).to(h.dtype)
            if want_w and grad.dtype == grad_w.dtype:
                grad_w.addmm_(grad.t(), hc)  # written in place: no (V, d) temporary
            elif want_w:
                grad_w += (grad.t() @ hc).to(grad_w.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        return total / divisor

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_loss if grad_h is not None else None
        dw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None, None


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    """Convert a loss in nats per token to bits per byte of the original text.

    loss / ln 2 turns nats into bits; dividing by the average number of text bytes per
    token makes models with different tokenizers comparable (a tokenizer with longer
    tokens has a higher loss per token for the same text). A uniform guess over 256 byte
    values at 1 byte per token scores exactly 8.
    """
    if not bytes_per_token > 0:  # also refuses NaN
        raise DataError(f"bytes_per_token must be positive, got {bytes_per_token}")
    return loss / math.log(2.0) / bytes_per_token
