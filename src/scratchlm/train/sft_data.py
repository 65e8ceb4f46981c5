"""Instruction-tuning data: conversations -> padded training rows with a loss mask.

Each conversation is rendered by ``render_conversation`` (the one renderer inference uses
too) into at most ``T + 1`` ids, then becomes one row: inputs ``x = ids[:-1]`` and
targets ``y = ids[1:]``, with the target -100 (no loss) wherever the mask is off (the
system and user messages, the role tokens) and on the padding after the conversation.

One conversation per row, padded at the end, needs no attention mask: attention is
causal, so no real token ever looks at the padding after it, and no conversation sees
another. Packing several conversations into a row would waste less compute on padding
but needs a block-diagonal mask so they do not see each other; a batch is instead cut to
its longest conversation, which recovers most of the padding (measured in docs).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from scratchlm.data.batches import RankedDraws
from scratchlm.data.chat import ConversationTooLongError, render_conversation
from scratchlm.errors import DataError
from scratchlm.train.loss import IGNORE_INDEX

log = logging.getLogger(__name__)


def conversation_rows(
    conversations: Sequence[list[dict[str, str]]], tokenizer: Any, context_length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` (N, T) int64, ``y`` (N, T) int64 (-100 = no loss) and each row's length
    (N,). Conversations longer than ``T + 1`` ids lose their oldest exchanges; one that
    cannot fit at all is skipped with a warning."""
    T = context_length
    rows_x, rows_y, lengths = [], [], []
    skipped = 0
    for messages in conversations:
        try:
            ids, mask = render_conversation(messages, tokenizer, max_tokens=T + 1)
        except ConversationTooLongError:
            skipped += 1
            continue
        n = len(ids) - 1
        x = torch.zeros(T, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        x[:n] = torch.tensor(ids[:-1])
        targets = torch.tensor(ids[1:])
        keep = torch.tensor(mask[1:])
        y[:n] = torch.where(keep, targets, IGNORE_INDEX)
        rows_x.append(x)
        rows_y.append(y)
        lengths.append(n)
    if skipped:
        log.warning("skipped %d conversation(s) too long for a context of %d", skipped, T)
    if not rows_x:
        raise DataError("no conversation fits the model's context: use shorter conversations")
    return torch.stack(rows_x), torch.stack(rows_y), torch.tensor(lengths)


def split_conversations(
    conversations: Sequence[list[dict[str, str]]], val_fraction: float
) -> tuple[list[list[dict[str, str]]], list[list[dict[str, str]]]]:
    """Train and validation conversations, decided by a hash of each conversation's
    text (deterministic; copies of a conversation stay on one side)."""
    train, val = [], []
    for messages in conversations:
        digest = hashlib.blake2b(json.dumps(messages, sort_keys=True).encode(), digest_size=8)
        (val if int.from_bytes(digest.digest()) / 2**64 < val_fraction else train).append(messages)
    if not train or not val:
        raise DataError(
            f"splitting {len(conversations)} conversations at val_fraction={val_fraction} "
            f"left {len(train)} for training and {len(val)} for validation: "
            "use more conversations or another --val-fraction"
        )
    return train, val


class ConversationSampler(RankedDraws):
    """Random rows (with replacement) for one rank of ``world_size``, reproducible and
    resumable like ``data.BatchSampler`` (the same ``RankedDraws`` picks the rows)."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        lengths: Tensor,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seed=seed, rank=rank, world_size=world_size)
        self.x, self.y, self.lengths = x, y, lengths

    def next(self, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """x, y of shape (B, L): this rank's rows, cut to the longest among them."""
        rows = self.draw(len(self.x))  # (B,)
        width = int(self.lengths[rows].max())
        return self.x[rows, :width].to(device), self.y[rows, :width].to(device)


def load_sft_data(
    files: Sequence[str],
    tokenizer: Any,
    context_length: int,
    *,
    batch_size: int,
    seed: int,
    val_fraction: float,
    skip_bad: bool,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[ConversationSampler, Tensor, Tensor]:
    """The training sampler and the validation rows ``(val_x, val_y)`` of conversation
    files (any format ``read_conversations`` reads; ``builtin:chat`` names the built-in
    set)."""
    from scratchlm.builtin import builtin_chat
    from scratchlm.data.chat_sources import read_conversations

    paths = [str(builtin_chat()) if f == "builtin:chat" else f for f in files]
    if not paths:
        raise DataError("instruction tuning needs conversations: pass --data FILE ...")
    conversations, bad = read_conversations(paths, skip_bad=skip_bad)
    if bad:
        log.warning("skipped %d malformed conversation record(s)", bad)
    train, val = split_conversations(conversations, val_fraction)
    x, y, lengths = conversation_rows(train, tokenizer, context_length)
    val_x, val_y, val_lengths = conversation_rows(val, tokenizer, context_length)
    width = int(val_lengths.max())
    sampler = ConversationSampler(
        x, y, lengths, batch_size, seed=seed, rank=rank, world_size=world_size
    )
    return sampler, val_x[:, :width], val_y[:, :width]
