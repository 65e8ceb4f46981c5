"""Engine events -> OpenAI answers: whole response bodies, or the chunks of a stream.

A stream sends, per choice, a first chunk (chat: the assistant role), then a chunk for
every piece of text the engine releases (text is already UTF-8 safe with stop strings
held back), the held-back rest and ``finish_reason`` when the choice ends, and with
``stream_options.include_usage`` one last chunk with no choices and the usage. A
generation that fails ends the stream with an ``{"error": ...}`` item (the transport
adds ``[DONE]``); a finished body answers 500 instead.

Usage counts each prompt once (not once per choice) and every sampled token, a stop
token included, as vLLM counts them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from scratchlm.serve import responses as r
from scratchlm.serve.engine import FinishEvent, TokenEvent
from scratchlm.serve.prompts import Prompt
from scratchlm.serve.protocol import APIError, ChatRequest, CompletionRequest, error_body
from scratchlm.tokenizer import Tokenizer

Events = AsyncIterator[tuple[int, TokenEvent | FinishEvent]]
Results = Sequence[tuple[list[TokenEvent], FinishEvent]]


@dataclass(frozen=True)
class Reply:
    """What every chunk and body of one answer repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> Reply:
        """A fresh id (``chatcmpl-...``, ``cmpl-...``) created now."""
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)


def _failure(finish: FinishEvent) -> APIError | None:
    """The error a finish that is no answer stands for, or None for stop / length."""
    if finish.reason == "error":
        return APIError(500, f"generation failed: {finish.error}", code="generation_error")
    if finish.reason == "cancelled":  # not by this request (it would not be listening)
        return APIError(503, "the server is shutting down", code="shutting_down")
    return None


def _error_item(error: APIError) -> dict[str, Any]:
    return error_body(error.message, error.type, code=error.code)


def _check(results: Results) -> None:
    for _, finish in results:
        failure = _failure(finish)
        if failure is not None:
            raise failure


def _usage_once_per_prompt(finishes: Sequence[FinishEvent], n: int) -> dict[str, int]:
    prompt = sum(f.prompt_tokens for f in finishes[::n])
    return r.usage(prompt, sum(f.completion_tokens for f in finishes))


# ----------------------------------------------------------------------- chat


def chat_body(reply: Reply, request: ChatRequest, tokenizer: Tokenizer, results: Results) -> dict:
    """The ``chat.completion`` body of finished generations (APIError if one failed)."""
    _check(results)
    choices = []
    for index, (tokens, finish) in enumerate(results):
        text = "".join(t.text for t in tokens) + finish.text
        logprobs = None
        if request.logprobs is not None:
            logprobs = [r.chat_logprob(tokenizer, t.logprob) for t in tokens if t.logprob]
        choices.append(r.chat_choice(index, text, finish.reason, logprobs))
    usage = _usage_once_per_prompt([f for _, f in results], request.common.n)
    return r.completion("chat.completion", reply.id, reply.created, reply.model, choices, usage)


async def chat_chunks(
    reply: Reply, request: ChatRequest, tokenizer: Tokenizer, events: Events, count: int
) -> AsyncIterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` items of a streamed chat answer with ``count`` choices."""
    with_usage = request.common.include_usage

    def chunk(index: int, delta: dict, **more: Any) -> dict[str, Any]:
        return r.chat_chunk(
            reply.id, reply.created, reply.model, index, delta, with_usage=with_usage, **more
        )

    finishes: list[FinishEvent] = []
    async with aclosing(events):
        for index in range(count):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for index, event in events:
            if isinstance(event, TokenEvent):
                logprobs = None
                if request.logprobs is not None and event.logprob is not None:
                    logprobs = [r.chat_logprob(tokenizer, event.logprob)]
                if event.text or logprobs:
                    yield chunk(index, {"content": event.text}, logprobs=logprobs)
                continue
            failure = _failure(event)
            if failure is not None:
                yield _error_item(failure)
                return
            if event.text:
                yield chunk(index, {"content": event.text})
            yield chunk(index, {}, finish_reason=event.reason)
            finishes.append(event)
    if with_usage:
        usage = _usage_once_per_prompt(finishes, request.common.n)
        yield r.usage_chunk(reply.id, reply.created, reply.model, "chat.completion.chunk", usage)


# ---------------------------------------------------------------- completions


def completion_body(
    reply: Reply,
    request: CompletionRequest,
    tokenizer: Tokenizer,
    prompts: Sequence[Prompt],
    results: Results,
) -> dict:
    """The ``text_completion`` body; choice i belongs to prompt i // n."""
    _check(results)
    n = request.common.n
    choices = []
    for index, (tokens, finish) in enumerate(results):
        prompt = prompts[index // n]
        text = "".join(t.text for t in tokens) + finish.text
        logprobs = None
        if request.logprobs is not None:
            legacy = r.LegacyLogprobs(tokenizer)
            if request.echo:
                assert finish.prompt_logprobs is not None, "echo asked for prompt logprobs"
                for token_id, lp in zip(prompt.ids, finish.prompt_logprobs, strict=True):
                    legacy.add(token_id, lp)
            for t in tokens:
                legacy.add(t.token_id, t.logprob)
            logprobs = legacy.as_dict()
        if request.echo:
            text = prompt.text + text
        choices.append(r.completion_choice(index, text, finish.reason, logprobs))
    usage = _usage_once_per_prompt([f for _, f in results], n)
    return r.completion("text_completion", reply.id, reply.created, reply.model, choices, usage)


async def completion_chunks(
    reply: Reply,
    request: CompletionRequest,
    tokenizer: Tokenizer,
    prompts: Sequence[Prompt],
    events: Events,
) -> AsyncIterator[dict[str, Any]]:
    """The ``text_completion`` chunks of a streamed completion."""
    n = request.common.n
    with_usage = request.common.include_usage
    count = len(prompts) * n
    legacy = [r.LegacyLogprobs(tokenizer) for _ in range(count)]

    def chunk(index: int, text: str, logprobs: dict | None = None, finish: str | None = None):
        choice = r.completion_choice(index, text, finish, logprobs)
        return r.completion_chunk(
            reply.id, reply.created, reply.model, choice, with_usage=with_usage
        )

    finishes: list[FinishEvent | None] = [None] * count
    async with aclosing(events):
        if request.echo:
            for index in range(count):
                yield chunk(index, prompts[index // n].text)
        async for index, event in events:
            if isinstance(event, TokenEvent):
                logprobs = None
                if request.logprobs is not None and event.logprob is not None:
                    legacy[index].add(event.token_id, event.logprob)
                    logprobs = legacy[index].take()
                if event.text or logprobs:
                    yield chunk(index, event.text, logprobs)
                continue
            failure = _failure(event)
            if failure is not None:
                yield _error_item(failure)
                return
            yield chunk(index, event.text, finish=event.reason)
            finishes[index] = event
    if with_usage:
        usage = _usage_once_per_prompt(finishes, n)  # type: ignore[arg-type]
        yield r.usage_chunk(reply.id, reply.created, reply.model, "text_completion", usage)
