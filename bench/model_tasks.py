"""The measurements of ``bench_model.py``, one per contender: each task runs in a fresh
process (``harness.measure_torch``), builds its model there and returns a JSON-ready dict.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from harness import time_limit

PRESET = "small"


def matmul_peak(size: int, repeats: int) -> dict:
    """Best-of-``repeats`` GFLOP/s of one (size x size) @ (size x size) matmul, fp32 and
    bf16; the bf16 one only where oneDNN says the CPU does bf16 natively."""
    import torch

    def best_gflops(dtype: torch.dtype) -> float:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        c = torch.empty(size, size, dtype=dtype)
        for _ in range(2):  # warm-up: thread pool, oneDNN kernel choice
            torch.mm(a, b, out=c)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=c)
            best = min(best, time.perf_counter() - start)
        return 2 * size**3 / best / 1e9

    try:
        bf16_native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16_native = False
    return {
        "fp32": best_gflops(torch.float32),
        "bf16": best_gflops(torch.bfloat16) if bf16_native else None,
        "bf16_native": bf16_native,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def read_bandwidth(mb: int, repeats: int) -> dict:
    """The machine's streaming read bandwidth as torch sees it: GB/s of summing a
    float32 tensor of ``mb`` megabytes (far beyond the caches), on this process's
    threads; best and median of ``repeats`` after two warm-up sums. A sum reads each
    byte once and does one add per 4 bytes, so memory sets its speed, as it sets a
    decoding step's."""
    import statistics

    import torch

    data = torch.ones(mb * 250_000)  # mb * 1e6 bytes of float32
    for _ in range(2):
        data.sum()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        rates.append(data.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return {
        "best_gbs": max(rates),
        "median_gbs": statistics.median(rates),
        "mb": mb,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def _ours(context_length: int | None = None, seed: int = 0):
    """A randomly initialised TransformerLM of PRESET (seeded: every child builds the
    same weights)."""
    import torch

    from scratchlm.config import preset
    from scratchlm.model import TransformerLM

    overrides = {"context_length": context_length} if context_length else {}
    torch.manual_seed(seed)
    return TransformerLM(preset(PRESET, **overrides))


def _prepared(model, weights: str = "float32"):
    """``model`` prepared for generation as chat and generate prepare it, its products
    in ``weights``: "float32", "bfloat16" or "int8"."""
    from scratchlm.model import prepare_for_inference

    return prepare_for_inference(model, int8=weights == "int8", bf16=weights == "bfloat16")


def _footprint(decoder, config, prompt_len: int, new_tokens: int) -> dict:
    """Megabytes a decoding step of ``decoder`` touches: its weights (``weight_mb``), the
    weights one step reads (``read_mb``, decode_read_bytes) and the cached keys and values
    of ``config``'s model at the middle of the generation (``kv_mb``)."""
    from scratchlm.model.decode_cost import decode_read_bytes, kv_read_bytes

    return {
        "weight_mb": _weight_mb(decoder),
        "read_mb": decode_read_bytes(decoder) / 1e6,
        "kv_mb": kv_read_bytes(config, prompt_len + new_tokens // 2) / 1e6,
    }


def _hf_twin(ours, tmp: str, dtype: str = "float32"):
    """HF LlamaForCausalLM with exactly our weights: to_hf, then from_pretrained (its
    weights cast to ``dtype`` on load)."""
    import torch
    import transformers

    from scratchlm.export.hf import to_hf

    folder = to_hf(ours, None, Path(tmp) / "hf")
    return transformers.LlamaForCausalLM.from_pretrained(
        folder, dtype=getattr(torch, dtype), attn_implementation="sdpa"
    )


def _weight_mb(model) -> float:
    """Megabytes of weights a forward pass reads: parameters and buffers (int8 weights
    and their scales), without the non-persistent rotary tables."""
    tensors = [*model.parameters(), *(b for n, b in model.named_buffers() if "rotary" not in n)]
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def _adamw(params):
    """AdamW with the fused CPU kernel where this torch has it (the same for both sides)."""
    import torch

    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=3e-4, fused=True), "fused"
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=3e-4, foreach=True), "foreach"


def train_steps(
    impl: str,
    compiled: bool,
    bf16: bool,
    batch: int,
    seq_len: int,
    steps: int,
    warmup: int,
    compile_limit_s: int,
) -> dict:
    """Forward + cross-entropy + backward + AdamW step on random ids; the wall time of
    each step (warm-up steps, which include compiling, apart)."""
    import torch
    import torch.nn.functional as F

    ours = _ours()
    flops = ours.flops_per_token(training=True, seq_len=seq_len)
    vocab = ours.config.vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        model = _hf_twin(ours, tmp) if impl == "hf" else ours
    model.train()
    forward = torch.compile(model) if compiled else model
    optimizer, kind = _adamw(model.parameters())
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, vocab, (warmup + steps, batch, seq_len + 1), generator=gen)

    def step(ids: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if impl == "ours-fused":  # projection + loss fused: no (B, T, V) logits
                loss = model.loss(ids[:, :-1], ids[:, 1:])
            else:
                out = forward(ids[:, :-1])
        if impl != "ours-fused":
            logits = out.logits if impl == "hf" else out  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        return loss.item()

    def timed(ids: torch.Tensor) -> tuple[float, float]:
        start = time.perf_counter()
        loss = step(ids)
        return time.perf_counter() - start, loss

    with time_limit(compile_limit_s, "compiling") if compiled else nullcontext():
        warm = [timed(data[i]) for i in range(warmup)]
    runs = [timed(data[warmup + i]) for i in range(steps)]
    from torch._dynamo.utils import counters

    breaks = dict(counters["graph_break"]) if compiled else {}
    return {
        "graph_breaks": {(r.splitlines() or [""])[0][:120]: n for r, n in breaks.items()},
        "step_s": [t for t, _ in runs],
        "warmup_s": [t for t, _ in warm],
        "first_loss": warm[0][1] if warm else runs[0][1],
        "last_loss": runs[-1][1],
        "tokens_per_step": batch * seq_len,
        "flops_per_token": flops,
        "optimizer": kind,
    }


def _random_ids(n: int, vocab: int, seed: int) -> list[int]:
    import torch

    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run_ours(model, prompts, new_tokens: int, use_cache: bool = True):
    """Generate greedily; returns (tokens per row, seconds to the first token, seconds
    between the following ones, total seconds)."""
    from scratchlm.config import SampleConfig
    from scratchlm.generate import generate_ids

    sample = SampleConfig(temperature=0.0, max_new_tokens=new_tokens)
    rows: list[list[int]] = [[] for _ in prompts]
    stamps = []
    start = time.perf_counter()
    for step in generate_ids(model, prompts, sample, stop_ids=(), use_cache=use_cache):
        stamps.append(time.perf_counter())
        for row, token in zip(rows, step, strict=True):
            if token is not None:
                row.append(token)
    total = time.perf_counter() - start  # includes the engine's work after the last token
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return rows, stamps[0] - start, gaps, total


class _Stamps:
    """A transformers streamer that only notes the time of each new token: ``put`` is
    called with the prompt first, then with each generated token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def decode(
    impl: str,
    use_cache: bool,
    prompt_len: int,
    new_tokens: int,
    repeats: int,
    weights: str = "float32",
) -> dict:
    """Batch-1 greedy decode of ``new_tokens`` after a random prompt, ``repeats`` times
    after a short warm-up. The context is raised to fit prompt + new tokens, so neither
    side needs a sliding window. ``weights``: "float32"; "bfloat16" (HF: loaded in
    bf16; ours: prepare_for_inference(bf16=True)); "int8" (ours:
    prepare_for_inference(int8=True)). Ours is prepared for inference as chat and
    generate prepare it. ``read_mb``: megabytes of weights one step reads
    (decode_read_bytes); ``kv_mb``: of cached keys and values, at the middle of the
    generation."""
    import torch

    context = max(256, prompt_len + new_tokens)
    ours = _ours(context_length=context)
    ours.eval()
    flops = ours.flops_per_token(training=False, seq_len=prompt_len + new_tokens)
    prompt = _random_ids(prompt_len, ours.config.vocab_size, seed=2)
    if impl == "hf":
        with tempfile.TemporaryDirectory() as tmp:
            hf = _hf_twin(ours, tmp, weights).eval()
        footprint = _footprint(hf, ours.config, prompt_len, new_tokens)
        ids = torch.tensor([prompt])

        def run(n: int):
            stamps = _Stamps()
            start = time.perf_counter()
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=0,
                streamer=stamps,
            )
            total = time.perf_counter() - start
            t = stamps.times[1:]  # [0] is the prompt
            gaps = [b - a for a, b in itertools.pairwise(t)]
            return [out[0, prompt_len:].tolist()], t[0] - start, gaps, total
    else:
        ours = _prepared(ours, weights)
        footprint = _footprint(ours, ours.config, prompt_len, new_tokens)

        def run(n: int):
            return _run_ours(ours, [prompt], n, use_cache)

    run(min(8, new_tokens))  # warm-up
    runs = [run(new_tokens) for _ in range(repeats)]
    return {
        "tokens": runs[0][0][0],
        "same_every_repeat": all(r[0] == runs[0][0] for r in runs),
        "total_s": [r[3] for r in runs],
        "first_token_s": [r[1] for r in runs],
        "step_s": [g for r in runs for g in r[2]],
        "context": context,
        "flops_per_token": flops,
        **footprint,
    }


def batched(
    mode: str, prompt_lens: list[int], new_tokens: int, repeats: int, weights: str = "float32"
) -> dict:
    """All prompts in one generate_ids call (``mode="batched"``) or one call per prompt
    (``"one-at-a-time"``); ``new_tokens`` each, no stop ids, so no row ends early.
    The model is prepared for inference first (``weights="int8"``: with int8 weights)."""
    from scratchlm.model import prepare_for_inference

    ours = prepare_for_inference(_ours(), int8=weights == "int8")
    vocab = ours.config.vocab_size
    prompts = [_random_ids(n, vocab, seed=10 + i) for i, n in enumerate(prompt_lens)]

    def run() -> tuple[list[list[int]], float]:
        start = time.perf_counter()
        if mode == "batched":
            rows = _run_ours(ours, prompts, new_tokens)[0]
        else:
            rows = [_run_ours(ours, [p], new_tokens)[0][0] for p in prompts]
        return rows, time.perf_counter() - start

    _run_ours(ours, prompts if mode == "batched" else prompts[:1], min(4, new_tokens))  # warm-up
    runs = [run() for _ in range(repeats)]
    return {
        "rows": runs[0][0],
        "total_s": [t for _, t in runs],
        "tokens": sum(len(r) for r in runs[0][0]),
    }


def profile_decode(prompt_len: int, steps: int) -> dict:
    """Where the time of our cached decode step goes: ``steps`` steps of generate_ids
    (after the prefill) under torch.profiler, then under cProfile."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    from scratchlm.config import SampleConfig
    from scratchlm.generate import generate_ids
    from scratchlm.model import prepare_for_inference

    ours = prepare_for_inference(_ours(context_length=max(256, prompt_len + 4 * steps + 8)))
    prompt = _random_ids(prompt_len, ours.config.vocab_size, seed=2)
    sample = SampleConfig(temperature=0.0, max_new_tokens=4 * steps + 4)
    gen = generate_ids(ours, [prompt], sample, stop_ids=())
    for _ in range(steps):  # prefill and warm-up
        next(gen)

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            next(gen)
    profiled_ms = (time.perf_counter() - start) / steps * 1e3
    events = prof.key_averages()
    op_self_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    events_per_step = sum(e.count for e in events) / steps  # a count: the load cannot move it
    ops = events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40)
    shapes = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=30
    )

    start = time.perf_counter()
    for _ in range(steps):
        next(gen)
    plain_ms = (time.perf_counter() - start) / steps * 1e3

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        next(gen)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    python = "\n".join(line for line in text.getvalue().splitlines() if line.strip())
    return {
        "plain_ms": plain_ms,
        "profiled_ms": profiled_ms,
        "op_self_ms": op_self_ms,
        "events_per_step": events_per_step,
        "ops": ops,
        "shapes": shapes,
        "python": python,
    }
