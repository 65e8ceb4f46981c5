"""scratchlm models inside lm-evaluation-harness: the registered ``scratchlm`` model.

Importing this module registers the model with lm-eval (only the ``eval tasks`` command
and users who want the model in lm-eval import it; ``scratchlm.evals`` does not)::

    import lm_eval
    import scratchlm.evals.lm_eval_model  # registers "scratchlm"

    lm_eval.simple_evaluate(model="scratchlm", model_args="pretrained=runs/my-run",
                            tasks=["hellaswag"])

or pass ``ScratchLMEval(model, tokenizer)`` as ``model=`` for a model already in memory.

The three request types: ``loglikelihood`` (context, continuation) -> (log P, is_greedy),
scored in batches by ``scratchlm.evals.loglik``; ``loglikelihood_rolling`` (text) -> log
P(text) over lm-eval's disjoint windows; ``generate_until`` (context, {"until": [...],
"max_gen_toks": N}) -> greedy text, cut at the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from scratchlm.checkpoint import load_model
from scratchlm.config import SampleConfig
from scratchlm.errors import TokenizerError
from scratchlm.evals.loglik import encode_pair, prefix_id, rolling_windows, score_ids
from scratchlm.model import TransformerLM
from scratchlm.textgen import generate_rows
from scratchlm.tokenizer import Tokenizer
from scratchlm.train.runtime import pick_device

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's hf model's default budget


@register_model("scratchlm")
class ScratchLMEval(LM):
    """A scratchlm model as an lm-eval ``LM``.

    ``ScratchLMEval(model, tokenizer)`` wraps a model in memory; ``pretrained=PATH``
    (what ``--model_args pretrained=runs/x`` gives) loads a checkpoint or run directory.
    ``batch_size``: requests per forward pass.
    """

    def __init__(
        self,
        model: TransformerLM | None = None,
        tokenizer: Tokenizer | None = None,
        *,
        pretrained: str | None = None,
        batch_size: int | str = 32,
        device: str | None = None,
        show_progress: bool = True,
        **_ignored: Any,  # lm-eval passes max_batch_size and the like to every model
    ) -> None:
        super().__init__()
        if model is None:
            if pretrained is None:
                raise TypeError("give a model and tokenizer, or pretrained=PATH")
            model, tokenizer = load_model(pretrained, device=pick_device(device or "auto"))
        if tokenizer is None:
            raise TokenizerError("the model has no tokenizer: save the checkpoint with one")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = 32 if batch_size == "auto" else int(batch_size)
        self.prefix = prefix_id(tokenizer)
        self.show_progress = show_progress

    @property
    def max_length(self) -> int:
        return self.model.config.context_length

    def _progress(self, total: int, what: str) -> tqdm:
        return tqdm(total=total, desc=what, disable=not self.show_progress)

    def loglikelihood(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """(log P(continuation | context), is_greedy) for each request."""
        pairs = [encode_pair(self.tokenizer, *r.args, prefix=self.prefix) for r in requests]
        with self._progress(len(pairs), "log-likelihoods") as bar:
            scored = score_ids(self.model, pairs, self.batch_size, on_batch=bar.update)
        return [(s.logprob, s.is_greedy) for s in scored]

    def loglikelihood_rolling(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[float]:
        """log P(text) of each request's whole text, every token scored once."""
        windows, owner = [], []
        for i, r in enumerate(requests):
            ids = self.tokenizer.encode(r.args[0])
            for pair in rolling_windows(ids, self.prefix, self.max_length):
                windows.append(pair)
                owner.append(i)
        with self._progress(len(windows), "rolling windows") as bar:
            scored = score_ids(self.model, windows, self.batch_size, on_batch=bar.update)
        totals = [0.0] * len(requests)
        for i, s in zip(owner, scored, strict=True):
            totals[i] += s.logprob
        return totals

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, each cut before the first of its ``until`` strings."""
        out: list[str | None] = [None] * len(requests)
        # Rows of a batch share their settings: group by them, longest prompt first.
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(_settings(r.args[1]), []).append(i)
        with self._progress(len(requests), "generating") as bar:
            for (until, budget), members in groups.items():
                prompts = {i: self._prompt(requests[i].args[0]) for i in members}
                members.sort(key=lambda i: -len(prompts[i]))
                settings = SampleConfig(temperature=0.0, max_new_tokens=budget, stop=list(until))
                for start in range(0, len(members), self.batch_size):
                    batch = members[start : start + self.batch_size]
                    texts = generate_rows(
                        self.model,
                        self.tokenizer,
                        [prompts[i] for i in batch],
                        settings,
                        stop_ids=[self.prefix],
                    )
                    for i, text in zip(batch, texts, strict=True):
                        out[i] = _cut(text, until)
                    bar.update(len(batch))
        return out  # type: ignore[return-value]

    def _prompt(self, context: str) -> list[int]:
        return self.tokenizer.encode(context) if context else [self.prefix]


def _settings(gen_kwargs: dict[str, Any]) -> tuple[tuple[str, ...], int]:
    """(stop strings, token budget) from lm-eval's generation arguments."""
    until = gen_kwargs.get("until", ())
    until = (until,) if isinstance(until, str) else tuple(until)
    return until, int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))


def _cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first stop string (the engine already stops there; a stop
    string it held back at the budget's end is cut here too)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
