"""The serving engine: continuous batching of many requests on one model.

Requests join the running batch as soon as a slot is free and leave it the moment they
finish; each has its own sampling settings, random generator, stop rules and text.
One worker thread runs the loop; each iteration:

1. ends the requests whose consumer cancelled (their slot is free at once);
2. admits waiting requests while slots are free (at most ``max_batch`` run at once);
3. prefills admitted prompts, at most ``prefill_chunk`` prompt tokens in all, in chunks
   into a batch-1 ``KVCache``; a prompt whose prefill completes samples its first token
   at once (time to first token) and its keys and values move into a slot;
4. runs one decode step of every request in a slot: one token per row, each at its own
   position (``serve.slots``), then samples every row with that row's own settings.

So a long prompt is prefilled a chunk per iteration between decode steps and never
stalls the requests already answering. A request's tokens depend only on its prompt,
settings and seed: at temperature 0 it gets the tokens it gets alone (float rounding
aside), and with a seed the same samples.

A request ends at a stop id, a stop string (``TextStream``: cut before it, never
leaked), its ``max_new_tokens``, a full context ("length"; no sliding window here),
``cancel()``, or the engine's ``close()``. A bug while serving one request ends that
request with reason "error" (the traceback is logged) and the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, deque

import torch

from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError
from scratchlm.generate import eval_mode, fit_prompt
from scratchlm.model import KVCache, TransformerLM
from scratchlm.model.inference import is_prepared, prepare_for_inference
from scratchlm.serve.request_state import RequestState
from scratchlm.serve.requests import (
    MAX_LOGPROBS,
    EngineBusyError,
    EngineClosedError,
    EngineStats,
    FinishEvent,
    GenerationRequest,
    RequestStream,
    TokenEvent,
    TokenLogprob,
)
from scratchlm.serve.slots import SlotCache
from scratchlm.tokenizer import Tokenizer

__all__ = [
    "Engine",
    "EngineBusyError",
    "EngineClosedError",
    "EngineStats",
    "FinishEvent",
    "GenerationRequest",
    "RequestStream",
    "TokenEvent",
    "TokenLogprob",
]

log = logging.getLogger(__name__)


class Engine:
    """Serves ``GenerationRequest``s on ``model`` with continuous batching.

    ``max_batch``: requests decoding at once (the KV cache holds that many rows of the
    whole context, allocated here once). ``max_queue``: requests that may wait for a
    slot; one more is refused with ``EngineBusyError``. ``prefill_chunk``: prompt tokens
    prefilled per iteration between two decode steps.
    A model that was not prepared for inference is prepared here (not in place).
    """

    def __init__(
        self,
        model: TransformerLM,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 16,
        max_queue: int = 256,
        prefill_chunk: int = 256,
    ) -> None:
        for name, value, least in (
            ("max_batch", max_batch, 1),
            ("max_queue", max_queue, 0),
            ("prefill_chunk", prefill_chunk, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        if not is_prepared(model):
            model = prepare_for_inference(model, in_place=False)
        self._model = model
        self._tokenizer = tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        param = next(model.parameters())
        self._device = param.device
        self._slots = SlotCache(model.config, max_batch, device=param.device, dtype=param.dtype)
        self._prefill_cache = KVCache.for_model(
            model.config, 1, device=param.device, dtype=param.dtype
        )

        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: deque[RequestStream] = deque()  # guarded by _lock
        self._closed = False  # guarded by _lock
        self._thread: threading.Thread | None = None
        # Worker-only state: admitted requests not yet in a slot (only the first one
        # has tokens in the prefill cache), and the requests in slots, row i = _active[i].
        self._prefilling: deque[RequestState] = deque()
        self._active: list[RequestState] = []
        # Statistics, written under _lock.
        self._running = 0
        self._batch_size = 0
        self._prompt_tokens = 0
        self._generated_tokens = 0
        self._finished: Counter[str] = Counter()

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> ModelConfig:
        return self._model.config

    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine is closed: make a new one")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="scratchlm-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the worker; every request not finished ends "cancelled"."""
        with self._lock:
            self._closed = True
            self._wakeup.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if thread is None:  # never started: only waiting requests to end
            self._end_waiting()

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self, request: GenerationRequest, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> RequestStream:
        """Queue ``request``; never blocks. Its events arrive on the returned stream,
        on ``loop`` when given (``async for``), else by blocking iteration.

        Raises ScratchLMError for a prompt that is empty, longer than the context or
        holds ids outside the vocabulary, or an invalid ``logprobs``;
        EngineBusyError when ``max_queue`` requests already wait; EngineClosedError
        after ``close``.
        """
        assert isinstance(request, GenerationRequest), type(request)
        c = self.config
        fit_prompt(request.prompt_ids, c.context_length, truncate=False, vocab_size=c.vocab_size)
        k = request.logprobs
        if k is not None and (isinstance(k, bool) or not 0 <= k <= MAX_LOGPROBS):
            raise ConfigError(f"logprobs must be an integer in 0..{MAX_LOGPROBS}, got {k!r}")
        stream = RequestStream(request, self._wake, loop)
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine is closed: it takes no more requests")
            if len(self._waiting) >= self.max_queue:
                raise EngineBusyError(
                    f"the server is busy: {len(self._waiting)} requests are already waiting "
                    "for a slot; try again later"
                )
            self._waiting.append(stream)
            self._wakeup.notify()
        return stream

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                running=self._running,
                waiting=len(self._waiting),
                batch_size=self._batch_size,
                prompt_tokens_total=self._prompt_tokens,
                generated_tokens_total=self._generated_tokens,
                requests_finished_total=dict(self._finished),
                max_batch=self.max_batch,
                max_queue=self.max_queue,
            )

    # ------------------------------------------------------------------ the worker

    def _wake(self) -> None:
        with self._lock:
            self._wakeup.notify()

    def _run(self) -> None:
        try:
            with torch.inference_mode(), eval_mode(self._model):
                while self._next_iteration():
                    try:
                        self._step()
                    except Exception as error:  # a bug outside any one request
                        log.exception("the serving engine's step failed")
                        for live in [*self._prefilling, *self._active]:
                            self._finish(live, "error", error)
                        self._prefilling.clear()
                        self._active.clear()
                        self._slots.clear()
        except BaseException:
            log.exception("the serving engine's worker stopped")
            raise
        finally:
            with self._lock:  # also after a crash: submit refuses rather than queue forever
                self._closed = True
            for live in [*self._prefilling, *self._active]:
                self._finish(live, "cancelled")
            self._prefilling.clear()
            self._active.clear()
            self._slots.clear()
            self._end_waiting()

    def _next_iteration(self) -> bool:
        """Wait for work, admit what fits; False once the engine is closed."""
        cancelled = []
        with self._lock:
            while not (self._closed or self._waiting or self._prefilling or self._active):
                self._wakeup.wait()
            if self._closed:
                return False
            for stream in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(stream)
                cancelled.append(stream)
            while self._waiting and self._running < self.max_batch:
                stream = self._waiting.popleft()
                self._prefilling.append(RequestState(stream, self._tokenizer, self._device))
                self._running += 1
        for stream in cancelled:
            self._end_stream(stream, "cancelled")
        return True

    def _step(self) -> None:
        for live in [x for x in self._prefilling if x.stream.cancelled]:
            self._prefilling.remove(live)
            self._finish(live, "cancelled")
        self._release([row for row, x in enumerate(self._active) if x.stream.cancelled])
        budget = self.prefill_chunk
        while budget > 0 and self._prefilling:
            live = self._prefilling[0]
            try:
                budget -= self._prefill(live, budget)
            except Exception as error:
                log.exception("prefill of a request failed")
                if self._prefilling and self._prefilling[0] is live:
                    self._prefilling.popleft()
                self._finish(live, "error", error)
        if self._active:
            self._decode()
        if not self._active:  # idle now: the gauge says so
            with self._lock:
                self._batch_size = 0

    def _prefill(self, live: RequestState, budget: int) -> int:
        """Prefill up to ``budget`` more prompt tokens of ``live`` (the first of
        ``_prefilling``); when its prompt is done, sample its first token and give it a
        slot. Returns the tokens prefilled."""
        cache = self._prefill_cache
        if live.prefilled == 0:
            cache.reset()
        start = live.prefilled
        end = min(len(live.prompt), start + budget)
        ids = torch.tensor([live.prompt[start:end]], dtype=torch.long, device=self._device)
        logits = self._model(ids, cache, last_only=live.prompt_logprobs is None)  # (1, T|1, V)
        if live.prompt_logprobs is not None:
            live.add_prompt_logprobs(logits[0], start, end)
        live.prefilled = end
        with self._lock:
            self._prompt_tokens += end - start
        if end < len(live.prompt):
            return end - start
        self._prefilling.popleft()
        if live.request.settings.max_new_tokens == 0:
            self._finish(live, "length")
            return end - start
        token = live.sample(logits[:, -1])  # from (1, V)
        if not self._take(live, token, live.token_logprob(logits[0, -1], token)):
            self._slots.add(cache)
            self._active.append(live)
        return end - start

    def _decode(self) -> None:
        """One token for every request in a slot, then each row sampled on its own."""
        rows = self._active
        with self._lock:
            self._batch_size = len(rows)
        view = self._slots.view()
        ids = torch.tensor([[x.pending] for x in rows], dtype=torch.long, device=self._device)
        logits = self._model(ids, view, view.positions(), last_only=True)[:, -1]  # (n, V)
        greedy = [i for i, x in enumerate(rows) if x.greedy]
        chosen: dict[int, int] = {}
        if greedy:  # the common case in one op: rows at temperature 0 without penalties
            index = torch.tensor(greedy, device=logits.device)
            argmax = logits.index_select(0, index).float().argmax(dim=-1).tolist()
            chosen = dict(zip(greedy, argmax, strict=True))
        done = []
        for i, live in enumerate(rows):
            if live.stream.cancelled:  # cancelled during the step: no token after cancel()
                done.append(i)
                continue
            try:
                token = chosen[i] if i in chosen else live.sample(logits[i : i + 1])
                if self._take(live, token, live.token_logprob(logits[i], token)):
                    done.append(i)
            except Exception as error:
                log.exception("sampling a request's token failed")
                self._finish(live, "error", error)
                done.append(i)
        self._release(done)

    def _release(self, rows: list[int]) -> None:
        """Free the slots of these rows of ``_active`` (ending their requests as
        cancelled unless they have ended): the last row moves into each freed one."""
        for row in sorted(rows, reverse=True):  # higher rows first: the last row is kept
            live = self._active[row]
            if not live.finished:
                self._finish(live, "cancelled")
            moved = self._slots.remove(row)
            if moved is None:
                self._active.pop()
            else:
                self._active[row] = self._active.pop()
        assert len(self._active) == self._slots.rows, (len(self._active), self._slots.rows)

    def _take(self, live: RequestState, token: int, logprob: TokenLogprob | None) -> bool:
        """Take a sampled token into a request's answer; True when that ended it."""
        with self._lock:
            self._generated_tokens += 1
        reason = live.take(token, logprob, self.config.context_length)
        if reason is not None:
            self._finish(live, reason)
        return reason is not None

    def _finish(self, live: RequestState, reason: str, error: Exception | None = None) -> None:
        """End a request (once): counted first, so that a consumer who has read its
        FinishEvent sees the stats without it."""
        event = live.finish(reason, error)
        if event is not None:
            with self._lock:
                self._running -= 1
                self._finished[reason] += 1
            live.stream.deliver(event)

    def _end_stream(self, stream: RequestStream, reason: str) -> None:
        """End a request that was never admitted."""
        with self._lock:
            self._finished[reason] += 1
        stream.deliver(FinishEvent(reason, "", len(stream.request.prompt_ids), 0))

    def _end_waiting(self) -> None:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for stream in waiting:
            self._end_stream(stream, "cancelled")
