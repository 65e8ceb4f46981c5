"""A part of a decoding step, timed alone for table 3 of ``bench_model.py``: the step's
matrix products and nothing else, to split the gap between our decoder and its
memory-bandwidth bound into what the products themselves take and what everything
around them (attention, norms, the KV cache, torch's dispatch) adds.
"""

from __future__ import annotations

import time

from model_tasks import _footprint, _ours, _prepared


def products_only(prompt_len: int, new_tokens: int, repeats: int, weights: str = "float32") -> dict:
    """Each product of a prepared model (``DecodeLinear``, or ``Int8Linear`` with
    ``weights="int8"``), applied to one random row (1, 1, in) in the order of the
    model's modules, the same model ``model_tasks.decode`` decodes with: one pass over
    all of them stands for one decoding step, ``new_tokens`` passes per repeat. Returns
    the keys of ``decode``'s result (no tokens: nothing is generated)."""
    import torch

    from scratchlm.model.inference import DecodeLinear
    from scratchlm.model.quantize import Int8Linear

    context = max(256, prompt_len + new_tokens)
    ours = _prepared(_ours(context_length=context), weights)
    products = [m for m in ours.modules() if isinstance(m, DecodeLinear | Int8Linear)]
    rows = [torch.randn(1, 1, m.in_features, generator=torch.Generator().manual_seed(i))
            for i, m in enumerate(products)]  # fmt: skip

    def step() -> float:
        start = time.perf_counter()
        for m, x in zip(products, rows, strict=True):
            m(x)
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(8):  # warm-up, as decode's short first call
            step()
        runs = [[step() for _ in range(new_tokens)] for _ in range(repeats)]
    return {
        "tokens": [],
        "same_every_repeat": True,
        "total_s": [sum(r) for r in runs],
        "first_token_s": [0.0 for _ in runs],
        "step_s": [s for r in runs for s in r],
        "context": context,
        "flops_per_token": ours.flops_per_token(training=False, seq_len=prompt_len + new_tokens),
        **_footprint(ours, ours.config, prompt_len, new_tokens),
        "products": len(products),
    }
