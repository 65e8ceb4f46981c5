"""The chat format: a conversation -> token ids and a loss mask, for training and inference.

A conversation is a list of messages ``{"role": ..., "content": ...}``: an optional system
message first, then user and assistant messages taking turns, starting with the user.
Each message renders as its role token, its content, and the end-of-turn token::

    <|system|>You are terse.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>

Nothing is added between them (no newlines, no spaces). Content is encoded with special
tokens off, so a message that happens to contain ``<|end|>`` is plain text and cannot end
its turn early. Because every content piece sits between special tokens, encoding the
pieces one by one gives the ids of encoding the whole string with special tokens on,
which is what Hugging Face's ``apply_chat_template`` does with ``CHAT_TEMPLATE``: the
exported tokenizer gives our ids.

``render_conversation`` (training) and ``render_prompt`` (inference) are the only two
renderers; both go through ``_render`` so they can never drift apart. The loss mask is
True on what the model must learn to say: an assistant message's content and its
``<|end|>`` (so it learns to stop), never the role tokens, the system or user messages.
See docs/chat_format.md for the truncation rule and a worked example.

It sits just above the tokenizer (which it imports, never the other way round) and below
everything that renders a conversation: SFT data, chat, the fact checks and the Hugging
Face tokenizer export (``export.hf_tokenizer`` writes ``CHAT_TEMPLATE``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scratchlm.errors import ConfigError, DataError, TokenizerError
from scratchlm.tokenizer import BPETokenizer, CharTokenizer, Tokenizer

ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end|>"
CHAT_SPECIAL_TOKENS = (*ROLE_TOKENS.values(), END_OF_TURN)

# The same format for Hugging Face's apply_chat_template (jinja2, with HF's trim_blocks and
# lstrip_blocks; the "-" markers drop the template's own newlines, so the output is exactly
# the role token, the content and <|end|> per message). It checks what _checked checks.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}\n"
    "{{- raise_exception('unknown role ' + message['role'] + ': use system, user or "
    "assistant') -}}\n"
    "{%- endif -%}\n"
    "{%- if message['role'] == 'system' and not loop.first -%}\n"
    "{{- raise_exception('a system message may only come first') -}}\n"
    "{%- endif -%}\n"
    "{%- if message['role'] != 'system' and (message['role'] == 'user') != "
    "((loop.index0 - (1 if messages[0]['role'] == 'system' else 0)) % 2 == 0) -%}\n"
    "{{- raise_exception('user and assistant messages must take turns, user first') -}}\n"
    "{%- endif -%}\n"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

# One rendered message: its ids and, per id, whether the loss counts it.
Rendered = tuple[list[int], list[bool]]


class ConversationTooLongError(DataError):
    """Not even the system message, the last user message and one answer token fit in
    ``max_tokens``. Callers that train may skip such a conversation and count it."""


# ---------------------------------------------------------------------- validation


def conversation_problem(messages: Any) -> str | None:
    """What keeps ``messages`` from being a conversation this format renders, or None.

    Rules: a non-empty list of mappings with a ``role`` (system, user or assistant) and a
    string ``content``; a system message only first; then user and assistant take turns,
    starting with user. Empty content is allowed here (the readers refuse it).
    """
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        return f"expected a list of messages, found {type(messages).__name__}"
    if not messages:
        return "the conversation has no messages"
    has_system = False
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"message {i} is a {type(message).__name__}, not an object"
        for key in ("role", "content"):
            if key not in message:
                return f"message {i} has no {key!r}"
        role, content = message["role"], message["content"]
        if role not in ROLE_TOKENS:
            return f"message {i} has role {role!r}; roles are system, user and assistant"
        if not isinstance(content, str):
            return f"message {i} ({role}) has content of type {type(content).__name__}, not text"
        if role == "system":
            if i:
                return f"message {i} is a system message; only the first message may be one"
            has_system = True
            continue
        expected = "user" if (i - has_system) % 2 == 0 else "assistant"
        if role != expected:
            return (
                f"message {i} is {role} but {expected} was expected: user and assistant "
                "take turns, user first"
            )
    if len(messages) == has_system:
        return "the conversation has no user message"
    return None


def _checked(messages: Any) -> list[tuple[str, str]]:
    """``(role, content)`` of each message, or a DataError saying what is wrong."""
    problem = conversation_problem(messages)
    if problem is not None:
        raise DataError(f"invalid conversation: {problem}")
    return [(m["role"], m["content"]) for m in messages]


def chat_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Special token -> id for the four chat tokens; TokenizerError if any is missing."""
    specials = tokenizer.special_tokens
    missing = [t for t in CHAT_SPECIAL_TOKENS if t not in specials]
    if missing:
        raise TokenizerError(
            f"the tokenizer has no chat special token(s) {', '.join(missing)}: add them with "
            "scratchlm.chat_format.chat_tokenizer (and grow the model with model.resize.grow_vocab)"
        )
    return {t: specials[t] for t in CHAT_SPECIAL_TOKENS}


# ----------------------------------------------------------------------- rendering


def render_conversation(
    messages: Sequence[Mapping[str, str]], tokenizer: Tokenizer, *, max_tokens: int | None = None
) -> tuple[list[int], list[bool]]:
    """A conversation -> ``(ids, loss_mask)``, both of the same length.

    The mask is True on each assistant message's content ids and its ``<|end|>``. With
    ``max_tokens``, a longer rendering loses its oldest user+assistant exchanges (the
    system message stays); if the last exchange alone is still too long, its assistant
    content is cut from the end, and then has no ``<|end|>`` (the answer did not end
    there). ConversationTooLongError when not even one answer token fits.
    """
    return _render(messages, tokenizer, max_tokens=max_tokens, prompt=False)


def render_prompt(
    messages: Sequence[Mapping[str, str]], tokenizer: Tokenizer, *, max_tokens: int | None = None
) -> list[int]:
    """The conversation so far (ending with a user message) and the ``<|assistant|>`` id:
    the ids a model continues with its answer. ``max_tokens`` drops the oldest exchanges
    as in ``render_conversation``; ConversationTooLongError when the system message, the
    last user message and ``<|assistant|>`` alone do not fit."""
    return _render(messages, tokenizer, max_tokens=max_tokens, prompt=True)[0]


def _render(
    messages: Sequence[Mapping[str, str]],
    tokenizer: Tokenizer,
    *,
    max_tokens: int | None,
    prompt: bool,
) -> tuple[list[int], list[bool]]:
    pairs = _checked(messages)
    if prompt and pairs[-1][0] != "user":
        raise DataError(
            f"a prompt must end with a user message, not {pairs[-1][0]}: the model answers it"
        )
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    token = chat_token_ids(tokenizer)
    end = token[END_OF_TURN]
    rendered: list[Rendered] = []
    for role, content in pairs:
        body = tokenizer.encode(content, allow_special=False)
        train = role == "assistant"
        rendered.append(
            ([token[ROLE_TOKENS[role]], *body, end], [False] + [train] * (len(body) + 1))
        )
    # The generation prompt: the model speaks after it, so nothing of it is trained.
    tail: Rendered = ([token[ROLE_TOKENS["assistant"]]], [False]) if prompt else ([], [])

    system = rendered[:1] if pairs[0][0] == "system" else []
    turns = rendered[len(system) :]
    exchanges = [turns[i : i + 2] for i in range(0, len(turns), 2)]  # (user, assistant?)
    if max_tokens is not None:
        exchanges = _fit(system, exchanges, tail, max_tokens)
    ids: list[int] = []
    mask: list[bool] = []
    for part_ids, part_mask in [*system, *(m for ex in exchanges for m in ex), tail]:
        ids += part_ids
        mask += part_mask
    assert len(ids) == len(mask), (len(ids), len(mask))
    assert max_tokens is None or len(ids) <= max_tokens, (len(ids), max_tokens)
    return ids, mask


def _fit(
    system: list[Rendered], exchanges: list[list[Rendered]], tail: Rendered, max_tokens: int
) -> list[list[Rendered]]:
    """The newest exchanges that fit beside the system message and the tail, whole; if
    none does, the last one with its answer cut from the end."""
    budget = max_tokens - sum(len(ids) for ids, _ in system) - len(tail[0])
    kept: list[list[Rendered]] = []
    for exchange in reversed(exchanges):
        size = sum(len(ids) for ids, _ in exchange)
        if size > budget:
            break
        kept.append(exchange)
        budget -= size
    if kept:
        return kept[::-1]
    last = exchanges[-1]
    if len(last) == 2:  # user + assistant: keep the answer's start
        (user_ids, user_mask), (answer_ids, answer_mask) = last
        keep = budget - len(user_ids) - 1  # answer content ids that fit after <|assistant|>
        if keep >= 1:
            # A cut answer did not end: no <|end|>, or the model would learn to stop mid-answer.
            return [[(user_ids, user_mask), (answer_ids[: keep + 1], answer_mask[: keep + 1])]]
    # What must fit: the system message, the last user message and, with an answer to
    # train or a prompt to end, <|assistant|> and for training one answer id.
    fixed = max_tokens - budget + len(last[0][0])
    need = fixed + 2 if len(last) == 2 else fixed
    extra = (
        " with <|assistant|> and one answer token"
        if len(last) == 2
        else " with <|assistant|>"
        if tail[0]
        else ""
    )
    raise ConversationTooLongError(
        f"the system message and the last user message{extra} need {need} tokens, more "
        f"than max_tokens={max_tokens}; shorten them or allow more tokens"
    )


# ------------------------------------------------------------------- tokenizers


def chat_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` itself if it has the four chat tokens, else a copy (same class, vocab,
    merges, pattern and metadata) with the missing ones appended as special tokens:
    every existing id keeps its bytes and the new ids come after the largest one (a BPE
    vocab entry spelled like a chat token that no merge makes or uses is reused, as
    BPETokenizer does for any special token). A model trained with the old tokenizer
    needs ``grow_vocab(model, new.vocab_size)``."""
    specials = list(tokenizer.special_tokens)
    missing = [t for t in CHAT_SPECIAL_TOKENS if t not in specials]
    if not missing:
        return tokenizer
    if isinstance(tokenizer, BPETokenizer):
        # BPETokenizer reuses a vocab entry spelled like a special token only if no merge
        # makes or uses it; every other new special gets max id + 1, in list order.
        new = BPETokenizer(
            tokenizer.vocab,
            tokenizer.merges,
            specials + missing,
            pattern=tokenizer.pattern,
            use_tiktoken=None if tokenizer.uses_tiktoken else False,
            metadata=tokenizer.metadata,
        )
    elif isinstance(tokenizer, CharTokenizer):
        new = CharTokenizer(tokenizer.chars, specials + missing)  # specials follow the chars
    else:
        raise TokenizerError(
            f"cannot add chat tokens to a {type(tokenizer).__name__}: use a BPETokenizer or "
            "CharTokenizer"
        )
    old = tokenizer.vocab
    assert all(new.vocab.get(i) == t for i, t in old.items()), "chat tokens moved an old id"
    return new
