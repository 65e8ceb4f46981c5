"""The pace of a run (train/pacing.py): what the trainer does after each step, counted in
steps or in a time budget, and the learning rate it asks for."""

from __future__ import annotations

import pytest

from scratchlm.errors import ConfigError
from scratchlm.train.config import TrainConfig
from scratchlm.train.pacing import Pacing
from scratchlm.train.schedule import lr_schedule, wsd_schedule


def alone(flag: bool) -> bool:  # one process: its own clock decides
    return flag


def test_a_run_in_steps_evaluates_and_saves_on_its_periods_and_ends_at_its_last_step():
    config = TrainConfig(steps=20, warmup_steps=2, lr=3e-4)
    pacing = Pacing(config, tokens_per_step=64, agree=alone)
    plan = {step: pacing.after_step(step, 0.0, 0.1, 0.1) for step in range(1, 21)}
    assert [s for s, (ev, _, _) in plan.items() if ev] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert [s for s, (_, ck, _) in plan.items() if ck] == [4, 8, 12, 16, 20]
    assert [s for s, (_, _, end) in plan.items() if end] == [20]
    assert not pacing.spent(1e9)  # time never ends a run sized in steps
    expected = lr_schedule(5, max_lr=3e-4, min_lr=3e-5, warmup_steps=2, total_steps=20)
    assert pacing.lr(5, elapsed=123.0) == expected  # a function of the step only


def test_a_run_in_time_follows_its_budget():
    config = TrainConfig(time_budget="100s", schedule="wsd", eval_every=None)
    pacing = Pacing(config, tokens_per_step=64, agree=alone)
    # Evaluations every tenth of the budget, checkpoints every fifth, by time not steps.
    assert pacing.after_step(7, before=9.5, seconds=1.0, after=10.5)[:2] == (True, False)
    assert pacing.after_step(8, before=19.5, seconds=1.0, after=20.5)[:2] == (True, True)
    assert pacing.after_step(9, before=21.0, seconds=1.0, after=22.0) == (False, False, False)
    assert pacing.after_step(10, before=98.0, seconds=1.0, after=99.5)[2]  # no room for one more
    assert pacing.spent(99.5) and not pacing.spent(50.0)
    expected = wsd_schedule(
        0.5, max_lr=config.lr, min_lr=config.lr / 10, warmup=0.05, decay_start=0.8
    )
    assert pacing.lr(step=3, elapsed=50.0) == pytest.approx(expected)  # time, not steps


def test_rank_zero_decides_a_budgets_ends():
    config = TrainConfig(time_budget="100s", schedule="wsd")
    never = Pacing(config, tokens_per_step=64, agree=lambda flag: False)  # rank 0 says go on
    assert never.after_step(10, before=98.0, seconds=1.0, after=99.5) == (False, False, False)
    assert not never.spent(1e9)


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError, match="warmup_steps=50 is longer than the run"):
        Pacing(TrainConfig(steps=10, warmup_steps=50), tokens_per_step=64, agree=alone)
