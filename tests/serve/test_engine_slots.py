"""The slot KV cache of continuous batching (``scratchlm.serve.slots``) and the attention
mask rule it needs: rows of different lengths decoding together, each row computing what
it computes alone."""

from __future__ import annotations

import pytest
import torch

from scratchlm.config import preset
from scratchlm.model import KVCache, TransformerLM
from scratchlm.model.masks import build_attention_mask
from scratchlm.serve.slots import SlotCache

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 61


def make_model(**overrides) -> TransformerLM:
    # init_std 0.3: attention far from uniform, so a wrong mask or position shows.
    torch.manual_seed(0)
    config = preset("tiny", vocab_size=VOCAB, context_length=32, init_std=0.3, **overrides)
    return TransformerLM(config).eval()


def prefilled(model: TransformerLM, ids: list[int]) -> KVCache:
    cache = KVCache.for_model(model.config, 1)
    model(torch.tensor([ids]), cache)
    return cache


# --- the mask ---------------------------------------------------------------------------


def test_a_ragged_row_does_not_see_its_unwritten_slots() -> None:
    # One new query per row, s = 5 slots: row 0 holds 5 keys (its query at slot 4),
    # row 1 only 2 (its query at slot 1; slots 2..4 are not written).
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    mask = build_attention_mask(1, 5, valid, None, torch.device("cpu"))
    assert mask.shape == (2, 1, 1, 5)
    assert mask[0, 0, 0].tolist() == [True] * 5
    assert mask[1, 0, 0].tolist() == [True, True, False, False, False]


def test_a_query_that_sees_nothing_sees_itself() -> None:
    # Left padding: row 1's first query is padding and would see no key at all.
    valid = torch.tensor([[True, True, True], [False, True, True]])
    mask = build_attention_mask(3, 3, valid, None, torch.device("cpu"))[:, 0]  # (B, t, s)
    assert mask[1].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    assert mask[0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


# --- the slot cache ---------------------------------------------------------------------


def test_add_update_and_keys_valid_write_each_row_at_its_own_length() -> None:
    model = make_model()
    slots = SlotCache(model.config, 3)
    a, b = prefilled(model, [1, 2, 3, 4, 5]), prefilled(model, [7, 8])
    assert slots.add(a) == 0 and slots.add(b) == 1
    assert slots.lengths[:2] == [5, 2] and slots.rows == 2
    assert torch.equal(slots.k[:, 0, :, :5], a.k[:, 0, :, :5])
    assert torch.equal(slots.v[:, 1, :, :2], b.v[:, 0, :, :2])

    view = slots.view()
    assert view.length == 5 and view.positions().tolist() == [[5], [2]]
    assert view.keys_valid(6).tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    c = model.config
    k = torch.randn(2, c.kv_heads, 1, c.head_dim)
    v = torch.randn(2, c.kv_heads, 1, c.head_dim)
    keys, values = view.update(1, k, v)
    assert keys.shape == (2, c.kv_heads, 6, c.head_dim)
    assert torch.equal(keys[0, :, 5], k[0, :, 0]) and torch.equal(keys[1, :, 2], k[1, :, 0])
    assert torch.equal(values[1, :, 2], v[1, :, 0])
    assert torch.equal(keys[1, :, :2], b.k[1, 0, :, :2])  # earlier slots untouched
    view.advance(1)
    assert slots.lengths[:2] == [6, 3]


def test_remove_moves_the_last_row_into_the_freed_slot() -> None:
    model = make_model()
    slots = SlotCache(model.config, 3)
    caches = [prefilled(model, ids) for ids in ([1, 2, 3], [4, 5, 6, 7], [8, 9])]
    for cache in caches:
        slots.add(cache)
    assert slots.remove(0) == 2  # row 2 moved into row 0
    assert slots.rows == 2 and slots.lengths[:2] == [2, 4]
    assert torch.equal(slots.k[:, 0, :, :2], caches[2].k[:, 0, :, :2])
    assert torch.equal(slots.v[:, 1, :, :4], caches[1].v[:, 0, :, :4])
    assert slots.remove(1) is None  # the last row: nothing moves
    assert slots.rows == 1
    slots.add(caches[1])
    assert slots.rows == 2 and slots.lengths[:2] == [2, 4]


@pytest.mark.parametrize("position", ["rope", "learned", "cope"])
def test_a_ragged_decode_step_equals_each_row_alone(position: str) -> None:
    """Rows of lengths 1, 9 and 4 decode together for a few steps; every row's logits
    equal a full uncached forward pass of that row's sequence."""
    model = make_model(position=position)
    rows = [[3], [5, 9, 11, 2, 40, 7, 7, 1, 30], [12, 13, 14, 15]]
    slots = SlotCache(model.config, 4)
    for ids in rows:
        slots.add(prefilled(model, ids))
    with torch.no_grad():
        for step in range(3):
            new = [[(7 * step + i) % VOCAB] for i in range(len(rows))]
            view = slots.view()
            logits = model(torch.tensor(new), view, view.positions(), last_only=True)[:, -1]
            for i, ids in enumerate(rows):
                ids.append(new[i][0])
                alone = model(torch.tensor([ids]))[0, -1]
                torch.testing.assert_close(logits[i], alone, atol=1e-5, rtol=1e-5)
            assert slots.lengths[:3] == [len(r) for r in rows]
        # A row leaves mid-way: the others go on, still exact.
        slots.remove(0)
        rows = [rows[2], rows[1]]
        view = slots.view()
        logits = model(torch.tensor([[1], [2]]), view, view.positions(), last_only=True)[:, -1]
        for i, token in enumerate((1, 2)):
            alone = model(torch.tensor([[*rows[i], token]]))[0, -1]
            torch.testing.assert_close(logits[i], alone, atol=1e-5, rtol=1e-5)
