"""Random number generator states as uint8 tensors, so a resumed run draws the same
numbers (dropout masks, sampled batches) as one that never stopped.

Torch's states are byte tensors already; Python's ``random`` and numpy's global state are
written as JSON and stored as its UTF-8 bytes: no pickle, and readable with a hex dump.
"""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import torch
from torch import Tensor

from scratchlm.errors import CheckpointError

log = logging.getLogger(__name__)

TORCH_CPU = "rng.torch_cpu"
TORCH_CUDA = "rng.torch_cuda."  # + device index
PYTHON = "rng.python"
NUMPY = "rng.numpy"


def _json_tensor(data: object) -> Tensor:
    return torch.frombuffer(bytearray(json.dumps(data).encode("utf-8")), dtype=torch.uint8)


def _tensor_json(t: Tensor, key: str) -> object:
    try:
        return json.loads(t.to("cpu", torch.uint8).numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"RNG state {key} is damaged: {e}") from None


def capture_rng_state() -> dict[str, Tensor]:
    """Every global RNG state we know of, as ``{"rng.<name>": uint8 tensor (N,)}``:
    torch's CPU generator, each CUDA device's generator when CUDA is available, Python's
    ``random`` and numpy's global generator."""
    states = {TORCH_CPU: torch.get_rng_state()}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            states[f"{TORCH_CUDA}{i}"] = torch.cuda.get_rng_state(i)
    version, internal, gauss_next = random.getstate()
    states[PYTHON] = _json_tensor([version, list(internal), gauss_next])
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states[NUMPY] = _json_tensor([name, keys.tolist(), int(pos), int(has_gauss), float(cached)])
    return states


def restore_rng_state(tensors: dict[str, Tensor]) -> None:
    """Set the global RNGs from ``capture_rng_state``'s output. Keys not starting with
    ``rng.`` are ignored, so a checkpoint's whole tensor dict can be passed; CUDA states
    for devices this machine lacks are skipped with a warning."""
    if TORCH_CPU in tensors:
        torch.set_rng_state(tensors[TORCH_CPU].to("cpu", torch.uint8))
    cuda = {k: t for k, t in tensors.items() if k.startswith(TORCH_CUDA)}
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for key, t in sorted(cuda.items()):
        index = int(key.removeprefix(TORCH_CUDA))
        if index < available:
            torch.cuda.set_rng_state(t.to("cpu", torch.uint8), index)
        else:
            log.warning(
                "RNG state %s not restored: this machine has %d CUDA device(s)", key, available
            )
    if PYTHON in tensors:
        version, internal, gauss_next = _tensor_json(tensors[PYTHON], PYTHON)
        random.setstate((version, tuple(internal), gauss_next))
    if NUMPY in tensors:
        name, keys, pos, has_gauss, cached = _tensor_json(tensors[NUMPY], NUMPY)
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
