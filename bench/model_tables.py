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
    cores,
    cpu_info,
    load_average,
    measure_torch,
    num,
    ratio,
    scratchlm_version,
)
from model_tasks import PRESET, batched, profile_decode, train_steps

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
