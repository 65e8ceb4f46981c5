"""A run directory's checkpoints: save, keep the last N and the best, find the newest
valid one to resume from.

    run_dir/checkpoints/
      step_00000500/    step_00001000/    ...   one checkpoint directory each
      latest                                    text: the name of the newest checkpoint
      best                                      JSON: {"name": ..., "val_loss": ...}

``latest`` is replaced atomically after its checkpoint is complete, so it never names a
half-written one. A checkpoint that fails verification anyway (a disk error, a copy cut
short) is skipped with a warning and the previous valid one is used instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scratchlm.checkpoint.files import CONFIG, MANIFEST, read_json, verify_checkpoint, write_durably
from scratchlm.checkpoint.io import save_checkpoint
from scratchlm.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
STEP_DIR = re.compile(r"step_(\d{8,})")
# What write_dir_atomically and _remove leave behind when a crash interrupts them.
LEFTOVER = re.compile(r"\.step_\d{8,}\..*\.(tmp|old)|\.(latest|best)\..*\.tmp")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


class CheckpointManager:
    """The checkpoints of one run directory (``run_dir/checkpoints/step_{step:08d}``).

    ``save`` keeps the newest ``keep_last`` checkpoints (by step), the one ``latest``
    names, and the best by validation loss; older ones are deleted.
    """

    def __init__(self, run_dir: str | os.PathLike, *, keep_last: int = 3) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise CheckpointError(f"keep_last must be an integer >= 1, got {keep_last!r}")
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last

    @property
    def dir(self) -> Path:
        return self.run_dir / CHECKPOINTS

    def path_for(self, step: int) -> Path:
        return self.dir / step_dir_name(step)

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        step: int,
        *,
        tokenizer: Any = None,
        train_state: dict[str, Any] | None = None,
        tensors: dict[str, Tensor] | None = None,
        val_loss: float | None = None,
    ) -> Path:
        """Write the checkpoint of ``step`` (replacing one of the same step), then point
        ``latest`` at it, record it as best if ``val_loss`` beats the best so far, and
        delete checkpoints no longer kept. Returns the checkpoint directory."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        path = save_checkpoint(
            model,
            optimizer,
            step,
            self.path_for(step),
            tokenizer=tokenizer,
            train_state=train_state,
            tensors=tensors,
            force=True,
        )
        write_durably(self.dir / LATEST, (path.name + "\n").encode("utf-8"))
        self._update_best(path.name, val_loss)
        self._prune(path.name)
        return path

    def check_layout(self) -> None:
        """CheckpointError when something in the way would make the first save (or a
        resume) fail: the run directory or ``checkpoints`` a file, ``latest`` or ``best`` a
        folder. A trainer checks before its first step, not at its first checkpoint."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise CheckpointError(
                f"{self.run_dir} is a file, not a run directory: choose another one (--out)"
            )
        if self.dir.exists() and not self.dir.is_dir():
            raise CheckpointError(
                f"{self.dir} is a file, but a run keeps its checkpoints in a folder of that "
                "name: move the file away or choose another run directory"
            )
        for name in (LATEST, BEST):
            file = self.dir / name
            if file.exists() and not file.is_file():
                raise CheckpointError(
                    f"{file} is a folder, but it should be a small file naming a checkpoint: "
                    "remove it (the checkpoints are the step_* folders beside it)"
                )

    def list(self) -> list[Path]:
        """Every checkpoint directory, oldest step first (not verified)."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir() if STEP_DIR.fullmatch(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))

    def latest(self) -> Path | None:
        """The checkpoint the ``latest`` pointer names, if that directory exists."""
        file = self.dir / LATEST
        if not file.is_file():
            return None
        name = file.read_text(encoding="utf-8").strip()
        if not STEP_DIR.fullmatch(name):
            log.warning("ignoring %s: it names %r, not a checkpoint directory", file, name)
            return None
        path = self.dir / name
        return path if path.is_dir() else None

    def latest_valid(self) -> Path | None:
        """The newest checkpoint that passes verification: the one ``latest`` names, then
        the others by descending step. Each one skipped is logged as a WARNING naming
        the checkpoint and its bad file. None when there is no valid checkpoint."""
        found, failures = self._first_valid()
        _log_skipped(failures)
        return found

    def resume_point(self) -> Path | None:
        """The checkpoint a resumed run continues from (``latest_valid``); None when the
        run has no checkpoint yet. CheckpointError when it has some and none is readable:
        starting over would overwrite them, so that has to be asked for."""
        found, failures = self._first_valid()
        if found is None and failures:  # one line says it all, no warning per checkpoint
            name, why = failures[0]
            count = f"{len(failures)} checkpoint{'s' if len(failures) > 1 else ''}"
            raise CheckpointError(
                f"cannot resume: {self.dir} holds {count} and none is readable (the newest, "
                f"{name}: {why}); to start over deliberately, delete {self.dir} or choose "
                "another run directory (--out)"
            )
        _log_skipped(failures)
        return found

    def _first_valid(self) -> tuple[Path | None, list[tuple[str, str]]]:
        """The first checkpoint, newest first, that passes verification, and the
        ``(name, reason)`` of each one before it that did not."""
        pointed = self.latest()
        candidates = [pointed] if pointed is not None else []
        candidates += [p for p in reversed(self.list()) if p != pointed]
        failures = []
        for path in candidates:
            try:
                verify_checkpoint(path)
            except (CheckpointError, OSError) as e:  # OSError: a file it cannot read
                failures.append((path.name, str(e)))
                continue
            return path, failures
        return None, failures

    def best(self) -> Path | None:
        """The checkpoint with the lowest ``val_loss`` given to ``save``, if it exists."""
        record = self._best_record()
        if record is None:
            return None
        path = self.dir / record["name"]
        return path if path.is_dir() else None

    def best_val_loss(self) -> float | None:
        record = self._best_record()
        return None if record is None else record["val_loss"]

    # ------------------------------------------------------------------ internals

    def _best_record(self) -> dict[str, Any] | None:
        file = self.dir / BEST
        if not file.is_file():
            return None
        record = read_json(file, "the best-checkpoint record")
        if (
            not isinstance(record, dict)
            or not STEP_DIR.fullmatch(str(record.get("name")))
            or not isinstance(record.get("val_loss"), int | float)
        ):
            raise CheckpointError(
                f"{file} is damaged: expected {{'name': 'step_...', 'val_loss': number}}; "
                "delete it to start the best-checkpoint record afresh"
            )
        return record

    def _update_best(self, name: str, val_loss: float | None) -> None:
        record = self._best_record()
        if val_loss is None or not math.isfinite(val_loss):
            if record is not None and record["name"] == name:
                # The best step was saved again without a loss: its record no longer
                # describes what is on disk.
                (self.dir / BEST).unlink()
            return
        if record is None or record["name"] == name or val_loss < record["val_loss"]:
            data = json.dumps({"name": name, "val_loss": float(val_loss)}) + "\n"
            write_durably(self.dir / BEST, data.encode("utf-8"))

    def _prune(self, latest_name: str) -> None:
        checkpoints = self.list()
        keep = {p.name for p in checkpoints[-self.keep_last :]} | {latest_name}
        best = self._best_record()
        if best is not None:
            keep.add(best["name"])
        for path in checkpoints:
            if path.name not in keep:
                self._remove(path)

    def _remove(self, path: Path) -> None:
        """Rename, then delete: a crash halfway leaves a hidden leftover, never a
        half-deleted directory under a checkpoint's name."""
        doomed = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        os.replace(path, doomed)
        shutil.rmtree(doomed)

    def _remove_leftovers(self) -> None:
        """Temporary directories and files an interrupted save left behind. The writer
        holds the run lock (``lock.RunLock``), so no other process is using them."""
        for path in self.dir.iterdir():
            if LEFTOVER.fullmatch(path.name):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def _log_skipped(failures: list[tuple[str, str]]) -> None:
    for name, why in failures:
        log.warning("skipping checkpoint %s: %s", name, why)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory for ``path``: ``path`` itself when it is one, else the
    latest valid checkpoint of the run directory (or its ``checkpoints`` folder) it is.
    CheckpointError when it is neither, or the run has no valid checkpoint."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / CHECKPOINTS).is_dir():  # before config.json: a run directory may have one
        run_dir = path
    elif path.name == CHECKPOINTS and path.is_dir():
        run_dir = path.parent
    elif (path / CONFIG).is_file():
        return path  # a checkpoint without its manifest: verification says so
    else:
        raise CheckpointError(
            f"{path} is neither a checkpoint directory (with {MANIFEST}) nor a run directory "
            f"(with {CHECKPOINTS}/)"
        )
    found = CheckpointManager(run_dir).latest_valid()
    if found is None:
        raise CheckpointError(f"run directory {run_dir} has no valid checkpoint")
    return found
