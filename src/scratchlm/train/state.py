"""What a training run carries from one process to the next: the trainer's counters,
how a run ended, and the split of state dicts into JSON and tensors for checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor


@dataclass
class TrainResult:
    """How a call to ``Trainer.run`` ended."""

    step: int  # optimizer updates done, in all
    tokens: int  # tokens trained on, in all
    loss: float | None  # the last training loss
    val_loss: float | None  # the last validation loss
    checkpoint: Path | None  # the last checkpoint written
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run


# The trainer's counters, saved with each checkpoint and restored on resume.
COUNTERS = (
    "step",
    "tokens",
    "elapsed",
    "lr_scale",
    "rollbacks",
    "best_val",
    "last_val",
    "last_loss",
)


def split_tensors(state: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A state dict's plain values, and its tensors under ``prefix`` + key."""
    plain = {k: v for k, v in state.items() if not isinstance(v, Tensor)}
    return plain, {prefix + k: v for k, v in state.items() if isinstance(v, Tensor)}


def join_tensors(plain: dict[str, Any], tensors: dict[str, Tensor], prefix: str) -> dict[str, Any]:
    """The inverse of ``split_tensors``."""
    joined = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {**plain, **joined}
