"""A report dict (``Report.to_dict()``) as a Markdown page: a summary table of every
stage first, then evaluations, the comparison, each stage in detail, and the machine.
Missing pieces are written as missing, with the reason.
"""

from __future__ import annotations

import datetime
from typing import Any

from scratchlm.report.format import (
    MISSING,
    at_step,
    cell,
    commas,
    count,
    duration,
    figure,
    number,
    rate,
    table,
)
from scratchlm.report.schema import is_busy

# The plots shown on the page (the others are linked): file name -> caption.
SHOWN_PLOTS = {"loss_vs_steps.png": "loss", "val_bpb.png": "validation bits per byte"}


def _missing(stage: dict[str, Any], section: str) -> str:
    why = (stage.get("missing") or {}).get(section)
    return f"*missing: {why}*" if why else f"*{MISSING}*"


def _stage_get(stage: dict[str, Any], path: str) -> Any:
    data: Any = stage
    for key in path.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def summary_rows(stages: list[dict[str, Any]]) -> list[list[str]]:
    """The at-a-glance table: one row per figure, one column per stage."""

    def row(label: str, show) -> list[str]:
        return [label, *(show(s) for s in stages)]

    def decode(s: dict[str, Any]) -> str:
        d = s.get("decode")
        if not d:
            return MISSING
        busy = " ⚠" if is_busy(d) else ""
        return f"{rate(d['fp32_tokens_per_s'])} / {rate(d['int8_tokens_per_s'])}{busy}"

    t = "training."
    return [
        row("parameters", lambda s: count(_stage_get(s, "model.parameters"))),
        row("steps", lambda s: commas(_stage_get(s, t + "steps"))),
        row("tokens trained", lambda s: count(_stage_get(s, t + "tokens"))),
        row("tokens per parameter", lambda s: number(_stage_get(s, t + "tokens_per_parameter"), 3)),
        row(
            "best validation bpb",
            lambda s: at_step(
                _stage_get(s, t + "best_val_bpb"), _stage_get(s, t + "best_val_bpb_step")
            ),
        ),
        row(
            "best validation loss",
            lambda s: at_step(
                _stage_get(s, t + "best_val_loss"), _stage_get(s, t + "best_val_loss_step")
            ),
        ),
        row("final train loss", lambda s: number(_stage_get(s, t + "final_train_loss"))),
        row("training tokens/s", lambda s: rate(_stage_get(s, t + "tokens_per_s"))),
        row("wall time", lambda s: duration(_stage_get(s, t + "wall_time_s"))),
        row("decode tokens/s, fp32 / int8", decode),
    ]


def evaluation_rows(scores: dict[str, Any]) -> list[list[str]]:
    """Rows of an evaluation's fields; a group with accuracy, hits and total (the fact
    checks) becomes one row: '90.0% (81 of 90)', a value with its stderr another:
    '0.3100 ± 0.0200'."""
    rows, used = [], set()
    for key in scores:
        group = key.removesuffix(".accuracy")
        if key.endswith(".accuracy") and {f"{group}.hits", f"{group}.total"} <= scores.keys():
            acc, hits, total = scores[key], scores[f"{group}.hits"], scores[f"{group}.total"]
            rows.append([group, f"{acc:.1%} ({hits} of {total})"])
            used |= {key, f"{group}.hits", f"{group}.total"}
    for key in scores:
        group = key.removesuffix(".value")
        if key.endswith(".value") and f"{group}.stderr" in scores and key not in used:
            value, stderr = scores[key], scores[f"{group}.stderr"]
            if isinstance(value, int | float) and isinstance(stderr, int | float):
                rows.append([group, f"{value:.4f} ± {stderr:.4f}"])
                used |= {key, f"{group}.stderr"}
    for key, value in scores.items():
        if key not in used:
            rows.append([key, number(value) if isinstance(value, float) else f"`{value}`"])
    return rows


def evaluation_section(evaluations: list[dict[str, Any]], heading: str) -> list[str]:
    lines = [heading, ""]
    if not evaluations:
        return [
            *lines,
            "*none in this run* (e.g. `scratchlm eval`, facts.json of the default run)",
            "",
        ]
    for e in evaluations:
        lines.append(f"**{e['file']}**")
        lines.append("")
        if e.get("error"):
            lines += [f"*unreadable: {e['error']}*", ""]
        elif not e.get("scores"):
            lines += ["*no numbers in it*", ""]
        else:
            lines += table(["field", "value"], evaluation_rows(e["scores"]), "ll")
    return lines


def comparison_section(comparison: dict[str, Any], names: tuple[str, str]) -> list[str]:
    t = comparison["thresholds"]
    score_rule = "any drop" if t["score"] == 0 else f"{t['score']:.1%}"
    lines = [f"## Compared with `{comparison['other']}`", ""]
    if comparison["regressions"]:
        lines.append(f"**{len(comparison['regressions'])} regression(s):**")
        lines.append("")
        lines += [f"- ⚠ {r}" for r in comparison["regressions"]]
    else:
        lines.append("**No regressions.**")
    lines.append("")
    if comparison.get("plot"):
        lines += [
            f'<p><img src="{comparison["plot"]}" alt="both runs\' curves" width="100%"></p>',
            "",
        ]
    rows = []
    for f in comparison["figures"]:
        verdict = "⚠ regression" if f["regression"] else ""
        row = [f["name"], figure(f["this"]), figure(f["other"]), figure(f["delta"], sign=True)]
        rows.append([*row, verdict])
    lines += table(["figure", *names, "Δ", ""], rows, "lrrrl")
    lines.append(
        f"Flagged when worse than the other run by more than: validation bpb or loss "
        f"{t['bpb']:.1%}, tokens per second {t['speed']:.0%}, evaluation scores "
        f"{score_rule}."
    )
    if comparison.get("busy"):
        lines.append(
            " A decode speed was measured on a busy machine (load above its core count): "
            "shown, not judged."
        )
    if not comparison.get("same_machine", True):
        lines.append(
            " The two reports were made on different machines: speeds are shown, not judged."
        )
    return [*lines, ""]


def plots_block(stage: dict[str, Any]) -> list[str]:
    """The loss and bpb plots side by side (the others linked), or why there are none."""
    lines: list[str] = []
    plots = stage.get("plots") or []
    shown = [p for p in plots if p.rsplit("/", 1)[-1] in SHOWN_PLOTS]
    if shown:  # side by side: HTML, since Markdown images have no width
        width = "49%" if len(shown) > 1 else "70%"
        images = [
            f'<img src="{p}" alt="{SHOWN_PLOTS[p.rsplit("/", 1)[-1]]}" width="{width}">'
            for p in shown
        ]
        lines += ["<p>" + " ".join(images) + "</p>", ""]
    others = [p for p in plots if p not in shown]
    if others:
        lines += ["More plots: " + ", ".join(f"[{p.rsplit('/', 1)[-1]}]({p})" for p in others), ""]
    missing = stage.get("missing") or {}
    if not plots:
        lines += [
            f"Loss curves: {_missing(stage, 'plots' if 'plots' in missing else 'curves')}",
            "",
        ]
    return lines


def stage_section(stage: dict[str, Any], multi: bool) -> list[str]:
    level = "###" if multi else "##"
    lines = [f"## Stage: {stage['name']}" if multi else "## Details", ""]
    lines += [
        f"Run directory `{stage['path']}`; checkpoint `{stage.get('checkpoint') or MISSING}`.",
        "",
    ]

    lines += [f"{level} Training", "", *plots_block(stage)]
    tr = stage.get("training")
    if tr is None:
        lines += [_missing(stage, "training"), ""]
    else:
        mfu = (
            MISSING + " (peak FLOP/s of the device not known)"
            if tr["mfu"] is None
            else f"{tr['mfu']:.1%}"
        )
        peak = (
            MISSING + " (not recorded)"
            if tr["peak_memory_bytes"] is None
            else f"{count(tr['peak_memory_bytes'])}B"
        )
        bpb = at_step(tr["best_val_bpb"], tr["best_val_bpb_step"])
        if tr["best_val_bpb"] is None and tr.get("phase") == "sft":
            bpb += " (instruction tuning: the loss counts only the answers)"
        rows = [
            ["phase", tr.get("phase") or MISSING],
            ["steps", f"{tr['steps']:,}"],
            ["tokens", f"{tr['tokens']:,}"],
            ["tokens per parameter", number(tr.get("tokens_per_parameter"), 3)],
            ["tokens/s (median of the logged steps)", rate(tr["tokens_per_s"])],
            ["MFU", mfu],
            ["peak memory", peak],
            ["wall time", duration(tr["wall_time_s"])],
            ["final train loss", number(tr["final_train_loss"])],
            ["best validation loss", at_step(tr["best_val_loss"], tr["best_val_loss_step"])],
            ["best validation bpb", bpb],
            ["last validation loss", number(tr["last_val_loss"])],
        ]
        lines += table(["figure", "value"], rows, "ll")
        for event in tr.get("events") or []:
            lines.append(f"- event: {event}")
        if tr.get("events"):
            lines.append("")
    lines += [f"{level} Data", ""]
    d = stage.get("data")
    if d is None:
        lines += [_missing(stage, "data"), ""]
    else:
        rows = [["sources", ", ".join(f"`{s}`" for s in d["sources"]) or MISSING]]
        if d.get("train_tokens") is not None:
            rows += [
                ["train tokens", f"{d['train_tokens']:,} in {d['train_documents']:,} documents"],
                ["validation tokens", f"{d['val_tokens']:,} in {d['val_documents']:,} documents"],
                ["bytes per token", number(d["bytes_per_token"], 3)],
            ]
        lines += table(["figure", "value"], rows, "ll")

    lines += [f"{level} Model", ""]
    m = stage.get("model")
    if m is None:
        lines += [_missing(stage, "model"), ""]
    else:
        c = m["config"]
        shape = (
            f"{c['n_layers']} layers, d_model {c['d_model']}, {c['n_heads']} heads "
            f"({c.get('n_kv_heads') or c['n_heads']} KV), d_ff {c.get('d_ff') or MISSING}, "
            f"context {c['context_length']}, vocabulary {c['vocab_size']:,}"
        )
        variant = f"{c['position']}, {c['norm']}, {c['ffn']}" + (
            ", tied embeddings" if c.get("tie_embeddings") else ""
        )
        rows = [
            [
                "parameters",
                f"{m['parameters']:,} ({m['non_embedding_parameters']:,} without embeddings)",
            ],
            ["FLOPs per token (training, full context)", count(m["flops_per_token"])],
            ["shape", shape],
            ["variant", variant],
        ]
        lines += table(["figure", "value"], rows, "ll")

    lines += [f"{level} Decode speed", ""]
    dec = stage.get("decode")
    if dec is None:
        lines += [_missing(stage, "decode"), ""]
    else:
        lines += table(
            ["weights", "tokens/s"],
            [["float32", rate(dec["fp32_tokens_per_s"])], ["int8", rate(dec["int8_tokens_per_s"])]],
        )
        lines += [
            f"Batch 1, greedy, KV cache: {dec['new_tokens']} tokens after a "
            f"{dec['prompt_tokens']}-token prompt, best of {dec['repeats']}, "
            f"{dec['threads']} thread(s), on the machine below.",
            "",
        ]
        if is_busy(dec):
            share = dec["cpu_per_wall"] / (dec.get("threads") or 1)
            lines += [
                f"⚠ Other work shared the CPU as these were measured: the report's "
                f"{dec['threads']} thread(s) got {share:.0%} of their time. The speeds are "
                "lower and less steady than on a quiet machine.",
                "",
            ]

    lines += [f"{level} Export", ""]
    exports = stage.get("exports") or []
    if not exports:
        lines += ["not exported", ""]
    else:
        rows = []
        for e in exports:
            diff = MISSING if e["max_abs_logit_diff"] is None else f"{e['max_abs_logit_diff']:.2e}"
            rows.append(
                [f"`{e['path']}`", e["format"], diff, e.get("checked_with") or e.get("note") or ""]
            )
        lines += table(
            ["export", "format", "max abs logit difference", "read back with"], rows, "llrl"
        )

    lines += [f"{level} Samples", ""]
    samples = stage.get("samples") or []
    if not samples:
        lines += [_missing(stage, "samples"), ""]
    for s in samples:
        where = "greedy, now" if s["source"] == "greedy" else f"logged at {s['source']}"
        text = " ".join(s["text"].split()) or "*(empty)*"
        lines += [f"- **{cell(s['prompt'])}** → {text} <sub>({where})</sub>"]
    return [*lines, ""]


def environment_section(env: dict[str, Any]) -> list[str]:
    commit = env.get("git_commit")
    if commit is None:
        code = f"scratchlm {env['scratchlm_version']} (not a git checkout)"
    else:
        dirty = ", with uncommitted changes" if env.get("git_dirty") else ""
        code = f"scratchlm {env['scratchlm_version']}, commit `{commit[:12]}`{dirty}"
    rows = [
        ["code", code],
        ["CPU", f"{env.get('cpu') or MISSING} ({env.get('cpu_count') or MISSING} logical cores)"],
        ["GPU", env.get("gpu") or "none"],
        ["torch threads", env["torch_threads"]],
        ["python / torch", f"{env['python']} / {env['torch']}"],
        ["platform", env["platform"]],
    ]
    lines = [
        "## Environment",
        "",
        "Where this report was made (the decode speeds were measured here).",
        "",
    ]
    return lines + table(["item", "value"], rows, "ll")


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown page of a report dict."""
    stages = report["stages"]
    multi = len(stages) > 1
    name = report["run_dir"].rstrip("/").rsplit("/", 1)[-1] or report["run_dir"]
    made = datetime.datetime.fromisoformat(report["created"]).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Run report: {name}",
        "",
        f"`{report['run_dir']}` · made {made} · scratchlm "
        f"{report['environment']['scratchlm_version']} · report format {report['version']}",
        "",
        "## At a glance",
        "",
    ]
    lines += table(["figure", *(s["name"] for s in stages)], summary_rows(stages))
    if any(is_busy(s.get("decode") or {}) for s in stages):
        lines += ["⚠ decode speed measured while other work shared the CPU (see below)", ""]
    comparison = report.get("comparison")
    if comparison:
        other = comparison["other"].rstrip("/").rsplit("/", 1)[-1] or comparison["other"]
        names = (name, other) if name != other else ("this run", "other run")
        lines += comparison_section(comparison, names)
    lines += evaluation_section(report.get("evaluations") or [], "## Evaluations")
    for stage in stages:
        if stage.get("evaluations"):
            lines += evaluation_section(stage["evaluations"], f"## Evaluations: {stage['name']}")
    for stage in stages:
        lines += stage_section(stage, multi)
    lines += environment_section(report["environment"])
    return "\n".join(lines).rstrip() + "\n"
