"""Bits per byte of a model on any text: the measure that still moves for tiny models.

bits per byte = (sum over tokens of -log2 P(token | what precedes it)) / (UTF-8 bytes of
the text). Dividing by bytes, not tokens, makes models with different tokenizers
comparable, and a uniform guess over 256 byte values scores exactly 8.

A file is read and tokenized as a stream (``encode_iterable`` over its lines), so memory
stays bounded whatever its size. The tokens are scored in sliding windows of the model's
context: each window moves ``stride`` tokens and scores only the tokens the previous
one did not, so every token is scored once, and after the first window each is
predicted from at least ``context - stride`` tokens before it (``stride`` = context:
lm-eval's disjoint rolling windows, fastest, least context). The first token is predicted from the
document separator (``<|endoftext|>``), as in training, so every byte is paid for.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchlm.errors import ConfigError, DataError
from scratchlm.evals.loglik import prefix_id
from scratchlm.model import TransformerLM
from scratchlm.model.loss import bits_per_byte
from scratchlm.tokenizer import Tokenizer


@dataclass(frozen=True)
class BitsPerByte:
    """A text's total negative log-likelihood (nats), its tokens and its UTF-8 bytes."""

    name: str
    nats: float
    tokens: int
    bytes: int

    @property
    def bpb(self) -> float:
        """Bits per UTF-8 byte (NaN for an empty text)."""
        # Total nats over total bytes: the conversion of model.loss with the same ratio.
        return bits_per_byte(self.nats, self.bytes) if self.bytes else math.nan

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else math.nan

    def __add__(self, other: BitsPerByte) -> BitsPerByte:
        return BitsPerByte(
            "total", self.nats + other.nats, self.tokens + other.tokens, self.bytes + other.bytes
        )


def sliding_windows(
    ids: Iterable[int], context: int, stride: int
) -> Iterator[tuple[list[int], list[int], int]]:
    """``(inputs, targets, n_new)`` windows over a token stream: ``targets`` are
    ``inputs`` shifted by one, at most ``context`` long; only the last ``n_new`` targets
    are new (the rest were scored by an earlier window). Every window but the first
    ends ``stride`` tokens (the last: what is left) after the one before and is as long
    as the stream allows. Holds one window of the stream in memory."""
    if not 1 <= stride <= context:
        raise ConfigError(f"stride must be 1 to the context length {context}, got {stride}")
    it = iter(ids)
    window = _take(it, context + 1)
    if len(window) < 2:
        return
    yield window[:-1], window[1:], len(window) - 1
    while new := _take(it, stride):
        window = (window + new)[-(context + 1) :]
        yield window[:-1], window[1:], len(new)


def _take(it: Iterator[int], n: int) -> list[int]:
    out = []
    for token in it:
        out.append(token)
        if len(out) == n:
            break
    return out


def score_stream(
    model: TransformerLM,
    ids: Iterable[int],
    *,
    stride: int | None = None,
    batch_size: int = 16,
    on_tokens: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """``(total nats, tokens scored)`` of a token stream (its first id is only context).
    ``stride``: default half the context. ``on_tokens(n)`` hears each batch's count."""
    context = model.config.context_length
    stride = stride or max(1, context // 2)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    batch: list[tuple[list[int], list[int], int]] = []

    def flush() -> None:
        nonlocal total, count
        width = max(len(x) for x, _, _ in batch)
        inputs = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T), right-padded
        targets = torch.full((len(batch), width), -1, dtype=torch.long)  # -1: not scored
        for r, (x, y, n_new) in enumerate(batch):
            inputs[r, : len(x)] = torch.tensor(x)
            targets[r, len(y) - n_new : len(y)] = torch.tensor(y[len(y) - n_new :])
        with torch.inference_mode():
            logits = model(inputs.to(device)).float()  # (B, T, V)
        targets = targets.to(device)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-1, reduction="sum")
        total += float(nll)
        scored = sum(n for _, _, n in batch)
        count += scored
        batch.clear()
        if on_tokens is not None:
            on_tokens(scored)

    for window in sliding_windows(ids, context, stride):
        batch.append(window)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return total, count


def file_bits_per_byte(
    model: TransformerLM,
    tokenizer: Tokenizer,
    path: str | os.PathLike,
    *,
    stride: int | None = None,
    batch_size: int = 16,
    on_bytes: Callable[[int], None] | None = None,
) -> BitsPerByte:
    """Bits per byte of the UTF-8 text file at ``path``, read as a stream.
    ``on_bytes(n)``: after each batch, how many of the file's bytes have been read."""
    path = Path(path)
    counted = [0]  # bytes read so far

    def lines() -> Iterator[str]:
        try:
            with open(path, encoding="utf-8", newline="") as f:  # newline="": bytes as stored
                for line in f:
                    counted[0] += len(line.encode("utf-8"))
                    yield line
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not UTF-8 text: {e.reason}") from e

    if not path.is_file():
        raise DataError(f"{path} is not a file")
    ids = _prefixed(prefix_id(tokenizer), tokenizer.encode_iterable(lines()))
    report = None if on_bytes is None else (lambda _: on_bytes(counted[0]))
    nats, tokens = score_stream(model, ids, stride=stride, batch_size=batch_size, on_tokens=report)
    return BitsPerByte(str(path), nats, tokens, counted[0])


def _prefixed(first: int, ids: Iterable[int]) -> Iterator[int]:
    yield first
    yield from ids
