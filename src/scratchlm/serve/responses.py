"""OpenAI response bodies and stream chunks, as plain dicts ready for ``json.dumps``.

Chat: ``chat.completion`` bodies and ``chat.completion.chunk`` stream chunks, logprobs in
the ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`` shape. Completions:
``text_completion`` bodies and chunks, logprobs in the legacy shape (``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``). A token's ``token`` string is its
bytes decoded as UTF-8 with U+FFFD for a partial character (``bytes`` has them exact);
``text_offset`` counts characters into the choice's ``text`` (the prompt's too with echo).
Logprobs are those of the model's raw distribution (before temperature and filters), as
the engine reports them.
"""

from __future__ import annotations

import codecs
from typing import Any

from scratchlm.serve.engine import TokenLogprob
from scratchlm.tokenizer import Tokenizer

# JSON has no -Infinity: a logprob that underflowed float32 is shown as OpenAI shows
# such values.
LOGPROB_FLOOR = -9999.0


def _finite(logprob: float) -> float:
    return logprob if logprob >= LOGPROB_FLOOR else LOGPROB_FLOOR


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.id_to_token(token_id).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------- chat


def chat_logprob(tokenizer: Tokenizer, lp: TokenLogprob) -> dict[str, Any]:
    """One entry of a chat choice's ``logprobs.content``."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        raw = tokenizer.id_to_token(token_id)
        text = token_text(tokenizer, token_id)
        return {"token": text, "logprob": _finite(logprob), "bytes": list(raw)}

    return {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, p) for i, p in lp.top]}


def chat_choice(
    index: int, text: str, finish_reason: str, logprobs: list[dict[str, Any]] | None
) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": None if logprobs is None else {"content": logprobs},
        "finish_reason": finish_reason,
    }


def chat_chunk(
    request_id: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, Any],
    *,
    finish_reason: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` for one choice. ``with_usage``: the chunk carries
    ``"usage": null``, as OpenAI's do when the final usage chunk was asked for."""
    chunk = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": index,
                "delta": delta,
                "logprobs": None if logprobs is None else {"content": logprobs},
                "finish_reason": finish_reason,
            }
        ],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(
    request_id: str, created: int, model: str, kind: str, token_usage: dict[str, int]
) -> dict[str, Any]:
    """The last chunk of a stream with ``include_usage``: no choices, the usage."""
    return completion(kind, request_id, created, model, [], token_usage)


# ---------------------------------------------------------------- completions


class LegacyLogprobs:
    """A completion choice's logprobs in OpenAI's legacy shape, token by token."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = 0  # characters of text decoded so far: the next token's offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, token_id: int, lp: TokenLogprob | None) -> None:
        """The next token; ``lp`` None for the first prompt token, which has none."""
        self.tokens.append(token_text(self.tokenizer, token_id))
        self.token_logprobs.append(None if lp is None else _finite(lp.logprob))
        top = None
        if lp is not None:
            top = {token_text(self.tokenizer, i): _finite(p) for i, p in lp.top}
        self.top_logprobs.append(top)
        self.text_offset.append(self._chars)
        self._chars += len(self._decoder.decode(self.tokenizer.id_to_token(token_id)))

    def take(self) -> dict[str, Any]:
        """What was added since the last ``take`` (a stream chunk's share), then cleared."""
        out = self.as_dict()
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "token_logprobs": list(self.token_logprobs),
            "top_logprobs": list(self.top_logprobs),
            "text_offset": list(self.text_offset),
        }


def completion(
    kind: str,
    request_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    token_usage: dict[str, int],
) -> dict[str, Any]:
    """A whole answer's body: ``kind`` "chat.completion" or "text_completion"."""
    return {
        "id": request_id,
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": token_usage,
    }


def completion_choice(
    index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_chunk(
    request_id: str,
    created: int,
    model: str,
    choice: dict[str, Any],
    *,
    with_usage: bool = False,
) -> dict[str, Any]:
    chunk = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [choice],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk
