"""The KV cache: keys and values of earlier positions, so each new token costs one
position's work instead of recomputing the whole sequence.

Preallocated for a batch and a maximum length. A forward pass with a cache writes its
keys/values at ``length`` in every layer, then ``advance`` moves ``length`` on. All rows
share one length; rows of a batch with different prompt lengths are left-padded, and
``key_mask`` marks which slots hold real tokens: whoever pads the batch (the generation
engine) records it with ``set_padding`` before the forward pass that fills those slots;
the model only reads it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchlm.config import ModelConfig
from scratchlm.errors import ScratchLMError


class KVCache:
    """Per-layer keys and values: (depth, B, n_kv_heads, max_len, head_dim) each."""

    def __init__(
        self,
        depth: int,
        batch_size: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (depth, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Each layer's keys and values as views (B, Hkv, max_len, D), taken once: a
        # decoding step then writes and reads them with two calls each, not five. One
        # select per view (not unbind, whose views autograd forbids writing in place).
        self._layers = [(self.k[i], self.v[i]) for i in range(depth)]
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0
        self.key_mask: Tensor | None = None  # (B, max_len) bool, only once padding is seen

    @classmethod
    def for_model(
        cls, config: ModelConfig, batch_size: int, max_len: int | None = None, **kwargs
    ) -> KVCache:
        """A cache sized for ``config`` (max_len defaults to the context length)."""
        return cls(
            config.depth,
            batch_size,
            max_len or config.context_length,
            config.kv_heads,
            config.head_dim,
            **kwargs,
        )

    def check_room(self, t: int) -> None:
        if self.length + t > self.max_len:
            raise ScratchLMError(
                f"KV cache is full: {self.length} + {t} positions exceed its {self.max_len}; "
                "reset it or start a new cache"
            )

    def set_padding(self, attention_mask: Tensor) -> None:
        """Record which of the next T slots (from ``length``) will hold real tokens:
        attention_mask (B, T) bool, False at padding. Call it before the forward pass."""
        if self.key_mask is None:
            self.key_mask = torch.ones(
                self.batch_size, self.max_len, dtype=torch.bool, device=self.k.device
            )
        self.key_mask[:, self.length : self.length + attention_mask.shape[1]] = attention_mask

    def keys_valid(self, s: int) -> Tensor | None:
        """(B, s) bool, which of the first s slots hold real tokens; None if all do."""
        return None if self.key_mask is None else self.key_mask[:, :s]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, Hkv, T, D) at the current length of ``layer``; return all keys
        and values so far, (B, Hkv, length + T, D)."""
        keys, values = self._layers[layer]  # (B, Hkv, max_len, D), views of k and v
        start, t = self.length, k.shape[2]
        keys.narrow(2, start, t).copy_(k)
        values.narrow(2, start, t).copy_(v)
        return keys.narrow(2, 0, start + t), values.narrow(2, 0, start + t)

    def advance(self, t: int) -> None:
        self.length += t

    def reset(self) -> None:
        self.length = 0
        self.key_mask = None
