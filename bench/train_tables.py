"""The tables of ``bench_train.py``: each runs its tasks (``train_tasks``) in fresh processes
and turns what they report into a Table, with the issue's targets printed beside the
measured values (never asserted).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

from harness import REPO, Run, Table, cores, load_average, num, package_version, ratio
from train_inputs import CORPUS, DATA, PREPARED, TOKENIZER
from train_tasks import BATCH, PRESET

TARGETS = {  # from issue 4: printed beside the measured values, never asserted
    "speed": 1.1,  # ours / HF tokens/s, whole loop
    "data_share": 2.0,  # batch fetch, % of our step time
}


def ms(seconds: float) -> str:
    return num(seconds * 1e3)


def target_line(what: str, measured: float | None, target: float, higher: bool = True) -> str:
    sign = ">=" if higher else "<"
    unit = "x" if higher else "%"
    if measured is None:
        return f"{what}: not measured (target {sign} {target:g}{unit})"
    met = measured >= target if higher else measured < target
    value = ratio(measured) if higher else f"{measured:.2g}%"
    return f"{what} = {value}  (target {sign} {target:g}{unit}: {'meets' if met else 'MISSES'})"


def machine_table(inputs: dict, args) -> Table:
    meta = inputs["meta"]
    splits = meta["splits"]
    facts = [
        ("cores", cores()),
        ("load average at start", load_average()),
        ("python", platform.python_version()),
        ("torch", package_version("torch")),
        ("transformers", package_version("transformers")),
        ("numpy", package_version("numpy")),
        ("scratchlm", f"{package_version('scratchlm')} (working tree; commit not read)"),
        ("torch threads per child", f"{args.threads} (torch.set_num_threads, OMP_NUM_THREADS)"),
        (
            "token directory",
            f"{PREPARED.relative_to(REPO)}: train {splits['train']['tokens']:,} tokens "
            f"({inputs['train_mb']:.1f} MB), val {splits['val']['tokens']:,} "
            f"({inputs['val_mb']:.2f} MB), {meta['dtype']}, vocab {meta['vocab_size']:,}",
        ),
        ("tokenizer", f"{TOKENIZER.relative_to(REPO)}, trained on {CORPUS.name}"),
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]
    return Table("1. Machine and inputs", ["fact", "value"], [list(f) for f in facts])


LABELS = {
    "hf": "HF LlamaForCausalLM + torch AdamW",
    "ours": "ours, Trainer._train_step",
    "ours-compiled": "ours, Trainer._train_step, compile=True",
}


def speed_table(run: Run, args) -> Table:
    table = Table(
        f"2. Training loop, preset {PRESET}: batch {BATCH} x 256 tokens, fp32, "
        f"{args.threads} threads",
        [
            "contender",
            "ms/step (median)",
            "min-max ms",
            "tokens/s",
            "vs HF",
            "vs HF per round",
            "optimizer ms",
            "page faults/step",
            "kernel CPU ms/step",
            "warm-up s",
            "loss step 1",
        ],
    )
    if run.error:
        table.rows.append(["failed", run.error, *[""] * 9])
        return table
    r = run.result
    sides = r["sides"]
    hf = sides["hf"]
    hf_median = statistics.median(hf["step_s"])
    for name, side in sides.items():
        median = statistics.median(side["step_s"])
        per_round = [
            statistics.median(h) / statistics.median(s)
            for h, s in zip(hf["blocks"], side["blocks"], strict=True)
        ]
        table.rows.append(
            [
                LABELS[name],
                ms(median),
                f"{ms(min(side['step_s']))}-{ms(max(side['step_s']))}",
                num(r["tokens_per_step"] / median),
                "(reference)" if name == "hf" else ratio(hf_median / median),
                "-" if name == "hf" else f"{min(per_round):.2f}-{max(per_round):.2f}x",
                ms(statistics.median(side["optimizer_s"])),
                num(side["faults"] / len(side["step_s"])),
                num(1e3 * side["sys_s"] / len(side["step_s"])),
                " + ".join(f"{t:.1f}" for t in side["warmup_s"]),
                f"{side['losses'][0]:.5f}",
            ]
        )
    n = len(hf["step_s"])
    table.notes += [
        f"Preset {PRESET}: {r['parameters'] / 1e6:.1f}M parameters. "
        f"{args.rounds} rounds; in each, every contender runs {args.block} timed steps in a "
        f"row, the order rotating between rounds; {args.warmup} untimed warm-up steps each "
        f"before. {n} timed steps per contender in one process; ms/step = their median, "
        f"tokens/s = {r['tokens_per_step']:,} / that; min-max = fastest and slowest step.",
        "vs HF = HF's median step time / the row's; per round = the same ratio from each "
        "round's two blocks (min-max over the rounds): how much the ratio moves with load.",
        "One step, both sides: batch from the token memmap (a BatchSampler, same seed: the "
        "same batches), forward, loss, backward, clip the gradient norm to 1.0, read loss "
        "and norm on the host, optimizer step, zero_grad. Ours is exactly the trainer's "
        "step (lr schedule, divergence guard included); evaluation, logging and "
        "checkpoints are off.",
        f"ours: model.loss (fused projection + loss, linear_cross_entropy), optimizer "
        f"{r['ours_optimizer']} as build_optimizer picks it. HF: to_hf(our model) + "
        "LlamaForCausalLM.from_pretrained (float32, sdpa), forward(input_ids=x, "
        "use_cache=False), loss = F.cross_entropy(logits, y) computed here on the same "
        "(x, y) pairs (not labels=, whose internal shift would drop the last target of "
        "each row), torch.nn.utils.clip_grad_norm_, torch.optim.AdamW(lr, betas=(0.9, "
        f"0.95), weight_decay=0.1): {r['hf_optimizer']}.",
        "optimizer ms = median time of optimizer.step alone (step hooks) over the timed "
        "steps; page faults and kernel CPU = getrusage(RUSAGE_SELF) minor faults and system "
        "time (all threads) over the timed blocks, per step. loss step 1 = the loss of the "
        "first warm-up step: same weights, same batch, so the rows should agree to ~1e-4.",
    ]
    if "ours-compiled" in sides:
        table.notes.append(
            "compile=True: the trainer wraps its loss module in torch.compile (cold cache "
            "in this process); the first warm-up step includes compiling forward and backward."
        )
    if r["compile_note"]:
        table.notes.append(f"compile=True row skipped: {r['compile_note']}")
    for reason, count in r["graph_breaks"].items():
        table.notes.append(f"compile=True: graph break x{count}: {reason}")
    diff = abs(sides["ours"]["losses"][0] - hf["losses"][0])
    table.notes.append(f"first-step loss, |ours - HF| = {diff:.2e}")
    best = max(hf_median / statistics.median(s["step_s"]) for k, s in sides.items() if k != "hf")
    eager = hf_median / statistics.median(sides["ours"]["step_s"])
    table.notes.append(
        target_line("target: ours eager / HF, tokens/s", eager, TARGETS["speed"])
        + (f"; best ours (compile allowed) / HF = {ratio(best)}" if len(sides) > 2 else "")
    )
    return table


def profile_table(run: Run) -> Table:
    table = Table(
        "3. Where a step goes: top ops by self CPU time (torch.profiler)",
        ["contender", "op", "self ms/step", "share of ops' self time", "calls/step"],
    )
    if run.error or not run.result["profiles"]:
        table.rows.append(["not run", run.error or "--no-profile", "", "", ""])
        return table
    for name, p in run.result["profiles"].items():
        for i, op in enumerate(p["ops"]):
            table.rows.append(
                [
                    LABELS[name] if i == 0 else "",
                    op["name"],
                    num(op["self_ms"]),
                    f"{100 * op['share']:.1f}%",
                    str(op["calls"]),
                ]
            )
        table.rows.append(["", "(all ops)", num(p["self_ms"]), "100%", ""])
    walls = ", ".join(f"{k} {num(p['wall_ms'])}" for k, p in run.result["profiles"].items())
    steps = run.result.get("profile_steps", "")
    table.notes.append(
        f"Self time = time in the op itself, not in the ops it calls; averaged over "
        f"{steps} step(s) of each contender after the timed ones. Wall ms/step under the "
        f"profiler: {walls} (the profiler adds overhead to every op)."
    )
    return table


def data_table(speed: Run, memory: dict[str, Run], cold: dict[str, Run]) -> Table:
    table = Table(
        "4. Data loading: trainer.sampler.next('cpu') alone",
        [
            "token file",
            "fetches",
            "ms (median)",
            "ms (mean)",
            "% of our step",
            "% of HF step",
            "read from disk MB",
        ],
    )
    step = hf_step = None
    if not speed.error:
        step = statistics.median(speed.result["sides"]["ours"]["step_s"])
        hf_step = statistics.median(speed.result["sides"]["hf"]["step_s"])
    rows = []
    if not speed.error:
        rows.append(("real, in the speed run (table 2)", speed.result["fetch_s"], None))
    for label, run in [*((f"{k} (table 5)", v) for k, v in memory.items()), *cold.items()]:
        if run.error:
            table.rows.append([label, f"failed: {run.error}", *[""] * 5])
        else:
            rows.append((label, run.result["fetch_s"], run.result.get("disk_mb")))
    share = None
    for label, fetch, disk_mb in rows:
        mean = statistics.mean(fetch)
        if share is None and step:
            share = 100 * mean / step
        table.rows.append(
            [
                label,
                str(len(fetch)),
                f"{statistics.median(fetch) * 1e3:.3f}",
                f"{mean * 1e3:.3f}",
                f"{100 * mean / step:.3f}%" if step else "-",
                f"{100 * mean / hf_step:.3f}%" if hf_step else "-",
                "-" if disk_mb is None else num(disk_mb),
            ]
        )
    table.notes += [
        f"One fetch = {BATCH} random windows of 257 tokens read from the np.memmap, as int64 "
        "(x, y) tensors of shape (8, 256); % = mean fetch (it includes the fetches that "
        "wait for the disk) / median step of table 2 (both sides fetch the same way). "
        "Table 5's rows time 200 fetches after their steps, in the same process.",
        "cold rows: a fresh process, the file dropped from the page cache just before, the "
        "first fetches of a new sampler; read from disk = /proc/self/io read_bytes over "
        "them (a batch needs 8 x 514 bytes; the rest is the kernel's read-ahead, "
        f"{_read_ahead_kb()} KiB on this disk). The MADV_RANDOM row is an experiment: "
        "np.memmap's mapping advised random access, which the library does not do.",
        target_line("target: data loading share of our step", share, TARGETS["data_share"], False),
    ]
    return table


def _read_ahead_kb() -> str:
    """The read-ahead setting of the disk under bench/.data, or '?'."""
    try:
        dev = os.stat(DATA).st_dev
        path = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        queue = path / "queue" if (path / "queue").exists() else path / ".." / "queue"
        return (queue / "read_ahead_kb").read_text().strip()
    except OSError:
        return "?"


def memory_table(runs: dict[str, Run], steps: int, write_s: float) -> Table:
    table = Table(
        f"5. Peak memory of {steps} training steps vs the token file's size (fresh process each)",
        [
            "token file",
            "train.bin MB",
            "ru_maxrss MiB",
            "VmHWM MiB",
            "RSS after setup MiB",
            "RSS at end: anon + file MiB",
            "train.bin mapped / resident MiB",
            "s/step",
            "ru_maxrss vs real",
        ],
    )
    base = runs.get("real")
    for label, run in runs.items():
        if run.error:
            table.rows.append([label, f"failed: {run.error}", *[""] * 7])
            continue
        r = run.result
        end = r["rss_end_mib"]
        vs = "-"
        if base is not None and not base.error:
            vs = ratio(r["ru_maxrss_mib"] / base.result["ru_maxrss_mib"])
        table.rows.append(
            [
                label,
                num(r["train_bin_mb"]),
                num(r["ru_maxrss_mib"]),
                num(run.peak_rss_mib),
                num(r["rss_after_setup_mib"]),
                f"{num(end['RssAnon'])} + {num(end['RssFile'])}",
                f"{num(r['mapped_mib']['size'])} / {r['mapped_mib']['rss']:.1f}",
                f"{run.seconds['steps'] / steps:.2f}",
                vs,
            ]
        )
    ok = next((run.result for run in runs.values() if not run.error), None)
    table.notes += [
        f"Each row: a fresh interpreter sets up the trainer on the directory and runs {steps} "
        "steps (the speed table's settings); ru_maxrss = resource.getrusage(RUSAGE_SELF) in "
        "that process, VmHWM = its peak from /proc/self/status (the harness's measure; "
        "ru_maxrss can also carry the size of the process it was started from). ru_maxrss "
        "is read right after the steps, VmHWM at the very end (after table 4's fetches).",
        "RSS at end = RssAnon (heap: model, optimizer, activations) + RssFile (mapped "
        "files: libraries and token pages) from /proc/self/status after the steps; "
        "mapped / resident = size and resident part of the train.bin mapping "
        "(/proc/self/smaps) then. Only the windows drawn are touched, but each fault maps "
        "the page-cache pages around it: 64 KiB of small pages, or a whole large folio (up "
        "to 2 MiB) where the file is cached in large folios, as right after writing it. So "
        "the resident part grows with the steps times that granule, up to the file's size; "
        "they are clean page-cache pages the kernel can drop, but they count in RSS.",
    ]
    if ok:
        table.notes.append(f"The trainer reads train tokens as a {ok['token_array']}.")
    synthetic = next((run for k, run in runs.items() if k.startswith("synthetic")), None)
    if synthetic and not synthetic.error:
        t = synthetic.result["train_tokens"]
        written = f", written in {write_s:.0f} s" if write_s else " (kept from an earlier run)"
        table.notes.append(
            f"synthetic: {t:,} uniform random uint16 ids < vocab{written}, the real val.bin "
            "and tokenizer.json, meta.json with the train token count changed. 'in page "
            "cache': read right after it was written; 'dropped': its cached pages were "
            "released first (fsync + posix_fadvise DONTNEED on that file), so windows are "
            "read from disk."
        )
    return table
