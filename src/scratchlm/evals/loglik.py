"""Log-likelihoods of continuations, the quantity every multiple-choice benchmark ranks by.

A request is a context and a continuation; its score is log P(continuation | context),
the sum over the continuation's tokens of log softmax(logits)[token], and whether greedy
decoding would have produced exactly that continuation (``is_greedy``).

Tokens are decided on the whole text, not per part: a BPE token can span the join of
context and continuation (lm-eval #1053), so ``encode_pair`` encodes context +
continuation at once and takes as the continuation's ids what follows the context's own
ids, after moving the context's trailing whitespace to the continuation ("Answer: " +
"Paris" is scored as "Answer:" + " Paris", the way the words were tokenized in training).
This is lm-evaluation-harness's convention, so scores match its ``hf`` model exactly.

Several requests share one forward pass: rows are sorted longest first (the same order
as lm-eval's, so the first row of a batch sets its length), padded on the right, which
a causal model never looks at, and cut from the left to the model's context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scratchlm.errors import ScratchLMError
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import Tokenizer

# The token a text's first token is predicted from: the document separator the model
# saw between documents in pretraining (the exported HF tokenizer calls it bos and eos).
PREFIX_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


@dataclass(frozen=True)
class Scored:
    """The log-likelihood of one continuation and whether greedy decoding picks it."""

    logprob: float
    is_greedy: bool


def prefix_id(tokenizer: Tokenizer) -> int:
    """The id an empty context stands for (``<|endoftext|>`` or a similar separator)."""
    specials = tokenizer.special_tokens
    found = next((specials[t] for t in PREFIX_CANDIDATES if t in specials), None)
    if found is None:
        raise ScratchLMError(
            "the tokenizer has no document separator (one of "
            f"{', '.join(PREFIX_CANDIDATES)}) to predict a text's first token from"
        )
    return found


def encode_pair(
    tokenizer: Tokenizer, context: str, continuation: str, prefix: int | None = None
) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` as the whole text tokenizes.

    Trailing whitespace of the context moves to the continuation; the continuation's ids
    are those of ``encode(context + continuation)`` after the first
    ``len(encode(context))``. An empty context becomes ``[prefix]`` (default:
    ``prefix_id(tokenizer)``).
    """
    if not context:
        return [prefix_id(tokenizer) if prefix is None else prefix], tokenizer.encode(continuation)
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    if not stripped:  # the context was only whitespace: it all moves
        return [prefix_id(tokenizer) if prefix is None else prefix], tokenizer.encode(continuation)
    whole = tokenizer.encode(stripped + continuation)
    context_ids = tokenizer.encode(stripped)
    return context_ids, whole[len(context_ids) :]


def rolling_windows(
    ids: Sequence[int], prefix: int, length: int
) -> Iterator[tuple[list[int], list[int]]]:
    """``(context_ids, continuation_ids)`` pairs that together score every token of
    ``ids`` once, each row within ``length`` tokens: the first predicts
    ``ids[:length]`` from ``prefix``, each next one the following ``length`` tokens
    from the tokens before them that still fit (lm-eval's disjoint rolling windows, so
    perplexities match its own).
    """
    if not ids:
        return
    done = min(length, len(ids))
    yield [prefix], list(ids[:done])
    while done < len(ids):
        end = min(done + length, len(ids))
        yield list(ids[end - length - 1 : done]), list(ids[done:end])
        done = end


def score_ids(
    model: TransformerLM,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[Scored]:
    """Score each ``(context_ids, continuation_ids)`` pair, in the order given.

    Each row is context + continuation without its last token, cut from the left to the
    model's context length; the logits at the continuation's positions give its log
    probabilities. A continuation longer than the context (lm-eval's hf model refuses
    one) is scored in pieces that fit, each piece's tokens predicted from the tokens
    before them. ``on_batch(n)`` hears how many rows each forward pass scored.
    """
    window = model.config.context_length
    pieces: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ScratchLMError("a request needs a non-empty context and continuation")
        whole = [*context, *continuation]
        for start in range(len(context), len(whole), window):
            pieces.append((whole[:start], whole[start : start + window]))
            owner.append(i)
    scored = _score_rows(model, pieces, batch_size, on_batch)
    logprob = [0.0] * len(pairs)
    greedy = [True] * len(pairs)
    for i, s in zip(owner, scored, strict=True):
        logprob[i] += s.logprob
        greedy[i] = greedy[i] and s.is_greedy
    return [Scored(lp, g) for lp, g in zip(logprob, greedy, strict=True)]


def _score_rows(
    model: TransformerLM,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> list[Scored]:
    """``score_ids`` for continuations that fit the context, batched."""
    window = model.config.context_length
    # Longest first, like lm-eval's hf model: a batch's first row is its longest.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: list[Scored | None] = [None] * len(pairs)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        rows = [(pairs[i][0] + pairs[i][1])[-(window + 1) :][:-1] for i in batch]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T), right-padded
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        with torch.inference_mode():
            logits = model(ids.to(device))  # (B, T, V)
        logprobs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        for r, i in enumerate(batch):
            target = torch.tensor(pairs[i][1], dtype=torch.long, device=device)  # (C,)
            end = len(rows[r])
            rows_lp = logprobs[r, end - len(target) : end]  # (C, V)
            picked = rows_lp.gather(-1, target[:, None]).squeeze(-1)  # (C,)
            greedy = bool((rows_lp.argmax(-1) == target).all())
            results[i] = Scored(float(picked.sum()), greedy)
        if on_batch is not None:
            on_batch(len(batch))
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
