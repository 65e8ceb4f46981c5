"""AdamW, written out (Loshchilov & Hutter, 2019, Algorithm 2): Adam (Kingma & Ba, 2015)
with the weight decay taken out of the gradient, so the parameters shrink by lr * wd
directly and the decay is not rescaled by the adaptive denominator. ``AdamW`` performs the
same floating-point operations in the same order as ``torch.optim.AdamW`` and keeps the
same state (``step``, ``exp_avg``, ``exp_avg_sq``), so the two produce the same parameters
and each can resume from the other's ``state_dict`` (tests/train/test_optim.py).
``adamw_update`` is one parameter's update, shared with Muon's AdamW groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from scratchlm.errors import ConfigError


def check_nonnegative(name: str, value: float) -> None:
    # `not value >= 0` is also true for NaN, which `value < 0` would let through.
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")


def check_adamw_args(lr: float, betas: tuple[float, float], eps: float, wd: float) -> None:
    check_nonnegative("lr", lr)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", wd)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"betas must be two numbers in [0, 1), got {tuple(betas)}")


def adamw_update(
    p: Tensor, state: dict[str, Any], lr: float, wd: float, eps: float, betas: tuple[float, float]
) -> None:
    """One AdamW update of parameter ``p`` from its ``p.grad``, in place; ``state`` is the
    parameter's optimizer state (filled on the first call). Muon uses it for the
    parameters it does not orthogonalise."""
    beta1, beta2 = betas
    grad = p.grad  # same shape as p
    if not state:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    m, v = state["exp_avg"], state["exp_avg_sq"]  # shaped like p
    state["step"] += 1
    t = state["step"].item()  # a CPU tensor: no device sync

    if wd != 0:  # decoupled decay (Loshchilov & Hutter 2019, Algorithm 2 line 12)
        p.mul_(1 - lr * wd)
    m.lerp_(grad, 1 - beta1)  # m + (1 - beta1)(g - m) = beta1 m + (1 - beta1) g
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    # Bias correction: m and v start at 0, so early on they underestimate
    # E[g] and E[g^2] by the factors 1 - beta^t (Kingma & Ba 2015, sec. 3).
    step_size = lr / (1 - beta1**t)
    denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)  # shaped like p
    p.addcdiv_(m, denom, value=-step_size)


class AdamW(torch.optim.Optimizer):
    """AdamW, one parameter at a time. Same constructor, update and state as torch's.

    For each parameter p with gradient g, at step t (1-based):

        p   <- p * (1 - lr * wd)                    decoupled weight decay
        m   <- beta1 * m + (1 - beta1) * g          first moment
        v   <- beta2 * v + (1 - beta2) * g^2        second moment
        p   <- p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    State per parameter: ``step`` (float32 0-dim tensor on the CPU, as torch keeps it),
    ``exp_avg`` = m and ``exp_avg_sq`` = v (both shaped like p).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        check_adamw_args(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, checking its own settings (a group may override the defaults)."""
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        check_adamw_args(g["lr"], g["betas"], g["eps"], g["weight_decay"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # A state_dict from torch.optim.AdamW carries its options; refuse those this
        # implementation does not have instead of silently computing something else.
        for group in self.param_groups:
            for option in ("amsgrad", "maximize"):
                if group.get(option):
                    raise ConfigError(f"{option}=True is not supported by scratchlm's AdamW")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is not None:
                    adamw_update(p, self.state[p], lr, wd, eps, (beta1, beta2))
        return loss
