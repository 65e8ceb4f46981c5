"""Learning-rate schedules: linear warmup, then cosine, linear or constant.

Warmup keeps the first updates small while Adam's second-moment estimate is still noisy;
the cosine decay (Loshchilov & Hutter, 2017, "SGDR") ends training at a small learning
rate, which is where most of the final loss improvement happens. Both are plain functions
of the step number, so a resumed run gets exactly the learning rate it would have had.

A run with a time budget does not know its step count in advance: ``wsd_schedule``
(warmup-stable-decay) is a plain function of the share of the budget already spent.
"""

from __future__ import annotations

import math

from scratchlm.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")  # functions of the step: lr_schedule


def lr_schedule(
    step: int,
    *,
    max_lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
    kind: str = "cosine",
) -> float:
    """The learning rate of optimizer step ``step`` (0-based: the first update is step 0).

    Warmup, for step < warmup_steps: max_lr * (step + 1) / warmup_steps, a straight line
    that reaches max_lr at the last warmup step. The "+ 1" is deliberate: with step / warmup
    the first update would have lr 0 and be wasted.

    Then, with progress = (step - warmup_steps) / (total_steps - warmup_steps) in [0, 1]:
      "cosine":   min_lr + 0.5 * (1 + cos(pi * progress)) * (max_lr - min_lr)
      "linear":   max_lr - progress * (max_lr - min_lr)
      "constant": max_lr (total_steps and min_lr are not used)
    and min_lr from total_steps on (cosine, linear). warmup_steps=0 starts at max_lr.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"unknown schedule kind {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    if not 0 <= min_lr <= max_lr:
        raise ConfigError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(
            f"need 0 <= warmup_steps <= total_steps, got warmup_steps={warmup_steps}, "
            f"total_steps={total_steps}"
        )
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return max_lr
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1)
    if kind == "linear":
        return max_lr - progress * (max_lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def wsd_schedule(
    progress: float,
    *,
    max_lr: float,
    min_lr: float,
    warmup: float,
    decay_start: float,
) -> float:
    """Warmup-stable-decay: the learning rate when ``progress`` (elapsed time / budget,
    a float >= 0) of the budget is spent; ``warmup`` and ``decay_start`` are shares of
    the budget, 0 <= warmup <= decay_start <= 1.

      progress p                 learning rate
      0 <= p < warmup            min_lr + (max_lr - min_lr) * p / warmup
      warmup <= p < decay_start  max_lr (the stable phase)
      decay_start <= p < 1       max_lr - (max_lr - min_lr) * (p - decay_start) / (1 - decay_start)
      p >= 1                     min_lr

    For example max_lr=1e-3, min_lr=1e-4, warmup=0.1, decay_start=0.8: p=0 -> 1e-4,
    p=0.05 -> 5.5e-4, p=0.1..0.8 -> 1e-3, p=0.9 -> 5.5e-4, p=1 -> 1e-4.

    The warmup starts at min_lr, not 0: the first update happens at p close to 0 and
    would otherwise be wasted (the step schedule's "+ 1" does the same job). The decay
    is linear: the stable phase keeps the fastest learning rate for most of the run and
    the short decay to min_lr is where the loss drops (Hägele et al., 2024, "Scaling
    Laws and Compute-Optimal Training Beyond Fixed Training Durations").
    """
    if not progress >= 0:  # also refuses NaN
        raise ConfigError(f"progress must be >= 0, got {progress}")
    if not 0 <= min_lr <= max_lr:
        raise ConfigError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if not 0 <= warmup <= decay_start <= 1:
        raise ConfigError(
            f"need 0 <= warmup <= decay_start <= 1, got warmup={warmup}, decay_start={decay_start}"
        )
    if progress < warmup:
        return min_lr + (max_lr - min_lr) * progress / warmup
    if progress < decay_start:
        return max_lr
    if progress >= 1:
        return min_lr
    return max_lr - (max_lr - min_lr) * (progress - decay_start) / (1 - decay_start)


def get_lr_cosine_schedule(
    it: int,
    max_learning_rate: float,
    min_learning_rate: float,
    warmup_iters: int,
    cosine_cycle_iters: int,
) -> float:
    """The textbook warmup + cosine schedule, as it is usually written down:

      it < warmup_iters:        it / warmup_iters * max
      warmup_iters <= it <= cosine_cycle_iters:
                                min + 0.5 * (1 + cos(pi * progress)) * (max - min),
                                progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
      it > cosine_cycle_iters:  min

    Unlike ``lr_schedule`` the first iteration has learning rate 0.
    """
    if not 0 <= warmup_iters <= cosine_cycle_iters:
        raise ConfigError(
            f"need 0 <= warmup_iters <= cosine_cycle_iters, got warmup_iters={warmup_iters}, "
            f"cosine_cycle_iters={cosine_cycle_iters}"
        )
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it > cosine_cycle_iters:
        return min_learning_rate
    if cosine_cycle_iters == warmup_iters:  # a cosine of zero length: only its peak
        return max_learning_rate
    progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
    return min_learning_rate + 0.5 * (1.0 + math.cos(math.pi * progress)) * (
        max_learning_rate - min_learning_rate
    )
