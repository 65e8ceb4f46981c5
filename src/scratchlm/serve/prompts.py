"""Validated OpenAI requests -> the engine's ``GenerationRequest``s: render, encode, budget.

Chat: the conversation goes through the one chat renderer (``chat_format.render_prompt``)
exactly as ``scratchlm chat`` renders it (``chat.chat_prompt_ids``): message text is
encoded with special tokens off (``<|assistant|>`` typed by a user stays text), the
oldest exchanges are dropped to fit ``chat.prompt_budget``, and the answer stops at any
special token (``chat.reply_stop_ids``). Without ``max_tokens`` the prompt gets the
budget of ``scratchlm chat``'s default answer length and the answer may run to the end
of the context.

Completions: text is encoded like ``scratchlm generate``'s prompt (an empty one becomes
``<|endoftext|>``), token ids are taken as they are; the answer stops at
``<|endoftext|>``. A prompt longer than the context is refused (no silent truncation).

Tokenising is pure CPU work on the caller's thread: the server calls these functions in
a worker thread so a long prompt does not hold up the event loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from scratchlm.builtin import END_OF_TEXT
from scratchlm.chat import prompt_budget, reply_stop_ids
from scratchlm.chat_format import CHAT_SPECIAL_TOKENS, ConversationTooLongError, render_prompt
from scratchlm.config import ModelConfig, SampleConfig
from scratchlm.serve.engine import GenerationRequest
from scratchlm.serve.protocol import APIError, ChatRequest, Common, CompletionRequest, choice_seed
from scratchlm.tokenizer import Tokenizer


@dataclass(frozen=True)
class Prompt:
    """One prompt and the engine requests of its n choices."""

    ids: tuple[int, ...]
    text: str  # the prompt as text (for echo)
    requests: tuple[GenerationRequest, ...]


def _requests(
    common: Common,
    ids: list[int],
    max_new_tokens: int,
    stop_ids: list[int],
    logprobs: int | None,
    prompt_logprobs: bool = False,
) -> tuple[GenerationRequest, ...]:
    """n requests for one prompt; choice i samples with seed + i (None: fresh entropy)."""
    return tuple(
        GenerationRequest(
            prompt_ids=tuple(ids),
            settings=dataclasses.replace(
                common.sample,
                max_new_tokens=max_new_tokens,
                seed=choice_seed(common.sample.seed, i),
                stop=list(common.sample.stop),
            ),
            stop_ids=tuple(stop_ids),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )
        for i in range(common.n)
    )


def chat_prompt(request: ChatRequest, tokenizer: Tokenizer, config: ModelConfig) -> Prompt:
    """The prompt and engine requests of a chat completion. APIError 400 when the model
    has no chat format or the newest message does not fit the context."""
    missing = [t for t in CHAT_SPECIAL_TOKENS if t not in tokenizer.special_tokens]
    if missing:
        raise APIError(
            400,
            "this model was not instruction-tuned (its tokenizer has no chat tokens): use "
            "/v1/completions for raw completion",
            code="model_not_chat",
        )
    context = config.context_length
    asked = request.common.max_tokens
    budget = prompt_budget(context, asked if asked is not None else SampleConfig().max_new_tokens)
    try:
        ids = render_prompt(list(request.messages), tokenizer, max_tokens=budget)
    except ConversationTooLongError as e:
        raise APIError(
            400, f"messages: {e}", param="messages", code="context_length_exceeded"
        ) from None
    max_new = asked if asked is not None else context - len(ids)
    requests = _requests(request.common, ids, max_new, reply_stop_ids(tokenizer), request.logprobs)
    return Prompt(tuple(ids), "", requests)


def completion_prompts(
    request: CompletionRequest, tokenizer: Tokenizer, config: ModelConfig
) -> list[Prompt]:
    """The prompts and engine requests of a completion, in order (choice index = prompt
    index x n + i). APIError 400 for a prompt longer than the context or a token id
    outside the vocabulary."""
    specials = tokenizer.special_tokens
    stop_ids = [specials[END_OF_TEXT]] if END_OF_TEXT in specials else []
    prompts = []
    for k, prompt in enumerate(request.prompts):
        param = "prompt" if len(request.prompts) == 1 else f"prompt[{k}]"
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt)
            if not ids and stop_ids:
                ids = list(stop_ids)  # an empty prompt: start a new document
            text = prompt
        else:
            bad = next((t for t in prompt if not 0 <= t < config.vocab_size), None)
            if bad is not None:
                raise APIError(
                    400,
                    f"{param}: token id {bad} is outside the vocabulary (0 to "
                    f"{config.vocab_size - 1})",
                    param="prompt",
                    code="invalid_value",
                )
            ids = list(prompt)
            text = tokenizer.decode(ids)
        if not ids:
            raise APIError(400, f"{param} is empty", param="prompt", code="invalid_value")
        if len(ids) > config.context_length:
            raise APIError(
                400,
                f"{param} has {len(ids)} tokens but the model's context is "
                f"{config.context_length} tokens: shorten it",
                param="prompt",
                code="context_length_exceeded",
            )
        requests = _requests(
            request.common,
            ids,
            request.common.max_tokens,
            stop_ids,
            request.logprobs,
            prompt_logprobs=request.echo and request.logprobs is not None,
        )
        prompts.append(Prompt(tuple(ids), text, requests))
    return prompts
