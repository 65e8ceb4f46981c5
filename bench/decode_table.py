"""Table 3 of ``bench_model.py``: batch-1 decode of each contender (``model_tasks.decode``)
in a fresh process, against HF ``generate`` and against each decoder's memory-bandwidth
bound (``scratchlm.model.decode_cost``), targets printed beside the ratios (never
asserted).
"""

from __future__ import annotations

import statistics

from decode_parts import products_only
from harness import Table, common_prefix, measure_torch, num, ratio
from model_tables import TARGETS, spread, target_line
from model_tasks import decode
from scratchlm.model.decode_cost import bandwidth_bound

# label -> (task, its arguments); ``repeats`` names the --*-repeats count that applies
HF_F32 = "HF generate, cache on"
HF_BF16 = "HF generate, cache on, bf16 weights"
OURS = "ours generate_ids, cached"
OURS_INT8 = "ours generate_ids, cached, int8 weights"
OURS_BF16 = "ours generate_ids, cached, bf16 weights"
OURS_UNCACHED = "ours generate_ids, uncached"
OURS_PRODUCTS = "ours, the cached float32 step's matrix products alone"
_CACHED = dict(use_cache=True, repeats="decode_repeats", weights="float32")
DECODE_CONTENDERS = {
    HF_F32: (decode, _CACHED | dict(impl="hf")),
    HF_BF16: (decode, _CACHED | dict(impl="hf", weights="bfloat16")),
    OURS: (decode, _CACHED | dict(impl="ours")),
    OURS_INT8: (decode, _CACHED | dict(impl="ours", weights="int8")),
    OURS_BF16: (decode, _CACHED | dict(impl="ours", weights="bfloat16")),
    OURS_UNCACHED: (
        decode,
        _CACHED | dict(impl="ours", use_cache=False, repeats="uncached_repeats"),
    ),
    OURS_PRODUCTS: (products_only, dict(repeats="decode_repeats", weights="float32")),
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
            task,
            threads=args.threads,
            **(c | {"repeats": getattr(args, c["repeats"])}),
            prompt_len=p,
            new_tokens=n,
        )
        for label, (task, c) in DECODE_CONTENDERS.items()
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
        same = (
            "-" if hf.error or not r["tokens"] else _same_tokens(r["tokens"], hf.result["tokens"])
        )
        if not r["same_every_repeat"]:
            same += " (differs between repeats!)"
        bound = bandwidth_bound(r["read_mb"] * 1e6, gbs * 1e9) if gbs else None
        step_speed = 1 / statistics.median(r["step_s"]) if r["step_s"] else None
        cached = DECODE_CONTENDERS[label][1].get("use_cache", True)  # products: a cached step
        if bound and step_speed and cached:
            of_bound[label] = step_speed / bound
        table.rows.append(
            [
                label,
                num(speed),
                spread([n / t for t in r["total_s"]]),
                f"{1e3 * statistics.median(r['step_s']):.2f}" if r["step_s"] else "-",
                f"{1e3 * statistics.mean(r['first_token_s']):.1f}",
                ratio(speed / speeds[HF_F32]) if not hf.error and r["tokens"] else "-",
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
        f"{OURS_PRODUCTS}: the same prepared float32 model's matrix products "
        "(DecodeLinear: q/k/v stacked, o, gate/up stacked, down, per layer, and the output "
        "layer), each on one random row in module order, nothing else: one pass stands for "
        "one decoding step, and its speed is what the step would reach if attention, norms, "
        "the KV cache and the calls between cost nothing.",
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
        _split_line(runs),
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


def _split_line(runs: dict) -> str:
    """Of ours' float32 median step, what its products alone take and what the rest adds."""
    step, products = runs[OURS], runs[OURS_PRODUCTS]
    if step.error or products.error or not step.result["step_s"]:
        return "the float32 step split into products and the rest: not measured"
    whole = statistics.median(step.result["step_s"])
    alone = statistics.median(products.result["step_s"])
    return (
        f"of ours' float32 median step ({1e3 * whole:.2f} ms), its "
        f"{products.result['products']} matrix products alone take {1e3 * alone:.2f} ms "
        f"({100 * alone / whole:.0f}%); everything else adds {1e3 * (whole - alone):.2f} ms"
    )


def _same_tokens(ours: list[int], theirs: list[int]) -> str:
    if ours == theirs:
        return "yes"
    return f"no (from token {common_prefix(ours, theirs)})"
