"""Packed rows: with ``segment_ids`` every packed sequence gets the logits and the loss
it gets alone, the readable and fused attention agree on segment masks (forward and
backward), and a KV cache is refused."""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomize_neutral_params
from torch.testing import assert_close

from scratchlm.config import ModelConfig
from scratchlm.model import KVCache, TransformerLM
from scratchlm.model.masks import segment_positions

BASE = dict(vocab_size=50, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
POSITIONS = ["rope", "learned", "none", "cope"]
LENGTHS = (5, 3, 6)  # three sequences packed into a row of 16, then 2 padding tokens
PAD_SEGMENT = -1


def make_model(seed: int = 0, **overrides) -> TransformerLM:
    torch.manual_seed(seed)
    model = TransformerLM(ModelConfig(**{**BASE, **overrides}))
    return randomize_neutral_params(model, seed + 1).eval()


def sequences(lengths=LENGTHS, seed: int = 3) -> list[torch.Tensor]:
    """Random ids (1, n) of each length."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, BASE["vocab_size"], (1, n), generator=gen) for n in lengths]


def pack(parts: list[torch.Tensor], T: int, fill: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (1, n) tensors into one row of T: the row (1, T) padded with ``fill``,
    and its segment ids (1, T): 0, 1, 2, ... per part, PAD_SEGMENT on the padding."""
    n = sum(p.shape[1] for p in parts)
    row = torch.cat([*parts, torch.full((1, T - n), fill)], dim=1)
    ids = [torch.full((p.shape[1],), i) for i, p in enumerate(parts)]
    segments = torch.cat([*ids, torch.full((T - n,), PAD_SEGMENT)])[None]
    return row, segments


def test_segment_positions_worked_example():
    segment_ids = torch.tensor([[0, 0, 0, 1, 1, -1], [7, 7, 3, 3, 7, 7]])
    positions, numbers = segment_positions(segment_ids)
    # Ids need not be sorted or unique: a segment is a run of equal ids.
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 0, 1]]
    assert numbers.tolist() == [[1, 1, 1, 2, 2, 3], [1, 1, 2, 2, 3, 3]]


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("shared_depth", [1, 2])
def test_packed_logits_equal_each_sequence_alone(position, shared_depth):
    model = make_model(position=position, shared_depth=shared_depth)
    parts = sequences()
    row, segments = pack(parts, BASE["context_length"])
    packed = model(row, segment_ids=segments)  # (1, T, V)
    start = 0
    for part in parts:
        n = part.shape[1]
        alone = model(part)  # (1, n, V)
        assert_close(packed[:, start : start + n], alone, rtol=0, atol=1e-5)
        start += n


@pytest.mark.parametrize("position", POSITIONS)
def test_packing_changes_logits_only_through_segments(position):
    """Without segment ids the later sequences would see the earlier ones; one segment
    spanning the row is plain causal attention."""
    model = make_model(position=position)
    row, segments = pack(sequences(), BASE["context_length"])
    plain = model(row)
    assert_close(model(row, segment_ids=torch.zeros_like(row)), plain, rtol=0, atol=1e-6)
    n = LENGTHS[0]
    assert_close(model(row, segment_ids=segments)[:, :n], plain[:, :n], rtol=0, atol=1e-6)
    assert not torch.allclose(model(row, segment_ids=segments)[:, n:], plain[:, n:], atol=1e-4)


@pytest.mark.parametrize("position", ["rope", "learned", "none"])
def test_packed_loss_is_the_token_weighted_mean_of_the_separate_losses(position):
    model = make_model(position=position)
    gen = torch.Generator().manual_seed(11)
    rows = [sequences((5, 3, 6), seed=4), sequences((7, 8), seed=5)]
    xs, ys, segs, alone, counts = [], [], [], [], []
    for parts in rows:
        targets = []
        for part in parts:
            y = torch.randint(0, BASE["vocab_size"], part.shape, generator=gen)
            y[torch.rand(part.shape, generator=gen) < 0.4] = -100  # prompts: no loss
            y[0, -1] = 3  # at least one target per sequence
            targets.append(y)
            alone.append(model.loss(part, y))
            counts.append(int((y != -100).sum()))
        x, s = pack(parts, BASE["context_length"])
        y, _ = pack(targets, BASE["context_length"], fill=-100)
        xs, ys, segs = [*xs, x], [*ys, y], [*segs, s]
    loss = model.loss(torch.cat(xs), torch.cat(ys), segment_ids=torch.cat(segs))
    counts_t = torch.tensor(counts, dtype=torch.float32)
    expected = (torch.stack(alone) * counts_t).sum() / counts_t.sum()
    assert_close(loss, expected, rtol=0, atol=1e-5)


def assert_close_scaled(got, expected, name=""):
    """Agree to 1e-5 relative to the tensor's largest entry (weight gradients sum over
    every token)."""
    scale = max(1.0, expected.abs().max().item())
    assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(position="learned"), dict(position="none", n_kv_heads=1, qk_norm=True)],
    ids=lambda d: str(d) or "default",
)
def test_readable_and_fast_attention_agree_on_segments(overrides):
    """Forward and backward, two rows packed differently."""
    ids, segs = zip(
        pack(sequences((5, 3, 6), seed=6), 16), pack(sequences((9, 7), seed=7), 16), strict=True
    )
    ids, segments = torch.cat(ids), torch.cat(segs)
    targets = ids.roll(-1, dims=1)
    results = {}
    for impl in ("fast", "reference"):
        model = make_model(**overrides)
        model.set_impl(impl)
        logits = model(ids, segment_ids=segments)
        model.loss(ids, targets, segment_ids=segments).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        results[impl] = logits, grads
    (fast, fast_grads), (readable, readable_grads) = results["fast"], results["reference"]
    assert_close(fast, readable, rtol=1e-5, atol=1e-5)
    for name, grad in readable_grads.items():
        assert_close_scaled(fast_grads[name], grad, name)


def test_segment_ids_with_a_cache_are_refused():
    model = make_model()
    cache = KVCache.for_model(model.config, batch_size=1)
    row, segments = pack(sequences(), BASE["context_length"])
    with pytest.raises(AssertionError, match="KV cache"):
        model(row, cache=cache, segment_ids=segments)
    assert cache.length == 0


def test_segment_ids_must_match_the_ids():
    model = make_model()
    row, segments = pack(sequences(), BASE["context_length"])
    with pytest.raises(AssertionError, match=r"\(1, 15\).*\(1, 16\)"):
        model.loss(row, row, segment_ids=segments[:, :-1])
