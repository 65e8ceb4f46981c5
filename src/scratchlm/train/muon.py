"""Muon: momentum, then Newton-Schulz orthogonalisation of each weight matrix's update,
with AdamW for the parameters that are not hidden-layer matrices.

Muon (Keller Jordan, 2024, "Muon: An optimizer for hidden layers in neural networks")
replaces a matrix's momentum update M (shape A x B) by the nearest semi-orthogonal matrix
U V^T (M = U S V^T), so that every direction of the update moves by the same amount
however unequal the gradient's singular values are. Computing U V^T with an SVD is slow;
a few steps of a quintic Newton-Schulz iteration get close enough (``newton_schulz``).

Muon is for the matrices of the hidden layers only. Embeddings (a row moves only when its
token occurs), the output layer, norm gains and biases step with AdamW in the same
optimizer (``Muon`` holds both kinds of group; a group's ``use_muon`` says which).

The update of a Muon matrix p (A x B) with gradient g, as ``torch.optim.Muon`` computes it:

    b   <- momentum * b + (1 - momentum) * g              momentum buffer
    u   <- (1 - momentum) * g + momentum * b   (Nesterov; else u = b)
    O   <- newton_schulz(u)                               singular values near 1
    p   <- p * (1 - lr * wd)                              decoupled weight decay
    p   <- p - lr * sqrt(max(1, A / B)) * O

The sqrt(max(1, A/B)) factor is the reference implementation's shape scaling: O's entries
have RMS about 1/sqrt(max(A, B)), and the factor makes the step of a tall matrix as large
per entry as that of a wide one. One difference from torch: torch always iterates in
bfloat16; here ``ns_dtype`` picks (float32 by default, so that a CPU run is exact and
reproducible; bfloat16 is the faster choice on a GPU). With ``ns_dtype=torch.bfloat16``
the two compute the same parameters (tests/train/test_muon.py).

Learning rates: the trainer writes its scheduled learning rate (the AdamW one) into every
group's ``lr``; a Muon group steps at ``lr * lr_ratio`` (``lr_ratio = muon_lr / lr``, set
by ``build_optimizer``), so both kinds follow the same warmup and decay.

Data parallel: DDP all-reduces the gradients before the step, so every process holds the
full gradient of each matrix and orthogonalises the same full update. A sharded model
(FSDP) holds only a slice of each matrix, and the orthogonalisation of a slice is not a
slice of the orthogonalisation: TrainConfig refuses muon with fsdp.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from scratchlm.errors import ConfigError
from scratchlm.train.adamw import adamw_update

# The quintic's coefficients (a, b, c) from Keller Jordan's Muon: chosen to make the
# slope at 0 as large as possible (a), so that 5 steps lift small singular values, at the
# price of not converging exactly to 1: the results land in roughly [0.5, 1.5].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def newton_schulz(
    g: Tensor,
    steps: int = NS_STEPS,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """An approximately semi-orthogonal matrix with the singular vectors of ``g``.

    g: (A, B). Returns (A, B) in ``dtype``: about U S' V^T where g = U S V^T and the
    diagonal S' lies roughly in [0.5, 1.5] (exactly 1 would be U V^T). Each step applies
    the odd polynomial p(x) = a x + b x^3 + c x^5 to the singular values:

        X <- a X + (b (X X^T) + c (X X^T)^2) X

    X starts as g / ||g||_F, so every singular value starts in [0, 1]. The iteration
    works on the wide orientation (A <= B), where X X^T is the smaller Gram matrix.
    """
    if g.dim() != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T  # (B, A), wide
    x = x / x.norm().clamp(min=eps)  # Frobenius norm >= spectral norm: singular values <= 1
    for _ in range(steps):
        gram = x @ x.T  # (rows, rows)
        # b * gram + c * gram @ gram, then a * x + that @ x (addmm, as torch's Muon does)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def _check_group(group: dict[str, Any]) -> None:
    if not group["lr"] >= 0 or not group["weight_decay"] >= 0:
        raise ConfigError(
            f"lr and weight_decay must be >= 0, got {group['lr']}, {group['weight_decay']}"
        )
    if group["use_muon"]:
        if not 0.0 <= group["momentum"] < 1.0:
            raise ConfigError(f"muon momentum must be in [0, 1), got {group['momentum']}")
        if not group["lr_ratio"] >= 0:
            raise ConfigError(f"lr_ratio must be >= 0, got {group['lr_ratio']}")
        bad = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
        if bad:
            raise ConfigError(f"Muon steps matrices only; got parameters of shapes {bad}")
    else:
        beta1, beta2 = group["betas"]
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0) or not group["eps"] >= 0:
            raise ConfigError(f"bad AdamW settings: betas {group['betas']}, eps {group['eps']}")


class Muon(torch.optim.Optimizer):
    """Muon for the groups with ``use_muon=True``, AdamW for the others.

    Group options: ``lr``, ``weight_decay``, ``use_muon``; Muon groups also ``momentum``,
    ``nesterov``, ``ns_steps``, ``ns_coefficients``, ``ns_eps``, ``ns_dtype`` (a dtype's
    name, e.g. "float32", so that it checkpoints as text) and ``lr_ratio``; AdamW groups
    ``betas`` and ``eps``. State per parameter: Muon ``momentum_buffer`` (shaped like p);
    AdamW ``step``, ``exp_avg``, ``exp_avg_sq`` as torch.optim.AdamW keeps them.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 0.02,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = NS_STEPS,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_eps: float = 1e-7,
        ns_dtype: str = "float32",
        lr_ratio: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            use_muon=True,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=tuple(ns_coefficients),
            ns_eps=ns_eps,
            ns_dtype=ns_dtype,
            lr_ratio=lr_ratio,
            betas=tuple(betas),
            eps=eps,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, checking its own settings (a group may override the defaults)."""
        super().add_param_group(param_group)
        _check_group(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        lr = group["lr"] * group["lr_ratio"]
        wd, momentum = group["weight_decay"], group["momentum"]
        dtype = getattr(torch, group["ns_dtype"])
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad  # (A, B)
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad)
            buf = state["momentum_buffer"]
            buf.lerp_(grad, 1 - momentum)  # momentum * buf + (1 - momentum) * grad
            # Nesterov: look ahead along the momentum, (1 - momentum) grad + momentum buf.
            update = grad.lerp(buf, momentum) if group["nesterov"] else buf
            ortho = newton_schulz(
                update, group["ns_steps"], group["ns_coefficients"], group["ns_eps"], dtype
            )
            rows, cols = p.shape
            scale = math.sqrt(max(1.0, rows / cols))  # the reference's shape scaling
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(ortho, alpha=-lr * scale)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        # The same update as optim.AdamW (and torch.optim.AdamW), parameter by parameter.
        for p in group["params"]:
            if p.grad is not None:
                adamw_update(
                    p, self.state[p], group["lr"], group["weight_decay"], group["eps"],
                    group["betas"],
                )  # fmt: skip
