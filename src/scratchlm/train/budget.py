"""A run sized in wall-clock time (``--time-budget 15m``) instead of steps.

The step count of such a run is unknown in advance, so its learning rate is a function
of the share of the budget spent (``schedule.wsd_schedule``) and it stops when the next
step would eat into the time kept back for the final evaluation and checkpoint. Time
spent before a resume counts (``TrainState.elapsed``), so a resumed run ends when the
uninterrupted one would have.
"""

from __future__ import annotations

import math
import re

from scratchlm.errors import ConfigError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smh])")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``15m``, ``1h``, ``1h30m`` or ``2.5m``; a
    ConfigError (one line) for anything else, and for zero."""
    spelled = text.strip().lower()
    parts = _DURATION.findall(spelled)
    if not spelled or "".join(n + u for n, u in parts) != spelled:
        raise ConfigError(
            f"time budget {text!r} is not a duration: write a number with a unit, "
            "s, m or h (90s, 15m, 1h, 1h30m)"
        )
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"time budget {text!r} must be longer than zero")
    return seconds


class TimeBudget:
    """When a budgeted run evaluates, checkpoints and stops; all times are seconds of
    training across resumes (the trainer's ``RunLog.wall_time``).

    ``reserve`` is the time kept back for the final evaluation and checkpoint: the
    longest evaluation and the longest checkpoint measured so far in this process, times
    ``safety``. The trainer evaluates once before the first step, so an evaluation's
    cost is known from the start; a checkpoint's from the first periodic one.

    Periodic work falls every ``eval_share`` (``checkpoint_share``) of the budget, but
    never so often that it would take more than ``work_share`` of the budget: a period
    is at least the longest measured cost of that work over ``work_share``. A short
    budget with a slow evaluation trains instead of evaluating.
    """

    def __init__(
        self,
        seconds: float,
        *,
        eval_share: float,
        checkpoint_share: float,
        safety: float = 1.5,
        work_share: float = 0.05,
    ) -> None:
        assert seconds > 0 and safety >= 1 and 0 < work_share <= 1
        self.seconds = seconds
        self.safety = safety
        self.work_share = work_share
        self.eval_seconds = 0.0  # the longest evaluation measured
        self.checkpoint_seconds = 0.0  # the longest checkpoint measured
        self.step_seconds = 0.0  # the last step's duration
        # Periodic evaluations and checkpoints every share of the budget (0 = only at the end).
        self._every = {"eval": eval_share * seconds, "checkpoint": checkpoint_share * seconds}

    @property
    def reserve(self) -> float:
        return self.safety * (self.eval_seconds + self.checkpoint_seconds)

    @property
    def training_seconds(self) -> float:
        """The part of the budget the schedule spreads over: all but the reserve."""
        return max(self.seconds - self.reserve, 1e-9)

    def progress(self, elapsed: float) -> float:
        """The share of the training time spent (the schedule's argument), >= 0."""
        return max(elapsed, 0.0) / self.training_seconds

    def spent(self, elapsed: float) -> bool:
        """Whether one more step (as long as the last one) would not fit before the
        reserve: time to stop, evaluate and checkpoint."""
        return elapsed + self.step_seconds >= self.training_seconds

    def due(self, kind: str, before: float, after: float) -> bool:
        """Whether a periodic ``kind`` ("eval" or "checkpoint") falls due in the step that
        ran from ``before`` to ``after`` (a multiple of its period was crossed)."""
        every = self._every[kind]
        if every <= 0:
            return False
        cost = self.eval_seconds if kind == "eval" else self.checkpoint_seconds
        every = max(every, cost / self.work_share)
        return math.floor(after / every) > math.floor(before / every)

    def spent_before_first_step(self) -> str:
        """Why a run's budget ran out before its first step, and what to do."""
        return (
            f"the time budget ({self.seconds:g} s) was spent before the first step: an "
            f"evaluation takes {self.eval_seconds:.1f} s here, and {self.safety:g} times "
            "that is kept back for the last one; give a longer --time-budget or a "
            "cheaper evaluation (--sample-tokens 0; fewer --eval-windows when "
            "pretraining, a smaller --val-fraction when tuning)"
        )

    def measured(self, kind: str, seconds: float) -> None:
        """Record how long an evaluation or a checkpoint took."""
        if kind == "eval":
            self.eval_seconds = max(self.eval_seconds, seconds)
        else:
            self.checkpoint_seconds = max(self.checkpoint_seconds, seconds)
