"""What is inside a checkpoint: config, progress, files and per-tensor statistics.

``inspect_checkpoint`` returns plain JSON-able data; ``format_report`` turns it into
text a person reads. Tensors are read one at a time, so a large checkpoint is inspected
without holding all of its weights in memory.
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any

import torch
from safetensors.torch import safe_open
from torch import Tensor

from scratchlm.checkpoint.files import OPTIMIZER_JSON, TOKENIZER, WEIGHTS, read_json
from scratchlm.checkpoint.io import read_config, read_train_state
from scratchlm.checkpoint.manager import resolve_checkpoint
from scratchlm.checkpoint.state import TENSOR_TAG, TUPLE_TAG, read_aliases
from scratchlm.tokenizer.files import load_tokenizer


def tensor_stats(t: Tensor) -> dict[str, Any]:
    """Shape, dtype, and mean / std / min / max over the finite values (None when there
    are none), with the count of NaN and infinite values."""
    stats: dict[str, Any] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    x = t.detach().to("cpu", torch.float64)  # float64: sums of millions of values stay exact
    finite = x[torch.isfinite(x)]
    stats["nonfinite"] = x.numel() - finite.numel()
    if finite.numel():
        stats.update(
            mean=finite.mean().item(),
            std=finite.std(correction=0).item(),
            min=finite.min().item(),
            max=finite.max().item(),
        )
    else:
        stats.update(mean=None, std=None, min=None, max=None)
    return stats


def _plain(value: Any) -> Any:
    """optimizer.json's tagged values as plain JSON: tuples as lists, tensors by key."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {TUPLE_TAG}:
            return _plain(value[TUPLE_TAG])
        if set(value) == {TENSOR_TAG}:
            return f"<tensor {value[TENSOR_TAG]}>"
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_loss_key(key: str) -> bool:
    """train_state keys shown as losses: "train_loss", "val_loss", "best_val", "val_bpb"..."""
    key = key.lower()
    return "loss" in key or key.endswith("_val") or key.startswith("val_")


def inspect_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A summary of a checkpoint (or of a run directory's latest valid one):
    ``path, format_version, step, created, model, tokenizer, tokens_seen, losses,
    train_state_keys, optimizer, files, total_bytes, parameters, tied, tensors`` and,
    for a checkpoint of LoRA adapters, ``lora`` (their settings).

    ``tokens_seen`` (train_state's "tokens_seen" or "tokens") and ``losses`` (its keys
    containing "loss", starting with "val_" or ending in "_val") come from the trainer
    state when present. ``tensors`` maps each stored weight to
    ``tensor_stats``; ``tied`` maps each tied name to the tensor stored for it.
    """
    folder = resolve_checkpoint(path)
    config = read_config(folder)
    state, _ = read_train_state(folder)
    info: dict[str, Any] = {
        "path": str(folder),
        "format_version": config["format_version"],
        "step": config["step"],
        "created": config.get("created"),
        "model": config["model"],
        "tokenizer": None,
        "tokens_seen": state.get("tokens_seen", state.get("tokens")),
        "losses": {k: v for k, v in state.items() if _is_loss_key(k)},
        "train_state_keys": sorted(state),
        "optimizer": None,
    }
    if config.get("lora") is not None:
        info["lora"] = config["lora"]
    if (folder / TOKENIZER).is_file():
        tok = load_tokenizer(folder / TOKENIZER)
        info["tokenizer"] = {
            "type": type(tok).__name__,
            "vocab_size": tok.vocab_size,
            "special_tokens": sorted(tok.special_tokens),
        }
    if (folder / OPTIMIZER_JSON).is_file():
        optimizer = read_json(folder / OPTIMIZER_JSON, "the optimizer state")
        groups = optimizer.get("param_groups", []) if isinstance(optimizer, dict) else []
        info["optimizer"] = {
            "param_groups": [
                {k: _plain(v) for k, v in g.items() if k not in ("params", "param_names")}
                | {"num_params": len(g.get("params", []))}
                for g in groups
            ]
        }
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    info["files"] = {p.relative_to(folder).as_posix(): p.stat().st_size for p in files}
    info["total_bytes"] = sum(info["files"].values())

    aliases = read_aliases(folder / WEIGHTS)  # checks the header before reading tensors
    tensors: dict[str, Any] = {}
    with safe_open(folder / WEIGHTS, framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            tensors[name] = tensor_stats(f.get_tensor(name))
    info["parameters"] = sum(_numel(s["shape"]) for s in tensors.values())
    info["tied"] = aliases
    info["tensors"] = tensors
    return info


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _brief(value: Any) -> str:
    """A loss history stays one line: its length and last value."""
    if isinstance(value, list) and len(value) > 3:
        return f"[{len(value)} values, last {value[-1]}]"
    return str(value)


def format_report(info: dict[str, Any]) -> str:
    """``inspect_checkpoint``'s result as readable text."""
    lines = [f"checkpoint   {info['path']}", f"step         {info['step']}"]
    lines.append(f"created      {info['created']}")
    model = info["model"]
    if model is None:
        lines.append("model        generic torch module (no model config)")
    else:
        fields = " ".join(f"{k}={v}" for k, v in model.items())
        wrapped = textwrap.wrap(fields, 86, break_long_words=False)
        lines += [("model        " if i == 0 else " " * 13) + w for i, w in enumerate(wrapped)]
    if info.get("lora") is not None:
        fields = " ".join(f"{k}={v}" for k, v in info["lora"].items())
        lines.append(f"lora         {fields} (the adapters are merged on loading)")
    tok = info["tokenizer"]
    if tok is not None:
        specials = ", ".join(tok["special_tokens"]) or "none"
        lines.append(f"tokenizer    {tok['type']}, {tok['vocab_size']} ids, special: {specials}")
    if info["tokens_seen"] is not None:
        lines.append(f"tokens seen  {info['tokens_seen']:,}")
    if info["losses"]:
        losses = "  ".join(f"{k}={_brief(v)}" for k, v in info["losses"].items())
        lines.append(f"losses       {losses}")
    tied = ", ".join(f"{a} = {n}" for a, n in info["tied"].items())
    lines.append(f"parameters   {info['parameters']:,}" + (f" (tied: {tied})" if tied else ""))
    if info["optimizer"] is not None:
        for i, group in enumerate(info["optimizer"]["param_groups"]):
            settings = " ".join(f"{k}={json.dumps(v)}" for k, v in group.items())
            lines.append(f"optimizer    group {i}: {settings}")
    lines.append(f"files        {len(info['files'])}, {_size(info['total_bytes'])}")
    width = max(len(n) for n in info["files"])
    lines += [f"  {n:<{width}}  {_size(s):>10}" for n, s in info["files"].items()]
    lines.append("tensors")
    width = max([len(n) for n in info["tensors"]] + [4])
    lines.append(
        f"  {'name':<{width}}  {'shape':<14} {'dtype':<9} {'mean':>10} {'std':>10} "
        f"{'min':>10} {'max':>10} {'nonfinite':>9}"
    )
    for name, s in info["tensors"].items():
        shape = "x".join(map(str, s["shape"])) or "scalar"
        lines.append(
            f"  {name:<{width}}  {shape:<14} {s['dtype']:<9} {_num(s['mean']):>10} "
            f"{_num(s['std']):>10} {_num(s['min']):>10} {_num(s['max']):>10} {s['nonfinite']:>9}"
        )
    return "\n".join(lines)
