"""Training batches: random windows of a token array (usually a read-only memmap).

A window of ``T + 1`` consecutive tokens starting at ``s`` gives the inputs
``x = tokens[s : s + T]`` and the targets ``y = tokens[s + 1 : s + T + 1]``: each target
is the token after its input. Every start ``0 <= s <= len - T - 1`` is equally likely;
only the chosen windows are read from disk.

Randomness comes from an explicit ``torch.Generator``, so a run is reproducible and
resumable. Under data parallelism every rank holds the same generator and draws the
starts of the whole global batch, then keeps its own slice: ranks read different windows,
together exactly those one process with the global batch size would read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from scratchlm.errors import ConfigError, DataError


def _check_length(tokens: np.ndarray, context_length: int) -> None:
    if context_length < 1:
        raise ConfigError(f"context_length must be at least 1, got {context_length}")
    if len(tokens) < context_length + 1:
        raise DataError(
            f"corpus has {len(tokens)} tokens, fewer than one context window of "
            f"{context_length + 1}: use a smaller context_length or more data"
        )


def windows(
    tokens: np.ndarray, starts: Tensor, context_length: int, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor]:
    """The windows at ``starts`` (shape (B,)) as int64 ``x, y`` of shape (B, T) on
    ``device``; only those rows are read from ``tokens``."""
    T = context_length
    rows = np.empty((len(starts), T + 1), dtype=np.int64)  # (B, T + 1)
    for i, s in enumerate(starts.tolist()):
        rows[i] = tokens[s : s + T + 1]  # a slice of a memmap reads only these pages
    x = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))  # (B, T)
    y = torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))  # (B, T)
    device = torch.device(device)
    if device.type == "cuda":
        # Page-locked memory lets the copy run asynchronously with the GPU's work.
        x = x.pin_memory().to(device, non_blocking=True)
        y = y.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        x, y = x.to(device), y.to(device)
    return x, y


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows: int64 ``x, y`` of shape (B, T), ``y`` shifted by one.

    Starts are drawn uniformly from ``0 .. len(tokens) - T - 1`` with ``generator`` (the
    global RNG if None), so equal generator states give equal batches.
    """
    _check_length(tokens, context_length)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    starts = torch.randint(0, len(tokens) - context_length, (batch_size,), generator=generator)
    return windows(tokens, starts, context_length, device)


class RankedDraws:
    """Reproducible, resumable random indices for one rank of ``world_size``: the shared
    part of every sampler of training rows.

    Each draw takes the indices of the global batch (``world_size * batch_size``) from a
    generator seeded with ``seed`` (the same on every rank) and keeps this rank's slice
    ``[rank * B : (rank + 1) * B]``.
    """

    def __init__(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def draw(self, high: int) -> Tensor:
        """This rank's ``batch_size`` indices, uniform in ``0 .. high - 1``: shape (B,)."""
        B = self.batch_size
        drawn = torch.randint(0, high, (self.world_size * B,), generator=self.generator)
        self.batches_drawn += 1
        return drawn[self.rank * B : (self.rank + 1) * B]

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (a uint8 tensor) and the number of batches drawn."""
        return {"generator": self.generator.get_state(), "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the sampler that saved ``state`` was."""
        gen = state.get("generator") if isinstance(state, dict) else None
        if not isinstance(gen, Tensor) or gen.dtype != torch.uint8 or "batches_drawn" not in state:
            raise DataError(
                "batch sampler state is damaged (expected a uint8 generator tensor and "
                "batches_drawn): resume from another checkpoint"
            )
        self.generator.set_state(gen.clone())
        self.batches_drawn = int(state["batches_drawn"])


class BatchSampler(RankedDraws):
    """Random windows of a token array for one rank of ``world_size`` (``RankedDraws``
    picks the start positions), reproducible and resumable."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        context_length: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_length(tokens, context_length)
        super().__init__(batch_size, seed=seed, rank=rank, world_size=world_size)
        self.tokens = tokens
        self.context_length = context_length

    def next(self, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """This rank's next batch: int64 ``x, y`` of shape (B, T)."""
        T = self.context_length
        starts = self.draw(len(self.tokens) - T)  # (B,)
        return windows(self.tokens, starts, T, device)


def fixed_windows(tokens: np.ndarray, n_windows: int, context_length: int) -> tuple[Tensor, Tensor]:
    """A fixed validation sample: ``n`` windows with evenly spaced starts from 0 to
    ``len - T - 1``; int64 ``x, y`` of shape (n, T) on the CPU. ``n`` is ``n_windows``
    capped at the number of windows that fit without overlapping, ``(len - 1) // T``."""
    _check_length(tokens, context_length)
    if n_windows < 1:
        raise ConfigError(f"n_windows must be at least 1, got {n_windows}")
    T = context_length
    n = min(n_windows, (len(tokens) - 1) // T)
    last = len(tokens) - T - 1
    # Spacing last / (n - 1) >= T whenever n <= (len - 1) // T: the windows never overlap.
    starts = torch.tensor([0] if n == 1 else [i * last // (n - 1) for i in range(n)])
    return windows(tokens, starts, T)
