"""The training loop: one loop for pretraining and instruction tuning.

Each step: set the learning rate, run ``grad_accum`` forward/backward passes on random
windows, clip the gradient, let the divergence guard judge the step, apply (or skip) the
update. Between steps, on a schedule: log metrics, evaluate, sample, checkpoint.

It never loses a run: checkpoints are atomic and carry everything the next steps depend
on (weights, optimizer, the data sampler's generator, every RNG, the guard), so a run
killed at any moment resumes from its last checkpoint and, on a CPU, reproduces the
uninterrupted run's losses exactly. SIGINT and SIGTERM save a checkpoint and stop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scratchlm.checkpoint import CheckpointManager, RunLock
from scratchlm.data import tokenizer_fingerprint
from scratchlm.errors import ConfigError, ScratchLMError
from scratchlm.train.assembly import (
    build_model,
    is_resuming,
    lock_run_dir,
    resume_point,
    run_tokenizer,
)
from scratchlm.train.config import LM_PHASES, TrainConfig
from scratchlm.train.config_files import CONFIG_FILE
from scratchlm.train.guard import DivergenceGuard
from scratchlm.train.objective import LanguageModelObjective, Objective
from scratchlm.train.optim import build_optimizer, clip_grad_norm
from scratchlm.train.pacing import Pacing
from scratchlm.train.parallel import wrap_for_training
from scratchlm.train.progress import Progress, peak_flops
from scratchlm.train.reporting import announce, evaluate_run, log_train
from scratchlm.train.run_checkpoints import restore_run, save_run_checkpoint
from scratchlm.train.run_log import RunLog
from scratchlm.train.runtime import (
    SignalFlag,
    autocast,
    cpu_flags,
    init_distributed,
    pick_precision,
    shutdown_distributed,
)
from scratchlm.train.state import TrainResult, TrainState

log = logging.getLogger(__name__)


class TrainingDiverged(ScratchLMError):
    """The loss went bad and rolling back did not help."""


class Trainer:
    """Runs (or resumes) the training run described by a ``TrainConfig``."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        echo: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        objective: Objective | None = None,
    ) -> None:
        """Build everything the run needs (checking the settings, the data and the
        tokenizer on the way), without writing anything; ``run`` then trains. The run
        directory's lock (rank 0) is taken first when the directory exists, so a second
        writer is refused before it reads anything; ``run`` releases it. ``clock``
        (seconds) times the run and its ``--time-budget``; tests pass a fake one.
        ``objective``: what the run minimises (default: next-token prediction, the
        pretrain and sft phases; ``scratchlm.tune`` passes preference tuning's)."""
        if objective is None and config.phase not in LM_PHASES:
            raise ConfigError(
                f"phase {config.phase!r} needs its objective: run `scratchlm {config.phase}`"
            )
        self.objective = objective or LanguageModelObjective()
        self.config = config
        self.clock = clock
        self.echo = echo or log.info
        self.dist, self.device = init_distributed(config.device)
        self.run_dir = Path(config.out)
        self.lock = RunLock(self.run_dir)
        if self.dist.is_main:
            self.lock.acquire(create=False)  # a new run's directory: locked by run()
        try:
            self._assemble()
        except BaseException:
            self.lock.release()
            raise

    def _assemble(self) -> None:
        """The run's pieces (``__init__`` without the lock)."""
        c = self.config
        self.precision = pick_precision(c.precision, self.device, cpu_flags())
        # The optimizer auto stands for, by name in the saved settings and checkpoints:
        # a resume compares and goes on with the one the run started with.
        self.optimizer_note = c.optimizer_note()  # said by announce()
        c = self.config = c.replace(optimizer=c.resolved_optimizer())
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=c.keep_last)
        self.checkpoints.check_layout()
        self.resuming = is_resuming(c, self.run_dir)
        self.tokenizer = run_tokenizer(c)
        torch.manual_seed(c.seed)  # the same initial weights on every process
        self.model = build_model(c, self.tokenizer).to(self.device)
        T = self.model.config.context_length
        # What the steps call (made before the optimizer: FSDP replaces the parameters).
        # Evaluation, sampling and checkpoints use self.model.
        self.loss_module = self.objective.training_module(self.model)
        self.train_step_model = wrap_for_training(
            self.loss_module, self.dist, self.device, fsdp=c.fsdp, compile=c.compile
        )
        self.make_optimizer = functools.partial(build_optimizer, config=c, precision=self.precision)
        self.optimizer = self.make_optimizer(self.model)
        self.data = self.objective.load_data(
            c,
            self.tokenizer,
            self.model,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            precision=self.precision,
        )
        self.sampler, self.prompts = self.data.sampler, self.data.prompts
        self.tokens_per_step = c.batch_size * c.grad_accum * T * self.dist.world_size
        self.pacing = Pacing(c, self.tokens_per_step, self._rank0_says)
        self.total, self.budget = self.pacing.total, self.pacing.budget  # budget: or None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.guard = DivergenceGuard(c.spike_factor, c.max_skips)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
        self.peak = peak_flops(self.device, dtype)
        self.flops_per_token = self.model.flops_per_token(training=True)
        self.state = TrainState()  # the counters that checkpoints carry
        # The bar counts steps: a budgeted run, whose step count is unknown, logs lines.
        bar = c.progress and self.dist.is_main and sys.stderr.isatty() and not self.budget
        self.run_log = RunLog(
            self.state, is_main=self.dist.is_main, bar_enabled=bar, clock=self.clock
        )
        self.last_checkpoint: Path | None = None
        self.overfit_warned = False  # said once per process (reporting.py)
        # What the steps depend on besides the settings, by content: checkpoints record
        # it, a resume compares it.
        self.fingerprints = {
            "data": self.data.fingerprint,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
        }
        self.step_metrics: dict[str, Tensor] = {}  # the last step's objective metrics
        self.resume_from: Path | None = None  # the checkpoint run() continues from
        if self.resuming:
            self.resume_from = resume_point(self.checkpoints, self.fingerprints, self.model)

    # ----------------------------------------------------------------------------------
    # The loop
    def run(self) -> TrainResult:
        """Train until the configured number of steps (resuming when the run directory
        holds a checkpoint); returns how the run ended."""
        c = self.config
        try:
            if self.dist.is_main:  # only once everything checked out: a failed start leaves none
                lock_run_dir(self.lock, resuming=self.resuming)
                self.run_log.open(self.run_dir, c.tensorboard)
                c.save(self.run_dir / CONFIG_FILE)
                self.objective.write_files(self.run_dir)
            self.run_log.start_clock()
            if self.resuming:
                latest = self.resume_from
                if latest is not None:
                    restore_run(self, latest, data_and_rng=True)
                    self.run_log.event(
                        f"resumed from {latest.name} (step {self.state.step})", logging.INFO
                    )
                else:  # it stopped before its first checkpoint
                    self.run_log.truncate_after(0)
            with SignalFlag() as stop:
                return self._loop(stop)
        finally:
            self.run_log.close()
            self.lock.release()
            shutdown_distributed(self.dist)

    def _loop(self, stop: SignalFlag) -> TrainResult:
        c = self.config
        announce(self)
        bar = Progress(self.total, initial_step=self.state.step, enabled=self.run_log.bar_enabled)
        window_tokens, window_time = 0, 0.0
        with bar:
            first_val = None  # a budgeted run's evaluation before its first step
            if self.budget:  # measure an evaluation's cost first: the reserve kept for the last
                first_val = self._timed("eval", evaluate_run, self, bar)
            start = self.state.step
            finished = start if self.resume_from else -1  # evaluated and saved
            while self.state.step < self.total:
                before = self.run_log.wall_time()
                if self.pacing.spent(before):
                    # Spent between steps (logging, a resume late in the budget): the
                    # last step's evaluation and checkpoint, unless it had them.
                    if self.state.step == 0 and self.budget:
                        self.run_log.event(self.budget.spent_before_first_step())
                    if finished != self.state.step:
                        val = first_val
                        if self.state.step != start:  # first_val is of an earlier step
                            val = self._timed("eval", evaluate_run, self, bar)
                        self._timed("checkpoint", save_run_checkpoint, self, val_loss=val)
                    break
                t0 = self.clock()
                done = self._train_step()
                if done is None:  # rolled back to a checkpoint: nothing to report
                    continue
                loss, grad_norm, lr = done
                seconds = self.clock() - t0  # the step alone: its ETA share
                window_time += seconds
                window_tokens += self.tokens_per_step
                bar.update(self.state.step, loss=loss, lr=lr, grad_norm=grad_norm, seconds=seconds)
                if self.state.step % c.log_every == 0 or self.state.step == self.total:
                    tps = window_tokens / max(window_time, 1e-9)
                    log_train(self, bar, loss, grad_norm, lr, tps)
                    window_tokens, window_time = 0, 0.0
                eval_due, ckpt_due, at_end = self.pacing.after_step(
                    self.state.step, before, seconds, self.run_log.wall_time()
                )
                val, new_best = None, False
                if eval_due or at_end:
                    val = self._timed("eval", evaluate_run, self, bar)
                    new_best = self._beats_best(val)
                signalled = self.dist.any(stop.name is not None, self.device)
                if ckpt_due or at_end or signalled or new_best:
                    self._timed("checkpoint", save_run_checkpoint, self, val_loss=val)
                    finished = self.state.step if (eval_due or at_end) else finished
                if signalled:
                    where = f"at step {self.state.step}"
                    self.run_log.event(
                        f"stopped by {stop.name or 'a signal'} {where}", logging.INFO
                    )
                    return self._result(interrupted=stop.name or "signal")
                if at_end:
                    break
        return self._result()

    def _rank0_says(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process: its clock decides where a budget ends."""
        return self.dist.any(flag and self.dist.is_main, self.device)

    def _timed(self, kind: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``action(*args, **kwargs)``, its duration recorded in a budgeted run's reserve."""
        t0 = self.clock()
        result = action(*args, **kwargs)
        self.pacing.measured(kind, self.clock() - t0)
        return result

    def _beats_best(self, val: float | None) -> bool:
        """Whether ``val`` is lower than the validation loss of the ``best`` checkpoint:
        then this step is saved even between checkpoint steps, so that ``best`` is the
        lowest validation loss seen, not the lowest that fell on a checkpoint step. Every
        process gets rank 0's answer (only it evaluates), as they all take part in a save."""
        better = False
        if val is not None and math.isfinite(val):
            best = self.checkpoints.best_val_loss()
            better = best is None or val < best
        return self.dist.any(better, self.device)

    def _train_step(self) -> tuple[float, float, float] | None:
        """One optimizer update (or a skipped one); returns loss, grad norm and lr, or
        None when bad steps made it roll back to the last checkpoint."""
        c = self.config
        lr = self.state.lr_scale * self.pacing.lr(self.state.step, self.run_log.wall_time())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The loss is the mean over the step's items (target tokens; pairs) on all
        # processes, as for the batch in one piece: each micro-batch adds its summed loss
        # over that count, so one with few answer tokens weighs no more than its tokens
        # do. DDP averages the gradients over the processes, hence the world size.
        batches = [self.sampler.next(self.device) for _ in range(c.grad_accum)]
        targets = torch.stack([self.objective.count(batch) for batch in batches]).sum()
        targets = self.dist.sum(targets).clamp(min=1)  # 0-dim, on the device: no host sync
        scale = self.dist.world_size / targets
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, Tensor] = {}
        for micro, batch in enumerate(batches):
            last = micro == c.grad_accum - 1
            # DDP averages gradients across processes on the last micro-step only.
            no_sync = getattr(self.train_step_model, "no_sync", None)
            with no_sync() if (no_sync and not last) else contextlib.nullcontext():
                with autocast(self.device, self.precision):
                    loss, metrics = self.objective.loss(self.train_step_model, batch)
                self.scaler.scale(loss * scale).backward()
            loss_sum += loss.detach()
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0) + value.detach()
        self.step_metrics = {k: self.dist.sum(v) / targets for k, v in metric_sums.items()}
        self.scaler.unscale_(self.optimizer)
        norm = clip_grad_norm(self.model.parameters(), c.grad_clip or float("inf"))
        loss_value = float(self.dist.sum(loss_sum) / targets)  # the mean per target token
        grad_norm = float(norm)
        self.state.step += 1
        self.state.tokens += self.tokens_per_step
        # fp16's loss scaler finds overflowing gradients itself, skips that update and
        # lowers its scale: routine, not divergence.
        overflow = self.scaler.is_enabled() and math.isfinite(loss_value)
        overflow = overflow and not math.isfinite(grad_norm)
        reason = None if overflow else self.guard.check(loss_value, grad_norm)
        if reason is None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.run_log.event(f"skipped the update of step {self.state.step}: {reason}")
        self.optimizer.zero_grad(set_to_none=True)
        self.state.last_loss = loss_value
        if self.guard.should_roll_back:
            self._roll_back(reason)
            return None
        return loss_value, grad_norm, lr

    def _roll_back(self, reason: str | None) -> None:
        c = self.config
        latest = self.checkpoints.latest_valid()
        what = f"{self.guard.skips_in_row} bad steps in a row (last: {reason})"
        if latest is None:
            raise TrainingDiverged(
                f"training diverged at step {self.state.step} before the first checkpoint: {what}; "
                f"try a lower --lr (now {c.lr:g}) or a longer warmup"
            )
        rollbacks = self.state.rollbacks
        if rollbacks >= c.max_rollbacks:
            raise TrainingDiverged(
                f"training diverged at step {self.state.step} after {rollbacks} rollbacks: "
                f"{what}; the last good checkpoint is {latest}; try a lower --lr "
                f"(now {c.lr:g}), a smaller --grad-clip or a larger batch"
            )
        self.state.rollbacks += 1
        restore_run(self, latest, data_and_rng=False)  # new data: the same would fail again
        self.state.lr_scale *= c.rollback_lr
        self.guard.skips_in_row = 0
        self.run_log.event(
            f"rolled back to {latest.name} after {what}; learning rate now x{self.state.lr_scale:g}"
        )

    def _result(self, interrupted: str | None = None) -> TrainResult:
        s = self.state
        return TrainResult(
            s.step, s.tokens, s.last_loss, s.last_val, self.last_checkpoint, interrupted
        )
