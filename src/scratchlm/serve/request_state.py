"""One request as the serving engine's worker runs it: its generator, text, stop rules,
penalty history and logprobs, and the rules that end it. The engine schedules
requests (which prefill, which decode together); a ``RequestState`` decides what one
sampled token means for its own request.
"""

from __future__ import annotations

import traceback

import torch
from torch import Tensor

from scratchlm.sampling import make_generator, penalties_active, sample_next
from scratchlm.serve.requests import (
    FinishEvent,
    GenerationRequest,
    RequestStream,
    TokenEvent,
    TokenLogprob,
)
from scratchlm.textgen import TextStream
from scratchlm.tokenizer import Tokenizer


class RequestState:
    """The worker's state of one admitted request."""

    def __init__(self, stream: RequestStream, tokenizer: Tokenizer, device: torch.device) -> None:
        request = stream.request
        settings = request.settings
        self.stream = stream
        self.prompt = list(request.prompt_ids)
        self.generator = make_generator(settings.seed, device)
        self.text = TextStream(tokenizer, settings.stop)
        self.stop_ids = frozenset(request.stop_ids)
        # Every id seen (prompt and answer), for the penalties; None when none is active.
        self.history = list(self.prompt) if penalties_active(settings) else None
        self.prompt_logprobs: list[TokenLogprob | None] | None = (
            [None] if request.prompt_logprobs else None
        )
        # Argmax without penalties: the engine picks these rows' tokens in one batched op.
        self.greedy = settings.temperature == 0 and self.history is None
        self.prefilled = 0  # prompt tokens in the prefill cache
        self.completion = 0  # tokens sampled
        self.pending = -1  # the last sampled token, fed at the next decode step
        self.finished = False

    @property
    def request(self) -> GenerationRequest:
        return self.stream.request

    def sample(self, logits: Tensor) -> int:
        """The next token from this request's logits (1, V), with its own settings,
        penalty history and generator."""
        history = None
        if self.history is not None:
            history = torch.tensor([self.history], dtype=torch.long, device=logits.device)
        return int(sample_next(logits, self.request.settings, self.generator, history)[0])

    def token_logprob(self, logits: Tensor, token: int) -> TokenLogprob | None:
        """The chosen token's logprob and the top k, from logits (V,), when asked for."""
        k = self.request.logprobs
        return None if k is None else token_logprobs(logits[None], [token], k)[0]

    def add_prompt_logprobs(self, logits: Tensor, start: int, end: int) -> None:
        """Record the logprobs of prompt tokens start + 1 .. end from a prefill chunk's
        logits (end - start, V): position j predicts token j + 1."""
        targets = self.prompt[start + 1 : end + 1]
        k = self.request.logprobs or 0
        self.prompt_logprobs += token_logprobs(logits[: len(targets)], targets, k)

    def take(self, token: int, logprob: TokenLogprob | None, context_length: int) -> str | None:
        """Take a sampled token into the answer (a TokenEvent unless it is a stop id);
        returns the finish reason when it ends the request, else None (the token is
        then fed at the next decode step)."""
        self.completion += 1
        if self.history is not None:
            self.history.append(token)
        if token in self.stop_ids:
            return "stop"
        self.stream.deliver(TokenEvent(token, self.text.push(token), logprob))
        if self.text.stopped:
            return "stop"
        if self.completion >= self.request.settings.max_new_tokens:
            return "length"
        if len(self.prompt) + self.completion > context_length:
            return "length"  # no room in the context to feed this token
        self.pending = token
        return None

    def finish(self, reason: str, error: BaseException | None = None) -> FinishEvent | None:
        """Mark the request ended; its FinishEvent (with the held-back text) for the
        caller to deliver, or None if it had already ended."""
        if self.finished:
            return None
        self.finished = True
        text = "" if reason == "error" else self.text.finish()
        message = None
        if error is not None:
            message = traceback.format_exception_only(error)[-1].strip()
        logprobs = None if self.prompt_logprobs is None else tuple(self.prompt_logprobs)
        return FinishEvent(reason, text, len(self.prompt), self.completion, logprobs, message)


def token_logprobs(logits: Tensor, tokens: list[int], k: int) -> list[TokenLogprob]:
    """TokenLogprob of tokens[j] under logits[j] (T, V): the log-softmax of the raw
    float32 logits, and its top k (id, logprob)."""
    if not tokens:
        return []
    logp = torch.log_softmax(logits.float(), dim=-1)  # (T, V)
    index = torch.tensor(tokens, device=logp.device)[:, None]  # (T, 1)
    chosen = logp.gather(1, index)[:, 0].tolist()
    tops: list[tuple[tuple[int, float], ...]] = [()] * len(tokens)
    if k:
        values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)  # (T, k)
        pairs = zip(ids.tolist(), values.tolist(), strict=True)
        tops = [tuple(zip(i, v, strict=True)) for i, v in pairs]
    return [TokenLogprob(t, c, top) for t, c, top in zip(tokens, chosen, tops, strict=True)]
