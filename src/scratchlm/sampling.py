"""Sampling the next token: pure functions on logits.

Every function takes logits of shape (B, V), one row per sequence, and never modifies
its inputs; a setting that turns a step off returns the input tensor itself, so do not
modify results in place either. Filters mark removed tokens with -inf, so
they compose and a softmax afterwards renormalises over what is left. Randomness comes
only from an explicit ``torch.Generator``; temperature 0 means argmax.

``sample_next`` applies them in this order (Hugging Face's default order of logits
processors and warpers):

    penalties (given a history) -> temperature 0 ? argmax
    : logits / temperature -> top-k -> top-p -> min-p -> softmax -> multinomial

Ties are resolved by value, never by position: every token tied with the last one a
filter keeps is kept too, so a filter's result does not depend on the order a sort
happens to leave equal values in (it may keep more than k tokens, or more mass than p).
"""

from __future__ import annotations

import torch
from torch import Tensor

from scratchlm.config import SampleConfig

# Slack when comparing a cumulative float32 probability with top_p. Softmax outputs
# carry about 1e-7 relative error, so without it a set whose mass is exactly p on paper
# (0.5 + 0.3 against 0.8) may fall short by one ulp and pull in one more token.
_TOP_P_SLACK = 1e-6


def token_counts(history: Tensor, vocab_size: int) -> Tensor:
    """How often each token occurs in each row of ``history``.

    history: (B, L) token ids; negative entries (-1) are padding and are not counted.
    Returns (B, V) float32 counts on history's device.
    """
    assert history.dim() == 2, f"history must be (B, L), got shape {tuple(history.shape)}"
    real = history >= 0  # (B, L)
    counts = torch.zeros(history.shape[0], vocab_size, dtype=torch.float32, device=history.device)
    # Padding is redirected to id 0 with weight 0, so it adds nothing.
    return counts.scatter_add(1, history.clamp(min=0).long(), real.float())  # (B, V)


def apply_repetition_penalty(logits: Tensor, history: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019, eq. 1 as implemented by Hugging
    Face): the logit of every token that occurs in the row's history is divided by
    ``penalty`` when positive and multiplied by it when negative, so penalty > 1 makes
    seen tokens less likely whatever their sign (penalty < 1 makes them more likely).

    logits: (B, V); history: (B, L) ids, -1 = padding. Returns (B, V). penalty 1 = no-op.
    """
    assert penalty > 0, f"repetition penalty must be > 0, got {penalty}"
    if penalty == 1.0:
        return logits
    seen = token_counts(history, logits.shape[-1]).to(logits.device) > 0  # (B, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)  # (B, V)
    return torch.where(seen, penalised, logits)


def apply_presence_frequency_penalties(
    logits: Tensor, counts: Tensor, presence: float, frequency: float
) -> Tensor:
    """OpenAI's presence and frequency penalties:
    ``logits - presence * (counts > 0) - frequency * counts``.

    logits: (B, V); counts: (B, V) occurrences so far (see ``token_counts``).
    Returns (B, V). Both 0 = no-op; negative values encourage repetition.
    """
    if presence == 0.0 and frequency == 0.0:
        return logits
    counts = counts.to(device=logits.device, dtype=logits.dtype)
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row, set the rest to -inf.

    Ties: every token equal to the k-th largest value is kept, so more than k tokens
    survive when the k-th value is shared ([3, 2, 2, 1] with k=2 keeps three).
    logits: (B, V). Returns (B, V). k = 0 or k >= V is a no-op.
    """
    assert k >= 0, f"top_k must be >= 0, got {k}"
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of most probable
    tokens whose cumulative probability reaches p; the most probable token always stays.

    Ties: tokens as probable as the last one kept are kept too. The cumulative mass is
    compared with a slack of 1e-6, the precision of float32 probabilities.
    logits: (B, V). Returns (B, V). p = 1.0 is a no-op.
    """
    assert 0.0 < p <= 1.0, f"top_p must be in (0, 1], got {p}"
    if p >= 1.0:
        return logits
    sorted_logits, _ = torch.sort(logits.float(), dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)  # (B, V)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V) mass of the tokens above
    # A token is needed while the tokens above it have not yet reached p.
    n_keep = (mass_before < p - _TOP_P_SLACK).sum(dim=-1, keepdim=True).clamp(min=1)  # (B, 1)
    cutoff = sorted_logits.gather(-1, n_keep - 1).to(logits.dtype)  # (B, 1) last kept logit
    return logits.masked_fill(logits < cutoff, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Min-p filter (Nguyen et al. 2024): keep tokens whose probability is at least
    ``min_p`` times the probability of the most probable token of the row.

    logits: (B, V). Returns (B, V). min_p = 0 is a no-op; the top token always stays.
    """
    assert 0.0 <= min_p < 1.0, f"min_p must be in [0, 1), got {min_p}"
    if min_p == 0.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values  # (B, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def penalties_active(config: SampleConfig) -> bool:
    """True when a penalty changes the logits, so the caller must keep a token history."""
    return (
        config.repetition_penalty != 1.0
        or config.presence_penalty != 0.0
        or config.frequency_penalty != 0.0
    )


def process_logits(logits: Tensor, config: SampleConfig, history: Tensor | None = None) -> Tensor:
    """The logits ``sample_next`` chooses from, in float32: penalties (when ``history``
    is given), then, unless temperature is 0 (greedy: the caller takes the argmax),
    temperature and the filters, so ``softmax`` of the result is the distribution the
    next token is drawn from.

    logits: (B, V) any float dtype; history: (B, L) ids, -1 = padding, or None.
    Returns (B, V) float32 with removed tokens at -inf.
    """
    assert logits.dim() == 2, f"logits must be (B, V), got shape {tuple(logits.shape)}"
    logits = logits.float()  # the math in float32, whatever the model's dtype
    if history is not None and penalties_active(config):
        assert history.shape[0] == logits.shape[0], (
            f"history has {history.shape[0]} rows, logits {logits.shape[0]}"
        )
        history = history.to(logits.device)
        logits = apply_repetition_penalty(logits, history, config.repetition_penalty)
        if config.presence_penalty != 0.0 or config.frequency_penalty != 0.0:
            counts = token_counts(history, logits.shape[-1])  # (B, V)
            logits = apply_presence_frequency_penalties(
                logits, counts, config.presence_penalty, config.frequency_penalty
            )
    if config.temperature == 0:
        return logits
    logits = logits / config.temperature
    logits = top_k_filter(logits, config.top_k)
    logits = top_p_filter(logits, config.top_p)
    return min_p_filter(logits, config.min_p)


def sample_next(
    logits: Tensor,
    config: SampleConfig,
    generator: torch.Generator | None,
    history: Tensor | None = None,
) -> Tensor:
    """Choose the next token of every row.

    logits: (B, V) for the next position, any float dtype and device (computed in
    float32); history: (B, L) ids generated so far (prompt included), -1 = padding, or
    None to skip the penalties. Temperature 0 returns the argmax after penalties (the
    lowest id among ties), ignores the filters and draws nothing from ``generator``.
    Otherwise one draw per row with ``torch.multinomial`` and ``generator``, which must
    live on logits' device (None: torch's global generator). Returns (B,) int64.
    """
    logits = process_logits(logits, config, history)  # (B, V) float32
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` for ``sample_next``: seeded with ``seed``, or from fresh
    OS entropy when seed is None. Either way sampling never draws from (and so never
    shifts) torch's global random state, which training and dropout rely on.

    The same seed gives the same tokens on the same device; CPU and GPU generators
    produce different streams.
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
