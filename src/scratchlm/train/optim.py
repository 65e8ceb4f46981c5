"""Optimizers for training: SGD, the weight-decay parameter groups, gradient clipping,
and ``build_optimizer(model, config)``, which picks AdamW (``train.adamw``, written out;
PyTorch's fused AdamW, the same function as one kernel, by default), SGD or Muon
(``train.muon``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from scratchlm.errors import ConfigError
from scratchlm.model.layers import Embedding as ScratchEmbedding
from scratchlm.model.layers import Linear as ScratchLinear
from scratchlm.train.adamw import AdamW, check_adamw_args, check_nonnegative
from scratchlm.train.config import OPTIMIZERS, TrainConfig
from scratchlm.train.muon import Muon


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent, optionally with momentum and a 1/sqrt(t) step size.

    For each parameter p with gradient g, at step t (1-based):

        g   <- g + wd * p                 L2 penalty in the gradient, as torch.optim.SGD
        b   <- momentum * b + g           (b = g at the first step; skipped if momentum 0)
        p   <- p - lr_t * b               lr_t = lr / sqrt(t) with sqrt_decay, else lr

    The 1/sqrt(t) step size is the classic choice that makes SGD converge on convex
    problems. State per parameter: ``step`` (float32 0-dim tensor) and, with momentum,
    ``momentum_buffer``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        sqrt_decay: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, sqrt_decay=sqrt_decay)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, checking its own settings (a group may override the defaults)."""
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        check_nonnegative("lr", g["lr"])
        check_nonnegative("weight_decay", g["weight_decay"])
        if not 0.0 <= g["momentum"] < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {g['momentum']}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad  # same shape as p
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["step"] += 1
                t = state["step"].item()  # a CPU tensor: no device sync
                if wd != 0:
                    grad = grad.add(p, alpha=wd)  # a new tensor: p.grad stays as it was
                if momentum != 0:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(grad)
                    grad = state["momentum_buffer"]
                step_size = lr / math.sqrt(t) if group["sqrt_decay"] else lr
                p.add_(grad, alpha=-step_size)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups, ``[decay, no_decay]``, holding each trainable parameter once.

    Decay: the weight matrices (ndim >= 2) of Linear layers (scratchlm's or torch's).
    No decay: everything else — norm gains and any other 1-D or 0-D parameter, biases,
    and embeddings (torch.nn.Embedding, scratchlm's Embedding, learned position tables).
    Shrinking a norm gain or a bias towards 0 only fights the model, and an embedding row
    gets a gradient only when its token occurs, so decay would mostly pull rare tokens to
    zero. A tied lm_head / embedding matrix is an embedding: it appears once, undecayed.
    Parameters with requires_grad=False are left out (there is nothing to optimize).
    """
    check_nonnegative("weight_decay", weight_decay)
    embeddings = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | ScratchEmbedding)
    }
    linear_weights = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Linear | ScratchLinear) and m.weight.dim() >= 2
    }
    decay, no_decay = [], []
    for p in model.parameters():  # yields a tensor shared by two modules once
        if not p.requires_grad:
            continue
        if id(p) in linear_weights and id(p) not in embeddings:
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def muon_param_groups(
    model: nn.Module, weight_decay: float, lr_ratio: float
) -> list[dict[str, Any]]:
    """Three groups for ``Muon``: ``[muon, adamw_decay, adamw_no_decay]``.

    Muon: the hidden layers' matrices, i.e. the decayed Linear weights of
    ``param_groups`` except the output layer (``model.lm_head``, whose rows are one per
    token like an embedding's). AdamW: the output layer (decayed, unless it is tied to
    the embedding) and everything ``param_groups`` does not decay (embeddings, norms,
    biases). The Muon group steps at ``lr * lr_ratio``.
    """
    decay, no_decay = param_groups(model, weight_decay)
    head = getattr(model, "lm_head", None)
    head_weight = id(head.weight) if head is not None else None
    matrices = [p for p in decay["params"] if id(p) != head_weight and p.dim() == 2]
    taken = {id(p) for p in matrices}
    rest = [p for p in decay["params"] if id(p) not in taken]
    return [
        {"params": matrices, "weight_decay": weight_decay, "use_muon": True, "lr_ratio": lr_ratio},
        {"params": rest, "weight_decay": weight_decay, "use_muon": False},
        {**no_decay, "use_muon": False},
    ]


def fused_adamw_supported(params: Iterable[Tensor]) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` can step these parameters.

    Which devices and dtypes have the fused kernel differs between torch versions and
    builds, and torch only checks at the first step, so this runs one step on a one-element
    tensor of each (device, dtype) present. A RuntimeError there means "no kernel".
    """
    kinds = {(p.device, p.dtype) for p in params}
    if not kinds:
        return False
    for device, dtype in kinds:
        if not dtype.is_floating_point:
            return False
        probe = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
        probe.grad = torch.ones_like(probe)
        try:
            torch.optim.AdamW([probe], lr=1e-3, fused=True).step()
        except (RuntimeError, NotImplementedError):
            return False
    return True


def build_optimizer(
    model: nn.Module, config: TrainConfig, *, precision: str = "fp32"
) -> torch.optim.Optimizer:
    """The run's optimizer over ``param_groups(model, config.weight_decay)``.

    ``config.resolved_optimizer()`` (``auto``: muon, or adamw with FSDP): "adamw", "sgd"
    (plain SGD at ``lr`` with L2 ``weight_decay``; betas and eps are not used) or "muon"
    (``train.muon.Muon`` over ``muon_param_groups``: the hidden matrices at ``muon_lr``,
    the rest with AdamW at ``lr``; both follow the schedule; with ``precision`` "bf16",
    the run's resolved number format, Muon's Newton-Schulz iteration runs in bfloat16 as
    the products of the forward pass do, twice as fast as float32 where bf16 is). For
    "adamw", ``config.fused``
    picks the implementation: None (default) uses ``torch.optim.AdamW(fused=True)`` when
    ``fused_adamw_supported`` says the kernel exists for the parameters' devices and
    dtypes, else ``AdamW`` from this module; False forces ours; True forces torch's fused
    one (ConfigError if it is not available). All compute the same parameters
    (tests/train/test_optim.py); on a CPU the fused kernel is the fastest
    (docs/benchmarks.md).

    Note: a state_dict carries its group options, so loading one saved by ours or by a
    non-fused torch AdamW into a fused optimizer turns ``fused`` back off (torch's rule).
    """
    name, lr, fused = config.resolved_optimizer(), config.lr, config.fused
    weight_decay = config.weight_decay
    betas, eps = tuple(config.betas), config.eps
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if name == "muon":
        if fused:
            raise ConfigError("fused=True applies to the adamw optimizer only, not muon")
        check_adamw_args(lr, betas, eps, weight_decay)
        groups = muon_param_groups(model, weight_decay, lr_ratio=config.muon_lr / lr)
        ns_dtype = "bfloat16" if precision == "bf16" else "float32"
        return Muon(
            groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, ns_dtype=ns_dtype
        )
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        if fused:
            raise ConfigError("fused=True applies to the adamw optimizer only, not sgd")
        return SGD(groups, lr=lr, weight_decay=weight_decay)
    check_adamw_args(lr, betas, eps, weight_decay)
    if fused is None or fused:
        params = [p for g in groups for p in g["params"]]
        supported = fused_adamw_supported(params)
        if fused and not supported:
            devices = sorted({f"{p.device.type}/{p.dtype}" for p in params})
            raise ConfigError(
                f"fused=True, but torch {torch.__version__} has no fused AdamW for "
                f"{', '.join(devices) or 'no parameters'}; use fused=None or False"
            )
        if supported:
            return torch.optim.AdamW(
                groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True
            )
    return AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def clip_grad_norm(
    parameters: Tensor | Iterable[Tensor], max_norm: float, *, foreach: bool | None = None
) -> Tensor:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    The global norm is the L2 norm of all gradients seen as one vector,
    sqrt(sum over tensors of ||g||^2). When it exceeds max_norm every gradient is
    multiplied by max_norm / (norm + 1e-6). Parameters whose .grad is None are ignored.

    Returns the norm before clipping as a 0-dim tensor on the device of the first gradient
    (tensor(0.) if no parameter has a gradient). Nothing here syncs with the device: the
    scale is min(1, max_norm / (norm + 1e-6)), applied always, never tested on the host.
    A non-finite norm (an inf or NaN gradient) is returned as it is and leaves non-finite
    or zero gradients behind; the caller decides to skip the step.

    foreach=False runs the readable loop below; None or True use
    ``torch.nn.utils.clip_grad_norm_`` (multi-tensor kernels; True demands them), the
    same function (tests/train/test_optim.py).
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    check_nonnegative("max_norm", max_norm)
    if foreach is not False:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=foreach)

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    with torch.no_grad():
        device = grads[0].device
        norms = [torch.linalg.vector_norm(g).to(device) for g in grads]  # each 0-dim
        total = torch.linalg.vector_norm(torch.stack(norms))  # sqrt(sum ||g||^2), 0-dim
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # 1 when under the limit
        for g in grads:
            g.mul_(scale.to(g.device))
    return total
