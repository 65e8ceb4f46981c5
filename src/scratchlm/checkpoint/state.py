"""Model weights and optimizer state as safetensors + JSON, never a pickle.

Weights: the state_dict with every tensor made contiguous (safetensors stores plain
row-major data) and each shared tensor stored once; the names that alias a stored
tensor (``lm_head.weight`` -> ``embed_tokens.weight`` with tied embeddings) go into the
safetensors metadata.

Optimizer: ``optimizer.state_dict()`` split into its tensors (safetensors, keys such as
``state.3.exp_avg``) and everything else (JSON). Inside the JSON a tensor is written as
``{"__tensor__": key}`` and a tuple as ``{"__tuple__": [...]}``, so the state dict comes
back with the same types it had (AdamW's ``betas`` is a tuple).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from scratchlm.checkpoint.header import SafetensorsHeader, read_header
from scratchlm.errors import CheckpointError

ALIASES_KEY = "scratchlm.aliases"
TENSOR_TAG = "__tensor__"
TUPLE_TAG = "__tuple__"


def unwrap_module(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP / DataParallel / torch.compile wrapper, whose
    state_dict keys carry no ``module.`` or ``_orig_mod.`` prefix."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _storage_key(t: Tensor) -> tuple[Any, ...]:
    """Two tensors with equal keys are the same memory seen the same way."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride())


def storable(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies safetensors accepts; tensors that share memory with an
    earlier one are cloned (safetensors refuses shared storage)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[Any, int]] = set()
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise CheckpointError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        t = t.detach().to("cpu").contiguous()
        storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and storage in seen:
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[name] = t
    return out


def weights_to_save(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, aliases)``: the state_dict with each shared tensor once, and
    ``{alias name: stored name}`` for the others."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    first_name: dict[tuple[Any, ...], str] = {}
    for name, t in model.state_dict().items():
        key = _storage_key(t)
        if t.numel() and key in first_name:  # empty tensors all report data_ptr 0
            aliases[name] = first_name[key]
            continue
        first_name[key] = name
        tensors[name] = t
    return storable(tensors), aliases


def weights_metadata(aliases: dict[str, str]) -> dict[str, str]:
    return {"format": "pt", ALIASES_KEY: json.dumps(aliases, sort_keys=True)}


def read_aliases(file: Path, header: SafetensorsHeader | None = None) -> dict[str, str]:
    """``{tied name: stored name}`` from a model.safetensors header (no tensor is read)."""
    header = read_header(file) if header is None else header
    try:
        aliases = json.loads(header.metadata.get(ALIASES_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{file} is damaged: its tied-tensor table is not JSON ({e})"
        ) from None
    if not isinstance(aliases, dict) or any(v not in header.tensors for v in aliases.values()):
        raise CheckpointError(f"{file} is damaged: its tied-tensor table names absent tensors")
    return aliases


def stored_shapes(header: SafetensorsHeader, aliases: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """Every state_dict name the file provides (tied names included) -> its shape."""
    shapes = {name: entry.shape for name, entry in header.tensors.items()}
    shapes.update({alias: shapes[name] for alias, name in aliases.items()})
    return shapes


def check_shapes(
    file: Path, stored: Mapping[str, tuple[int, ...]], wanted: Mapping[str, tuple[int, ...]]
) -> None:
    """CheckpointError naming the first tensor the model needs that ``file`` lacks, the
    first it has that the model does not, or the first whose shapes differ."""
    missing = [k for k in wanted if k not in stored]
    if missing:
        raise CheckpointError(
            f"{file} has no tensor {missing[0]} that the model needs "
            f"({len(missing)} missing): the checkpoint is of another model"
        )
    unexpected = [k for k in stored if k not in wanted]
    if unexpected:
        raise CheckpointError(
            f"{file} has tensor {unexpected[0]} that the model does not "
            f"({len(unexpected)} unexpected): the checkpoint is of another model"
        )
    for name, shape in stored.items():
        if tuple(shape) != tuple(wanted[name]):
            raise CheckpointError(
                f"{file}: tensor {name} has shape {tuple(shape)} in the checkpoint but "
                f"{tuple(wanted[name])} in the model: the configs differ"
            )


def load_weights(model: nn.Module, file: Path) -> dict[str, Tensor]:
    """Copy the weights of ``file`` into ``model``'s existing tensors (keeping their
    device, dtype and ties); returns the tensors as stored. Strict, and checked on the
    file's header before any tensor is read: CheckpointError naming the first missing or
    unexpected key, or a key whose shape differs (with both shapes)."""
    header = read_header(file)
    aliases = read_aliases(file, header)
    wanted = model.state_dict()
    check_shapes(file, stored_shapes(header, aliases), {k: t.shape for k, t in wanted.items()})
    try:
        stored = load_file(file)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read weights {file}: {e}") from None
    state = dict(stored)
    for alias, name in aliases.items():
        state[alias] = stored[name]
    # load_state_dict copies into the live tensors (copy_), so a tied Parameter stays
    # one Parameter.
    model.load_state_dict(state, strict=True)
    return stored


# --------------------------------------------------------------------- optimizer


def _encode(value: Any, key: str, tensors: dict[str, Tensor]) -> Any:
    """``value`` as JSON, its tensors moved into ``tensors`` under ``key``."""
    if isinstance(value, Tensor):
        tensors[key] = value
        return {TENSOR_TAG: key}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {TUPLE_TAG: [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
    raise CheckpointError(
        f"optimizer state {key} is a {type(value).__name__}, which cannot be saved without "
        "pickle: only tensors, numbers, strings, None, lists, tuples and str-keyed dicts can"
    )


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if set(value) == {TENSOR_TAG}:
            if value[TENSOR_TAG] not in tensors:
                raise CheckpointError(f"optimizer tensor {value[TENSOR_TAG]} is missing")
            return tensors[value[TENSOR_TAG]]
        if set(value) == {TUPLE_TAG}:
            return tuple(_decode(v, tensors) for v in value[TUPLE_TAG])
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def optimizer_to_save(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """``(tensors, json_part)`` of ``optimizer.state_dict()``."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state = {str(i): _encode(s, f"state.{i}", tensors) for i, s in sd["state"].items()}
    groups = [_encode(g, f"param_groups.{i}", tensors) for i, g in enumerate(sd["param_groups"])]
    return storable(tensors), {"state": state, "param_groups": groups}


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors_file: Path, json_file: Path, json_part: Any
) -> None:
    """Rebuild the state dict from the two files and load it. The optimizer's
    ``load_state_dict`` casts each state tensor to its parameter's device and dtype."""
    try:
        tensors = load_file(tensors_file) if tensors_file.is_file() else {}
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read optimizer tensors {tensors_file}: {e}") from None
    if not isinstance(json_part, dict) or not {"state", "param_groups"} <= set(json_part):
        raise CheckpointError(f"{json_file} is damaged: expected 'state' and 'param_groups'")
    try:
        state_dict = {
            "state": {int(i): _decode(s, tensors) for i, s in json_part["state"].items()},
            "param_groups": _decode(json_part["param_groups"], tensors),
        }
        optimizer.load_state_dict(state_dict)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"the optimizer state in {json_file.parent} does not fit this optimizer ({e}): "
            "build the optimizer over the same parameter groups as the run that saved it"
        ) from None
