"""Instruction-tuning data: conversations -> packed training rows with a loss mask.

Each conversation is rendered by ``render_conversation`` (the one renderer inference uses
too) into at most ``T + 1`` ids: inputs ``x = ids[:-1]`` and targets ``y = ids[1:]``, with
the target -100 (no loss) wherever the mask is off (the system and user messages, the
role tokens).

Training rows are packed: each row of ``T`` tokens holds several whole conversations
(never one split across rows), and ``segment_ids`` keep them apart: a token attends only
to earlier tokens of its own conversation and positions restart at 0 for each one, so a
conversation trains exactly as it would alone (``TransformerLM`` with ``segment_ids``;
tests/model/test_segments.py). The rest of a row is padding, a segment of its own
(``PAD_SEGMENT``) with targets -100. ``batch_size`` therefore counts rows, not
conversations: a row of 128 tokens holds about two of the built-in conversations.

Why packing: measured against one conversation per row, padded, each batch cut to its
longest conversation (how batches were built before), one optimizer step on the built-in
conversations (bench/bench_sft.py, 2 threads of a shared 2-core CPU), packing trains on
1.25x the useful (non-padding) tokens per second with the default run's model (batch 16
x 128: 30% of a padded batch was padding, 4% of a packed one) and 1.24x with preset
``small`` (8 x 256: 24% vs 3%); 1.27x and 1.17x with 1 thread. A packed token costs 2-8%
more (attention over whole rows of T, under a block-diagonal mask), far less than the
padding it saves. So packing is the only way training batches conversations
(docs/benchmarks.md, "Instruction tuning: packing or padding").

Validation rows stay one conversation per row, padded at the end (``conversation_rows``):
attention is causal, so no real token looks at the padding after it, and evaluation needs
no segment ids.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scratchlm.builtin import resolve_builtin
from scratchlm.chat_format import ConversationTooLongError, render_conversation, render_prompt
from scratchlm.data.batches import RankedDraws
from scratchlm.data.chat_sources import read_conversations
from scratchlm.errors import DataError
from scratchlm.model.loss import IGNORE_INDEX

log = logging.getLogger(__name__)

PAD_SEGMENT = -1  # the segment id of the padding at the end of a packed row

# One rendered conversation: its inputs and targets (-100 = no loss), of equal length.
Example = tuple[list[int], list[int]]


def _render_all(
    conversations: Sequence[list[dict[str, str]]], tokenizer: Any, context_length: int
) -> tuple[list[Example], int]:
    """The examples of the conversations that fit, and how many did not fit at all."""
    T = context_length
    examples, skipped = [], 0
    for messages in conversations:
        try:
            ids, mask = render_conversation(messages, tokenizer, max_tokens=T + 1)
        except ConversationTooLongError:
            skipped += 1
            continue
        targets = [t if keep else IGNORE_INDEX for t, keep in zip(ids[1:], mask[1:], strict=True)]
        examples.append((ids[:-1], targets))
    if not examples:
        raise DataError("no conversation fits the model's context: use shorter conversations")
    return examples, skipped


def render_examples(
    conversations: Sequence[list[dict[str, str]]], tokenizer: Any, context_length: int
) -> list[Example]:
    """Each conversation as ``(inputs, targets)`` of at most ``T`` ids. Conversations
    longer than ``T + 1`` ids lose their oldest exchanges; one that cannot fit at all is
    skipped with a warning (DataError when none fits)."""
    examples, skipped = _render_all(conversations, tokenizer, context_length)
    if skipped:
        log.warning(
            "skipped %d conversation(s) too long for a context of %d", skipped, context_length
        )
    return examples


def conversation_rows(
    conversations: Sequence[list[dict[str, str]]], tokenizer: Any, context_length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One conversation per row, padded at the end (validation): ``x`` (N, T) int64,
    ``y`` (N, T) int64 (-100 = no loss) and each row's length (N,)."""
    examples = render_examples(conversations, tokenizer, context_length)
    return _padded_rows(examples, context_length)


def _padded_rows(examples: Sequence[Example], context_length: int) -> tuple[Tensor, Tensor, Tensor]:
    x = torch.zeros(len(examples), context_length, dtype=torch.long)
    y = torch.full_like(x, IGNORE_INDEX)
    for i, (inputs, targets) in enumerate(examples):
        x[i, : len(inputs)] = torch.tensor(inputs)
        y[i, : len(targets)] = torch.tensor(targets)
    return x, y, torch.tensor([len(inputs) for inputs, _ in examples])


@dataclass
class PackedRows:
    """Training rows, each holding whole conversations one after another, then padding.

    x (N, T) int64 inputs; y (N, T) int64 targets, -100 = no loss; segment_ids (N, T)
    int64: 0, 1, 2, ... for the conversations of a row, ``PAD_SEGMENT`` on its padding;
    lengths (N,): the tokens a row uses (the rest is padding).
    """

    x: Tensor
    y: Tensor
    segment_ids: Tensor
    lengths: Tensor


def pack_examples(examples: Sequence[Example], context_length: int, *, seed: int) -> PackedRows:
    """Pack conversations into rows of ``T`` tokens: taken in a random order (``seed``),
    each goes into the row it fills best (the fullest row it still fits in; best fit), a
    new row when it fits in none. On the built-in conversations this fills ~96% of the
    tokens at T=128, where a batch of single padded conversations fills ~70%."""
    T = context_length
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    rows: list[list[int]] = []  # the examples of each row
    free: list[tuple[int, int]] = []  # (free tokens, row), sorted: the fullest first
    for i in order.tolist():
        n = len(examples[i][0])
        assert 0 < n <= T, (n, T)
        at = bisect.bisect_left(free, (n, -1))  # the least free space that still fits n
        if at < len(free):
            space, row = free.pop(at)
            rows[row].append(i)
        else:
            space, row = T, len(rows)
            rows.append([i])
        bisect.insort(free, (space - n, row))

    x = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.full_like(x, IGNORE_INDEX)
    segment_ids = torch.full_like(x, PAD_SEGMENT)
    lengths = torch.zeros(len(rows), dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for segment, i in enumerate(members):
            inputs, targets = examples[i]
            end = start + len(inputs)
            x[r, start:end] = torch.tensor(inputs)
            y[r, start:end] = torch.tensor(targets)
            segment_ids[r, start:end] = segment
            start = end
        lengths[r] = start
    return PackedRows(x, y, segment_ids, lengths)


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
    """Random packed rows (with replacement) for one rank of ``world_size``, reproducible
    and resumable like ``data.BatchSampler`` (the same ``RankedDraws`` picks the rows, so
    ranks draw different rows). ``batch_size`` counts rows, each holding several
    conversations."""

    def __init__(
        self,
        rows: PackedRows,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seed=seed, rank=rank, world_size=world_size)
        self.rows = rows

    def next(self, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        """x, y, segment_ids of shape (B, L): this rank's rows, cut to the longest among
        them (the arguments of ``TransformerLM.loss``)."""
        r = self.rows
        picked = self.draw(len(r.x))  # (B,) row indices
        width = int(r.lengths[picked].max())
        x, y, segment_ids = (t[picked, :width].to(device) for t in (r.x, r.y, r.segment_ids))
        return x, y, segment_ids


@dataclass
class ConversationData:
    """What instruction tuning trains and validates on: the training sampler (packed
    rows), the validation rows ``val_x``, ``val_y`` (N, T) (one conversation per row), and
    the opening user messages of a few held-out conversations, the prompts a run samples
    answers to when it is given none (they are the user's own questions, never seen in
    training)."""

    sampler: ConversationSampler
    val_x: Tensor
    val_y: Tensor
    heldout_prompts: list[str]
    trained: int  # training conversations (in ``sampler.rows``)


def heldout_prompts(
    conversations: Sequence[list[dict[str, str]]], tokenizer: Any, context_length: int, n: int
) -> list[str]:
    """The first user message of the first ``n`` of ``conversations`` (held out of
    training) whose message takes at most half the context, so that a sample has room for
    its answer (a chat prompt may always use half: ``chat.prompt_budget``); fewer when
    fewer qualify, no message twice."""
    prompts: list[str] = []
    for messages in conversations:
        text = next(m["content"] for m in messages if m["role"] == "user")
        prompt = render_prompt([{"role": "user", "content": text}], tokenizer)
        short = len(prompt) <= context_length // 2
        if short and text not in prompts:
            prompts.append(text)
        if len(prompts) == n:
            break
    return prompts


SAMPLED_HELDOUT = 2  # held-out questions sampled at each evaluation when none are given


def load_sft_data(
    files: Sequence[str],
    tokenizer: Any,
    context_length: int,
    *,
    batch_size: int,
    seed: int,
    val_fraction: float,
    skip_bad: bool,
    val_rows: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> ConversationData:
    """The training sampler (packed rows), the validation rows and the held-out prompts
    of conversation files (any format ``read_conversations`` reads; ``builtin:chat``
    names the built-in set). Logs how many conversations were read, skipped (and why),
    trained on and held out. ``val_rows``: at most this many held-out conversations,
    spread evenly over them, make the validation rows (None: all of them)."""
    paths = [str(resolve_builtin(f)) for f in files]
    if not paths:
        raise DataError("instruction tuning needs conversations: pass --data FILE ...")
    conversations, malformed = read_conversations(paths, skip_bad=skip_bad)
    train, val = split_conversations(conversations, val_fraction)
    examples, too_long = _render_all(train, tokenizer, context_length)
    val_examples, val_too_long = _render_all(val, tokenizer, context_length)
    rows = pack_examples(examples, context_length, seed=seed)
    report = log.info if rank == 0 else log.debug  # once, not once per process
    report(
        "conversations: %s",
        count_line(
            read=len(conversations) + malformed,
            malformed=malformed,
            too_long=too_long + val_too_long,
            trained=len(examples),
            rows=len(rows.x),
            heldout=len(val_examples),
            context_length=context_length,
            val_fraction=val_fraction,
        ),
    )
    if too_long + val_too_long and rank == 0:
        log.warning(
            "skipped %d conversation(s) too long for the model's context of %d tokens",
            too_long + val_too_long,
            context_length,
        )
    scored = val_examples if val_rows is None else evenly_spaced(val_examples, val_rows)
    val_x, val_y, val_lengths = _padded_rows(scored, context_length)
    width = int(val_lengths.max())
    sampler = ConversationSampler(rows, batch_size, seed=seed, rank=rank, world_size=world_size)
    prompts = heldout_prompts(val, tokenizer, context_length, SAMPLED_HELDOUT)
    return ConversationData(sampler, val_x[:, :width], val_y[:, :width], prompts, len(examples))


def evenly_spaced(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` of ``items`` spread evenly from the first to the last, in order (all of
    them when there are no more than ``count``)."""
    n = len(items)
    if n <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(i * (n - 1) / (count - 1))] for i in range(count)]


def count_line(
    *,
    read: int,
    malformed: int,
    too_long: int,
    trained: int,
    rows: int,
    heldout: int,
    context_length: int,
    val_fraction: float,
) -> str:
    """``30 read, 0 skipped; 27 for training (7 packed rows of 256 tokens), 3 held out
    for validation (val_fraction 0.1)``, the skipped ones counted by reason."""
    reasons = [
        f"{malformed} malformed" if malformed else "",
        f"{too_long} too long for the context" if too_long else "",
    ]
    why = ", ".join(r for r in reasons if r)
    skipped = f"{malformed + too_long} skipped ({why})" if why else "0 skipped"
    return (
        f"{read} read, {skipped}; {trained} for training ({rows} packed rows of "
        f"{context_length} tokens), {heldout} held out for validation "
        f"(val_fraction {val_fraction:g})"
    )


# A run that goes over its training conversations this many times or more learns them by
# heart: it is warned, with the steps that make TARGET_PASSES passes.
MANY_PASSES = 100
TARGET_PASSES = 10


def passes_warning(rows: int, rows_per_step: int, steps: int, conversations: int) -> str | None:
    """A warning when ``steps`` steps of ``rows_per_step`` packed rows (all processes
    together) go over the ``rows`` training rows ``MANY_PASSES`` times or more; else None."""
    passes = steps * rows_per_step / rows
    if passes < MANY_PASSES:
        return None
    fewer = max(1, math.ceil(TARGET_PASSES * rows / rows_per_step))
    return (
        f"{steps} steps of {rows_per_step} rows make about {passes:,.0f} passes over the "
        f"{conversations} training conversations ({rows} packed rows): the model will learn "
        f"them by heart; train fewer steps (--steps {fewer} makes {TARGET_PASSES} passes) "
        "or give more conversations"
    )
