"""decode_cost: the bytes of weights a decoding step reads, counted by hand from the
config for float32, bf16 and int8 weights, tied or not; and the bandwidth bound."""

from __future__ import annotations

import pytest
import torch

from scratchlm.config import ModelConfig
from scratchlm.errors import ScratchLMError
from scratchlm.model import TransformerLM, prepare_for_inference
from scratchlm.model.decode_cost import bandwidth_bound, decode_read_bytes, kv_read_bytes

CONFIG = dict(vocab_size=61, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


def by_hand(c: ModelConfig, weight_bytes: int, int8: bool = False) -> int:
    """Every matrix in full at ``weight_bytes`` per entry (int8: plus a scale per output
    row, kept in float32 and in bfloat16 for the fused kernel), norms in float32, one
    float32 row of the embedding."""
    d, q, kv, f = c.d_model, c.n_heads * c.head_dim, c.kv_heads * c.head_dim, c.ffn_dim
    matrices = [(q, d), (kv, d), (kv, d), (d, q), (f, d), (f, d), (d, f)] * c.n_layers
    matrices.append((c.vocab_size, d))  # the output projection, tied or not
    total = sum(o * i * weight_bytes + ((4 + 2) * o if int8 else 0) for o, i in matrices)
    norms = (2 * c.n_layers + 1) * d * 4
    return total + norms + d * 4


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize(
    ("form", "weight_bytes"), [("training", 4), ("float32", 4), ("bf16", 2), ("int8", 1)]
)
def test_read_bytes_count_every_matrix_once_and_one_embedding_row(tie, form, weight_bytes):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**CONFIG, tie_embeddings=tie))
    if form != "training":
        model = prepare_for_inference(model, int8=form == "int8", bf16=form == "bf16")
    assert decode_read_bytes(model) == by_hand(model.config, weight_bytes, form == "int8")


def test_kv_bytes_are_keys_and_values_of_every_layer():
    c = ModelConfig(**CONFIG)  # 2 layers, 2 kv heads of 8
    assert kv_read_bytes(c, 10) == 2 * 2 * 2 * 8 * 10 * 4
    assert kv_read_bytes(c, 10, element_size=2) == kv_read_bytes(c, 10) // 2


def test_bandwidth_bound_is_bandwidth_over_bytes():
    assert bandwidth_bound(70e6, 21e9) == pytest.approx(300.0)
    assert bandwidth_bound(35e6, 21e9) == pytest.approx(2 * bandwidth_bound(70e6, 21e9))
    with pytest.raises(ScratchLMError, match="positive"):
        bandwidth_bound(0, 21e9)
