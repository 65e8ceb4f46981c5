"""The generation engine: token ids in, token ids out. It knows nothing of text.

Several prompts of different lengths run as one batch: they are left-padded, a boolean
attention mask hides the padding, and each row has its own positions, so every row
computes exactly what it would alone. One forward pass fills the KV cache with the
prompts (prefill); after that each step feeds one token per row (decode). Rows stop on
their own (a stop id, or the token budget) while the others go on.

When a row reaches the model's context length, generation continues on a sliding
window: that row keeps its last half, and the cache is rebuilt from every row's window
(rows that did not slide keep theirs), so each row still computes what it would alone.

Text, stop strings and streaming live one layer up, in ``scratchlm.textgen``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from scratchlm.config import SampleConfig
from scratchlm.errors import ScratchLMError
from scratchlm.model import KVCache, TransformerLM
from scratchlm.model.inference import is_prepared, prepare_for_inference
from scratchlm.sampling import penalties_active, sample_next

log = logging.getLogger(__name__)


def fit_prompt(
    ids: Sequence[int], context_length: int, truncate: bool = True, vocab_size: int | None = None
) -> list[int]:
    """A prompt that fits the context: longer ones lose their oldest tokens (with a
    warning), or raise when ``truncate`` is False. Ids outside ``vocab_size`` raise: the
    model itself does not check them (that would sync with the device every step)."""
    ids = list(ids)
    if not ids:
        raise ScratchLMError("the prompt is empty: give at least one token")
    bad = next((i for i in ids if not 0 <= i < vocab_size), None) if vocab_size else None
    if bad is not None:
        raise ScratchLMError(
            f"token id {bad} is outside the model's vocabulary of {vocab_size}; "
            "was the text encoded with this model's tokenizer?"
        )
    if len(ids) <= context_length:
        return ids
    if not truncate:
        raise ScratchLMError(
            f"the prompt has {len(ids)} tokens but the model's context is {context_length}; "
            "shorten it, or allow truncation from the left"
        )
    log.warning(
        "prompt of %d tokens is longer than the context (%d): keeping the last %d",
        len(ids),
        context_length,
        context_length,
    )
    return ids[-context_length:]


def left_pad(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Batch rows of different lengths: ids (B, T) left-padded with 0, attention mask
    (B, T) True at real tokens, positions (B, T) counting from 0 at each row's start."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = True
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode (no dropout) inside the block; the module's own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate_ids(
    model: TransformerLM,
    prompts: Sequence[Sequence[int]],
    sample: SampleConfig | None = None,
    *,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    truncate: bool = True,
) -> Iterator[list[int | None]]:
    """Yield, step by step, the next token of every row: a list of B entries, each an
    id, or None once that row has stopped. A stop id ends its row and is not yielded.

    ``use_cache=False`` recomputes each row's whole window every step (the slow path,
    kept to measure and test the cache against; same windows, same tokens).
    """
    sample = sample or SampleConfig()
    context = model.config.context_length
    rows = [fit_prompt(p, context, truncate, model.config.vocab_size) for p in prompts]
    if not is_prepared(model):  # e.g. a model in training: left as it is
        model = prepare_for_inference(model, in_place=False)
    param = next(model.parameters())
    device = param.device
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
    penalties = penalties_active(sample)

    keep = max(1, context // 2)  # tokens a row keeps when its window slides
    starts = [0] * len(rows)  # where each row's window begins
    with torch.inference_mode(), eval_mode(model):
        cache = KVCache.for_model(model.config, len(rows), device=device, dtype=param.dtype)
        logits, positions = _prefill(model, rows, cache if use_cache else None)
        # Every token each row has seen, for the penalties: (B, L), -1 = padding. All
        # rows grow by one token a step, so the new tokens are appended as a column.
        history = _history(rows, device) if penalties else None
        for step in range(sample.max_new_tokens):
            next_ids = sample_next(logits[:, -1].float(), sample, generator, history)  # (B,)
            finished |= torch.isin(next_ids, stop)
            out = next_ids.tolist()
            done = finished.tolist()
            yield [None if d else t for t, d in zip(out, done, strict=True)]
            if all(done) or step == sample.max_new_tokens - 1:
                return  # no forward pass for a token nobody will ask for
            if history is not None:
                history = torch.cat([history, next_ids[:, None]], dim=1)
            slid = False
            for i, (row, token) in enumerate(zip(rows, out, strict=True)):
                row.append(token)
                if len(row) - starts[i] > context:  # this row's window is full: slide it
                    starts[i] = len(row) - keep
                    slid = True
            if slid or not use_cache:
                # Rebuild from each row's window (rows that did not slide keep theirs),
                # so every row computes what it would alone.
                windows = [row[start:] for row, start in zip(rows, starts, strict=True)]
                cache.reset()
                logits, positions = _prefill(model, windows, cache if use_cache else None)
            else:
                positions = positions + 1
                logits = model(next_ids[:, None], cache, positions[:, None], last_only=True)


def _history(rows: Sequence[Sequence[int]], device: torch.device) -> Tensor:
    ids, mask, _ = left_pad(rows, device)
    return ids.masked_fill(~mask, -1)


def _prefill(
    model: TransformerLM, rows: Sequence[Sequence[int]], cache: KVCache | None
) -> tuple[Tensor, Tensor]:
    """Run the prompts; returns the last logits (B, 1, V) and each row's last position (B,)."""
    ids, mask, positions = left_pad(rows, next(model.parameters()).device)
    padded = not bool(mask.all())
    if padded and cache is not None:
        cache.set_padding(mask)  # the cache records which slots are padding
    mask = mask if padded and cache is None else None
    logits = model(ids, cache, positions, attention_mask=mask, last_only=True)
    return logits, positions[:, -1]
