"""Divergence detection: decide, step by step, whether an update is safe to apply.

A loss that is NaN or infinite, or a gradient norm far above its recent average (a loss
spike on its way), would damage the weights if applied. The guard says "skip" for such
a step; several skips in a row mean the run itself has gone bad, and the trainer then
rolls back to its last checkpoint with a lower learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WARMUP = 10  # steps of normal updates before spikes are judged: the average needs data
DECAY = 0.95  # running average of the gradient norm: about the last 20 steps


@dataclass
class DivergenceGuard:
    """Judges each step; its fields are saved with checkpoints so a resumed run judges
    the same way as an uninterrupted one."""

    spike_factor: float = 10.0
    max_skips: int = 3
    mean_norm: float = 0.0  # running average of accepted gradient norms
    seen: int = 0  # accepted steps
    skips_in_row: int = 0

    def check(self, loss: float, grad_norm: float) -> str | None:
        """None when the update may be applied, else the reason to skip it. Accepted
        steps update the running average."""
        reason = None
        if not math.isfinite(loss):
            reason = f"loss is {loss}"
        elif not math.isfinite(grad_norm):
            reason = f"gradient norm is {grad_norm}"
        elif self.seen >= WARMUP and grad_norm > self.spike_factor * self.mean_norm:
            reason = (
                f"gradient norm {grad_norm:.3g} is over {self.spike_factor:g}x "
                f"its running average {self.mean_norm:.3g}"
            )
        if reason is not None:
            self.skips_in_row += 1
            return reason
        self.skips_in_row = 0
        self.seen += 1
        # An average that starts from the first value instead of from 0 (no bias).
        weight = DECAY if self.seen > 1 else 0.0
        self.mean_norm = weight * self.mean_norm + (1 - weight) * grad_norm
        return None

    @property
    def should_roll_back(self) -> bool:
        return self.skips_in_row >= self.max_skips

    def state_dict(self) -> dict[str, float | int]:
        return {"mean_norm": self.mean_norm, "seen": self.seen, "skips_in_row": self.skips_in_row}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.mean_norm = float(state["mean_norm"])
        self.seen = int(state["seen"])
        self.skips_in_row = int(state["skips_in_row"])
