"""What one decoding step costs in memory traffic, and the speed that traffic allows.

A decoding step of one sequence multiplies a single row of activations by every weight
matrix, so each weight is read from memory once per generated token while doing two
floating-point operations per weight: on a CPU the step is bound by how fast the weights
stream from memory, not by the arithmetic. The bound on tokens per second is then

    tokens/s <= read bandwidth (bytes/s) / bytes of weights read per token

``decode_read_bytes`` counts those bytes for a model as it is stored (float32, bf16 or
int8 weights; before or after ``prepare_for_inference``; ours or Hugging Face's), and
``bandwidth_bound`` turns them and a measured read bandwidth (bench/bench_model.py
measures it) into tokens per second. The KV cache is read too, but it is not a weight:
it grows with the context, and callers add it where they want it (``kv_read_bytes``).
"""

from __future__ import annotations

from torch import nn

from scratchlm.config import ModelConfig
from scratchlm.errors import ScratchLMError

# Buffers that are position tables (RoPE's cos/sin or inverse frequencies): a step reads
# one position of them, a negligible amount, so they are not counted.
_TABLE_NAMES = ("rotary", "inv_freq", "rope_sign")  # position tables, rotary signs


def decode_read_bytes(model: nn.Module) -> int:
    """Bytes of weights one decoding step of one sequence reads: every parameter and
    buffer (a quantized layer's int8 weight and its scales, a prepared layer's copy of
    its weight) in full, except embedding tables, of which a step reads one row per
    table, and position tables and rotary signs (not counted). A tensor shared by two layers (a tied
    output projection) counts once in full, as the output projection reads all of it."""
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding) or _is_table(m)]
    table_ids = {id(m.weight) for m in embeddings}
    seen: set[int] = set()
    total = 0
    for module_name, module in model.named_modules():
        tensors = [
            (name, t)
            for name, t in (
                *module.named_parameters(recurse=False),
                *module.named_buffers(recurse=False),
            )
            if t is not None
        ]
        for name, t in tensors:
            full_name = f"{module_name}.{name}"
            if id(t) in seen or any(s in full_name for s in _TABLE_NAMES):
                continue
            if module in embeddings and id(t) in table_ids:
                continue  # the table's row is counted below; its other users count it all
            seen.add(id(t))
            total += t.numel() * t.element_size()
    rows = sum(m.weight.shape[-1] * m.weight.element_size() for m in embeddings)
    return total + rows


def _is_table(module: nn.Module) -> bool:
    """Our own ``Embedding`` (model/layers.py), recognised by what it holds: a lookup
    table ``weight`` and ``num_embeddings`` (not imported here, to keep this module
    independent of the layers)."""
    return hasattr(module, "num_embeddings") and isinstance(
        getattr(module, "weight", None), nn.Parameter
    )


def kv_read_bytes(config: ModelConfig, positions: int, element_size: int = 4) -> int:
    """Bytes of cached keys and values one decoding step of one sequence reads when
    ``positions`` positions are cached: keys and values of every layer."""
    return 2 * config.depth * config.kv_heads * config.head_dim * positions * element_size


def bandwidth_bound(read_bytes: float, bandwidth: float) -> float:
    """Tokens per second a decoder that reads ``read_bytes`` per token can reach at most
    when memory delivers ``bandwidth`` bytes per second (and nothing else takes time)."""
    if read_bytes <= 0 or bandwidth <= 0:
        raise ScratchLMError(
            f"a bandwidth bound needs positive bytes per token and bandwidth, got "
            f"{read_bytes} and {bandwidth}: measure them first"
        )
    return bandwidth / read_bytes
