"""Where and how a run computes: the device, the number format, the process group when
launched by ``torchrun``, the module the steps call, and the signals that stop a run.

Nothing here runs at import time; the trainer calls these functions once at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scratchlm.errors import ConfigError

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, then Apple's MPS, then the CPU. Otherwise the named
    device, refused with a clear message when this machine does not have it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but torch sees no CUDA GPU here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps was asked for, but this torch has no MPS support here")
    return device


def pick_precision(name: str, device: torch.device, flags: Iterable[str] = ()) -> str:
    """``auto``: bf16 on GPUs that have it, fp16 (with loss scaling) on older GPUs, bf16 on
    CPUs whose ``flags`` (``cpu_flags()``) say they multiply bf16 in hardware, fp32
    elsewhere. An explicit choice the device cannot do is refused."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_has_fast_bf16(flags):
            return "bf16"  # faster per step, same loss curve: docs/training.md
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 training needs a CUDA GPU; use bf16 or fp32 on this device")
    return name


# x86 CPU flags (Linux /proc/cpuinfo) of bf16 matrix products in hardware: AVX512-BF16's
# dot products (Cooper Lake, Zen 4 and later) or AMX's bf16 tiles (Sapphire Rapids and
# later; amx_tile alone is the tile registers, amx_bf16 the bf16 products on them).
# Without them torch emulates bf16 and autocast is slower than fp32.
FAST_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of this CPU, from the ``flags`` line of ``cpuinfo`` (the text
    of /proc/cpuinfo, read when None); empty where there is none (macOS, Windows)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_fast_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these flags multiplies bf16 matrices in hardware."""
    return not set(FAST_CPU_BF16_FLAGS).isdisjoint(flags)


def precision_advice(
    requested: str, chosen: str, device: torch.device, flags: Iterable[str]
) -> str | None:
    """A hint about the number format of a CPU run, or None: bf16 asked for on a CPU that
    only emulates it is slow (``auto`` never picks it there)."""
    if device.type == "cpu" and chosen == "bf16" and not cpu_has_fast_bf16(flags):
        return (
            "this CPU has no AVX512-BF16 or AMX-BF16: bf16 is emulated and likely slower "
            "than fp32 (--precision fp32)"
        )
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a forward pass: weights stay float32, matrix products run
    in the lower precision."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` launch (rank 0 of 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, metrics and checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of a tensor over all processes (itself without torchrun)."""
        if not self.enabled:
            return value
        value = value.clone()
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
        return value

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when it is True on any (a signal seen by one rank)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group when started by ``torchrun`` (it sets WORLD_SIZE, RANK,
    LOCAL_RANK): NCCL on GPUs, gloo on CPUs. Each GPU process takes the GPU of its local
    rank. Without torchrun: a single process on ``pick_device(device_name)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), pick_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    log.debug("rank %d of %d on %s (%s)", rank, world, device, backend)
    return Distributed(rank, local_rank, world), device


def shutdown_distributed(dist: Distributed) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class LossModule(nn.Module):
    """The model's loss as a ``forward``, so that DDP and torch.compile (which wrap
    ``forward``) see the whole training computation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: Tensor, y: Tensor, segment_ids: Tensor | None = None, reduction: str = "mean"
    ) -> Tensor:
        """x, y (B, T) and, for packed rows, segment_ids (B, T) -> the scalar loss (the
        mean over target tokens, or their sum)."""
        return self.model.loss(x, y, segment_ids=segment_ids, reduction=reduction)


class SignalFlag:
    """While active, SIGINT and SIGTERM set ``name`` instead of killing the process: the
    loop finishes its step, saves a checkpoint and returns. A second Ctrl-C while the
    checkpoint is written is also absorbed; handlers are restored on exit."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.name = signal.Signals(signum).name

    def __enter__(self) -> SignalFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
