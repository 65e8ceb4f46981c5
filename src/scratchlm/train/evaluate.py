"""What a run measures between updates: loss on a fixed validation sample, and a few
generated samples from fixed prompts.

Both use the plain (uncompiled, unwrapped) model in eval mode and leave every random
number generator the training steps use untouched, so evaluating never changes the
training run's numbers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from scratchlm.model import TransformerLM
from scratchlm.model.loss import bits_per_byte


@torch.no_grad()
def evaluate(
    model: TransformerLM,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    bytes_per_token: float | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Mean next-token loss over the windows x, y (N, T) (targets -100 are ignored), with
    perplexity and, given the text's bytes per token, bits per byte. ``loss_fn(x, y)``
    replaces ``model.loss`` (a sharded model is called through its wrapper)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            n = int((yb != -100).sum())
            with autocast or contextlib.nullcontext():
                loss = (loss_fn or model.loss)(xb, yb)
            total += float(loss) * n
            count += n
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    result = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
    if bytes_per_token:
        result["val_bpb"] = bits_per_byte(loss, bytes_per_token)
    return result


def draw_samples(
    model: TransformerLM,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int,
    chat: bool = False,
) -> list[str]:
    """Each prompt's continuation, sampled at temperature 0.8 (top-k 50) from a
    generator of its own seeded with ``seed``, all prompts in one batch. With ``chat``,
    each prompt is a user message and the text is the model's answer."""
    from scratchlm.textgen import generate

    if not prompts or max_new_tokens == 0:
        return []
    if chat:
        return [
            answer(model, tokenizer, prompt, max_new_tokens=max_new_tokens, seed=seed)
            for prompt in prompts
        ]
    return generate(
        model,
        tokenizer,
        list(prompts),
        temperature=0.8,
        top_k=50,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )


def answer(model: TransformerLM, tokenizer: Any, question: str, **settings: Any) -> str:
    """The model's answer to one user message, up to its end of turn (``chat.reply``).
    Settings are SampleConfig fields (default here: temperature 0.8, top-k 50)."""
    from scratchlm.chat import reply

    messages = [{"role": "user", "content": question}]
    return reply(model, tokenizer, messages, **{"temperature": 0.8, "top_k": 50, **settings})
