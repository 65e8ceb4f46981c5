"""A key map: which tensor of a Hugging Face checkpoint is made from which of ours.

Most entries are a rename (``layers.0.mlp.up_proj.weight`` is Llama's
``model.layers.0.mlp.up_proj.weight``). GPT-2 adds two twists, and an entry states both
so one pair of functions moves tensors either way:

* its ``Conv1D`` layers store a weight as (in, out), the transpose of a Linear's (out, in);
* its ``c_attn`` is one projection holding q, k and v concatenated along the output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError


@dataclass(frozen=True)
class KeyMapping:
    """The HF tensor ``hf`` is our tensors ``ours`` concatenated along dim 0 (in that
    order), transposed if ``transposed``."""

    hf: str
    ours: tuple[str, ...]
    transposed: bool = False


def rename(hf: str, ours: str) -> KeyMapping:
    return KeyMapping(hf, (ours,))


def to_hf_tensors(state: Mapping[str, Tensor], key_map: Iterable[KeyMapping]) -> dict[str, Tensor]:
    """Our state dict -> HF's tensors, each a contiguous tensor of its own (safetensors
    refuses tensors that share memory, so a tied matrix must appear once in the map)."""
    out = {}
    for m in key_map:
        parts = [state[k].detach() for k in m.ours]
        t = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]  # (out, in)
        out[m.hf] = (t.t() if m.transposed else t).contiguous().cpu()
    return out


def from_hf_tensors(
    tensors: Mapping[str, Tensor], key_map: Iterable[KeyMapping], where: str
) -> dict[str, Tensor]:
    """HF's tensors -> our state dict. A fused tensor is split into equal parts."""
    key_map = list(key_map)
    missing = [m.hf for m in key_map if m.hf not in tensors]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise ScratchLMError(f"{where} lacks tensor(s) the config implies: {shown}")
    out = {}
    for m in key_map:
        t = tensors[m.hf]
        t = t.t() if m.transposed else t  # (out, in)
        if len(m.ours) == 1:
            out[m.ours[0]] = t
            continue
        if t.shape[0] % len(m.ours):
            raise ScratchLMError(
                f"{where}: {m.hf} has {t.shape[0]} output rows, not divisible into "
                f"{len(m.ours)} equal parts ({', '.join(m.ours)})"
            )
        out.update(zip(m.ours, t.chunk(len(m.ours), dim=0), strict=True))
    return out
