"""The id-only generation engine (``scratchlm.generate``) against hand-written references.

The references here run the whole sequence through ``model(ids)`` with no cache, no
padding and no batching, and take the argmax of the last logits, so they share nothing
with the engine's prefill/decode, left padding, masks or cache bookkeeping.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import pytest
import torch

from scratchlm.config import SampleConfig, preset
from scratchlm.errors import ScratchLMError
from scratchlm.generate import fit_prompt, generate_ids, left_pad
from scratchlm.model import TransformerLM

VOCAB = 97


def make_model(seed: int = 0, **overrides) -> TransformerLM:
    """A tiny random model in eval mode. init_std 0.3 (not 0.02) so attention is far
    from uniform and the next token really depends on the context, not only on the last
    token: a cache, mask or position bug then changes the argmax."""
    torch.manual_seed(seed)
    config = preset(
        "tiny", **{"vocab_size": VOCAB, "context_length": 32, "init_std": 0.3, **overrides}
    )
    return TransformerLM(config).eval()


def greedy(sample_steps: int = 20, **kwargs) -> SampleConfig:
    return SampleConfig(temperature=0.0, max_new_tokens=sample_steps, **kwargs)


def run(model, prompts, sample, **kwargs) -> list[list[int | None]]:
    """All steps of generate_ids: a list of steps, each a list of B entries."""
    return list(generate_ids(model, prompts, sample, **kwargs))


def column(steps: list[list[int | None]], row: int) -> list[int | None]:
    return [step[row] for step in steps]


@torch.no_grad()
def last_logits(model: TransformerLM, seq: Sequence[int]) -> torch.Tensor:
    """Logits (V,) for the token after ``seq``: one full uncached forward pass."""
    return model(torch.tensor([list(seq)]))[0, -1]


def reference_greedy(model: TransformerLM, prompt: Sequence[int], n: int) -> list[int]:
    """n greedy tokens after ``prompt`` (which must fit the context)."""
    seq, out = list(prompt), []
    for _ in range(n):
        token = int(last_logits(model, seq).argmax())
        out.append(token)
        seq.append(token)
    return out


def reference_windowed_greedy(model: TransformerLM, prompt: Sequence[int], n: int) -> list[int]:
    """Greedy past the context, with the engine's documented window policy: the model
    sees the tokens from a window start on; when the window (including the token just
    generated) would exceed the context, it restarts at the last context // 2 tokens."""
    context = model.config.context_length
    keep = max(1, context // 2)
    seq, start, out = list(prompt), 0, []
    for _ in range(n):
        token = int(last_logits(model, seq[start:]).argmax())
        out.append(token)
        seq.append(token)
        if len(seq) - start > context:
            start = len(seq) - keep
    return out


def reference_penalised_greedy(
    model: TransformerLM,
    prompt: Sequence[int],
    n: int,
    repetition: float = 1.0,
    presence: float = 0.0,
    frequency: float = 0.0,
) -> list[int]:
    """Greedy with CTRL's repetition penalty, then OpenAI's presence and frequency
    penalties, written out token by token over the history (prompt included)."""
    seq, out = list(prompt), []
    for _ in range(n):
        logits = last_logits(model, seq).tolist()
        counts = Counter(seq)
        for token, count in counts.items():
            x = logits[token]
            x = x / repetition if x > 0 else x * repetition
            logits[token] = x - presence - frequency * count
        token = max(range(len(logits)), key=lambda i: (logits[i], -i))  # lowest id on ties
        out.append(token)
        seq.append(token)
    return out


PROMPTS = [[5], [1, 2, 3, 4, 5, 6, 7], [42, 42, 42], [90, 3, 17, 60, 8, 8, 21, 77, 0, 13, 55]]


# --- greedy against the reference loop -------------------------------------------------


@pytest.mark.parametrize("position", ["rope", "learned", "none"])
def test_greedy_equals_the_uncached_reference_loop(position: str) -> None:
    model = make_model(position=position)
    for prompt in PROMPTS:
        expected = reference_greedy(model, prompt, 20)
        assert len(set(expected)) > 3, "degenerate model: the test would prove little"
        for use_cache in (True, False):
            steps = run(model, [prompt], greedy(20), use_cache=use_cache)
            assert column(steps, 0) == expected, (prompt, use_cache)


def test_uncached_equals_cached_in_a_batch() -> None:
    model = make_model(seed=1)
    cached = run(model, PROMPTS, greedy(18))
    uncached = run(model, PROMPTS, greedy(18), use_cache=False)
    assert cached == uncached
    assert len(cached) == 18


def test_prompt_filling_the_whole_context_then_generating() -> None:
    model = make_model(seed=2, context_length=16)
    prompt = list(range(10, 26))  # exactly 16 tokens: the first new token slides at once
    steps = run(model, [prompt], greedy(3))
    assert column(steps, 0)[0] == int(last_logits(model, prompt).argmax())
    assert column(steps, 0) == reference_windowed_greedy(model, prompt, 3)


# --- batches of different lengths ------------------------------------------------------


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_batched_rows_equal_each_prompt_alone(position: str) -> None:
    # Learned positions too: RoPE only sees position differences, so a row whose
    # positions were all shifted by its padding would still pass with RoPE alone.
    model = make_model(seed=3, position=position)
    steps = run(model, PROMPTS, greedy(20))
    assert len(steps) == 20
    for i, prompt in enumerate(PROMPTS):
        assert column(steps, i) == reference_greedy(model, prompt, 20), i


def test_rows_stop_on_their_own_and_the_stop_id_is_not_yielded() -> None:
    model = make_model(seed=4)
    prompts = [[7, 1, 9], [30, 31, 32, 33, 34, 35, 36, 37], [2]]
    n = 16
    alone = [reference_greedy(model, p, n) for p in prompts]

    def stop_step(tokens: list[int], stop: int) -> int | None:
        return tokens.index(stop) if stop in tokens else None

    # A stop id that row 0 produces at some step >= 2 while another row goes on longer.
    stop = None
    for k in range(2, n - 4):
        candidate = alone[0][k]
        if stop_step(alone[0], candidate) != k:
            continue  # row 0 produced it earlier already
        later = [stop_step(a, candidate) for a in alone[1:]]
        if any(s is None or s > k + 2 for s in later):
            stop = candidate
            break
    assert stop is not None, f"no usable stop id in {alone}"

    expected = []
    for tokens in alone:
        s = stop_step(tokens, stop)
        expected.append(tokens if s is None else tokens[:s] + [None] * (n - s))
    # The engine ends once every row has stopped.
    last = max(n if stop_step(a, stop) is None else stop_step(a, stop) + 1 for a in alone)
    expected = [row[:last] for row in expected]

    steps = run(model, prompts, greedy(n), stop_ids=[stop])
    assert len(steps) == last
    for i in range(len(prompts)):
        assert column(steps, i) == expected[i], i
    k0 = stop_step(alone[0], stop)
    assert column(steps, 0)[k0:] == [None] * (last - k0)
    assert stop not in [t for step in steps for t in step]
    assert any(t is not None for step in steps[k0 + 1 :] for t in step)  # others went on


def test_generation_ends_when_every_row_has_stopped() -> None:
    model = make_model(seed=5)
    prompt = [11, 12, 13]
    first = reference_greedy(model, prompt, 1)[0]
    assert run(model, [prompt], greedy(10), stop_ids=[first]) == [[None]]
    assert run(model, [prompt, prompt], greedy(10), stop_ids=[first, 96]) == [[None, None]]


def test_batched_equal_length_rows_slide_together_past_the_context() -> None:
    model = make_model(seed=6, context_length=16)
    prompts = [[1, 2, 3, 4, 5], [60, 50, 40, 30, 20]]
    steps = run(model, prompts, greedy(40))
    for i, prompt in enumerate(prompts):
        assert column(steps, i) == reference_windowed_greedy(model, prompt, 40), i


def test_batched_rows_equal_each_prompt_alone_past_the_context() -> None:
    """Past the context each row should still get exactly what it gets alone.

    The short row shares the cache with the long one: its padding takes cache slots,
    so the window slides for both rows when the long row fills the context, and the
    short row loses tokens it would still have alone."""
    model = make_model(seed=0, context_length=16)
    prompts = [[3] * 14, [7, 8]]
    steps = run(model, prompts, greedy(30))
    for i, prompt in enumerate(prompts):
        alone = column(run(model, [prompt], greedy(30)), 0)
        assert alone == reference_windowed_greedy(model, prompt, 30), i
        assert column(steps, i) == alone, f"row {i} of the batch differs from it alone"


# --- sliding window --------------------------------------------------------------------


def test_sliding_window_continues_past_the_context() -> None:
    context = 16
    model = make_model(seed=7, context_length=context)
    prompt = [4, 8, 15, 16, 23]
    n = 45  # slides three times
    tokens = column(run(model, [prompt], greedy(n)), 0)
    assert len(tokens) == n and None not in tokens
    assert tokens == reference_windowed_greedy(model, prompt, n)

    # Spelled out for the first slide: the first context - len(prompt) + 1 tokens see
    # the whole sequence; the one after is computed from the last context // 2 tokens.
    first = context - len(prompt) + 1
    assert tokens[:first] == reference_greedy(model, prompt, first)
    seq = prompt + tokens[:first]
    assert len(seq) == context + 1
    assert tokens[first] == int(last_logits(model, seq[-(context // 2) :]).argmax())
    # ...and the next one from those tokens plus the new one (the cache goes on).
    seq.append(tokens[first])
    assert tokens[first + 1] == int(last_logits(model, seq[-(context // 2) - 1 :]).argmax())


def test_sliding_window_in_a_padded_batch_does_not_crash() -> None:
    model = make_model(seed=8, context_length=12)
    steps = run(model, [[1], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]], greedy(50))
    assert len(steps) == 50 and all(t is not None for step in steps for t in step)


# --- prompts that do not fit, empty prompts --------------------------------------------


def test_long_prompt_is_truncated_from_the_left_with_a_warning(caplog) -> None:
    model = make_model(seed=9, context_length=16)
    prompt = list(range(30, 50))  # 20 tokens
    caplog.set_level(logging.WARNING, logger="scratchlm")
    tokens = column(run(model, [prompt], greedy(5)), 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name.startswith("scratchlm")
    message = warnings[0].getMessage()
    assert "20" in message and "16" in message
    assert tokens == reference_windowed_greedy(model, prompt[-16:], 5)


def test_prompt_that_fits_gives_no_warning(caplog) -> None:
    model = make_model(seed=9, context_length=16)
    caplog.set_level(logging.WARNING, logger="scratchlm")
    run(model, [list(range(16))], greedy(2))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_long_prompt_is_refused_without_truncation() -> None:
    model = make_model(seed=9, context_length=16)
    with pytest.raises(ScratchLMError) as info:
        run(model, [[1, 2], list(range(30, 50))], greedy(5), truncate=False)
    assert "20" in str(info.value) and "16" in str(info.value)


@pytest.mark.parametrize("prompts", [[[]], [[1, 2, 3], []]])
def test_empty_prompt_raises(prompts) -> None:
    model = make_model()
    with pytest.raises(ScratchLMError, match="empty"):
        run(model, prompts, greedy(5))


def test_fit_prompt_and_left_pad_by_hand() -> None:
    assert fit_prompt([1, 2, 3], 3) == [1, 2, 3]
    assert fit_prompt((1, 2, 3, 4, 5), 3) == [3, 4, 5]
    with pytest.raises(ScratchLMError):
        fit_prompt([1, 2, 3, 4], 3, truncate=False)
    ids, mask, positions = left_pad([[5], [1, 2, 3], [8, 9]], torch.device("cpu"))
    assert ids.tolist() == [[0, 0, 5], [1, 2, 3], [0, 8, 9]]
    assert mask.tolist() == [[False, False, True], [True, True, True], [False, True, True]]
    assert positions[mask].tolist() == [0, 0, 1, 2, 0, 1]


# --- randomness ------------------------------------------------------------------------


def sampled(model, seed: int | None, **kwargs) -> list[int | None]:
    settings = SampleConfig(temperature=1.5, max_new_tokens=40, **kwargs)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return column(run(model, [[1, 2, 3]], settings, generator=generator), 0)


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    model = make_model(seed=10)
    a, b, c = sampled(model, 123), sampled(model, 123), sampled(model, 124)
    assert a == b
    assert a != c
    assert a != reference_windowed_greedy(model, [1, 2, 3], 40)


def test_sampling_does_not_touch_the_global_rng() -> None:
    model = make_model(seed=10)
    state = torch.get_rng_state()
    sampled(model, 5, top_k=20, top_p=0.9)
    assert torch.equal(torch.get_rng_state(), state)


def test_temperature_zero_ignores_the_generator() -> None:
    model = make_model(seed=11)
    prompt = [9, 8, 7]
    expected = reference_greedy(model, prompt, 15)
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    settings = SampleConfig(temperature=0.0, top_k=3, top_p=0.5, max_new_tokens=15)
    for g in (generator, torch.Generator().manual_seed(99), None):
        assert column(run(model, [prompt], settings, generator=g), 0) == expected
    assert torch.equal(generator.get_state(), before)  # nothing was drawn


# --- penalties -------------------------------------------------------------------------


def repeating_model() -> TransformerLM:
    """A model whose logits depend only on the current token and favour that token:
    attention and MLP outputs are zeroed, so the final hidden state is the token's
    embedding (one-hot here), and the output matrix is 2 * I plus uniform noise in
    [-1, 1]. Greedy then repeats the last prompt token forever."""
    model = make_model(seed=12, vocab_size=64)  # vocab 64 = d_model: one-hot embeddings
    with torch.no_grad():
        for block in model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        model.embed_tokens.weight.copy_(torch.eye(64))
        noise = torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
        model.lm_head.weight.copy_(2 * torch.eye(64) + noise)
    return model


def test_repetition_penalty_breaks_a_greedy_loop() -> None:
    model = repeating_model()
    prompt = [3, 10, 20]
    plain = column(run(model, [prompt], greedy(12)), 0)
    assert plain == [20] * 12  # the constructed case: greedy repeats
    penalised = column(run(model, [prompt], greedy(12, repetition_penalty=4.0)), 0)
    assert penalised == reference_penalised_greedy(model, prompt, 12, repetition=4.0)
    assert penalised != plain
    assert max(Counter(penalised).values()) < max(Counter(plain).values())


@pytest.mark.parametrize(
    "repetition, presence, frequency", [(1.3, 0.0, 0.0), (1.0, 0.5, 0.0), (1.2, 0.2, 0.3)]
)
def test_penalties_match_a_written_out_reference(repetition, presence, frequency) -> None:
    model = make_model(seed=13)
    settings = greedy(
        16,
        repetition_penalty=repetition,
        presence_penalty=presence,
        frequency_penalty=frequency,
    )
    prompts = [[1, 2, 3, 1, 2, 3], [50]]  # different lengths: the history has padding
    steps = run(model, prompts, settings)
    for i, prompt in enumerate(prompts):
        expected = reference_penalised_greedy(model, prompt, 16, repetition, presence, frequency)
        assert column(steps, i) == expected, i


def test_padding_is_not_part_of_the_penalty_history() -> None:
    """Left padding uses id 0; it must not count as a token the row has seen."""
    model = make_model(seed=13)
    bias = torch.zeros(VOCAB)
    bias[0] = 10.0  # token 0 is every row's first greedy choice
    handle = model.register_forward_hook(lambda module, args, out: out + bias)
    try:
        prompts = [[5, 6, 7, 8, 9, 10], [11]]
        steps = run(model, prompts, greedy(6, repetition_penalty=20.0))
        for i, prompt in enumerate(prompts):
            expected = reference_penalised_greedy(model, prompt, 6, repetition=20.0)
            assert expected[0] == 0
            assert column(steps, i) == expected, i
    finally:
        handle.remove()


def test_penalties_change_a_repeating_greedy_run() -> None:
    model = make_model(seed=14)
    prompt = [1, 2, 3]
    plain = column(run(model, [prompt], greedy(30)), 0)
    penalised = column(run(model, [prompt], greedy(30, repetition_penalty=3.0)), 0)
    assert penalised != plain
    assert max(Counter(penalised).values()) <= max(Counter(plain).values())


# --- model state and budgets -----------------------------------------------------------


def test_train_mode_is_restored_and_generation_runs_in_eval_mode() -> None:
    model = make_model(seed=15, dropout=0.5)
    prompt = [5, 6, 7]
    expected = reference_greedy(model, prompt, 10)  # eval mode: dropout off
    model.train()
    assert column(run(model, [prompt], greedy(10)), 0) == expected  # dropout was off
    assert model.training and all(m.training for m in model.modules())

    steps = generate_ids(model, [prompt], greedy(10))
    next(steps)
    assert model.training  # left alone: the engine decodes with an eval-mode view of it
    steps.close()  # a consumer that stops early
    assert model.training and all(m.training for m in model.modules())

    model.eval()
    run(model, [prompt], greedy(3))
    assert not any(m.training for m in model.modules())


def test_zero_new_tokens_yields_nothing() -> None:
    model = make_model()
    assert run(model, [[1, 2, 3], [4]], greedy(0)) == []
    assert run(model, [[1, 2, 3]], SampleConfig(max_new_tokens=0)) == []


def test_budget_is_exact() -> None:
    model = make_model()
    steps = run(model, [[1, 2, 3], [4]], SampleConfig(temperature=1.0, max_new_tokens=7))
    assert len(steps) == 7
    assert all(len(step) == 2 and None not in step for step in steps)


def test_uncached_equals_cached_past_the_context() -> None:
    # Both paths slide each row's window by the same rule, so they agree after it.
    model = make_model(seed=7, context_length=16)
    prompts = [[4, 8, 15, 16, 23], [42] * 12]
    cached = run(model, prompts, greedy(40))
    assert run(model, prompts, greedy(40), use_cache=False) == cached
