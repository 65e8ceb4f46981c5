"""Sampling: hand-computed distributions, ties, penalties, seeds, purity, validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.config import SampleConfig
from scratchlm.errors import ConfigError
from scratchlm.sampling import (
    apply_presence_frequency_penalties,
    apply_repetition_penalty,
    make_generator,
    min_p_filter,
    process_logits,
    sample_next,
    token_counts,
    top_k_filter,
    top_p_filter,
)

INF = float("inf")
PROBS = [0.5, 0.3, 0.15, 0.05]


def logits_of(probs: list[float]) -> torch.Tensor:
    """(1, V) logits whose softmax is ``probs``."""
    return torch.tensor([probs]).log()


def kept(logits: torch.Tensor) -> list[list[bool]]:
    return torch.isfinite(logits).tolist()


def probs_after(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)


# --- top-k -----------------------------------------------------------------------------


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 2.0]])
    out = top_k_filter(logits, 2)
    assert kept(out) == [[False, True, True, False], [False, False, True, True]]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])
    e4, e3 = math.exp(4.0), math.exp(3.0)
    assert probs_after(out)[0].tolist() == pytest.approx([0, e4 / (e4 + e3), e3 / (e4 + e3), 0])


@pytest.mark.parametrize("k", [0, 4, 5, 1000])
def test_top_k_off_or_at_least_vocab_is_a_no_op(k: int) -> None:
    logits = torch.randn(3, 4)
    assert torch.equal(top_k_filter(logits, k), logits)


def test_top_k_keeps_every_token_tied_with_the_kth() -> None:
    # Documented: the tie at the k-th value is kept whole, never split by position.
    logits = torch.tensor([[3.0, 2.0, 2.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    assert kept(top_k_filter(logits, 2)) == [[True, True, True, False], [True] * 4]
    assert kept(top_k_filter(logits, 1)) == [[True, False, False, False], [True] * 4]


# --- top-p -----------------------------------------------------------------------------


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    out = top_p_filter(logits_of(PROBS), 0.8)  # 0.5 + 0.3 = 0.8 reaches p exactly
    assert kept(out) == [[True, True, False, False]]
    assert torch.allclose(probs_after(out), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))


@pytest.mark.parametrize(
    ("p", "n_kept"), [(0.01, 1), (0.5, 1), (0.51, 2), (0.79, 2), (0.81, 3), (0.95, 3), (0.96, 4)]
)
def test_top_p_thresholds(p: float, n_kept: int) -> None:
    out = top_p_filter(logits_of(PROBS), p)
    assert kept(out) == [[i < n_kept for i in range(4)]]
    expected = torch.tensor(PROBS[:n_kept] + [0.0] * (4 - n_kept))
    assert torch.allclose(probs_after(out)[0], expected / expected.sum())


@pytest.mark.parametrize(
    ("probs", "p", "expected"),
    [
        # Here 0.5 + 0.3 sums to 0.79999995 in float32, an ulp below p; without the
        # slack a 0.1 (and so, by the tie rule, both 0.1s) would join the nucleus.
        ([0.1, 0.1, 0.3, 0.5], 0.8, [False, False, True, True]),
        ([0.1, 0.1, 0.1, 0.7], 0.7, [False, False, False, True]),
    ],
)
def test_top_p_mass_exactly_p_survives_float32_rounding(
    probs: list[float], p: float, expected: list[bool]
) -> None:
    assert kept(top_p_filter(logits_of(probs), p)) == [expected]


def test_top_p_is_per_row_and_order_free() -> None:
    a = logits_of(PROBS)[0]
    perm = torch.tensor([2, 0, 3, 1])
    logits = torch.stack([a, a[perm]])  # (2, 4): same distribution, shuffled in row 1
    out = top_p_filter(logits, 0.8)
    assert kept(out) == [[True, True, False, False], [False, True, False, True]]


def test_top_p_one_is_a_no_op_and_top_token_always_kept() -> None:
    logits = torch.randn(2, 10)
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    out = top_p_filter(torch.tensor([[0.0, 5.0, 1.0]]), 1e-9)
    assert kept(out) == [[False, True, False]]


def test_top_p_keeps_ties_with_the_last_kept_token() -> None:
    # Uniform over four: two tokens reach p=0.5 but all four are equally probable.
    assert kept(top_p_filter(torch.zeros(1, 4), 0.5)) == [[True] * 4]
    # [0.4, 0.2, 0.2, 0.2]: p=0.5 needs one of the 0.2s, so all three stay.
    assert kept(top_p_filter(logits_of([0.4, 0.2, 0.2, 0.2]), 0.5)) == [[True] * 4]
    assert kept(top_p_filter(logits_of([0.4, 0.2, 0.2, 0.2]), 0.4)) == [[True] + [False] * 3]


def test_top_p_after_top_k_ignores_removed_tokens() -> None:
    out = top_p_filter(top_k_filter(logits_of(PROBS), 3), 0.99)
    assert kept(out) == [[True, True, True, False]]


# --- min-p -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_p", "n_kept"), [(0.05, 4), (0.2, 3), (0.25, 3), (0.5, 2), (0.61, 1), (0.99, 1)]
)
def test_min_p_keeps_tokens_at_least_min_p_times_the_top(min_p: float, n_kept: int) -> None:
    # Thresholds: min_p * 0.5 against [0.5, 0.3, 0.15, 0.05].
    out = min_p_filter(logits_of(PROBS), min_p)
    assert kept(out) == [[i < n_kept for i in range(4)]]
    expected = torch.tensor(PROBS[:n_kept] + [0.0] * (4 - n_kept))
    assert torch.allclose(probs_after(out)[0], expected / expected.sum())


def test_min_p_zero_is_a_no_op() -> None:
    logits = torch.randn(2, 7)
    assert torch.equal(min_p_filter(logits, 0.0), logits)


# --- temperature and greedy ------------------------------------------------------------


def test_temperature_scales_logits() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    for t in (0.5, 1.0, 2.0):
        probs = probs_after(process_logits(logits, SampleConfig(temperature=t)))
        assert torch.allclose(probs, torch.softmax(logits / t, dim=-1))
    z = math.exp(1.0) + math.exp(0.5) + 1.0  # T=2 by hand: softmax([1, 0.5, 0])
    hot = probs_after(process_logits(logits, SampleConfig(temperature=2.0)))
    assert hot[0].tolist() == pytest.approx([math.exp(1.0) / z, math.exp(0.5) / z, 1 / z])
    cold = probs_after(process_logits(logits, SampleConfig(temperature=0.5)))
    # Lower temperature sharpens: more mass on the top token, less entropy.
    assert cold[0, 0] > probs_after(logits)[0, 0] > hot[0, 0]


def test_greedy_is_argmax_ignoring_filters_and_randomness() -> None:
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    config = SampleConfig(temperature=0.0, top_k=3, top_p=0.1, min_p=0.9)
    generator = make_generator(0, "cpu")
    state = generator.get_state()
    assert torch.equal(sample_next(logits, config, generator), logits.argmax(-1))
    assert torch.equal(generator.get_state(), state)  # greedy draws nothing
    assert sample_next(logits, config, None).dtype == torch.int64


def test_greedy_ties_pick_the_lowest_id() -> None:
    out = sample_next(torch.tensor([[1.0, 3.0, 3.0]]), SampleConfig(temperature=0), None)
    assert out.tolist() == [1]


def test_greedy_sees_the_penalties() -> None:
    logits = torch.tensor([[3.0, 2.9]])
    config = SampleConfig(temperature=0, repetition_penalty=2.0)
    assert sample_next(logits, config, None).tolist() == [0]  # no history: no penalty
    assert sample_next(logits, config, None, torch.tensor([[0]])).tolist() == [1]


# --- penalties -------------------------------------------------------------------------


def test_token_counts_ignore_padding() -> None:
    history = torch.tensor([[0, 0, 2, -1, -1], [-1, 3, 3, 3, 1]])
    assert token_counts(history, 4).tolist() == [[2, 0, 1, 0], [0, 1, 0, 3]]
    assert token_counts(torch.full((2, 3), -1), 5).tolist() == [[0] * 5] * 2
    assert token_counts(torch.zeros(2, 0, dtype=torch.long), 3).tolist() == [[0] * 3] * 2


def test_repetition_penalty_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    history = torch.tensor([[0, 1, -1, 1], [3, -1, -1, -1]])  # -1 is padding, not token 3
    out = apply_repetition_penalty(logits, history, 2.0)
    # Seen positive logits are divided by the penalty, seen negative ones multiplied.
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.5, 1.5]]
    encourage = apply_repetition_penalty(logits[:1], history[:1], 0.5)
    assert encourage.tolist() == [[4.0, -0.5, 0.5, 3.0]]
    assert torch.equal(apply_repetition_penalty(logits, history, 1.0), logits)


def test_presence_and_frequency_penalties_by_hand() -> None:
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    counts = token_counts(torch.tensor([[0, 0, 1, -1]]), 4)  # [2, 1, 0, 0]
    out = apply_presence_frequency_penalties(logits, counts, presence=0.5, frequency=0.25)
    assert out.tolist() == [[1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25, 1.0, 1.0]]
    assert torch.equal(apply_presence_frequency_penalties(logits, counts, 0.0, 0.0), logits)


def test_sample_next_applies_all_penalties_in_order() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    history = torch.tensor([[-1, 0, 1, 1]])
    config = SampleConfig(
        temperature=1.0, repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25
    )
    out = process_logits(logits, config, history)
    assert out.tolist() == [[1.0 - 0.5 - 0.25, -2.0 - 0.5 - 0.5, 0.5, 3.0]]
    assert torch.equal(process_logits(logits, config), logits)  # no history, no penalties


# --- sampling and seeds ----------------------------------------------------------------


def test_same_seed_same_samples_different_seed_different() -> None:
    logits = torch.zeros(1000, 100)  # uniform over 100 tokens, 1000 rows
    config = SampleConfig(temperature=1.0)
    a = sample_next(logits, config, make_generator(1234, "cpu"))
    b = sample_next(logits, config, make_generator(1234, "cpu"))
    c = sample_next(logits, config, make_generator(1235, "cpu"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # equal with probability 100**-1000
    assert a.shape == (1000,) and a.dtype == torch.int64


def test_unseeded_generator_leaves_global_rng_alone() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    g1, g2 = make_generator(None, "cpu"), make_generator(None, torch.device("cpu"))
    sample_next(torch.zeros(100, 100), SampleConfig(), g1)
    assert torch.equal(torch.get_rng_state(), before)
    assert g1.initial_seed() != g2.initial_seed()  # fresh entropy, almost surely distinct


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (SampleConfig(temperature=1.0), PROBS),
        (SampleConfig(temperature=1.0, top_p=0.8), [0.625, 0.375, 0.0, 0.0]),
        (SampleConfig(temperature=1.0, top_k=3), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]),
        (SampleConfig(temperature=1.0, min_p=0.5), [0.625, 0.375, 0.0, 0.0]),
        (SampleConfig(temperature=0.5), [p**2 / sum(q**2 for q in PROBS) for p in PROBS]),
    ],
)
def test_empirical_frequencies_match_the_distribution(
    config: SampleConfig, expected: list[float]
) -> None:
    n = 40_000
    logits = logits_of(PROBS).expand(n, 4)  # n independent draws in one batch
    tokens = sample_next(logits, config, make_generator(7, "cpu"))
    freq = torch.bincount(tokens, minlength=4).double() / n
    want = torch.tensor(expected, dtype=torch.float64)
    # 5 standard errors per token; removed tokens must never appear at all.
    tolerance = 5 * torch.sqrt(want * (1 - want) / n)
    assert torch.all((freq - want).abs() <= tolerance), (freq.tolist(), expected)
    assert torch.all(freq[want == 0] == 0)


def test_low_precision_logits_are_sampled_in_float32() -> None:
    logits = logits_of(PROBS).to(torch.bfloat16).expand(8, 4)
    out = process_logits(logits, SampleConfig(top_p=0.8))
    assert out.dtype == torch.float32
    tokens = sample_next(logits, SampleConfig(top_p=0.8), make_generator(0, "cpu"))
    assert tokens.dtype == torch.int64 and set(tokens.tolist()) <= {0, 1}


# --- purity ----------------------------------------------------------------------------


def test_no_function_modifies_its_inputs() -> None:
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    history = torch.tensor([[1, 2, 2, -1], [-1, -1, 5, 19], [0, 0, 0, 0]])
    counts = token_counts(history, 20)
    originals = (logits.clone(), history.clone(), counts.clone())
    config = SampleConfig(
        temperature=0.7,
        top_k=10,
        top_p=0.9,
        min_p=0.05,
        repetition_penalty=1.3,
        presence_penalty=0.4,
        frequency_penalty=0.2,
    )
    results = [
        apply_repetition_penalty(logits, history, 1.3),
        apply_presence_frequency_penalties(logits, counts, 0.4, 0.2),
        top_k_filter(logits, 5),
        top_p_filter(logits, 0.5),
        min_p_filter(logits, 0.1),
        process_logits(logits, config, history),
        sample_next(logits, config, make_generator(0, "cpu"), history),
        sample_next(logits, SampleConfig(temperature=0, repetition_penalty=2.0), None, history),
    ]
    for result in results[:6]:
        assert result is not logits
    for tensor, original in zip((logits, history, counts), originals, strict=True):
        assert torch.equal(tensor, original)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.integers(1, 30),
    st.integers(0, 40),
    st.floats(0.01, 1.0),
    st.floats(0.0, 0.99),
)
def test_filters_always_keep_the_top_token(
    seed: int, b: int, v: int, k: int, p: float, min_p: float
) -> None:
    logits = 3 * torch.randn(b, v, generator=torch.Generator().manual_seed(seed))
    config = SampleConfig(temperature=1.0, top_k=k, top_p=p, min_p=min_p)
    out = process_logits(logits, config)
    top = logits.argmax(-1, keepdim=True)
    assert torch.all(torch.isfinite(out.gather(-1, top)))
    # Whatever survives is a set of the most probable tokens, logits unchanged.
    finite = torch.isfinite(out)
    assert torch.equal(out[finite], logits[finite])
    worst_kept = logits.masked_fill(~finite, INF).min(-1).values
    best_removed = logits.masked_fill(finite, -INF).max(-1).values
    assert torch.all(worst_kept > best_removed)
    if 0 < k < v and torch.unique(logits).numel() == logits.numel():  # no ties
        assert torch.all(finite.sum(-1) <= k)
    tokens = sample_next(logits, config, make_generator(seed, "cpu"))
    assert torch.all(finite.gather(-1, tokens[:, None]))


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.5),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", -0.2),
        ("top_p", float("nan")),
        ("top_k", -1),
        ("top_k", 2.5),
        ("min_p", 1.0),
        ("min_p", -0.1),
        ("repetition_penalty", 0.0),
        ("presence_penalty", float("inf")),
        ("frequency_penalty", float("nan")),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_value(field: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        SampleConfig(**{field: value})
    message = str(info.value)
    assert field in message and str(value) in message


def test_boundary_settings_are_valid() -> None:
    SampleConfig(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0)
    SampleConfig(top_p=1e-6, min_p=0.999, presence_penalty=-1.0, frequency_penalty=-1.0)
