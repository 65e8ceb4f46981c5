"""Learning-rate schedules: values at the boundaries and in between, by hand."""

from __future__ import annotations

import itertools
import math

import pytest

from scratchlm.errors import ConfigError
from scratchlm.train.schedule import get_lr_cosine_schedule, lr_schedule, wsd_schedule

MAX, MIN = 1e-3, 1e-4


def schedule(step: int, warmup: int = 10, total: int = 110, kind: str = "cosine") -> float:
    return lr_schedule(
        step, max_lr=MAX, min_lr=MIN, warmup_steps=warmup, total_steps=total, kind=kind
    )


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_warmup_is_linear_and_never_zero(kind):
    assert schedule(0, kind=kind) == pytest.approx(MAX / 10)  # the first step learns
    assert schedule(4, kind=kind) == pytest.approx(MAX * 5 / 10)
    assert schedule(9, kind=kind) == pytest.approx(MAX)  # the last warmup step is the peak
    assert schedule(10, kind=kind) == pytest.approx(MAX)  # the decay starts at the peak


def test_cosine_decay_values():
    assert schedule(35) == pytest.approx(MIN + 0.5 * (1 + math.cos(math.pi / 4)) * (MAX - MIN))
    assert schedule(60) == pytest.approx((MAX + MIN) / 2)  # half way: cos(pi / 2) = 0
    assert schedule(110) == pytest.approx(MIN)
    assert schedule(5000) == MIN  # after total_steps: min_lr
    decay = [schedule(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_linear_decay_values():
    assert schedule(35, kind="linear") == pytest.approx(MAX - 0.25 * (MAX - MIN))
    assert schedule(60, kind="linear") == pytest.approx((MAX + MIN) / 2)
    assert schedule(110, kind="linear") == pytest.approx(MIN)
    assert schedule(111, kind="linear") == MIN


def test_constant_holds_max_lr_after_warmup():
    assert [schedule(s, kind="constant") for s in (10, 60, 110, 5000)] == [MAX] * 4


def test_no_warmup_starts_at_max_lr():
    assert schedule(0, warmup=0) == MAX
    assert schedule(50, warmup=0, total=100) == pytest.approx((MAX + MIN) / 2)
    # warmup as long as training: warmup, then straight to min_lr
    assert schedule(9, warmup=10, total=10) == pytest.approx(MAX)
    assert schedule(10, warmup=10, total=10) == MIN


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "exponential"}, "exponential"),
        ({"step": -1}, "step"),
        ({"min_lr": 2e-3}, "min_lr"),
        ({"min_lr": -1e-5}, "min_lr"),
        ({"warmup_steps": 200}, "warmup_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_lr_schedule_validates(kwargs, match):
    args = dict(step=0, max_lr=MAX, min_lr=MIN, warmup_steps=10, total_steps=110)
    with pytest.raises(ConfigError, match=match):
        lr_schedule(**{**args, **kwargs})


def test_textbook_cosine_schedule_values():
    f = lambda it: get_lr_cosine_schedule(it, 1.0, 0.1, 7, 21)  # noqa: E731
    assert f(0) == 0.0  # the textbook form starts at 0
    assert f(3) == pytest.approx(3 / 7)
    assert f(7) == pytest.approx(1.0)  # peak at the end of warmup
    assert f(14) == pytest.approx(0.55)  # half way through the cosine: (max + min) / 2
    assert f(21) == pytest.approx(0.1)
    assert f(22) == 0.1 and f(1000) == 0.1
    assert f(10) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * 3 / 14)) * 0.9)


def test_textbook_cosine_edge_cases():
    assert get_lr_cosine_schedule(0, 1.0, 0.1, 0, 10) == pytest.approx(1.0)  # no warmup
    assert get_lr_cosine_schedule(5, 1.0, 0.1, 5, 5) == 1.0  # zero-length cosine
    assert get_lr_cosine_schedule(6, 1.0, 0.1, 5, 5) == 0.1
    with pytest.raises(ConfigError, match="cosine_cycle_iters"):
        get_lr_cosine_schedule(0, 1.0, 0.1, 10, 5)


def wsd(p: float) -> float:
    return wsd_schedule(p, max_lr=MAX, min_lr=MIN, warmup=0.1, decay_start=0.8)


@pytest.mark.parametrize(
    ("progress", "lr"),
    [
        (0.0, MIN),  # the warmup starts at min_lr: the first update learns
        (0.05, (MIN + MAX) / 2),
        (0.1, MAX),  # the stable phase
        (0.5, MAX),
        (0.8 - 1e-9, MAX),
        (0.8, MAX),  # the decay starts at the peak
        (0.9, (MIN + MAX) / 2),
        (0.95, MIN + 0.25 * (MAX - MIN)),
        (1.0, MIN),
        (1.7, MIN),  # past the budget (a last step that ran over)
    ],
)
def test_warmup_stable_decay_values(progress, lr):
    assert wsd(progress) == pytest.approx(lr, rel=1e-9)


def test_wsd_without_warmup_or_stable_phase():
    assert wsd_schedule(0.0, max_lr=MAX, min_lr=MIN, warmup=0, decay_start=0.5) == MAX
    no_stable = {"max_lr": MAX, "min_lr": MIN, "warmup": 0.2, "decay_start": 0.2}
    assert wsd_schedule(0.2, **no_stable) == MAX
    assert wsd_schedule(0.6, **no_stable) == pytest.approx((MIN + MAX) / 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"progress": -0.1}, "progress"),
        ({"progress": math.nan}, "progress"),
        ({"warmup": 0.9}, "warmup"),
        ({"decay_start": 1.5}, "decay_start"),
        ({"min_lr": 2 * MAX}, "min_lr"),
    ],
)
def test_wsd_validates(kwargs, match):
    args = {"progress": 0.5, "max_lr": MAX, "min_lr": MIN, "warmup": 0.1, "decay_start": 0.8}
    with pytest.raises(ConfigError, match=match):
        wsd_schedule(**{**args, **kwargs})
