"""OpenAI request bodies -> validated requests, and the error that says what is wrong.

``parse_chat`` and ``parse_completion`` take a decoded JSON body of ``POST
/v1/chat/completions`` or ``POST /v1/completions`` and return a frozen request with every
field checked; a bad field raises ``APIError`` (HTTP 400) whose message names the field
and the allowed range, as OpenAI's own API does. Fields this server does not know are
ignored, as OpenAI ignores them; fields it knows but cannot honour (tools, a JSON
response format, logit_bias, suffix) are refused rather than silently dropped.

Omitted sampling fields take scratchlm's defaults (``SampleConfig``: temperature 0.7,
the setting ``scratchlm chat`` uses), not OpenAI's 1.0, as vLLM takes a model's own
generation defaults. Extensions beyond OpenAI, as in vLLM: ``top_k`` (0 or -1 = off),
``min_p`` and ``repetition_penalty``.

Turning a request into engine requests (rendering, tokenising) is ``serve.prompts``;
response bodies and stream chunks are ``serve.chunks`` and ``serve.responses``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scratchlm.chat_format import ROLE_TOKENS, conversation_problem
from scratchlm.config import SampleConfig
from scratchlm.errors import ScratchLMError

MAX_N = 16  # choices per prompt (n)
MAX_CHOICES = 64  # choices per request: prompts x n (each one is an engine request)
MAX_STOP = 16  # stop strings (OpenAI allows 4; more are cheap here)
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs, as OpenAI
MAX_LEGACY_LOGPROBS = 5  # completions' logprobs, as OpenAI
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions' max_tokens when omitted, as OpenAI
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts

_ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error", 503: "server_error"}


class APIError(ScratchLMError):
    """A request the server refuses, as an HTTP status and OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        default = "server_error" if self.status >= 500 else "invalid_request_error"
        return _ERROR_TYPES.get(self.status, default)

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, param=self.param, code=self.code)


def error_body(
    message: str, type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid(param: str | None, message: str) -> APIError:
    """A 400 for the field ``param``."""
    return APIError(400, message, param=param, code="invalid_value")


@dataclass(frozen=True)
class Common:
    """What chat and completion requests share."""

    model: str | None  # None: the one model served
    sample: SampleConfig  # max_new_tokens is set per request later, from max_tokens
    max_tokens: int | None  # None: as much as the context leaves
    n: int
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class ChatRequest:
    common: Common
    messages: tuple[dict[str, str], ...]  # {"role", "content"}, content as plain text
    logprobs: int | None  # None: no logprobs; k: the chosen token's and the top k


@dataclass(frozen=True)
class CompletionRequest:
    common: Common
    prompts: tuple[str | tuple[int, ...], ...]  # text, or token ids
    echo: bool
    logprobs: int | None  # None, or 0..5 alternatives per token (OpenAI's legacy shape)


# --------------------------------------------------------------------- fields


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(
    body: Mapping[str, Any],
    name: str,
    default: float,
    lo: float,
    hi: float,
    *,
    open_lo: bool = False,
    open_hi: bool = False,
) -> float:
    """A number in [lo, hi], the ends excluded with ``open_lo``/``open_hi``; ``default``
    when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    bounds = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < lo
        or value > hi
        or (open_lo and value == lo)
        or (open_hi and value == hi)
    ):
        raise invalid(name, f"{name} must be a number in {bounds}, got {value!r}")
    return float(value)


def _integer(
    body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int | None = None
) -> int | None:
    """An integer in [lo, hi] (no upper bound when hi is None); ``default`` when absent."""
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        bounds = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise invalid(name, f"{name} must be an integer {bounds}, got {value!r}")
    return value


def _boolean(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, f"{name} must be true or false, got {value!r}")
    return value


def _stop(body: Mapping[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid("stop", f"stop must be a string or a list of strings, got {value!r}")
    if len(value) > MAX_STOP:
        raise invalid("stop", f"stop may hold at most {MAX_STOP} strings, got {len(value)}")
    return [s for s in value if s]  # an empty stop string would stop before any text


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Known OpenAI fields whose meaning this server cannot honour: a 400, not a silent
    answer that ignores them."""
    for name in ("tools", "functions"):
        if body.get(name):
            raise invalid(name, f"{name} are not supported: this model does not call tools")
    if body.get("logit_bias"):
        raise invalid("logit_bias", "logit_bias is not supported")
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, Mapping) or response_format.get("type") != "text"
    ):
        raise invalid("response_format", 'response_format: only {"type": "text"} is supported')


def _common(body: Mapping[str, Any], *, min_tokens: int, default_tokens: int | None) -> Common:
    _refuse_unsupported(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("model", f"model must be a string, got {model!r}")
    # max_completion_tokens is OpenAI's newer name for max_tokens; it wins when both are set.
    max_tokens = _integer(body, "max_completion_tokens", None, min_tokens)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", default_tokens, min_tokens)
    top_k = _integer(body, "top_k", 0, -1)
    seed = _integer(body, "seed", None, SEED_MIN, SEED_MAX)
    defaults = SampleConfig()
    sample = SampleConfig(
        temperature=_number(body, "temperature", defaults.temperature, 0, 2),
        top_p=_number(body, "top_p", defaults.top_p, 0, 1, open_lo=True),
        top_k=max(top_k, 0),  # vLLM's -1 = off is our 0
        min_p=_number(body, "min_p", defaults.min_p, 0, 1, open_hi=True),
        presence_penalty=_number(body, "presence_penalty", defaults.presence_penalty, -2, 2),
        frequency_penalty=_number(body, "frequency_penalty", defaults.frequency_penalty, -2, 2),
        repetition_penalty=_number(
            body, "repetition_penalty", defaults.repetition_penalty, 0, 10, open_lo=True
        ),
        seed=seed,
        stop=_stop(body),
    )
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise invalid("stream_options", "stream_options is only allowed when stream is true")
    if options is not None and not isinstance(options, Mapping):
        raise invalid("stream_options", f"stream_options must be an object, got {options!r}")
    include_usage = _boolean(options or {}, "include_usage")
    n = _integer(body, "n", 1, 1, MAX_N)
    return Common(model, sample, max_tokens, n, stream, include_usage)


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index`` of a request with ``seed``: seed + index (wrapping
    inside the range torch accepts), so n choices differ yet each is reproducible; None
    stays None (fresh entropy for every choice)."""
    if seed is None:
        return None
    value = seed + index
    return value - 2**64 if value > SEED_MAX else value


# ----------------------------------------------------------------------- chat


def _message_text(content: Any, i: int) -> str:
    """A message's content as text: a string, or OpenAI's list of text parts (joined
    with newlines, as vLLM joins them)."""
    if isinstance(content, str):
        return content
    param = f"messages[{i}].content"
    if not isinstance(content, list):
        raise invalid(param, f"{param} must be a string or a list of text parts, got {content!r}")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise invalid(
                f"{param}[{j}]", f"{param}[{j}] is of type {kind!r}: only text parts are supported"
            )
        if not isinstance(part.get("text"), str):
            raise invalid(f"{param}[{j}].text", f"{param}[{j}].text must be a string")
        texts.append(part["text"])
    return "\n".join(texts)


def _messages(body: Mapping[str, Any]) -> tuple[dict[str, str], ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise invalid("messages", "messages must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, Mapping):
            raise invalid(f"messages[{i}]", f"messages[{i}] must be an object")
        role = message.get("role")
        role = "system" if role == "developer" else role  # OpenAI's newer name for system
        if role not in ROLE_TOKENS:
            raise invalid(
                f"messages[{i}].role",
                f"messages[{i}].role must be system, user or assistant, got {role!r}",
            )
        if "content" not in message or message["content"] is None:
            raise invalid(f"messages[{i}].content", f"messages[{i}] has no content")
        messages.append({"role": role, "content": _message_text(message["content"], i)})
    problem = conversation_problem(messages)
    if problem is not None:
        raise invalid("messages", f"messages: {problem}")
    if messages[-1]["role"] != "user":
        raise invalid("messages", "the last message must be a user message: the model answers it")
    return tuple(messages)


def parse_chat(body: Any) -> ChatRequest:
    """A ``POST /v1/chat/completions`` body -> ChatRequest; APIError naming a bad field."""
    if not isinstance(body, Mapping):
        raise invalid(None, "the request body must be a JSON object")
    common = _common(body, min_tokens=1, default_tokens=None)
    messages = _messages(body)
    wants = _boolean(body, "logprobs")
    top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top is not None and not wants:
        raise invalid("top_logprobs", "top_logprobs needs logprobs: true")
    return ChatRequest(common, messages, (top or 0) if wants else None)


# ---------------------------------------------------------------- completions


def _prompts(body: Mapping[str, Any]) -> tuple[str | tuple[int, ...], ...]:
    value = body.get("prompt")
    shape = "prompt must be a string, a list of strings, a list of token ids or a list of those"
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value:
        raise invalid("prompt", f"{shape}, got {value!r}")
    if all(isinstance(p, str) for p in value):
        return tuple(value)
    if all(_is_int(t) for t in value):
        return (tuple(value),)
    if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in value):
        return tuple(tuple(p) for p in value)
    raise invalid("prompt", f"{shape} (token id lists must not be empty)")


def parse_completion(body: Any) -> CompletionRequest:
    """A ``POST /v1/completions`` body -> CompletionRequest; APIError naming a bad field.
    ``max_tokens`` defaults to 16 and may be 0 (with ``echo``, to score a prompt), as
    OpenAI's; ``best_of`` is accepted only when it equals ``n``."""
    if not isinstance(body, Mapping):
        raise invalid(None, "the request body must be a JSON object")
    if body.get("suffix"):
        raise invalid("suffix", "suffix is not supported: this model does not fill in the middle")
    common = _common(body, min_tokens=0, default_tokens=DEFAULT_COMPLETION_TOKENS)
    best_of = _integer(body, "best_of", common.n, 1)
    if best_of != common.n:
        raise invalid("best_of", f"best_of must equal n ({common.n}) here, got {best_of}")
    prompts = _prompts(body)
    if len(prompts) * common.n > MAX_CHOICES:
        raise invalid(
            "n",
            f"prompts x n must be at most {MAX_CHOICES}, got {len(prompts)} x {common.n}",
        )
    echo = _boolean(body, "echo")
    logprobs = _integer(body, "logprobs", None, 0, MAX_LEGACY_LOGPROBS)
    if common.stream and echo and logprobs is not None:
        raise invalid(
            "logprobs",
            "echo with logprobs is only available without streaming (stream: false)",
        )
    return CompletionRequest(common, prompts, echo, logprobs)
