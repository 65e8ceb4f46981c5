"""A training run's checkpoints: what one holds besides the weights, writing it, and
going back to it (to resume, or to roll back after bad steps).

Functions of the ``Trainer`` (passed as ``trainer``), like ``reporting.py``: a checkpoint
carries everything the next steps depend on (weights, optimizer, the data sampler's
generator, every RNG, the divergence guard, the counters), so a resumed run repeats the
uninterrupted one's steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from scratchlm.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    read_train_state,
    restore_rng_state,
)
from scratchlm.errors import WriteError
from scratchlm.train.parallel import gather_to_cpu, scatter_from_cpu
from scratchlm.train.state import join_tensors, split_tensors


def train_state(trainer: Any) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Everything the next steps depend on besides weights and optimizer, as JSON and
    as tensors (the sampler's generator, ``rng.*``: every RNG)."""
    t = trainer
    sampler, tensors = split_tensors(t.sampler.state_dict(), "sampler.")
    state = t.state.state_dict()
    state.update(
        elapsed=t.run_log.wall_time(),
        guard=t.guard.state_dict(),
        sampler=sampler,
        scaler=t.scaler.state_dict() if t.scaler.is_enabled() else None,
        config=t.config.to_dict(),
        phase=t.config.phase,
        fingerprints=t.fingerprints,
    )
    return state, {**tensors, **capture_rng_state()}


def save_run_checkpoint(trainer: Any, val_loss: float | None = None) -> Path | None:
    """Write a checkpoint of the current step (rank 0; the others wait for it); its
    path on rank 0, else None."""
    t = trainer
    path = None
    model, optimizer = t.model, t.optimizer
    if t.config.fsdp:  # every process takes part in gathering the shards
        model, optimizer = gather_to_cpu(model, optimizer, t.make_optimizer)
    if t.dist.is_main:
        state, tensors = train_state(t)
        try:
            path = t.checkpoints.save(
                model,
                optimizer,
                t.state.step,
                tokenizer=t.tokenizer,
                train_state=state,
                tensors=tensors,
                val_loss=val_loss,
            )
        except WriteError as e:  # the run so far is safe: say where it goes on from
            last = t.checkpoints.latest_valid()
            raise WriteError(
                f"{e}; training stopped at step {t.state.step} (last checkpoint: "
                f"{last.name if last else 'none yet'}): once fixed, continue with "
                f"--resume {t.run_dir}"
            ) from e
        t.last_checkpoint = path
    t.dist.barrier()
    return path


def restore_run(trainer: Any, path: Path, *, data_and_rng: bool) -> None:
    """Load a checkpoint's weights, optimizer and counters into ``trainer``; with
    ``data_and_rng`` also the sampler and RNG states, so the next steps repeat exactly
    (a resume). Without (a rollback), the wall time spent since still counts."""
    t = trainer
    if t.config.fsdp:
        copy = type(t.model)(t.model.config)
        copy_optimizer = t.make_optimizer(copy)
        load_checkpoint(path, copy, copy_optimizer)
        scatter_from_cpu(t.model, t.optimizer, copy, copy_optimizer)
    else:
        load_checkpoint(path, t.model, t.optimizer)
    state, tensors = read_train_state(path)
    rollbacks, elapsed = t.state.rollbacks, t.state.elapsed
    t.state.load_state_dict(state)
    t.state.rollbacks = max(rollbacks, t.state.rollbacks)  # rollbacks never undo
    if not data_and_rng:
        t.state.elapsed = elapsed
    t.guard.load_state_dict(state["guard"])
    if state.get("scaler") and t.scaler.is_enabled():
        t.scaler.load_state_dict(state["scaler"])
    if data_and_rng:
        t.sampler.load_state_dict(join_tensors(state["sampler"], tensors, "sampler."))
        restore_rng_state(tensors)
    t.last_checkpoint = path
    t.run_log.truncate_after(t.state.step)
