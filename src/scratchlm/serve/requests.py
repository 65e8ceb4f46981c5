"""What goes into the serving engine and what comes out: a request, its events, the
stream a caller reads them from, the engine's statistics and its errors.

A ``RequestStream`` is filled by the engine's worker thread and read by one consumer:
blocking iteration (a thread-safe queue), or ``async for`` on the event loop given at
submit (the worker hands each event to that loop with ``call_soon_threadsafe``).
Leaving the iteration early cancels the request, so an abandoned stream never keeps a
slot busy: at once for ``for``; for ``async for`` when the async generator is closed
(``aclose()``, or the loop's clean-up), so an HTTP handler should call ``cancel()``
itself when its client goes away.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from scratchlm.config import SampleConfig
from scratchlm.errors import ScratchLMError

# OpenAI's limit on top_logprobs.
MAX_LOGPROBS = 20


class EngineBusyError(ScratchLMError):
    """The engine's wait queue is full: try again later."""


class EngineClosedError(ScratchLMError):
    """The engine was closed: it takes no more requests."""


@dataclass(frozen=True)
class GenerationRequest:
    """One continuation to generate.

    prompt_ids: the rendered, encoded prompt (1..context_length ids). settings: sampling,
    stop strings (held back and left out of the text), max_new_tokens, seed. stop_ids:
    ids that end the answer (not part of its text). logprobs: None, or k in 0..20 for
    the chosen token's logprob and the top k. prompt_logprobs: also every prompt
    token's logprob (echo).
    """

    prompt_ids: tuple[int, ...]
    settings: SampleConfig
    stop_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: bool = False


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model's raw float32 logits (before
    temperature, penalties and filters), and the top k (id, logprob) of that step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token that is part of the answer, and the text it releases ("" while
    held back: half a UTF-8 character, or what may be the start of a stop string)."""

    token_id: int
    text: str
    logprob: TokenLogprob | None


@dataclass(frozen=True)
class FinishEvent:
    """The last event of every stream.

    reason: "stop" (a stop id or stop string), "length" (the budget, or the context is
    full), "cancelled", "error". text: the held-back text released at the end.
    completion_tokens: tokens sampled, a stop id included. prompt_logprobs: when asked
    for, one per prompt token (the first is None). error: for "error", one line (the
    traceback is logged).
    """

    reason: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    error: str | None = None


Event = TokenEvent | FinishEvent


@dataclass(frozen=True)
class EngineStats:
    """A consistent snapshot of the engine, for /metrics and /health."""

    running: int  # requests decoding or prefilling
    waiting: int  # queued, not yet admitted
    batch_size: int  # rows in the last decode step
    prompt_tokens_total: int  # counters since start
    generated_tokens_total: int
    requests_finished_total: dict[str, int]  # by reason
    max_batch: int
    max_queue: int


class RequestStream:
    """The events of one request, read once: ``for event in stream`` (blocking) or,
    when submitted with ``loop=``, ``async for event in stream`` on that loop. The last
    event is always a ``FinishEvent``. ``cancel()`` may be called from any thread."""

    def __init__(
        self,
        request: GenerationRequest,
        wake: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.request = request
        self._wake = wake  # tells the engine's worker to look at this stream again
        self._loop = loop
        self._sync: queue.SimpleQueue[Event] | None = None if loop else queue.SimpleQueue()
        self._async: asyncio.Queue[Event] | None = asyncio.Queue() if loop else None
        self._cancelled = threading.Event()
        self._finished = False  # the worker has delivered the FinishEvent

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating: the engine frees the slot at its next step and ends the
        stream with FinishEvent("cancelled") (unless it had already finished)."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._wake()

    def deliver(self, event: Event) -> None:
        """Called by the engine's worker, in order; a FinishEvent comes last."""
        assert not self._finished, "an event after the FinishEvent"
        self._finished = isinstance(event, FinishEvent)
        if self._sync is not None:
            self._sync.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._async.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._cancelled.set()

    def __iter__(self) -> Iterator[Event]:
        if self._sync is None:
            raise ScratchLMError("this request was submitted with a loop: use `async for`")
        done = False
        try:
            while not done:
                event = self._sync.get()
                done = isinstance(event, FinishEvent)
                yield event
        finally:
            if not done:  # the consumer left early: free the slot
                self.cancel()

    async def _events(self) -> AsyncIterator[Event]:
        done = False
        try:
            while not done:
                event = await self._async.get()
                done = isinstance(event, FinishEvent)
                yield event
        finally:
            if not done:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._async is None:
            raise ScratchLMError("this request was submitted without a loop: use `for`")
        return self._events()
