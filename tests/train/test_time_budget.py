"""--time-budget: durations, settings, and runs under a fake clock (the budget holds,
the schedule follows the time spent, a resumed run counts the time already spent)."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import ENV, train_command

from scratchlm.checkpoint import read_train_state
from scratchlm.cli import main
from scratchlm.cli.train import done_line
from scratchlm.errors import ConfigError
from scratchlm.train.budget import TimeBudget, parse_duration
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import resolve_config
from scratchlm.train.trainer import Trainer


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150), (" 10S ", 10)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "15min", "-5m", "1.2.3s", "0s", "5m 3s", "1d"])
def test_bad_durations_are_one_line_errors(text):
    with pytest.raises(ConfigError) as e:
        parse_duration(text)
    assert "\n" not in str(e.value) and "time budget" in str(e.value)


def test_budget_settings_are_checked():
    TrainConfig(time_budget="15m", schedule="wsd")
    assert TrainConfig(time_budget="15m").resolved_schedule() == "wsd"  # auto, in time
    assert TrainConfig().resolved_schedule() == "cosine"  # auto, in steps
    with pytest.raises(ConfigError, match="--schedule wsd"):
        TrainConfig(time_budget="15m", schedule="cosine")  # needs a step count
    with pytest.raises(ConfigError, match="--time-budget"):
        TrainConfig(schedule="wsd")
    with pytest.raises(ConfigError, match="not a duration"):
        TrainConfig(time_budget="soon", schedule="wsd")
    with pytest.raises(ConfigError, match="decay_start"):
        TrainConfig(time_budget="1m", schedule="wsd", warmup_fraction=0.5, decay_start=0.3)
    with pytest.raises(ConfigError, match="pick one"):
        TrainConfig(time_budget="1m", schedule="wsd", tokens=1000)


def test_a_run_sized_in_time_has_no_step_count():
    assert TrainConfig(time_budget="15m").total_steps(4096) is None  # not the steps default
    assert TrainConfig(steps=7).total_steps(4096) == 7
    assert TrainConfig(tokens=10_000).total_steps(4096) == 3


def test_budget_from_toml_and_flags(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('time_budget = "15m"\nschedule = "wsd"\ndecay_start = 0.7\n')
    config = resolve_config(file)
    assert config.budget_seconds() == 900 and config.decay_start == 0.7
    assert resolve_config(file, {"time_budget": "90s"}).budget_seconds() == 90
    assert TrainConfig().budget_seconds() is None  # the default: sized in steps


def test_a_bad_budget_flag_is_one_line(prepared, tmp_path, capsys):
    args = ["train", "--data", str(prepared), "--out", str(tmp_path / "r"), "--quiet"]
    assert main([*args, "--schedule", "wsd", "--time-budget", "15 minutes"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratchlm: error:") and "\n" not in err and "15 minutes" in err


def test_periodic_events_fall_due_when_a_share_of_the_budget_is_crossed():
    budget = TimeBudget(100.0, eval_share=0.1, checkpoint_share=0.0)
    assert budget.due("eval", 9.5, 10.2) and not budget.due("eval", 10.2, 11.0)
    assert not budget.due("checkpoint", 0.0, 99.0)  # 0: only at the end
    budget.measured("eval", 2.0)
    budget.measured("checkpoint", 1.0)
    budget.measured("eval", 1.0)  # the longest one counts
    assert budget.reserve == 1.5 * 3.0 and budget.training_seconds == 95.5
    budget.step_seconds = 0.5
    assert not budget.spent(94.9) and budget.spent(95.0)


def test_periodic_work_never_takes_more_than_its_share_of_the_budget():
    budget = TimeBudget(100.0, eval_share=0.1, checkpoint_share=0.2, work_share=0.05)
    budget.measured("eval", 1.0)  # 1 s every 20 s at most: the period grows from 10 to 20
    assert not budget.due("eval", 9.5, 10.2) and budget.due("eval", 19.5, 20.2)
    assert not budget.due("eval", 29.5, 30.2)
    budget.measured("checkpoint", 0.5)  # 0.5 s every 10 s at most: 20 stays the period
    assert budget.due("checkpoint", 19.5, 20.2) and not budget.due("checkpoint", 9.5, 10.2)
    # A whole budget in 0.7 s steps: 4 periodic evaluations of 1 s, and the final one.
    times = [0.7 * i for i in range(143)]
    assert sum(budget.due("eval", a, b) for a, b in itertools.pairwise(times)) == 4


class FakeClock:
    """Seconds that advance by ``tick`` at every reading: a run's time is a count of
    what it did, the same on every machine. ``at`` (seconds, action): call the action
    once when the clock passes that time."""

    def __init__(self, start: float = 0.0, tick: float = 0.01, at=None) -> None:
        self.now, self.tick, self.at = start, tick, at

    def __call__(self) -> float:
        self.now += self.tick
        if self.at is not None and self.now >= self.at[0]:
            _, action = self.at
            self.at = None
            action()
        return self.now


def budget_config(tiny_config: TrainConfig, out: Path) -> TrainConfig:
    return tiny_config.replace(
        out=str(out),
        time_budget="3s",
        schedule="wsd",
        warmup_fraction=0.1,
        decay_start=0.7,
        eval_every=None,  # every tenth of the budget
        checkpoint_every=None,  # every fifth
        sample_tokens=0,
        steps=1,  # ignored: the budget sizes the run
    )


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_budgeted_run_ends_inside_its_budget_with_its_schedule(tiny_config, tmp_path):
    config = budget_config(tiny_config, tmp_path / "run")
    result = Trainer(config, clock=FakeClock()).run()
    records = _records(tmp_path / "run")
    train = [r for r in records if r["kind"] == "train"]
    # The budget holds: the last record and the last checkpoint land inside the 3 s,
    # and the run used most of it (it stopped for the reserve, not long before).
    assert all(r["time"] <= 3.0 for r in records)
    state, _ = read_train_state(result.checkpoint)
    assert 2.5 < state["elapsed"] <= 3.0 and state["step"] == result.step == len(train)
    assert result.step > 20 and result.val_loss is not None
    # Warmup, a stable phase at the peak, then a decay towards min_lr.
    lrs = [r["lr"] for r in train]
    peak = lrs.index(config.lr)
    assert lrs[0] < config.lr / 2 and lrs[:peak] == sorted(lrs[:peak])
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert lrs[-1] < config.lr / 2 and lrs.count(config.lr) > len(lrs) / 3
    # An evaluation before the first step (its cost sizes the reserve), then at most one
    # per tenth of the budget (fewer where evaluations would take over 5% of it: the fake
    # clock's are slow), and the final one.
    val = [r for r in records if r["kind"] == "val"]
    assert val[0]["step"] == 0 and 5 <= len(val) <= 12 and val[-1]["step"] == result.step
    periodic = [r["time"] for r in val[1:-1]]
    assert all(b - a > 0.25 for a, b in itertools.pairwise(periodic))


def test_a_resumed_run_counts_the_time_already_spent(tiny_config, tmp_path):
    config = budget_config(tiny_config, tmp_path / "run")
    whole = Trainer(config.replace(out=str(tmp_path / "whole")), clock=FakeClock()).run()
    # Stopped by Ctrl-C at 1.2 s (in the stable phase), then resumed by a process whose
    # clock reads something else entirely.
    clock = FakeClock(at=(1.2, lambda: signal.raise_signal(signal.SIGINT)))
    stopped = Trainer(config, clock=clock).run()
    assert stopped.interrupted == "SIGINT"
    resumed = Trainer(config.replace(resume=True), clock=FakeClock(start=1e6)).run()
    train = [r for r in _records(tmp_path / "run") if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, resumed.step + 1))
    after = train[stopped.step]  # the first step of the resumed process
    # The time goes on from where it stopped (about 1.2 s), not from 0.
    assert after["time"] > max(1.2, train[stopped.step - 1]["time"]) > 1.0
    assert after["lr"] == config.lr  # still the stable phase, not a new warmup
    assert train[-1]["time"] <= 6.0 and train[-1]["lr"] < config.lr / 2
    # It ends about where the uninterrupted run ended (the resumed process measures
    # its evaluation again and pays for one more).
    assert abs(resumed.step - whole.step) <= 0.15 * whole.step


def test_a_budget_the_first_evaluation_eats_is_evaluated_once_and_said(tiny_config, tmp_path):
    # Every reading of the clock is 0.3 s: the first evaluation alone takes 0.3 s or
    # more, and 1.5 times that kept back for the last one leaves no time for a step.
    config = budget_config(tiny_config, tmp_path / "run").replace(time_budget="1s")
    said: list[str] = []
    result = Trainer(config, clock=FakeClock(tick=0.3), echo=said.append).run()
    assert said[0].endswith(": steps of 128 tokens for 1s (1 s), from step 0")  # 4 x 32
    assert result.step == 0 and result.checkpoint is not None
    assert done_line(result) == (
        f"done: no steps taken, validation loss {result.val_loss:.4f}; "
        f"checkpoint {result.checkpoint}"
    )
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records if r["kind"] == "val"] == [0]  # not evaluated twice
    (event,) = [r["message"] for r in records if r["kind"] == "event"]
    assert event.startswith("the time budget (1 s) was spent before the first step")
    assert "--time-budget" in event and "--eval-windows" in event and "--val-fraction" in event


@pytest.mark.slow
def test_two_gloo_processes_stop_a_budgeted_run_together(prepared, tmp_path):
    """Rank 0's clock decides every evaluation, checkpoint and the last step: the other
    process follows it (a disagreement would hang in a checkpoint's barrier)."""
    budget = ["--time-budget", "6s", "--schedule", "wsd", "--eval-every", "0"]
    command = train_command(prepared, tmp_path / "two", *budget)
    at = command.index("--checkpoint-every")
    del command[at : at + 2]  # the default: a checkpoint every fifth of the budget
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [*torchrun, *command[1:]], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert two.returncode == 0, two.stderr[-3000:]
    records = _records(tmp_path / "two")
    last = max(r["step"] for r in records if r["kind"] == "train")
    checkpoints = sorted(p.name for p in (tmp_path / "two" / "checkpoints").glob("step_*"))
    assert checkpoints[-1] == f"step_{last:08d}" and len(checkpoints) >= 2
    state, _ = read_train_state(tmp_path / "two" / "checkpoints" / checkpoints[-1])
    assert state["elapsed"] <= 6.0
