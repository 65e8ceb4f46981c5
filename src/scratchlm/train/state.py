"""What a training run carries from one process to the next: the trainer's counters,
how a run ended, and the split of state dicts into JSON and tensors for checkpoints."""

from __future__ import annotations

import dataclasses
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


@dataclass
class TrainState:
    """The trainer's counters: saved with each checkpoint (``state_dict``, plain JSON
    values) and restored on resume (``load_state_dict``)."""

    step: int = 0  # optimizer updates done (skipped ones count)
    tokens: int = 0  # tokens trained on
    elapsed: float = 0.0  # wall seconds of training before this process started
    lr_scale: float = 1.0  # lowered by each rollback
    rollbacks: int = 0
    best_val: float | None = None
    last_val: float | None = None
    last_loss: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take every counter from ``state`` (a checkpoint's state.json, which also holds
        other keys: the guard's, the sampler's...)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, state[f.name])


def split_tensors(state: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A state dict's plain values, and its tensors under ``prefix`` + key."""
    plain = {k: v for k, v in state.items() if not isinstance(v, Tensor)}
    return plain, {prefix + k: v for k, v in state.items() if isinstance(v, Tensor)}


def join_tensors(plain: dict[str, Any], tensors: dict[str, Tensor], prefix: str) -> dict[str, Any]:
    """The inverse of ``split_tensors``."""
    joined = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {**plain, **joined}
