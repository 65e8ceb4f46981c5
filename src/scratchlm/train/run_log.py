"""What a training run tells as it goes: metrics.jsonl records, run events and messages.

Kept apart from the Trainer so the training loop reads as training: every record is
stamped here with the step, the tokens seen and the wall time across resumes, and a
message goes above the live progress bar on a terminal or to the log elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scratchlm.train.metrics import MetricsLog
from scratchlm.train.state import TrainState

log = logging.getLogger("scratchlm.train.trainer")  # the trainer's logger: one stream


class RunLog:
    """The records and messages of one run. ``state`` is the Trainer's TrainState (read
    for the step, tokens and time already spent); ``metrics.jsonl`` is written only once
    ``open`` is called (rank 0, after the run checked out)."""

    def __init__(
        self,
        state: TrainState,
        *,
        is_main: bool,
        bar_enabled: bool,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.state = state
        self.clock = clock  # seconds; tests pass a fake one
        self.is_main = is_main
        # A live progress line on rank 0 in a terminal; elsewhere (a log file, a pipe,
        # --quiet) the same numbers go to the log, one line each.
        self.bar_enabled = bar_enabled
        self.metrics: MetricsLog | None = None
        self.started = clock()  # wall clock of this process's training

    def open(self, run_dir: Path, tensorboard: bool) -> None:
        self.metrics = MetricsLog(run_dir, tensorboard=tensorboard)

    def start_clock(self) -> None:
        self.started = self.clock()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resume or rollback returns to it)."""
        if self.metrics is not None:
            self.metrics.truncate_after(step)

    def wall_time(self) -> float:
        """Seconds of training so far, across resumes."""
        return self.state.elapsed + (self.clock() - self.started)

    def record(self, **fields: Any) -> None:
        if self.metrics is None:
            return
        stamp = {"step": self.state.step, "tokens": self.state.tokens, "time": self.wall_time()}
        self.metrics.log({**stamp, **fields})

    def event(self, message: str, level: int = logging.WARNING) -> None:
        """Log and record a run event: a warning, or INFO for routine ones (a resume)."""
        if self.is_main:
            log.log(level, message)
            self.record(kind="event", message=message)

    def say(self, bar: Any, message: str) -> None:
        if self.bar_enabled:
            bar.write(message)
        else:
            log.info(message)
