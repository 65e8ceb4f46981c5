"""Answering a conversation: the chat layer over the id-only engine in ``generate``.

``stream_reply(model, tokenizer, messages)`` renders the conversation with the one chat
renderer (``scratchlm.chat_format.render_prompt``), lets the engine continue it, and streams
the assistant's answer as text pieces that never split a UTF-8 character (textgen's
``TextStream``). The interactive REPL around it lives in ``scratchlm.chat_repl``.

How much of the context the prompt may use: everything the answer does not need
(``context_length - max_new_tokens``), but never less than half the context, so a large
``max_new_tokens`` cannot squeeze the conversation down to nothing. The oldest exchanges
are dropped to fit (the system message stays); an answer that outgrows the window keeps
going on the engine's sliding window.

The answer ends at ``<|end|>``, or at any other special token: assistant content is
encoded with special tokens off in training, so a special token inside an answer means
the model has left the format (``<|endoftext|>``, or a role token starting a new turn).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from scratchlm.chat_format import CHAT_SPECIAL_TOKENS, ROLE_TOKENS, render_prompt
from scratchlm.checkpoint.manager import CHECKPOINTS, CheckpointManager
from scratchlm.config import SampleConfig
from scratchlm.errors import CheckpointError, TokenizerError
from scratchlm.model import TransformerLM
from scratchlm.textgen import resolve_settings, stream_ids
from scratchlm.tokenizer import Tokenizer

# The instruction-tuned model of the default run (``scratchlm train``), preferred by
# ``default_chat_checkpoint`` over any newer run.
DEFAULT_SFT_RUN = Path("default") / "sft"


def require_chat_tokens(tokenizer: Tokenizer | None) -> None:
    """TokenizerError unless ``tokenizer`` has the four chat tokens (an instruction-tuned
    model's tokenizer does; a base model's does not)."""
    if tokenizer is None:
        raise TokenizerError("the model has no tokenizer: chat needs a checkpoint with one")
    missing = [t for t in CHAT_SPECIAL_TOKENS if t not in tokenizer.special_tokens]
    if missing:
        raise TokenizerError(
            f"this model was not instruction-tuned (its tokenizer has no {', '.join(missing)}): "
            "use `scratchlm generate` for raw completion"
        )


def prompt_budget(context_length: int, max_new_tokens: int) -> int:
    """Tokens the rendered conversation may take: what the answer leaves of the context,
    but at least half of it (and at least one token)."""
    return max(context_length - max_new_tokens, context_length // 2, 1)


def reply_stop_ids(tokenizer: Tokenizer) -> list[int]:
    """Every special token id: ``<|end|>`` ends an answer normally; any other special
    token in an answer means the model left the chat format."""
    return sorted(set(tokenizer.special_tokens.values()))


def chat_prompt_ids(
    model: TransformerLM,
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, str]],
    max_new_tokens: int,
) -> list[int]:
    """The ids the model continues with its answer: the conversation (ending with a user
    message), its oldest exchanges dropped to fit ``prompt_budget``, then ``<|assistant|>``."""
    require_chat_tokens(tokenizer)
    budget = prompt_budget(model.config.context_length, max_new_tokens)
    return render_prompt(messages, tokenizer, max_tokens=budget)


def hidden_exchanges(
    model: TransformerLM,
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, str]],
    max_new_tokens: int,
) -> int:
    """How many of the oldest exchanges of ``messages`` (ending with a user message) the
    prompt leaves out to fit the context (``chat_prompt_ids``); 0 when all of it fits.
    Counted by the ``<|user|>`` tokens of the prompt: message text never holds one."""
    ids = chat_prompt_ids(model, tokenizer, messages, max_new_tokens)
    shown = ids.count(tokenizer.special_tokens[ROLE_TOKENS["user"]])
    return sum(m["role"] == "user" for m in messages) - shown


def stream_reply(
    model: TransformerLM,
    tokenizer: Tokenizer,
    messages: list[dict],
    sample: SampleConfig | None = None,
    **overrides: Any,
) -> Iterator[str]:
    """Yield the assistant's answer to ``messages`` piece by piece as it is generated.

    ``messages`` is a conversation ending with a user message (see docs/chat_format.md).
    Sampling settings come from ``sample`` and keyword overrides (``temperature=0``,
    ``max_new_tokens=50``, ``stop=[...]``, ``seed=1``...). The answer ends at ``<|end|>``
    (or another special token), a stop string (left out), or the token budget.

    The prompt is rendered here, before the first piece is asked for, so a tokenizer
    without chat tokens (TokenizerError) or an invalid conversation (DataError) fails at
    the call, not at the first ``next``.
    """
    settings = resolve_settings(sample, overrides)
    ids = chat_prompt_ids(model, tokenizer, messages, settings.max_new_tokens)
    return stream_ids(model, tokenizer, ids, settings, stop_ids=reply_stop_ids(tokenizer))


def reply(
    model: TransformerLM,
    tokenizer: Tokenizer,
    messages: list[dict],
    sample: SampleConfig | None = None,
    **overrides: Any,
) -> str:
    """The assistant's whole answer to ``messages`` (``stream_reply`` joined)."""
    return "".join(stream_reply(model, tokenizer, messages, sample, **overrides))


def default_chat_checkpoint(runs: str | os.PathLike = "runs") -> Path:
    """The checkpoint ``scratchlm chat`` talks to when none is named.

    The rule: the default run's instruction-tuned model (``runs/default/sft``) if it has a
    valid checkpoint; else the run directory under ``runs/`` (one or two levels down, e.g.
    ``runs/mine`` or ``runs/default/pretrain``) whose ``checkpoints/`` folder changed last
    (a save renames ``latest`` into it), falling back to older runs when its checkpoints
    fail verification. CheckpointError when there is none.
    """
    root = Path(runs)
    sft = root / DEFAULT_SFT_RUN
    if (sft / CHECKPOINTS).is_dir():
        found = CheckpointManager(sft).latest_valid()
        if found is not None:
            return found
    for run_dir in _run_dirs_newest_first(root):
        found = CheckpointManager(run_dir).latest_valid()
        if found is not None:
            return found
    raise CheckpointError(
        f"no checkpoint found under {root}/: train a model with `scratchlm train`, or name "
        "a checkpoint or run directory"
    )


def _run_dirs_newest_first(root: Path) -> list[Path]:
    """Directories one or two levels under ``root`` that hold a ``checkpoints`` folder,
    the most recently saved first (ties broken by path, so the order is stable)."""
    if not root.is_dir():
        return []
    level_one = [p for p in root.iterdir() if p.is_dir()]
    level_two = [q for p in level_one for q in p.iterdir() if q.is_dir()]
    runs = [p for p in level_one + level_two if (p / CHECKPOINTS).is_dir()]
    return sorted(runs, key=lambda p: ((p / CHECKPOINTS).stat().st_mtime_ns, str(p)), reverse=True)
