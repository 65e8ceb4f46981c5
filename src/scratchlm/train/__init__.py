"""Training: losses (and, as they arrive, the optimizer, schedules and the loop)."""

from scratchlm.train.loss import cross_entropy, linear_cross_entropy

__all__ = ["cross_entropy", "linear_cross_entropy"]
