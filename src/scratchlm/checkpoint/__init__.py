"""Checkpoints: save / load / verify / rebuild, written atomically, never pickled.

One checkpoint is a directory (``io``: the layout); a run directory holds many under
``checkpoints/`` with a ``latest`` pointer, keep-last-N and the best by validation loss
(``manager``). Modules, bottom up: ``files`` (names, durable writes, the manifest),
``state`` (weights and optimizer state as safetensors + JSON), ``rng``, ``io``,
``manager``, ``lock`` (one writer per run directory), ``rebuild`` (``load_model``),
``report`` (``inspect_checkpoint``).
"""

from scratchlm.checkpoint.files import FORMAT_VERSION, read_manifest, verify_checkpoint
from scratchlm.checkpoint.io import (
    load_checkpoint,
    read_config,
    read_train_state,
    save_checkpoint,
)
from scratchlm.checkpoint.lock import RunInUseError, RunLock
from scratchlm.checkpoint.manager import CheckpointManager, resolve_checkpoint
from scratchlm.checkpoint.rebuild import load_model
from scratchlm.checkpoint.report import format_report, inspect_checkpoint
from scratchlm.checkpoint.rng import capture_rng_state, restore_rng_state

__all__ = [
    "FORMAT_VERSION",
    "CheckpointManager",
    "RunInUseError",
    "RunLock",
    "capture_rng_state",
    "format_report",
    "inspect_checkpoint",
    "load_checkpoint",
    "load_model",
    "read_config",
    "read_manifest",
    "read_train_state",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "verify_checkpoint",
]
