"""The pace of a run: the learning rate of each update, and after each step whether to
evaluate, checkpoint or stop.

A run is sized in steps (``--steps`` / ``--tokens``: the schedule is a function of the
step, evaluations and checkpoints fall every so many steps) or in wall-clock time
(``--time-budget``: the schedule is a function of the share of the budget spent, and
``budget.TimeBudget`` says when the periodic work falls due and when the next step would
no longer fit). The trainer asks the same three questions either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from scratchlm.errors import ConfigError
from scratchlm.train.budget import TimeBudget
from scratchlm.train.config import TrainConfig
from scratchlm.train.schedule import lr_schedule, wsd_schedule


class Pacing:
    """``lr``, ``after_step`` and ``spent`` for a run of ``config`` whose steps hold
    ``tokens_per_step`` tokens. ``agree(flag)`` returns rank 0's ``flag`` on every
    process (processes save together, so one clock must decide a budgeted run's ends)."""

    def __init__(
        self, config: TrainConfig, tokens_per_step: int, agree: Callable[[bool], bool]
    ) -> None:
        c = self.config = config
        self.agree = agree
        self.budget: TimeBudget | None = None
        seconds = c.budget_seconds()
        if seconds is not None:  # sized in time: no step count; eval/checkpoint by time share
            self.total = sys.maxsize
            self.budget = TimeBudget(
                seconds,
                eval_share=0.1 if c.eval_every is None else 0.0,
                checkpoint_share=0.2 if c.checkpoint_every is None else 0.0,
            )
            # Step periods only where given; else shares of the budget.
            self.eval_every, self.ckpt_every = c.eval_every or 0, c.checkpoint_every or 0
        else:
            total = c.total_steps(tokens_per_step)
            assert total is not None, "a run without a time budget has a step count"
            self.total = total
            if c.resolved_warmup(self.total) > self.total:
                raise ConfigError(
                    f"warmup_steps={c.warmup_steps} is longer than the run ({self.total} "
                    "steps): lower --warmup-steps or train longer"
                )
            self.eval_every = c.resolved_eval_every(self.total)
            self.ckpt_every = c.resolved_checkpoint_every(self.total)

    def lr(self, step: int, elapsed: float) -> float:
        """The scheduled learning rate of update ``step`` (0-based), ``elapsed`` seconds
        of training into the run (time before a resume counts)."""
        c = self.config
        if self.budget:
            return wsd_schedule(
                self.budget.progress(elapsed),
                max_lr=c.lr,
                min_lr=c.resolved_min_lr(),
                warmup=c.warmup_fraction,
                decay_start=c.decay_start,
            )
        return lr_schedule(
            step,
            max_lr=c.lr,
            min_lr=c.resolved_min_lr(),
            warmup_steps=c.resolved_warmup(self.total),
            total_steps=self.total,
            kind=c.resolved_schedule(),
        )

    def spent(self, elapsed: float) -> bool:
        """Whether a budgeted run's time is up before its next step (never for steps)."""
        return self.budget is not None and self.agree(self.budget.spent(elapsed))

    def after_step(
        self, step: int, before: float, seconds: float, after: float
    ) -> tuple[bool, bool, bool]:
        """After step ``step``, which began at ``before`` (training seconds), took
        ``seconds`` and ended at ``after``: whether to evaluate, to checkpoint, and
        whether it was the last step."""
        eval_due = bool(self.eval_every and step % self.eval_every == 0)
        ckpt_due = bool(self.ckpt_every and step % self.ckpt_every == 0)
        budget = self.budget
        if budget is None:
            return eval_due, ckpt_due, step == self.total
        budget.step_seconds = seconds
        eval_due = eval_due or self.agree(budget.due("eval", before, after))
        ckpt_due = ckpt_due or self.agree(budget.due("checkpoint", before, after))
        # The last step when the next would not fit, counting the periodic work due now:
        # then that work is the final evaluation and checkpoint.
        work = budget.eval_seconds * eval_due + budget.checkpoint_seconds * ckpt_due
        return eval_due, ckpt_due, self.agree(budget.spent(after + work))

    def measured(self, kind: str, seconds: float) -> None:
        """How long an evaluation or a checkpoint took: a budgeted run keeps that much
        (and a margin) back for its last ones."""
        if self.budget is not None:
            self.budget.measured(kind, seconds)
