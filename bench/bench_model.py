"""Model benchmark: scratchlm's TransformerLM beside Hugging Face's LlamaForCausalLM.

    .venv/bin/python bench/bench_model.py [--quick] [--markdown PATH] [--tables 1,2,3,4]
                                          [--profile]

Prints four tables (same weights, same inputs, same run, ratios to the reference) and
writes them as Markdown with ``--markdown``:

1. machine: cores, versions, and the measured matmul GFLOP/s (fp32, and bf16 where the
   CPU has it), the peak the other tables are read against;
2. training step (forward + backward + AdamW) on preset ``small``: tokens/s, achieved
   GFLOP/s, % of the matmul peak, vs HF; eager, ``torch.compile`` and bf16 autocast;
3. decode, batch 1: ours with and without the KV cache beside HF ``generate`` with its
   cache, on the identical weights (exported with ``to_hf``), and whether the greedy
   tokens agree;
4. batched generation of 8 prompts of different lengths vs the same prompts one at a time.

``--profile`` adds the top costs of our cached decode step (torch.profiler and cProfile).

Every contender runs in a fresh subprocess (``measure_torch``) with ``torch.set_num_threads``
(``--threads``, default 2) and its own empty torch.compile cache, so compile times are
cold. Warm-up steps are not timed; each row shows the mean of the timed steps and their
spread. Nothing here asserts a timing: the targets of the issue are printed beside the
measured ratios, for people to read.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from harness import (
    Report,
    Run,
    Table,
    common_prefix,
    cores,
    cpu_info,
    load_average,
    measure_torch,
    ratio,
    scratchlm_version,
    time_limit,
)

PRESET = "small"
TARGETS = {  # from issue 3, "Speed": printed beside the measured ratios, never asserted
    "training": 1.1,  # ours (compile allowed) / HF tokens/s
    "decode": 3.0,  # ours cached / HF generate tokens/s
    "cache": 5.0,  # ours cached / ours uncached
    "batched": 4.0,  # 8 prompts batched / one at a time, aggregate tokens/s
}


# --------------------------------------------------------------------------------------
# Running one contender in a fresh process
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Child tasks: each runs in its own process and returns a JSON-ready dict
# --------------------------------------------------------------------------------------


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


def _ours(context_length: int | None = None, seed: int = 0):
    """A randomly initialised TransformerLM of PRESET (seeded: every child builds the
    same weights)."""
    import torch

    from scratchlm.config import preset
    from scratchlm.model import TransformerLM

    overrides = {"context_length": context_length} if context_length else {}
    torch.manual_seed(seed)
    return TransformerLM(preset(PRESET, **overrides))


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
    check_inputs: bool,
    prompt_len: int,
    new_tokens: int,
    repeats: int,
    weights: str = "float32",
) -> dict:
    """Batch-1 greedy decode of ``new_tokens`` after a random prompt, ``repeats`` times
    after a short warm-up. The context is raised to fit prompt + new tokens, so neither
    side needs a sliding window. ``weights``: "float32"; "bfloat16" (HF: loaded in
    bf16); "int8" (ours: quantize_int8)."""
    import torch

    from scratchlm.model import quantize_int8

    context = max(256, prompt_len + new_tokens)
    ours = _ours(context_length=context)
    ours.check_inputs = check_inputs
    ours.eval()
    flops = ours.flops_per_token(training=False, seq_len=prompt_len + new_tokens)
    prompt = _random_ids(prompt_len, ours.config.vocab_size, seed=2)
    if impl == "hf":
        with tempfile.TemporaryDirectory() as tmp:
            hf = _hf_twin(ours, tmp, weights).eval()
        weight_mb = _weight_mb(hf)
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
        if weights == "int8":
            quantize_int8(ours)
        weight_mb = _weight_mb(ours)

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
        "weight_mb": weight_mb,
    }


def batched(
    mode: str, prompt_lens: list[int], new_tokens: int, repeats: int, weights: str = "float32"
) -> dict:
    """All prompts in one generate_ids call (``mode="batched"``) or one call per prompt
    (``"one-at-a-time"``); ``new_tokens`` each, no stop ids, so no row ends early.
    ``weights="int8"`` quantizes the model first."""
    from scratchlm.model import quantize_int8

    ours = _ours()
    ours.check_inputs = False
    ours.eval()
    if weights == "int8":
        quantize_int8(ours)
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

    ours = _ours(context_length=max(256, prompt_len + 4 * steps + 8))
    ours.check_inputs = False
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
        "ops": ops,
        "shapes": shapes,
        "python": python,
    }


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def spread(values: list[float]) -> str:
    return f"{num(min(values))}-{num(max(values))}"


def target_line(what: str, measured: float | None, target: float) -> str:
    if measured is None:
        return f"{what}: not measured (target >= {target:g}x)"
    verdict = "meets" if measured >= target else "BELOW"
    return f"{what} = {ratio(measured)}  (target >= {target:g}x: {verdict})"


def machine_table(peak: Run) -> Table:
    import torch
    import transformers

    flags = cpu_info()[1]
    bf16_flags = sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}) or ["none"]
    facts = [
        ("cores", cores()),
        ("load average at start", load_average()),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("transformers", transformers.__version__),
        ("scratchlm", scratchlm_version()),
        ("bf16 CPU flags", ", ".join(bf16_flags)),
    ]
    if peak.error:
        facts.append(("matmul peak", f"failed: {peak.error}"))
    else:
        r = peak.result
        size = r["size"]
        facts += [
            ("torch CPU capability", f"{r['capability']}, mkldnn available: {r['mkldnn']}"),
            (
                f"fp32 matmul GFLOP/s ({r['threads']} threads)",
                f"{num(r['fp32'])}  (best of {r['repeats']}, {size}x{size} @ {size}x{size})",
            ),
            (
                f"bf16 matmul GFLOP/s ({r['threads']} threads)",
                f"{num(r['bf16'])}  ({ratio(r['bf16'] / r['fp32'])} fp32)"
                if r["bf16"]
                else "not measured: oneDNN reports no native bf16 on this CPU",
            ),
        ]
    facts.append(("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    return Table("1. Machine", ["fact", "value"], [list(f) for f in facts])


TRAIN_CONTENDERS = [  # (label, impl, compiled, bf16)
    ("HF LlamaForCausalLM, eager", "hf", False, False),
    ("HF LlamaForCausalLM, torch.compile", "hf", True, False),
    ("ours, eager", "ours", False, False),
    ("ours, torch.compile", "ours", True, False),
    ("ours, eager, fused loss (model.loss)", "ours-fused", False, False),
    ("ours, bf16 autocast, eager", "ours", False, True),
    ("ours, bf16 autocast, eager, fused loss", "ours-fused", False, True),
    ("ours, bf16 autocast, torch.compile", "ours", True, True),
]


def training_table(args, peak: dict | None) -> Table:
    table = Table(
        f"2. Training step, preset {PRESET}: batch {args.batch} x {args.seq_len} tokens, "
        f"{args.threads} threads",
        [
            "contender",
            "tokens/s",
            "min-max",
            "GFLOP/s",
            "% of peak",
            "vs HF eager",
            "warm-up s",
            "loss step 1",
            "peak RSS MiB",
        ],
    )
    runs = {}
    for label, impl, compiled, bf16 in TRAIN_CONTENDERS:
        runs[label] = run = measure_torch(
            train_steps,
            threads=args.threads,
            impl=impl,
            compiled=compiled,
            bf16=bf16,
            batch=args.batch,
            seq_len=args.seq_len,
            steps=args.train_steps,
            warmup=args.warmup,
            compile_limit_s=args.compile_limit,
        )
    ref = runs[TRAIN_CONTENDERS[0][0]]
    ref_speed = None if ref.error else _tokens_per_s(ref.result)
    speeds = {}
    for label, _, _, bf16 in TRAIN_CONTENDERS:
        run = runs[label]
        if run.error:
            table.rows.append([label, f"failed: {run.error}", *[""] * 7])
            continue
        r = run.result
        speeds[label] = speed = _tokens_per_s(r)
        per_step = [r["tokens_per_step"] / t for t in r["step_s"]]
        gflops = speed * r["flops_per_token"] / 1e9
        peak_gflops = (peak or {}).get("bf16" if bf16 else "fp32")
        table.rows.append(
            [
                label,
                num(speed),
                spread(per_step),
                num(gflops),
                f"{100 * gflops / peak_gflops:.0f}%" if peak_gflops else "-",
                ratio(speed / ref_speed) if ref_speed else "-",
                " + ".join(f"{t:.1f}" for t in r["warmup_s"]),
                f"{r['first_loss']:.4f}",
                num(run.peak_rss_mib),
            ]
        )
    optimizer = next((r.result["optimizer"] for r in runs.values() if not r.error), "?")
    fpt = next((r.result["flops_per_token"] for r in runs.values() if not r.error), None)
    table.notes += [
        f"One step = zero_grad + forward + F.cross_entropy (on float32 logits) + backward + "
        f"torch.optim.AdamW(lr=3e-4, {optimizer}=True) step, on random ids; same code for "
        "every row. HF has our weights (to_hf + LlamaForCausalLM.from_pretrained, sdpa "
        "attention); its loss is computed by us from .logits, not by labels=.",
        f"tokens/s = {args.batch * args.seq_len:,} tokens / mean of {args.train_steps} timed "
        f"steps; min-max = the slowest and fastest step. warm-up s = each of the "
        f"{args.warmup} untimed warm-up steps; for torch.compile rows the first includes "
        "compiling (cold cache, forward and backward).",
        "GFLOP/s = tokens/s x model.flops_per_token(training=True, seq_len="
        f"{args.seq_len}) = {fpt / 1e6:,.1f} MFLOP/token; % of peak is against table 1's "
        "fp32 matmul (bf16 rows: the bf16 matmul)."
        if fpt
        else "GFLOP/s from model.flops_per_token(training=True).",
        "ours: model.check_inputs left on (one id-range check per step). bf16 rows: "
        'torch.autocast("cpu", dtype=torch.bfloat16) around the forward; float32 weights '
        "and optimizer.",
        "loss step 1: same weights and data, so the float32 rows should agree to ~1e-5.",
        "fused loss rows: model.loss(ids, targets) = scratchlm.train.linear_cross_entropy on "
        "the final hidden states (the output projection and the loss in row chunks, "
        "gradients computed in the same pass) instead of logits + F.cross_entropy.",
    ]
    for label, run in runs.items():
        for reason, count in ({} if run.error else run.result["graph_breaks"]).items():
            table.notes.append(f"{label}: graph break x{count}: {reason}")
    hf_c = speeds.get(TRAIN_CONTENDERS[1][0])
    best_fp32 = max((speeds.get(c[0], 0.0) for c in TRAIN_CONTENDERS[2:5]), default=0.0)
    table.notes.append(
        target_line(
            "target: best ours fp32 / HF eager",
            best_fp32 / ref_speed if ref_speed and best_fp32 else None,
            TARGETS["training"],
        )
        + (f"; best ours fp32 / HF compiled = {ratio(best_fp32 / hf_c)}" if hf_c else "")
    )
    return table


def _tokens_per_s(r: dict) -> float:
    return r["tokens_per_step"] / statistics.mean(r["step_s"])


# label -> decode() arguments; ``repeats`` names the --*-repeats count that applies
HF_F32 = "HF generate, cache on"
HF_BF16 = "HF generate, cache on, bf16 weights"
OURS = "ours generate_ids, cached"
OURS_INT8 = "ours generate_ids, cached, int8 weights"
OURS_CHECKED = "ours generate_ids, cached, check_inputs on"
OURS_UNCACHED = "ours generate_ids, uncached"
_CACHED = dict(use_cache=True, repeats="decode_repeats", weights="float32")
DECODE_CONTENDERS = {
    HF_F32: _CACHED | dict(impl="hf", check_inputs=True),
    HF_BF16: _CACHED | dict(impl="hf", check_inputs=True, weights="bfloat16"),
    OURS: _CACHED | dict(impl="ours", check_inputs=False),
    OURS_INT8: _CACHED | dict(impl="ours", check_inputs=False, weights="int8"),
    OURS_CHECKED: _CACHED | dict(impl="ours", check_inputs=True),
    OURS_UNCACHED: _CACHED
    | dict(impl="ours", check_inputs=False, use_cache=False, repeats="uncached_repeats"),
}


def decode_table(args, peak: dict | None) -> Table:
    n, p = args.new_tokens, args.prompt_len
    table = Table(
        f"3. Decode, batch 1: {p}-token prompt, {n} new tokens, greedy, {args.threads} threads",
        [
            "contender",
            "tokens/s",
            "min-max",
            "ms/token (median step)",
            "first token ms",
            "vs HF",
            "same tokens as HF",
            "weights MB",
            "peak RSS MiB",
        ],
    )
    runs = {
        label: measure_torch(
            decode,
            threads=args.threads,
            **(c | {"repeats": getattr(args, c["repeats"])}),
            prompt_len=p,
            new_tokens=n,
        )
        for label, c in DECODE_CONTENDERS.items()
    }
    hf = runs[HF_F32]
    speeds = {}
    for label, run in runs.items():
        if run.error:
            table.rows.append([label, f"failed: {run.error}", *[""] * 7])
            continue
        r = run.result
        speeds[label] = speed = n / statistics.mean(r["total_s"])
        same = "-" if hf.error else _same_tokens(r["tokens"], hf.result["tokens"])
        if not r["same_every_repeat"]:
            same += " (differs between repeats!)"
        table.rows.append(
            [
                label,
                num(speed),
                spread([n / t for t in r["total_s"]]),
                f"{1e3 * statistics.median(r['step_s']):.2f}" if r["step_s"] else "-",
                f"{1e3 * statistics.mean(r['first_token_s']):.1f}",
                ratio(speed / speeds[HF_F32]) if not hf.error else "-",
                "(reference)" if run is hf else same,
                f"{r['weight_mb']:.0f}",
                num(run.peak_rss_mib),
            ]
        )
    ok = next((r.result for r in runs.values() if not r.error), None)
    table.notes += [
        f"tokens/s = {n} / mean wall time of one whole generation call (prefill included), "
        f"over {args.decode_repeats} repeat(s) ({args.uncached_repeats} uncached) after a "
        "short warm-up call; min-max over the repeats.",
        "ms/token = median gap between consecutive new tokens (ours: between the ids "
        "generate_ids yields; HF: a streamer that only notes the time); first token = "
        "prefill + first sample.",
        "Same weights on both sides: a seeded TransformerLM exported with to_hf and loaded "
        "with LlamaForCausalLM.from_pretrained (float32 unless the row says bf16, sdpa). HF: "
        f"generate(do_sample=False, max_new_tokens={n}, min_new_tokens={n}) with its default "
        "dynamic cache.",
        "ours: generate_ids(model, [prompt], SampleConfig(temperature=0), stop_ids=()); "
        "model.check_inputs=False (the id-range check syncs once per step) except where "
        "the row says so; uncached = use_cache=False (recomputes the whole sequence); "
        "int8 weights = quantize_int8(model) (weight-only int8, float32 activations; the "
        "matrix products take bf16 activations).",
        "Rows with other weights than float32 compute a slightly different function, so "
        "their greedy tokens may part from the float32 ones on a random model, whose "
        "top logits are close together.",
    ]
    if ok:
        floor_ms = ok["flops_per_token"] / peak["fp32"] / 1e6 if peak else None
        extra = f"; at table 1's fp32 matmul peak that is {floor_ms:.2f} ms/token" if peak else ""
        table.notes += [
            f"context_length raised to {ok['context']} (preset: 256) so prompt + new tokens "
            "fit without our sliding window (HF has none); weights otherwise the preset's.",
            f"Arithmetic per decoded token: {ok['flops_per_token'] / 1e6:.1f} MFLOP at full "
            f"length{extra}. Weights MB = what one decode step reads from memory.",
        ]

    def share(a: str, b: str) -> float | None:
        return speeds[a] / speeds[b] if a in speeds and b in speeds else None

    table.notes += [
        target_line("target: ours cached / HF", share(OURS, HF_F32), TARGETS["decode"]),
        target_line(
            "target: ours cached, int8 weights / HF", share(OURS_INT8, HF_F32), TARGETS["decode"]
        ),
        "ours cached, int8 weights / HF bf16 weights (both read fewer bytes than float32) = "
        + (ratio(share(OURS_INT8, HF_BF16)) if share(OURS_INT8, HF_BF16) else "not measured"),
        target_line(
            "target: ours cached / ours uncached", share(OURS, OURS_UNCACHED), TARGETS["cache"]
        ),
    ]
    return table


def _same_tokens(ours: list[int], theirs: list[int]) -> str:
    if ours == theirs:
        return "yes"
    return f"no (from token {common_prefix(ours, theirs)})"


BATCHED_MODES = [  # (mode, weights) of each batched() run
    ("one-at-a-time", "float32"),
    ("batched", "float32"),
    ("one-at-a-time", "int8"),
    ("batched", "int8"),
]


def batched_table(args) -> Table:
    lens = [round(16 + i * (64 - 16) / 7) for i in range(8)]
    n = args.batch_new_tokens
    table = Table(
        f"4. Batched generation: 8 prompts of {lens[0]}..{lens[-1]} tokens, {n} new tokens "
        f"each, greedy, {args.threads} threads",
        ["mode", "tokens/s (all rows)", "min-max", "seconds", "vs one at a time", "same tokens"],
    )
    runs = {
        (mode, weights): measure_torch(
            batched,
            threads=args.threads,
            mode=mode,
            prompt_lens=lens,
            new_tokens=n,
            repeats=args.batch_repeats,
            weights=weights,
        )
        for mode, weights in BATCHED_MODES
    }
    ratios = {}
    for (mode, weights), run in runs.items():
        label = mode.replace("-", " ") + ("" if weights == "float32" else f", {weights} weights")
        if run.error:
            table.rows.append([label, f"failed: {run.error}", "", "", "", ""])
            continue
        one = runs[("one-at-a-time", weights)]
        r = run.result
        speed = r["tokens"] / statistics.mean(r["total_s"])
        base = None if one.error else one.result["tokens"] / statistics.mean(one.result["total_s"])
        same = "-"
        if run is not one and not one.error:
            same = "yes" if r["rows"] == one.result["rows"] else "no"
            pairs = zip(r["rows"], one.result["rows"], strict=True)
            bad = [i for i, (a, b) in enumerate(pairs) if a != b]
            same += f" (rows {bad} differ)" if bad else ""
        if base and run is not one:
            ratios[weights] = speed / base
        table.rows.append(
            [
                label,
                num(speed),
                spread([r["tokens"] / t for t in r["total_s"]]),
                f"{statistics.mean(r['total_s']):.2f}",
                ratio(speed / base) if base else "-",
                "(reference)" if run is one else same,
            ]
        )
    table.notes += [
        f"Prompt lengths {lens} (random ids), {n} new tokens each, stop_ids=() on a random "
        "model so no row stops early: both modes produce the same number of tokens.",
        "batched = one generate_ids call with all 8 prompts (left-padded, one forward per "
        "step); one at a time = 8 generate_ids calls in a row. Wall time of the whole "
        f"mode, mean of {args.batch_repeats} repeat(s) after a warm-up; model.check_inputs=False. "
        "int8 rows: quantize_int8(model), compared with one at a time on the same weights.",
        target_line("target: batched / one at a time", ratios.get("float32"), TARGETS["batched"]),
        target_line(
            "target: batched / one at a time, int8 weights", ratios.get("int8"), TARGETS["batched"]
        ),
    ]
    return table


def profile_table(args) -> Table:
    run = measure_torch(profile_decode, threads=args.threads, prompt_len=args.prompt_len, steps=32)
    table = Table(
        "5. Profile of our cached decode step (batch 1, generate_ids, check_inputs off)",
        ["measure", "ms per step"],
    )
    if run.error:
        table.rows.append(["failed", run.error])
        return table
    r = run.result
    table.rows += [
        ["wall, plain", f"{r['plain_ms']:.2f}"],
        ["wall, under torch.profiler", f"{r['profiled_ms']:.2f}"],
        ["sum of op self CPU time (torch.profiler)", f"{r['op_self_ms']:.2f}"],
    ]
    table.notes.append(
        "32 decode steps after the prefill, each measure on its own 32 steps. Wall minus the "
        "ops' self time is roughly the Python and dispatch overhead outside any op (the "
        "profiler inflates each op a little, so a small or negative gap means: negligible)."
    )
    table.details = [
        "",
        "torch.profiler, by self CPU time (totals over the 32 steps):",
        r["ops"],
        "the same, by input shape:",
        r["shapes"],
        "cProfile (totals over 32 other steps):",
        r["python"],
    ]
    return table


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few steps (minutes)")
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    p.add_argument("--tables", default="1,2,3,4", help="which tables to run (default: all)")
    p.add_argument("--profile", action="store_true", help="add table 5: a decode-step profile")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every child")
    p.add_argument("--batch", type=int, help="training batch (default 8, --quick 2)")
    p.add_argument("--seq-len", type=int, help="training tokens per row (default 256, --quick 64)")
    p.add_argument("--train-steps", type=int, help="timed training steps (default 20, --quick 3)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps (default 3, --quick 2)")
    p.add_argument(
        "--compile-limit", type=int, default=300, help="seconds allowed to compile (default 300)"
    )
    p.add_argument("--prompt-len", type=int, default=32, help="decode prompt tokens")
    p.add_argument("--new-tokens", type=int, help="decode new tokens (default 256, --quick 32)")
    p.add_argument("--decode-repeats", type=int, help="(default 5, --quick 2)")
    p.add_argument("--uncached-repeats", type=int, help="(default 2, --quick 1)")
    p.add_argument(
        "--batch-new-tokens", type=int, help="table 4 new tokens (default 128, --quick 16)"
    )
    p.add_argument("--batch-repeats", type=int, help="(default 3, --quick 1)")
    p.add_argument("--peak-repeats", type=int, help="matmul repeats (default 10, --quick 3)")
    args = p.parse_args(argv)
    defaults = {  # name: (full, quick)
        "batch": (8, 2),
        "seq_len": (256, 64),
        "train_steps": (20, 3),
        "warmup": (3, 2),
        "new_tokens": (256, 32),
        "decode_repeats": (5, 2),
        "uncached_repeats": (2, 1),
        "batch_new_tokens": (128, 16),
        "batch_repeats": (3, 1),
        "peak_repeats": (10, 3),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    which = {int(t) for t in args.tables.split(",")}

    report = Report()
    size = 2048
    peak_run = measure_torch(
        matmul_peak, threads=args.threads, size=size, repeats=args.peak_repeats
    )
    peak_run.result.update(size=size, repeats=args.peak_repeats)
    peak = None if peak_run.error else peak_run.result
    report.show(machine_table(peak_run))
    if 2 in which:
        report.show(training_table(args, peak))
    if 3 in which:
        report.show(decode_table(args, peak))
    if 4 in which:
        report.show(batched_table(args))
    if args.profile:
        report.show(profile_table(args))

    quick = " (--quick: small sizes, not for docs)" if args.quick else ""
    report.finish(f"Model benchmark{quick}", args.markdown)


if __name__ == "__main__":
    main()
