"""What a run trains and validates on: random windows of token files when pretraining,
conversations (packed rows with a loss mask) when instruction tuning; and the prompts it
samples from at each evaluation."""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor

from scratchlm.data import BatchSampler, fixed_windows, open_tokens, read_meta
from scratchlm.train.config import TrainConfig
from scratchlm.train.sft_data import load_sft_data, passes_warning

log = logging.getLogger(__name__)


def training_data(
    config: TrainConfig, tokenizer: Any, context_length: int, *, rank: int, world_size: int
) -> tuple[Any, Tensor, Tensor, float | None, list[str]]:
    """``(sampler, val_x, val_y, bytes_per_token, prompts)``: the training batches (an
    object with ``next(device)``, ``state_dict()``, ``load_state_dict()``), the fixed
    validation rows (N, T), the validation text's bytes per token for bits per byte (None
    for conversations, whose loss counts only the answers), and the sample prompts: the
    configured ones, or for instruction tuning without any, the opening questions of a few
    held-out conversations (the user's own data, not built-in questions)."""
    c, T = config, context_length
    if c.phase == "sft":
        data = load_sft_data(
            c.conversations,
            tokenizer,
            T,
            batch_size=c.batch_size,
            seed=c.seed,
            val_fraction=c.val_fraction,
            skip_bad=c.skip_bad,
            val_rows=c.eval_windows,
            rank=rank,
            world_size=world_size,
        )
        rows_per_step = c.batch_size * c.grad_accum * world_size
        steps = c.total_steps(rows_per_step * T)  # None: sized in time, passes unknown
        if steps is not None and rank == 0:
            rows = len(data.sampler.rows.x)
            warning = passes_warning(rows, rows_per_step, steps, data.trained)
            if warning is not None:
                log.warning(warning)
        prompts = c.sample_prompts or data.heldout_prompts
        return data.sampler, data.val_x, data.val_y, None, prompts
    bytes_per_token = read_meta(c.data)["splits"]["val"]["bytes_per_token"]
    train_tokens = open_tokens(c.data, "train", tokenizer)
    val_tokens = open_tokens(c.data, "val")  # same meta.json: the tokenizer is checked
    sampler = BatchSampler(
        train_tokens, c.batch_size, T, seed=c.seed, rank=rank, world_size=world_size
    )
    val_x, val_y = fixed_windows(val_tokens, c.eval_windows, T)
    return sampler, val_x, val_y, bytes_per_token, c.sample_prompts
