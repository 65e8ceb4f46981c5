"""The tables of ``bench_model.py``: each runs its contenders (``model_tasks``) in fresh
processes and turns what they report into a Table, with ratios to the reference and the
issue's targets printed beside them (never asserted).
"""

from __future__ import annotations

import platform
import statistics
import time

from harness import (
    Run,
    Table,
    common_prefix,
    cores,
    cpu_info,
    load_average,
    measure_torch,
    num,
    ratio,
    scratchlm_version,
)
from model_tasks import PRESET, batched, decode, profile_decode, train_steps
from scratchlm.model.decode_cost import bandwidth_bound

TARGETS = {  # from issue 3, "Speed": printed beside the measured ratios, never asserted
    "training": 1.1,  # ours (compile allowed) / HF tokens/s
    "decode": 3.0,  # ours cached / HF generate tokens/s
    "cache": 5.0,  # ours cached / ours uncached
    "batched": 4.0,  # 8 prompts batched / one at a time, aggregate tokens/s
    "bound": 0.75,  # issue 17: ours float32 decode / its memory-bandwidth bound
}


def spread(values: list[float]) -> str:
    return f"{num(min(values))}-{num(max(values))}"


def target_line(what: str, measured: float | None, target: float) -> str:
    if measured is None:
        return f"{what}: not measured (target >= {target:g}x)"
    verdict = "meets" if measured >= target else "BELOW"
    return f"{what} = {ratio(measured)}  (target >= {target:g}x: {verdict})"


def machine_table(peak: Run, bandwidth: Run | None = None) -> Table:
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
    if bandwidth is not None and bandwidth.error:
        facts.append(("read bandwidth", f"failed: {bandwidth.error}"))
    elif bandwidth is not None:
        b = bandwidth.result
        facts.append(
            (
                f"read bandwidth GB/s ({b['threads']} threads)",
                f"{b['best_gbs']:.1f}  (best of {b['repeats']}; median {b['median_gbs']:.1f}; "
                f"sum of a {b['mb']} MB float32 tensor)",
            )
        )
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
        "bf16 rows: "
        'torch.autocast("cpu", dtype=torch.bfloat16) around the forward; float32 weights '
        "and optimizer.",
        "loss step 1: same weights and data, so the float32 rows should agree to ~1e-5.",
        "fused loss rows: model.loss(ids, targets) = scratchlm.model.loss.linear_cross_entropy on "
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
OURS_BF16 = "ours generate_ids, cached, bf16 weights"
OURS_UNCACHED = "ours generate_ids, uncached"
_CACHED = dict(use_cache=True, repeats="decode_repeats", weights="float32")
DECODE_CONTENDERS = {
    HF_F32: _CACHED | dict(impl="hf"),
    HF_BF16: _CACHED | dict(impl="hf", weights="bfloat16"),
    OURS: _CACHED | dict(impl="ours"),
    OURS_INT8: _CACHED | dict(impl="ours", weights="int8"),
    OURS_BF16: _CACHED | dict(impl="ours", weights="bfloat16"),
    OURS_UNCACHED: _CACHED | dict(impl="ours", use_cache=False, repeats="uncached_repeats"),
}


def decode_table(args, peak: dict | None, bandwidth: dict | None = None) -> Table:
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
            "MB read/token",
            "bound tokens/s",
            "% of bound",
            "peak RSS MiB",
        ],
    )
    gbs = bandwidth["best_gbs"] if bandwidth else None
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
    kv = next((r.result["kv_mb"] for r in runs.values() if not r.error), None)
    speeds, of_bound = {}, {}
    for label, run in runs.items():
        if run.error:
            table.rows.append([label, f"failed: {run.error}", *[""] * 10])
            continue
        r = run.result
        speeds[label] = speed = n / statistics.mean(r["total_s"])
        same = "-" if hf.error else _same_tokens(r["tokens"], hf.result["tokens"])
        if not r["same_every_repeat"]:
            same += " (differs between repeats!)"
        bound = bandwidth_bound(r["read_mb"] * 1e6, gbs * 1e9) if gbs else None
        step_speed = 1 / statistics.median(r["step_s"]) if r["step_s"] else None
        cached = DECODE_CONTENDERS[label]["use_cache"]
        if bound and step_speed and cached:
            of_bound[label] = step_speed / bound
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
                f"{r['read_mb']:.1f}",
                num(bound) if bound and cached else "-",
                f"{100 * of_bound[label]:.0f}%" if label in of_bound else "-",
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
        "model = prepare_for_inference(model) first, as chat and generate do; uncached = "
        "use_cache=False (recomputes the whole sequence); int8 weights = "
        "prepare_for_inference(model, int8=True) (weight-only int8, float32 activations; the "
        "matrix products take bf16 activations).",
        "MB read/token = the weights one decoding step reads (decode_read_bytes: every "
        "matrix, norm and scale in full, one embedding row); bound tokens/s = table 1's "
        "best read bandwidth / MB read per token (decode_cost.bandwidth_bound), what a "
        "decoder that did nothing but stream its weights would reach; % of bound = "
        "(1 / the median step) / bound, decoding steps only (the prefill apart). The "
        "KV cache is read too, not counted: "
        + (f"{kv:.1f} MB per step at the middle of the generation." if kv else "-.")
        + " bf16 weights = prepare_for_inference(model, bf16=True): a bfloat16 copy of "
        "every matrix, products in bfloat16, everything else float32.",
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
        "target: ours cached float32 / its bandwidth bound = "
        + (
            f"{100 * of_bound[OURS]:.0f}%  (target >= {100 * TARGETS['bound']:.0f}%: "
            + ("meets)" if of_bound[OURS] >= TARGETS["bound"] else "BELOW)")
            if OURS in of_bound
            else f"not measured (target >= {100 * TARGETS['bound']:.0f}%)"
        ),
        "ours bf16 weights / its bound = "
        + (f"{100 * of_bound[OURS_BF16]:.0f}%" if OURS_BF16 in of_bound else "not measured")
        + "; int8 / its bound = "
        + (f"{100 * of_bound[OURS_INT8]:.0f}%" if OURS_INT8 in of_bound else "not measured")
        + "; HF float32 / its bound = "
        + (f"{100 * of_bound[HF_F32]:.0f}%" if HF_F32 in of_bound else "not measured"),
        "ours cached, bf16 weights / ours float32 = "
        + (ratio(share(OURS_BF16, OURS)) if share(OURS_BF16, OURS) else "not measured")
        + "; / HF bf16 weights = "
        + (ratio(share(OURS_BF16, HF_BF16)) if share(OURS_BF16, HF_BF16) else "not measured"),
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
        f"mode, mean of {args.batch_repeats} repeat(s) after a warm-up; the model "
        "prepared for inference. int8 rows: prepare_for_inference(model, int8=True), "
        "compared with one at a time on the same weights.",
        target_line("target: batched / one at a time", ratios.get("float32"), TARGETS["batched"]),
        target_line(
            "target: batched / one at a time, int8 weights", ratios.get("int8"), TARGETS["batched"]
        ),
    ]
    return table


def profile_table(args) -> Table:
    run = measure_torch(profile_decode, threads=args.threads, prompt_len=args.prompt_len, steps=32)
    table = Table(
        "5. Profile of our cached decode step (batch 1, generate_ids, prepared model)",
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
        f"torch.profiler events per step (torch ops, nested ones included; a count, which "
        f"the machine's load cannot move): {r['events_per_step']:.0f}."
    )
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
