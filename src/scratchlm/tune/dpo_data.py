"""Preference files -> pairs of rendered answers with a mask on the answer tokens.

Reads TRL's preference formats, one JSON object per line (``.jsonl``):

- explicit prompt: ``{"prompt": ..., "chosen": ..., "rejected": ...}``, each either a
  string (the prompt a user message, the answers assistant messages) or a list of chat
  messages (conversational: the prompt a conversation ending with a user message, each
  answer one assistant message);
- implicit prompt: ``{"chosen": [...], "rejected": [...]}``, two whole conversations
  sharing their opening messages: the shared messages are the prompt, and what follows
  must be one assistant message in each.

Every pair is rendered with the chat format SFT trains with (``render_prompt`` and
``render_conversation``), so strings too become a one-exchange chat: ``<|user|>prompt
<|end|><|assistant|>answer<|end|>``. The loss of preference tuning counts the answer's
tokens only (its content and ``<|end|>``), not the prompt's, not earlier answers of a
multi-turn prompt.

A bad record stops the read with ``FILE:LINE`` and what is wrong (``--skip-bad`` counts
it instead); a pair whose prompt and longer answer exceed the model's context is left out
with a warning (DataError when none fits).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scratchlm.builtin import resolve_builtin
from scratchlm.chat_format import render_conversation, render_prompt
from scratchlm.data.batches import RankedDraws
from scratchlm.data.chat_sources import (
    BadRecord,
    checked_conversation,
    good_records,
    jsonl_values,
)
from scratchlm.errors import DataError
from scratchlm.model.loss import IGNORE_INDEX

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 30  # a preference file is read whole: refuse one past 1 GiB

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (messages ending with a user message) and two answers to it."""

    prompt: tuple[tuple[str, str], ...]  # (role, content) pairs
    chosen: str
    rejected: str

    def messages(self, answer: str) -> Messages:
        """The prompt followed by ``answer`` as the assistant's message."""
        return [{"role": r, "content": c} for r, c in self.prompt] + [
            {"role": "assistant", "content": answer}
        ]


# ------------------------------------------------------------------- reading


def read_preferences(
    paths: str | os.PathLike | Sequence[str | os.PathLike], *, skip_bad: bool = False
) -> tuple[list[PreferencePair], int]:
    """The pairs of the JSONL files named (``builtin:preferences`` names the built-in
    set), in order, and the number of malformed records skipped (``skip_bad``; without
    it the first one raises DataError naming its file and line)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files = [resolve_builtin(p) for p in paths]
    if not files:
        raise DataError("preference tuning needs preference pairs: pass --data FILE.jsonl")
    records = (record for file in files for record in _records(file))
    pairs, skipped = good_records(records, skip_bad, "preference")
    if not pairs:
        names = ", ".join(map(str, files[:3]))
        raise DataError(f"no usable preference pairs in {names} ({skipped} skipped as malformed)")
    return pairs, skipped


def _records(path: Path) -> Iterator[tuple[str, PreferencePair | BadRecord]]:
    if not path.is_file():
        raise DataError(f"preference file {path} does not exist: check the spelling")
    if path.suffix.lower() != ".jsonl":
        raise DataError(
            f"{path}: preference files are JSONL (one object per line, ending in .jsonl), "
            f"not {path.suffix or 'no extension'!r}"
        )
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(
            f"{path} holds {size:,} bytes, more than the {MAX_FILE_BYTES:,} a preference file "
            "may: split it into several files"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check its permissions") from None
    for where, value in jsonl_values(path, data):
        if isinstance(value, BadRecord):
            yield where, value
            continue
        try:
            yield where, preference_pair(value)
        except BadRecord as e:
            yield where, e


def preference_pair(value: Any) -> PreferencePair:
    """One record (a decoded JSON value) as a pair, or BadRecord saying what is wrong."""
    if not isinstance(value, dict) or "chosen" not in value or "rejected" not in value:
        keys = ", ".join(map(repr, list(value)[:10])) if isinstance(value, dict) else ""
        found = f"keys: {keys or 'none'}" if isinstance(value, dict) else type(value).__name__
        raise BadRecord(f"expected an object with 'chosen' and 'rejected' ({found})")
    chosen, rejected = value["chosen"], value["rejected"]
    if "prompt" in value:
        prompt = _messages(value["prompt"], "user", "prompt")
        chosen = _messages(chosen, "assistant", "chosen")
        rejected = _messages(rejected, "assistant", "rejected")
    else:  # the implicit prompt: the messages both conversations open with
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise BadRecord(
                "without a 'prompt', 'chosen' and 'rejected' must be lists of messages "
                "that share their opening messages"
            )
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not prompt:
            raise BadRecord("'chosen' and 'rejected' share no opening message: no prompt")
    answers = []
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if len(answer) != 1 or answer[0].get("role") != "assistant":
            raise BadRecord(f"{name!r} must be one assistant message after the prompt")
        whole = checked_conversation([*prompt, *answer])  # roles in turn, text not blank
        answers.append(whole[-1]["content"])
    if answers[0] == answers[1]:
        raise BadRecord("'chosen' and 'rejected' are the same answer")
    turns = tuple((m["role"], m["content"]) for m in checked_conversation([*prompt, *chosen])[:-1])
    return PreferencePair(turns, answers[0], answers[1])


def _messages(value: Any, role: str, name: str) -> list[Any]:
    """A string as one message of ``role``; a list of messages as it is."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise BadRecord(f"{name!r} must be a string or a list of messages, not {type(value).__name__}")


# ----------------------------------------------------------------- rendering


def render_answer(pair: PreferencePair, answer: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Inputs and targets of the prompt followed by ``answer``: ``ids[:-1]`` and
    ``ids[1:]``, the targets -100 everywhere but on the answer's tokens."""
    prompt_ids = render_prompt(pair.messages(answer)[:-1], tokenizer)
    ids, _ = render_conversation(pair.messages(answer), tokenizer)
    assert ids[: len(prompt_ids)] == prompt_ids, "the prompt renders as the conversation's start"
    P = len(prompt_ids)
    targets = [t if i + 1 >= P else IGNORE_INDEX for i, t in enumerate(ids[1:])]
    return ids[:-1], targets


@dataclass
class PreferenceRows:
    """Rendered pairs, padded: x, y (N, 2, T) int64, [:, 0] the chosen answer and [:, 1]
    the rejected one (targets -100 but on the answer); lengths (N,) the longer of the
    two; ref (N, 2) float32, the reference model's log-probabilities of each answer (set
    once computed: ``tune.reference``)."""

    x: Tensor
    y: Tensor
    lengths: Tensor
    ref: Tensor | None = None

    def digest(self) -> str:
        """SHA-256 of the rendered pairs (what a resume and the reference cache key on)."""
        h = hashlib.sha256()
        for t in (self.x, self.y, self.lengths):
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def pair_rows(
    pairs: Sequence[PreferencePair], tokenizer: Any, context_length: int
) -> tuple[PreferenceRows, int]:
    """The pairs that fit in ``T`` input tokens as rows, and how many did not fit."""
    T = context_length
    kept, too_long = [], 0
    for pair in pairs:
        both = [render_answer(pair, answer, tokenizer) for answer in (pair.chosen, pair.rejected)]
        if max(len(x) for x, _ in both) > T:
            too_long += 1
        else:
            kept.append(both)
    x = torch.zeros(len(kept), 2, T, dtype=torch.long)
    y = torch.full_like(x, IGNORE_INDEX)
    lengths = torch.zeros(len(kept), dtype=torch.long)
    for i, both in enumerate(kept):
        for j, (inputs, targets) in enumerate(both):
            x[i, j, : len(inputs)] = torch.tensor(inputs)
            y[i, j, : len(targets)] = torch.tensor(targets)
        lengths[i] = max(len(inputs) for inputs, _ in both)
    return PreferenceRows(x, y, lengths), too_long


def split_pairs(
    pairs: Sequence[PreferencePair], val_fraction: float
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Train and validation pairs, decided by a hash of each pair (deterministic)."""
    train, val = [], []
    for pair in pairs:
        key = json.dumps([pair.prompt, pair.chosen, pair.rejected]).encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        (val if int.from_bytes(digest) / 2**64 < val_fraction else train).append(pair)
    if not train or not val:
        raise DataError(
            f"splitting {len(pairs)} preference pairs at val_fraction={val_fraction} left "
            f"{len(train)} for training and {len(val)} for validation: give more pairs, "
            "another --val-fraction or held-out pairs with --val-data"
        )
    return train, val


def batch_of(rows: PreferenceRows, picked: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The pairs ``picked`` (B,) as one batch, cut to their longest answer: x, y (2B, L)
    with the B chosen answers first, then the B rejected ones; ref (2B,) likewise."""
    assert rows.ref is not None, "the reference log-probabilities are computed first"
    width = int(rows.lengths[picked].max())
    x = rows.x[picked, :, :width].transpose(0, 1).reshape(-1, width)  # (2B, L)
    y = rows.y[picked, :, :width].transpose(0, 1).reshape(-1, width)  # (2B, L)
    ref = rows.ref[picked].transpose(0, 1).reshape(-1)  # (2B,)
    return x, y, ref


class PreferenceSampler(RankedDraws):
    """Random pairs (with replacement) for one rank of ``world_size``, reproducible and
    resumable like the other samplers (``RankedDraws``); ``batch_size`` counts pairs."""

    def __init__(
        self,
        rows: PreferenceRows,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seed=seed, rank=rank, world_size=world_size)
        self.rows = rows

    def next(self, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        """x, y (2B, L) and ref (2B,) on ``device`` (``batch_of``)."""
        return tuple(t.to(device) for t in batch_of(self.rows, self.draw(len(self.rows.x))))
