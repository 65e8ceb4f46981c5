"""The reference model's log-probabilities of every answer, computed once and cached.

DPO compares the tuned model with the model it started as (the reference, frozen). The
reference never changes, so its log-probability of each answer is a constant of the
data: computed once before the first step, with the starting weights, and kept in the
run directory (``reference_logps.safetensors``). The file is keyed by a hash of the
rendered pairs and of the reference weights: a changed data file or another starting
model recomputes it; a resumed run, or a rerun on the same data and model, reads it
instead of running the reference again. No copy of the model is kept in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor, nn

from scratchlm.atomic import atomic_write_bytes, naming_write_errors
from scratchlm.generate import eval_mode
from scratchlm.tune.dpo_data import PreferenceRows
from scratchlm.tune.dpo_loss import sequence_logps

log = logging.getLogger(__name__)

CACHE_FILE = "reference_logps.safetensors"
MAX_CACHE_BYTES = 1 << 30  # two float32 numbers a pair: a bigger file is not a cache of ours


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers, by name, shape, dtype and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def reference_logps(
    model: nn.Module,
    rows: PreferenceRows,
    *,
    batch_size: int,
    autocast: contextlib.AbstractContextManager | None = None,
) -> Tensor:
    """The summed log-probabilities of each pair's chosen and rejected answer under
    ``model`` (in eval mode): (N, 2) float32 on the CPU."""
    device = next(model.parameters()).device
    out = torch.zeros(len(rows.x), 2)
    with eval_mode(model):
        for start in range(0, len(rows.x), batch_size):
            stop = start + batch_size
            width = int(rows.lengths[start:stop].max())
            x = rows.x[start:stop, :, :width].reshape(-1, width).to(device)  # (2b, L)
            y = rows.y[start:stop, :, :width].reshape(-1, width).to(device)
            with autocast or contextlib.nullcontext():
                logps, _ = sequence_logps(model(x), y)  # (2b,)
            out[start:stop] = logps.float().cpu().view(-1, 2)
    return out


class ReferenceCache:
    """The reference log-probabilities of a run's pairs: read from the run directory
    when its key matches, else computed (``write`` saves them once the run holds its
    directory)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / CACHE_FILE
        self.pending: tuple[dict[str, Tensor], str] | None = None  # computed, not yet saved

    def attach(
        self, model: nn.Module, splits: dict[str, PreferenceRows], *, batch_size: int, **kw: Any
    ) -> bool:
        """Set ``rows.ref`` of each split from the cache or by running ``model``; True
        when they were read from the cache."""
        digest = hashlib.sha256()
        for name, rows in sorted(splits.items()):
            digest.update(f"{name}:{rows.digest()};".encode())
        key = f"{digest.hexdigest()}:{weights_digest(model)}"
        cached = self._read(key)
        if cached is not None and all(name in cached for name in splits):
            for name, rows in splits.items():
                rows.ref = cached[name]
            log.info("reference log-probabilities: read from %s", self.path)
            return True
        tensors = {}
        for name, rows in splits.items():
            rows.ref = reference_logps(model, rows, batch_size=batch_size, **kw)
            tensors[name] = rows.ref
        self.pending = (tensors, key)
        log.info(
            "reference log-probabilities: computed for %d pairs",
            sum(len(r.x) for r in splits.values()),
        )
        return False

    def _read(self, key: str) -> dict[str, Tensor] | None:
        """The cached tensors when the file's key is ``key``; None otherwise."""
        if not self.path.is_file():
            return None
        if self.path.stat().st_size > MAX_CACHE_BYTES:
            log.warning("reference log-probabilities: %s is too big to be ours", self.path)
            return None
        try:
            with safe_open(str(self.path), framework="pt") as f:
                if (f.metadata() or {}).get("key") != key:
                    log.info("reference log-probabilities: data or model changed; recomputing")
                    return None
                return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        except (OSError, SafetensorError):
            log.warning("reference log-probabilities: %s is unreadable; recomputing", self.path)
            return None

    def write(self) -> None:
        """Save what ``attach`` computed (nothing when it read the cache)."""
        if self.pending is None:
            return
        tensors, key = self.pending
        data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"key": key})
        with naming_write_errors(self.path.name, self.path.parent):
            atomic_write_bytes(self.path, data)
        self.pending = None
