"""The slot KV cache of continuous batching: one row of keys and values per running
request, each row at its own length.

Keys and values for ``max_batch`` rows of the whole context are allocated once, so
memory is bounded by the batch and the context whatever the traffic. The requests that
are decoding occupy rows 0..n-1, kept contiguous: when one finishes, the last row's
keys, values and length move into its place (one row copy), so a decode step runs on
the views ``[:n]`` with no gather.

``SlotCache.view(n)`` is what a decode step hands the model in place of a
``KVCache``: it offers what ``TransformerLM.hidden_states`` uses of one (``length``,
``check_room``, ``keys_valid``, ``update``, ``advance``), but every row writes its one
new token at its own length and sees only its own written slots.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchlm.config import ModelConfig
from scratchlm.errors import ScratchLMError
from scratchlm.model import KVCache


class SlotCache:
    """Keys and values (depth, max_batch, Hkv, context, D) and each row's length."""

    def __init__(
        self,
        config: ModelConfig,
        max_batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (config.depth, max_batch, config.kv_heads, config.context_length, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_batch, self.max_len = max_batch, config.context_length
        self.lengths = [0] * max_batch  # positions written in each row (host-side: no syncs)
        self.rows = 0  # rows in use: 0..rows-1

    def add(self, source: KVCache) -> int:
        """Copy the keys and values of a batch-1 ``source`` (a finished prefill, its
        ``length`` positions) into the next free row; returns that row."""
        assert self.rows < self.max_batch, f"all {self.max_batch} slots are in use"
        assert source.batch_size == 1, source.batch_size
        row, n = self.rows, source.length
        self.k[:, row, :, :n] = source.k[:, 0, :, :n]
        self.v[:, row, :, :n] = source.v[:, 0, :, :n]
        self.lengths[row] = n
        self.rows += 1
        return row

    def remove(self, row: int) -> int | None:
        """Free ``row``: the last row in use moves into its place (keys, values,
        length). Returns the row that moved (its old index), or None when ``row`` was
        the last."""
        assert 0 <= row < self.rows, f"row {row} is not in use (rows: {self.rows})"
        last = self.rows - 1
        self.rows = last
        if row == last:
            return None
        n = self.lengths[last]
        self.k[:, row, :, :n] = self.k[:, last, :, :n]
        self.v[:, row, :, :n] = self.v[:, last, :, :n]
        self.lengths[row] = n
        return last

    def clear(self) -> None:
        self.rows = 0

    def view(self) -> SlotView:
        """The cache of one decode step over the rows in use."""
        return SlotView(self)


class SlotView:
    """A decode step's cache over rows 0..n-1 of a ``SlotCache``: one new token per row
    (T = 1), written at that row's own length."""

    def __init__(self, slots: SlotCache) -> None:
        assert slots.rows > 0, "a decode step needs at least one row"
        self.slots, self.n = slots, slots.rows
        lengths = slots.lengths[: self.n]
        self.length = max(lengths)  # the longest row: keys span slots 0..length
        self.lengths = torch.tensor(lengths, dtype=torch.long, device=slots.k.device)  # (n,)
        self._rows = torch.arange(self.n, device=slots.k.device)  # (n,)

    def positions(self) -> Tensor:
        """(n, 1): each row's new token sits at its own length."""
        return self.lengths[:, None]

    def check_room(self, t: int) -> None:
        if self.length + t > self.slots.max_len:
            raise ScratchLMError(
                f"a slot is full: {self.length} + {t} positions exceed its {self.slots.max_len}"
            )

    def keys_valid(self, s: int) -> Tensor:
        """(n, s) bool: each row's written slots and the one its new token fills."""
        return torch.arange(s, device=self.lengths.device) < self.lengths[:, None] + 1

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (n, Hkv, 1, D) at each row's length in ``layer``; return the keys
        and values of slots 0..length, (n, Hkv, length + 1, D) (beyond a row's own
        length + 1, its slots are hidden by ``keys_valid``)."""
        assert k.shape[2] == 1, f"a decode step feeds one token per row, got {k.shape[2]}"
        # Advanced indices on dims 0 and 2 (separated by a slice): the indexed result
        # is (n, Hkv, D), matching k[:, :, 0].
        self.slots.k[layer, self._rows, :, self.lengths] = k[:, :, 0]
        self.slots.v[layer, self._rows, :, self.lengths] = v[:, :, 0]
        end = self.length + 1
        return self.slots.k[layer, : self.n, :, :end], self.slots.v[layer, : self.n, :, :end]

    def advance(self, t: int) -> None:
        assert t == 1, t
        for row in range(self.n):
            self.slots.lengths[row] += 1
