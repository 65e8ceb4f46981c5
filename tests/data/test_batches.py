"""Batches: windows with targets shifted by one, uniform over every valid start,
reproducible from a generator; rank slices that add up to the global batch; resumable
sampler state; a fixed, evenly spaced validation sample."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from scratchlm.data import BatchSampler, fixed_windows, get_batch
from scratchlm.errors import ConfigError, DataError


@pytest.fixture
def tokens(tmp_path) -> np.memmap:
    """0, 1, 2, ... as a read-only uint16 memmap, so a window's first id is its start."""
    path = tmp_path / "t.bin"
    np.arange(500, dtype="<u2").tofile(path)
    return np.memmap(path, dtype="<u2", mode="r")


def test_get_batch_shapes_and_shift(tokens):
    gen = torch.Generator().manual_seed(0)
    x, y = get_batch(tokens, 8, 16, "cpu", gen)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    for row_x, row_y in zip(x, y, strict=True):
        start = int(row_x[0])
        assert row_x.tolist() == list(range(start, start + 16))
        assert row_y.tolist() == list(range(start + 1, start + 17))


def test_get_batch_is_determined_by_the_generator(tokens):
    def draw(seed):
        return get_batch(tokens, 4, 8, "cpu", torch.Generator().manual_seed(seed))

    assert all(torch.equal(a, b) for a, b in zip(draw(1), draw(1), strict=True))
    assert not torch.equal(draw(1)[0], draw(2)[0])


def test_every_start_is_reachable_and_about_equally_likely():
    n, T = 20, 4  # valid starts: 0 .. n - T - 1 = 15
    tokens = np.arange(n, dtype=np.uint16)
    gen = torch.Generator().manual_seed(0)
    starts = torch.cat([get_batch(tokens, 1000, T, "cpu", gen)[0][:, 0] for _ in range(16)])
    counts = torch.bincount(starts, minlength=n)
    assert counts[n - T :].sum() == 0  # a window never runs past the end
    expected = len(starts) / (n - T)  # 1000 per start; the standard deviation is ~31
    assert counts[: n - T].min() > 0.8 * expected and counts[: n - T].max() < 1.2 * expected


def test_shortest_corpus_works_and_a_shorter_one_is_refused():
    x, y = get_batch(np.arange(9, dtype=np.uint16), 3, 8, "cpu")  # exactly one window
    assert x.tolist() == [list(range(8))] * 3 and y.tolist() == [list(range(1, 9))] * 3
    with pytest.raises(DataError, match="corpus has 8 tokens, fewer than one context window of 9"):
        get_batch(np.arange(8, dtype=np.uint16), 1, 8, "cpu")
    with pytest.raises(DataError, match="has 8 tokens"):
        BatchSampler(np.arange(8, dtype=np.uint16), 1, 8, seed=0)


def test_ranks_split_the_global_batch(tokens):
    world, B, T = 3, 2, 8
    single = BatchSampler(tokens, world * B, T, seed=7)
    ranks = [BatchSampler(tokens, B, T, seed=7, rank=r, world_size=world) for r in range(world)]
    for _ in range(4):
        whole_x, whole_y = single.next("cpu")
        parts = [r.next("cpu") for r in ranks]
        assert torch.equal(torch.cat([x for x, _ in parts]), whole_x)
        assert torch.equal(torch.cat([y for _, y in parts]), whole_y)
        assert len({tuple(x[:, 0].tolist()) for x, _ in parts}) == world  # ranks differ


def test_sampler_state_round_trip(tokens):
    sampler = BatchSampler(tokens, 4, 8, seed=3)
    for _ in range(3):
        sampler.next()
    state = sampler.state_dict()
    assert state["generator"].dtype == torch.uint8 and state["batches_drawn"] == 3
    expected = [sampler.next() for _ in range(2)]
    resumed = BatchSampler(tokens, 4, 8, seed=999)
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 3
    for (x, y), (ex, ey) in zip([resumed.next() for _ in range(2)], expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert resumed.batches_drawn == 5
    with pytest.raises(DataError, match="sampler state is damaged"):
        resumed.load_state_dict({"generator": [1, 2], "batches_drawn": 1})


def test_sampler_settings_are_checked(tokens):
    with pytest.raises(ConfigError, match="rank"):
        BatchSampler(tokens, 2, 8, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        BatchSampler(tokens, 0, 8, seed=0)


def test_fixed_windows_are_evenly_spaced_and_capped():
    tokens = np.arange(101, dtype=np.uint16)  # last valid start: 101 - 10 - 1 = 90
    x, y = fixed_windows(tokens, 3, 10)
    assert x[:, 0].tolist() == [0, 45, 90] and x.shape == y.shape == (3, 10)
    assert torch.equal(y, x + 1)
    x, _ = fixed_windows(tokens, 50, 10)  # only 10 windows fit without overlapping
    starts = x[:, 0].tolist()
    assert len(starts) == 10 and starts[0] == 0 and starts[-1] == 90
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 10
    again, _ = fixed_windows(tokens, 50, 10)
    assert torch.equal(again, x)
    assert fixed_windows(tokens, 1, 10)[0][:, 0].tolist() == [0]
