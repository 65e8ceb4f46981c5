"""Whether a model config fits the weights file it came with, and this machine, checked
before a single weight is allocated.

A config.json decides how much memory building the model takes, and anyone can edit one
(a manifest is only a checksum). So before ``TransformerLM(config)`` runs, the sizes the
config implies are held against the safetensors header (``header.read_header``: what the
file really holds) and the machine's memory: first cheap lower bounds per field, which
need no model (``vocab_size`` 5e7 or ``n_layers`` 1e9 fail here, in microseconds), then
the exact shapes of a model built on the meta device (no memory), then the bytes loading
will take. Each refusal is one line naming the field, its value and the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from scratchlm.checkpoint.header import SafetensorsHeader
from scratchlm.config import ModelConfig
from scratchlm.errors import CheckpointError
from scratchlm.model import TransformerLM

# A block's index in a tensor name: ours and Llama's "layers.3.", GPT-2's "h.3.".
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
FLOAT32_BYTES = 4  # TransformerLM builds in float32 before a cast to the stored dtype


def physical_memory() -> int | None:
    """Bytes of RAM this machine has, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def check_config_fits(
    config: ModelConfig,
    headers: Sequence[SafetensorsHeader],
    config_file: str | os.PathLike,
    *,
    memory: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """Refuse (CheckpointError, one line) a ``config`` that implies more weights than the
    files of ``headers`` hold, another number of blocks than they store, or more memory
    than the machine has (``memory`` bytes; default: ``physical_memory()``). Returns the
    shapes of the model's state_dict, from a model built on the meta device, for the
    caller to compare with the file's names (ours; HF's go through a key map)."""
    where = Path(config_file)
    stored = sum(h.numel for h in headers)
    files = str(headers[0].file) if len(headers) == 1 else f"{len(headers)} weight files"
    layers = {int(m.group(1)) for h in headers for n in h.tensors if (m := LAYER_INDEX.search(n))}
    if len(layers) != config.n_layers or max(layers, default=-1) != config.n_layers - 1:
        found = f"blocks 0-{max(layers)} ({len(layers)} distinct)" if layers else "no blocks"
        raise CheckpointError(
            f"{where}: n_layers={config.n_layers} but {files} holds {found}: the config "
            "does not belong to these weights"
        )
    for fields, implied in _lower_bounds(config):
        if implied > stored:
            settings = " and ".join(_setting(config, f) for f in fields)
            raise CheckpointError(
                f"{where}: {settings} implies at least {implied:,} weights but {files} holds "
                f"{stored:,}: the config does not belong to these weights"
            )
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = TransformerLM(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())  # a tied weight counts once
    buffers = sum(b.numel() for b in model.buffers())
    _check_memory(config, where, params, buffers, sum(h.data_bytes for h in headers), memory)
    return shapes


def _lower_bounds(config: ModelConfig) -> list[tuple[tuple[str, ...], int]]:
    """``(fields, weights)``: weights every model with these fields has at least, from
    arithmetic alone (cheap for any value, however large)."""
    c = config
    bounds = [
        (("vocab_size", "d_model"), c.vocab_size * c.d_model),  # the embedding
        (("n_layers", "d_model"), c.n_layers * 2 * c.d_model * c.d_model),  # q_proj, o_proj
        (("n_layers", "d_ff"), c.n_layers * 2 * c.d_model * c.ffn_dim),  # the MLP's in and out
        (("n_layers", "shared_depth"), c.depth if c.shared_depth > 1 else 0),  # depth_scales
    ]
    if c.position == "learned":
        bounds.append((("context_length", "d_model"), c.context_length * c.d_model))
    elif c.position == "cope":
        bounds.append((("context_length", "n_layers"), c.n_layers * c.context_length * c.head_dim))
    return bounds


def _setting(config: ModelConfig, name: str) -> str:
    if name == "d_ff" and config.d_ff is None:
        return f"d_ff={config.ffn_dim} (derived)"
    return f"{name}={getattr(config, name)}"


def _check_memory(
    config: ModelConfig, where: Path, params: int, buffers: int, file_bytes: int, memory: int | None
) -> None:
    """Loading holds the float32 model (weights and tables such as RoPE's, which grow
    with context_length) and the file's tensors at once."""
    memory = physical_memory() if memory is None else memory
    need = FLOAT32_BYTES * (params + buffers) + file_bytes
    if memory is None or need <= memory:
        return
    tables = FLOAT32_BYTES * buffers
    culprit = (
        f"context_length={config.context_length} alone takes {_gb(tables)} for position tables"
        if tables > need / 2
        else f"{_gb(FLOAT32_BYTES * params)} for {params:,} weights"
    )
    raise CheckpointError(
        f"{where}: loading this model needs about {_gb(need)} of memory ({culprit}) but "
        f"this machine has {_gb(memory)}"
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"
