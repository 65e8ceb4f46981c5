"""capture_rng_state / restore_rng_state bring back the same random numbers."""

from __future__ import annotations

import random

import numpy as np
import torch

from scratchlm.checkpoint import (
    capture_rng_state,
    read_train_state,
    restore_rng_state,
    save_checkpoint,
)


def _draw() -> tuple[list[float], float, list[float], list[float]]:
    return (
        torch.rand(4).tolist(),
        random.random(),
        np.random.rand(3).tolist(),
        [random.gauss(0, 1), float(np.random.randn())],  # the cached-Gaussian halves too
    )


def test_capture_draw_restore_draw_again():
    random.gauss(0, 1)  # leave a cached Gaussian in Python's state
    states = capture_rng_state()
    assert {"rng.torch_cpu", "rng.python", "rng.numpy"} <= set(states)
    assert all(t.dtype == torch.uint8 and t.dim() == 1 for t in states.values())
    first = _draw()
    assert _draw() != first  # the generators moved on
    restore_rng_state(states)
    assert _draw() == first


def test_rng_state_through_a_checkpoint(tmp_path):
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    path = save_checkpoint(
        torch.nn.Linear(2, 2), None, 0, tmp_path / "c", tensors=capture_rng_state()
    )
    first = _draw()
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    _, tensors = read_train_state(path)
    restore_rng_state({**tensors, "sampler.position": torch.tensor([3])})  # others ignored
    assert _draw() == first
