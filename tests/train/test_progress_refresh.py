"""The training progress line: redrawn by time, not by step count, and an ETA from this
process's own step times, which a resume, evaluations, checkpoints and pauses leave alone."""

from __future__ import annotations

import io
import re

import pytest

from scratchlm.train.progress import Progress, RedrawTimer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_redraw_timer_is_due_by_time():
    clock = FakeClock()
    timer = RedrawTimer(1.0, clock=clock)
    assert timer.due()  # the first call draws
    assert not timer.due()
    clock.now += 0.6
    assert not timer.due()
    clock.now += 0.4  # a second since the last redraw
    assert timer.due()
    clock.now += 0.99
    assert not timer.due()
    clock.now += 30.0  # a slow step: due at once, whatever the step count
    assert timer.due()


def lines(out: io.StringIO) -> list[str]:
    """Every drawing of the progress line, in order."""
    return [x for x in re.split(r"[\r\n]", out.getvalue()) if x.startswith("step ")]


def run_steps(progress: Progress, clock: FakeClock, steps, seconds: float) -> None:
    for step in steps:
        clock.now += seconds
        progress.update(step, loss=2.0, lr=1e-3, grad_norm=1.0, seconds=seconds)


def test_fast_steps_redraw_about_once_a_second():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(1000, file=out, clock=clock)
    before = len(lines(out))  # tqdm draws the empty line when it starts
    run_steps(progress, clock, range(1, 101), seconds=0.05)  # 100 steps in 5 s
    drawn = len(lines(out)) - before
    assert 5 <= drawn <= 7, drawn  # not 100 (every step), not 10 (every tenth step)


def test_slow_steps_redraw_every_step():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(1000, file=out, clock=clock)
    before = len(lines(out))
    run_steps(progress, clock, range(1, 6), seconds=6.0)  # `small` on a CPU
    shown = [re.search(r"step (\d+)/", x).group(1) for x in lines(out)[before:]]
    assert shown == ["1", "2", "3", "4", "5"]


def test_eta_counts_this_process_steps_only():
    """Resumed at step 200 of 400 after hours of training, one second a step: the ETA
    is 190 s after step 210, and stays on that pace across a long pause (an evaluation,
    a checkpoint written after Ctrl-C), also on the final line."""
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(400, initial_step=200, file=out, clock=clock)
    assert "ETA ?" in lines(out)[-1]  # nothing timed yet
    run_steps(progress, clock, range(201, 211), seconds=1.0)
    assert progress.eta(210) == pytest.approx(190.0)
    assert "ETA 03:10 |" in lines(out)[-1]
    clock.now += 3600.0  # not training: not a step's time
    run_steps(progress, clock, [211], seconds=1.0)
    assert "ETA 03:09 |" in lines(out)[-1]
    progress.close()
    assert "ETA 03:09 |" in lines(out)[-1] and "211/400" in lines(out)[-1]


def test_eta_follows_recent_steps():
    clock = FakeClock()
    progress = Progress(1000, file=io.StringIO(), clock=clock)
    run_steps(progress, clock, range(1, 51), seconds=4.0)
    run_steps(progress, clock, range(51, 101), seconds=1.0)  # sped up (e.g. warm caches)
    assert progress.eta(100) == pytest.approx(900 * 1.0)


def test_throughput_is_kept_between_the_steps_that_measure_it():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(100, file=out, clock=clock)
    progress.update(10, loss=2.0, lr=1e-3, grad_norm=1.0, tokens_per_s=5000.0, seconds=1.0)
    clock.now += 2.0
    progress.update(11, loss=1.9, lr=1e-3, grad_norm=1.0, seconds=1.0)
    assert "loss 1.9000" in lines(out)[-1] and "5,000 tok/s" in lines(out)[-1]
