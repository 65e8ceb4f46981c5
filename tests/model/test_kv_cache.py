"""KVCache: cached and uncached logits agree at every step; left-padded batches give
each row the logits it gets alone; overflow, reset and shapes."""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomize_neutral_params
from torch.testing import assert_close

from scratchlm.config import ModelConfig, preset
from scratchlm.errors import ScratchLMError
from scratchlm.model import KVCache, TransformerLM, inference, prepare_for_inference
from scratchlm.model.inference import split_linear as split

TOL = {"rtol": 1e-5, "atol": 1e-5}
# init_std 0.1 instead of 0.02: peaked attention and logits of order 1, so a cache that
# misplaces a key shows up well above the 1e-5 tolerance.
BASE = dict(
    vocab_size=60, context_length=24, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, init_std=0.1
)


def make_model(seed: int = 0, **overrides) -> TransformerLM:
    config = ModelConfig(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = TransformerLM(config)
    return randomize_neutral_params(model, seed + 1).eval()


def random_ids(vocab: int, B: int, T: int, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=gen)


CASES = {
    "rope": dict(position="rope"),
    "learned": dict(position="learned"),
    "none": dict(position="none"),
    "cope": dict(position="cope"),
    "shared_depth": dict(shared_depth=2),
    "shared_depth_cope": dict(shared_depth=3, n_layers=1, position="cope"),
    "mqa": dict(n_kv_heads=1),
    "mha_qk_norm": dict(n_kv_heads=4, qk_norm=True),
    "speedrun_options": dict(ffn="relu2", logit_softcap=3.0, zero_init_proj=True),
    "gpt2_style": dict(norm="layernorm", ffn="gelu", position="learned", bias=True,
                       tie_embeddings=True),
}  # fmt: skip

# Chunk sizes: prefill, one at a time, then chunks of several with past > 0.
SCHEDULES = {
    "prefill_then_single": [5, 1, 1, 1, 1, 1, 1, 1],
    "chunked": [3, 4, 1, 2, 1, 5],
    "single_from_start": [1, 1, 1, 1, 1, 1],
}


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("case", list(CASES))
def test_cached_equals_uncached_at_every_step(case, schedule, impl):
    model = make_model(**CASES[case])
    model.set_impl(impl)
    chunks = SCHEDULES[schedule]
    ids = random_ids(model.config.vocab_size, 2, sum(chunks))
    full = model(ids)  # causal: position t's logits are those of the prefix ids[:, :t+1]
    cache = KVCache.for_model(model.config, batch_size=2)
    start = 0
    for size in chunks:
        assert cache.length == start
        step = model(ids[:, start : start + size], cache=cache)
        assert step.shape == (2, size, model.config.vocab_size)
        assert_close(step, full[:, start : start + size], **TOL, msg=lambda m, s=start: f"{s}: {m}")
        start += size
    assert cache.length == start


def test_cached_equals_uncached_for_the_tiny_preset():
    torch.manual_seed(0)
    model = TransformerLM(preset("tiny")).eval()
    ids = random_ids(model.config.vocab_size, 1, 20)
    full = model(ids)
    cache = KVCache.for_model(model.config, batch_size=1, max_len=20)
    assert_close(model(ids[:, :12], cache=cache), full[:, :12], **TOL)
    for t in range(12, 20):
        assert_close(model(ids[:, t : t + 1], cache=cache), full[:, t : t + 1], **TOL)


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize(
    "case", ["rope", "gpt2_style", "mqa", "speedrun_options", "mha_qk_norm", "shared_depth"]
)
def test_decoding_a_prepared_model_equals_the_full_forward(case, in_place, monkeypatch, threads):
    # prepare_for_inference swaps in DecodeLinear (column-major copies, or shared weights
    # when not in place), whose few-row products take the split path (one block of
    # outputs per thread), and in place the fused layers (one q/k/v product, one
    # gate/up product, RMSNorm in one kernel); its logits must match the training
    # model's full forward.
    model = make_model(**CASES[case], vocab_size=61)  # odd: the output's last row left over
    ids = random_ids(model.config.vocab_size, 2, 10)
    full = model(ids)
    decoder = prepare_for_inference(model, in_place=in_place)
    calls = []
    monkeypatch.setattr(inference, "SPLIT_MIN_WEIGHTS", 1)  # a tiny model's weights: split
    monkeypatch.setattr(inference, "split_linear", lambda *a: calls.append(1) or split(*a))
    threads(2)
    with torch.inference_mode():
        cache = KVCache.for_model(model.config, batch_size=2)
        steps = [decoder(ids[:, :4], cache=cache)]
        steps += [decoder(ids[:, t : t + 1], cache=cache) for t in range(4, 10)]
    # Every decode step split its products: at least q/k/v (fused or not), o, up, down.
    assert len(calls) >= 6 * model.config.n_layers * 4
    assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_decode_really_uses_the_cache():
    # One token with the cache must differ from the same token with no history.
    model = make_model()
    ids = random_ids(model.config.vocab_size, 1, 6)
    cache = KVCache.for_model(model.config, batch_size=1)
    model(ids[:, :5], cache=cache)
    with_history = model(ids[:, 5:], cache=cache)
    alone = model(ids[:, 5:], positions=torch.tensor([[5]]))
    assert not torch.allclose(with_history, alone, atol=1e-3)


# ------------------------------------------------------------------ left-padded batches


PROMPT_LENGTHS = [5, 2, 8]


def padded_batch(vocab: int, pad_id: int = 0):
    """Prompts of different lengths, left-padded: ids (B, T), attention_mask (B, T), the
    pad count of each row, and the prompts themselves."""
    prompts = [random_ids(vocab, 1, n, seed=10 + i)[0] for i, n in enumerate(PROMPT_LENGTHS)]
    T = max(PROMPT_LENGTHS)
    pads = torch.tensor([T - len(p) for p in prompts])
    ids = torch.full((len(prompts), T), pad_id)
    for row, p in enumerate(prompts):
        ids[row, T - len(p) :] = p
    attention_mask = torch.arange(T)[None] >= pads[:, None]  # (B, T)
    return ids, attention_mask, pads, prompts


def row_positions(start: int, end: int, pads: torch.Tensor) -> torch.Tensor:
    """Per-row positions of slots start..end-1: slot index minus the row's pad count
    (padding slots, which nothing attends to, get position 0)."""
    return (torch.arange(start, end)[None] - pads[:, None]).clamp(min=0)


PAD_CASES = ["rope", "learned", "none", "cope", "shared_depth", "mqa", "gpt2_style"]


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("case", PAD_CASES)
def test_left_padded_batch_without_cache(case, impl):
    model = make_model(**CASES[case])
    model.set_impl(impl)
    ids, attention_mask, pads, prompts = padded_batch(model.config.vocab_size)
    T = ids.shape[1]
    logits = model(ids, positions=row_positions(0, T, pads), attention_mask=attention_mask)
    assert torch.isfinite(logits).all()  # padding queries too: their softmax has a key
    for row, prompt in enumerate(prompts):
        alone = model(prompt[None])
        assert_close(logits[row, pads[row] :], alone[0], **TOL, msg=lambda m, r=row: f"{r}: {m}")


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("case", PAD_CASES)
def test_left_padded_batch_with_cache(case, impl):
    model = make_model(**CASES[case])
    model.set_impl(impl)
    ids, attention_mask, pads, prompts = padded_batch(model.config.vocab_size)
    B, T = ids.shape
    # Each row continues with its own tokens: 2 single steps, a chunk of 3, 1 more.
    more = random_ids(model.config.vocab_size, B, 6, seed=77)
    cache = KVCache.for_model(model.config, batch_size=B)
    cache.set_padding(attention_mask)  # whoever pads records it on the cache
    outs = [model(ids, cache, row_positions(0, T, pads))]
    start = T
    for size, with_mask in ((1, False), (1, True), (3, True), (1, False)):
        chunk = more[:, start - T : start - T + size]
        positions = row_positions(start, start + size, pads)
        # Later steps may record their own (all real) tokens, or nothing.
        if with_mask:
            cache.set_padding(torch.ones(B, size, dtype=torch.bool))
        outs.append(model(chunk, cache, positions))
        start += size
    logits = torch.cat(outs, dim=1)  # (B, T + 6, V)
    assert torch.isfinite(logits).all()
    for row, prompt in enumerate(prompts):
        alone = model(torch.cat([prompt, more[row]])[None])
        got = logits[row, pads[row] :]
        assert_close(got, alone[0], **TOL, msg=lambda m, r=row: f"{r}: {m}")


def test_padding_tokens_do_not_matter():
    # What sits in the padding slots never reaches the real tokens.
    model = make_model()
    ids, attention_mask, pads, _ = padded_batch(model.config.vocab_size)
    positions = row_positions(0, ids.shape[1], pads)
    other = ids.clone()
    other[~attention_mask] = 7
    a = model(ids, positions=positions, attention_mask=attention_mask)
    b = model(other, positions=positions, attention_mask=attention_mask)
    assert_close(a[attention_mask], b[attention_mask], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ overflow, reset, shapes


def test_cache_overflow_raises_and_leaves_the_cache_usable():
    model = make_model()
    ids = random_ids(model.config.vocab_size, 1, 8)
    cache = KVCache.for_model(model.config, batch_size=1, max_len=6)
    model(ids[:, :5], cache=cache)
    with pytest.raises(ScratchLMError, match="full") as info:
        model(ids[:, 5:7], cache=cache)
    message = str(info.value)
    assert "5" in message
    assert "2" in message
    assert "6" in message
    assert cache.length == 5  # nothing was written or counted
    # The sixth position still fits, and is right.
    assert_close(model(ids[:, 5:6], cache=cache), model(ids[:, :6])[:, 5:], **TOL)
    with pytest.raises(ScratchLMError):
        model(ids[:, 6:7], cache=cache)


def test_reset_starts_over():
    model = make_model(position="learned")
    ids = random_ids(model.config.vocab_size, 2, 10)
    other = random_ids(model.config.vocab_size, 2, 10, seed=123)
    cache = KVCache.for_model(model.config, batch_size=2, max_len=12)
    model(ids, cache=cache)
    assert cache.length == 10
    cache.reset()
    assert cache.length == 0
    full = model(other)
    assert_close(model(other[:, :7], cache=cache), full[:, :7], **TOL)
    for t in range(7, 10):
        assert_close(model(other[:, t : t + 1], cache=cache), full[:, t : t + 1], **TOL)


def test_the_model_only_reads_padding_from_the_cache():
    # The mask is a function of what the caller gave: the model writes no padding into
    # the cache, and with a cache the padding must be recorded on it, not passed.
    model = make_model()
    ids, attention_mask, pads, _ = padded_batch(model.config.vocab_size)
    cache = KVCache.for_model(model.config, batch_size=ids.shape[0])
    with pytest.raises(AssertionError, match="set_padding"):
        model(ids, cache, row_positions(0, ids.shape[1], pads), attention_mask)
    model(ids, cache, row_positions(0, ids.shape[1], pads))
    assert cache.key_mask is None and cache.keys_valid(ids.shape[1]) is None
    cache.reset()
    cache.set_padding(attention_mask)
    assert torch.equal(cache.keys_valid(ids.shape[1]), attention_mask)
    before = cache.key_mask.clone()
    model(ids, cache, row_positions(0, ids.shape[1], pads))
    assert torch.equal(cache.key_mask, before)


def test_reset_forgets_padding():
    model = make_model()
    ids, attention_mask, pads, _ = padded_batch(model.config.vocab_size)
    cache = KVCache.for_model(model.config, batch_size=ids.shape[0])
    cache.set_padding(attention_mask)
    model(ids, cache, row_positions(0, ids.shape[1], pads))
    assert cache.key_mask is not None
    cache.reset()
    assert cache.key_mask is None
    plain = random_ids(model.config.vocab_size, ids.shape[0], 6, seed=9)
    full = model(plain)
    assert_close(model(plain[:, :4], cache=cache), full[:, :4], **TOL)
    assert_close(model(plain[:, 4:5], cache=cache), full[:, 4:5], **TOL)
    assert_close(model(plain[:, 5:6], cache=cache), full[:, 5:6], **TOL)


@pytest.mark.parametrize(
    ("overrides", "depth", "n_kv"),
    [
        (dict(), 2, 2),
        (dict(shared_depth=3), 6, 2),
        (dict(n_kv_heads=1), 2, 1),
        (dict(n_kv_heads=4), 2, 4),
    ],
)
def test_for_model_shapes(overrides, depth, n_kv):
    config = ModelConfig(**{**BASE, **overrides})
    cache = KVCache.for_model(config, batch_size=3)
    head_dim = 32 // 4
    assert cache.k.shape == (depth, 3, n_kv, 24, head_dim)  # max_len = context by default
    assert cache.v.shape == cache.k.shape
    assert cache.k.dtype == torch.float32
    assert cache.length == 0
    assert cache.key_mask is None
    short = KVCache.for_model(config, batch_size=1, max_len=5, dtype=torch.bfloat16)
    assert short.k.shape == (depth, 1, n_kv, 5, head_dim)
    assert short.k.dtype == torch.bfloat16
    assert short.max_len == 5
