"""Turning per-question results into the figures a task reports.

Accuracy is the mean of 0/1 per question; its standard error comes from the bootstrap
(resample the questions with replacement, recompute the mean, take the spread), which
makes no assumption about the distribution. Tasks with different numbers of choices are
put on one scale by centring: (acc - chance) / (1 - chance) is 0 for guessing and 1 for
a perfect score (nanochat's CORE score averages this over its tasks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 1000


def bootstrap_stderr(
    values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> float:
    """Standard error of ``mean(values)``: the standard deviation of the means of
    ``samples`` resamples (with replacement, same size). 0.0 for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, x.size, size=(samples, x.size))  # (S, N)
    return float(x[picks].mean(axis=1).std(ddof=1))


def centred(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 at chance, 1 at a perfect score."""
    assert 0.0 <= chance < 1.0, f"chance must be in [0, 1), got {chance}"
    return (accuracy - chance) / (1.0 - chance)


@dataclass(frozen=True)
class Metric:
    """One metric of a task: its value over the questions and its bootstrap error."""

    value: float
    stderr: float

    @classmethod
    def of(cls, per_question: Sequence[float]) -> Metric:
        return cls(float(np.mean(per_question)), bootstrap_stderr(per_question))


@dataclass(frozen=True)
class TaskScore:
    """A task's figures: accuracy (and length-normalised accuracy where the task has
    it), the chance level, how many questions were asked, and the headline metric the
    centred score uses (``acc_norm`` where there is one)."""

    task: str
    questions: int
    chance: float
    acc: Metric
    acc_norm: Metric | None = None

    @property
    def headline(self) -> Metric:
        return self.acc_norm if self.acc_norm is not None else self.acc

    @property
    def centred(self) -> float:
        return centred(self.headline.value, self.chance)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "centred": self.centred}


def centred_average(scores: Sequence[TaskScore]) -> float:
    """The mean centred score over tasks (each task counts once, whatever its size)."""
    assert scores, "no task scores to average"
    return sum(s.centred for s in scores) / len(scores)


def format_table(scores: Sequence[TaskScore]) -> str:
    """The scores as an aligned text table with the centred average below it."""
    lines = [f"{'task':<15} {'n':>6} {'acc':>15} {'acc_norm':>15} {'chance':>7} {'centred':>8}"]
    for s in scores:
        norm = "-" if s.acc_norm is None else f"{s.acc_norm.value:.4f} ± {s.acc_norm.stderr:.4f}"
        lines.append(
            f"{s.task:<15} {s.questions:>6} {s.acc.value:.4f} ± {s.acc.stderr:.4f} {norm:>15} "
            f"{s.chance:>7.3f} {s.centred:>8.4f}"
        )
    lines.append(f"centred average over {len(scores)} tasks: {centred_average(scores):.4f}")
    return "\n".join(lines)
