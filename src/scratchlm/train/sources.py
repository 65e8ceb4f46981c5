"""What a run trains and validates on: random windows of token files when pretraining,
conversations (packed rows with a loss mask) when instruction tuning."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from scratchlm.data import BatchSampler, fixed_windows, open_tokens, read_meta
from scratchlm.train.config import TrainConfig
from scratchlm.train.sft_data import load_sft_data


def training_data(
    config: TrainConfig, tokenizer: Any, context_length: int, *, rank: int, world_size: int
) -> tuple[Any, Tensor, Tensor, float | None]:
    """``(sampler, val_x, val_y, bytes_per_token)``: the training batches (an object with
    ``next(device)``, ``state_dict()``, ``load_state_dict()``), the fixed validation rows
    (N, T), and the validation text's bytes per token for bits per byte (None for
    conversations, whose loss counts only the answers)."""
    c, T = config, context_length
    if c.phase == "sft":
        sampler, val_x, val_y = load_sft_data(
            c.conversations,
            tokenizer,
            T,
            batch_size=c.batch_size,
            seed=c.seed,
            val_fraction=c.val_fraction,
            skip_bad=c.skip_bad,
            rank=rank,
            world_size=world_size,
        )
        return sampler, val_x, val_y, None
    bytes_per_token = read_meta(c.data)["splits"]["val"]["bytes_per_token"]
    train_tokens = open_tokens(c.data, "train", tokenizer)
    val_tokens = open_tokens(c.data, "val")  # same meta.json: the tokenizer is checked
    sampler = BatchSampler(
        train_tokens, c.batch_size, T, seed=c.seed, rank=rank, world_size=world_size
    )
    val_x, val_y = fixed_windows(val_tokens, c.eval_windows, T)
    return sampler, val_x, val_y, bytes_per_token
