"""Text generation: the layer between strings and the id-only engine in ``generate``.

It encodes prompts, turns each row's new ids back into text as they arrive, finds stop
strings even when they are spread over several tokens (and leaves them out of the
output), and streams text pieces that never split a UTF-8 character: a token may end in
the middle of a character's bytes, so bytes are decoded incrementally and held back
until the character is complete.

One loop does it, ``stream_rows``: a batch of prompts (token ids) through the engine,
each row's text piece by piece. ``stream`` / ``stream_ids`` are its one-row case,
``generate`` / ``generate_rows`` join its pieces, ``generate_samples`` runs many samples
in batches of bounded memory; chat (``scratchlm.chat``) sits above.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from scratchlm.builtin import END_OF_TEXT
from scratchlm.config import SampleConfig
from scratchlm.errors import ConfigError
from scratchlm.generate import generate_ids
from scratchlm.model import TransformerLM
from scratchlm.sampling import make_generator
from scratchlm.tokenizer import Tokenizer

# generate_samples: rows per batch so that the batch's KV cache (which holds the whole
# context for every row) stays under this many bytes, and at most MAX_BATCH_ROWS rows.
BATCH_CACHE_BYTES = 1 << 30
MAX_BATCH_ROWS = 64


class TextStream:
    """One row's text as its tokens arrive.

    ``push(id)`` returns the newly safe text: complete characters only, and never a
    tail that could still turn out to be the start of a stop string.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # everything decoded so far, cut at a stop string once one is seen
        self.emitted = 0  # characters of ``text`` already returned
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.text += self._decoder.decode(self.tokenizer.id_to_token(token_id))
        return self._release(final=False)

    def finish(self) -> str:
        """The text still held back, once no more tokens will come."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        # A stop string can only start at or after ``emitted``: text that could begin
        # one is never released early.
        hits = [i for i in (self.text.find(s, self.emitted) for s in self.stop) if i >= 0]
        if hits and not self.stopped:
            self.text = self.text[: min(hits)]
            self.stopped = True
        end = len(self.text)
        if not (final or self.stopped):
            end -= self._held_back()
        piece = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text) - self.emitted), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest


def _prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt)
    if not ids and END_OF_TEXT in tokenizer.special_tokens:
        ids = [tokenizer.special_tokens[END_OF_TEXT]]  # an empty prompt: start a document
    return ids


def resolve_settings(sample: SampleConfig | None, overrides: dict[str, Any]) -> SampleConfig:
    """``sample`` (or the defaults) with keyword overrides applied, validated."""
    base = sample.to_dict() if sample is not None else {}
    return SampleConfig.from_dict({**base, **overrides})


def _default_stop_ids(tokenizer: Tokenizer, stop_ids: Sequence[int] | None) -> list[int]:
    if stop_ids is not None:
        return list(stop_ids)
    special = tokenizer.special_tokens
    return [special[END_OF_TEXT]] if END_OF_TEXT in special else []


def stream_rows(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    settings: SampleConfig,
    *,
    stop_ids: Sequence[int],
    truncate: bool = True,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Iterator[list[str]]:
    """The one text-generation loop: the continuations of several prompts (token ids),
    run by the engine as one batch. Yields, once per step, the new text of every row
    ("" for a row with nothing new or already ended), then each row's held-back rest.

    A row ends at a stop id, a stop string (left out of its text) or the budget; the
    loop ends when every row has. Joined, a row's pieces are its whole text.
    ``generator``: the random stream to sample from (default: a new one from the seed).
    ``on_step(steps, ended)``, when given, hears after each step how many steps have run
    and how many rows have ended (for progress displays).
    """
    if generator is None:
        generator = make_generator(settings.seed, next(model.parameters()).device)
    steps = generate_ids(
        model,
        [list(p) for p in prompts],
        settings,
        stop_ids=stop_ids,
        generator=generator,
        truncate=truncate,
    )
    texts = [TextStream(tokenizer, settings.stop) for _ in prompts]
    ended = [False] * len(texts)
    try:
        for step, tokens in enumerate(steps, start=1):
            pieces = [""] * len(texts)
            for i, token in enumerate(tokens):
                if token is None:  # a stop id: the engine has ended this row
                    ended[i] = True
                elif not ended[i]:
                    pieces[i] = texts[i].push(token)
                    ended[i] = texts[i].stopped  # a stop string
            if on_step is not None:
                on_step(step, sum(ended))
            yield pieces
            if all(ended):
                break
    finally:
        # Also on Ctrl-C or an abandoned stream: the engine leaves its inference mode and
        # frees its KV cache now, not whenever the generator is collected.
        steps.close()
    yield [text.finish() for text in texts]


def stream_ids(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    settings: SampleConfig,
    *,
    stop_ids: Sequence[int],
    truncate: bool = True,
) -> Iterator[str]:
    """The text of the continuation of ``prompt_ids``, piece by piece: ``stream_rows``
    with one row, so never half a UTF-8 character, stop strings left out."""
    rows = stream_rows(
        model, tokenizer, [prompt_ids], settings, stop_ids=stop_ids, truncate=truncate
    )
    for (piece,) in rows:
        if piece:
            yield piece


def stream(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompt: str,
    sample: SampleConfig | None = None,
    *,
    stop_ids: Sequence[int] | None = None,
    truncate: bool = True,
    **overrides: Any,
) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece as it is generated.

    Sampling settings come from ``sample`` and keyword overrides (``temperature=0``,
    ``max_new_tokens=50``, ``stop=["\\n\\n"]``, ``seed=1``...). Generation ends at a stop
    id (default: ``<|endoftext|>``), a stop string (left out of the text), or the budget.
    """
    settings = resolve_settings(sample, overrides)
    return stream_ids(
        model,
        tokenizer,
        _prompt_ids(tokenizer, prompt),
        settings,
        stop_ids=_default_stop_ids(tokenizer, stop_ids),
        truncate=truncate,
    )


def generate(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompt: str | Sequence[str],
    sample: SampleConfig | None = None,
    *,
    stop_ids: Sequence[int] | None = None,
    truncate: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> str | list[str]:
    """The continuation of one prompt, or of each of several prompts, which then run
    together as one batch (one forward pass per step for all of them). ``on_step``: as
    in ``stream_rows``."""
    settings = resolve_settings(sample, overrides)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    texts = generate_rows(
        model,
        tokenizer,
        [_prompt_ids(tokenizer, p) for p in prompts],
        settings,
        stop_ids=_default_stop_ids(tokenizer, stop_ids),
        truncate=truncate,
        on_step=on_step,
    )
    return texts[0] if isinstance(prompt, str) else texts


def generate_samples(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompt: str,
    n: int,
    sample: SampleConfig | None = None,
    *,
    stop_ids: Sequence[int] | None = None,
    truncate: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> Iterator[str]:
    """``n`` continuations of ``prompt``, yielded batch by batch as each completes, so
    memory stays that of one batch (``batch_rows``) however large ``n`` is. The batches
    draw from one random generator: with a seed, all samples differ and the first
    batch equals ``generate(model, tokenizer, [prompt] * rows, ...)``. ``on_step(steps,
    ended)`` counts the steps of all batches so far (batch b's first step is
    b * max_new_tokens + 1) and the rows of the current batch that have ended."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of samples must be an integer >= 1, got {n!r}")
    settings = resolve_settings(sample, overrides)
    ids = _prompt_ids(tokenizer, prompt)
    stops = _default_stop_ids(tokenizer, stop_ids)
    generator = make_generator(settings.seed, next(model.parameters()).device)
    rows = batch_rows(model)
    for batch, start in enumerate(range(0, n, rows)):
        done = batch * settings.max_new_tokens  # steps of the batches before this one
        yield from generate_rows(
            model,
            tokenizer,
            [ids] * min(rows, n - start),
            settings,
            stop_ids=stops,
            truncate=truncate,
            generator=generator,
            on_step=None if on_step is None else lambda s, e, done=done: on_step(done + s, e),
        )


def batch_rows(model: TransformerLM) -> int:
    """Rows per batch of ``generate_samples``: as many as fit ``BATCH_CACHE_BYTES`` of
    KV cache (keys and values for the whole context of every block), 1 to
    ``MAX_BATCH_ROWS``."""
    c = model.config
    itemsize = next(model.parameters()).element_size()
    per_row = 2 * c.depth * c.kv_heads * c.context_length * c.head_dim * itemsize
    return max(1, min(MAX_BATCH_ROWS, BATCH_CACHE_BYTES // per_row))


def generate_rows(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    settings: SampleConfig,
    *,
    stop_ids: Sequence[int],
    truncate: bool = True,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[str]:
    """The whole text of each row of ``stream_rows`` (``on_step``: as there)."""
    parts: list[list[str]] = [[] for _ in prompts]
    rows = stream_rows(
        model,
        tokenizer,
        prompts,
        settings,
        stop_ids=stop_ids,
        truncate=truncate,
        generator=generator,
        on_step=on_step,
    )
    for pieces in rows:
        for row, piece in zip(parts, pieces, strict=True):
            row.append(piece)
    return ["".join(row) for row in parts]
