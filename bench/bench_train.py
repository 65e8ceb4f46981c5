"""Training benchmark: scratchlm's whole training loop beside Hugging Face's LlamaForCausalLM.

    .venv/bin/python bench/bench_train.py [--quick] [--markdown PATH] [--keep]
                                          [--no-compile] [--no-profile]

Prints five tables and writes them as Markdown with ``--markdown``:

1. machine and inputs: cores, versions, the prepared token directory;
2. training loop, preset ``small`` (batch 8 x 256, fp32): ours (``Trainer._train_step``,
   one whole optimizer update) beside ``LlamaForCausalLM`` with torch's AdamW on the same
   batches, same initial weights; median step time, tokens/s, ratio, spread; optionally
   ours with ``compile=True``;
3. where one step of each side spends its time: torch.profiler, top ops by self CPU time;
4. data loading: ``trainer.sampler.next("cpu")`` alone, as a share of a step;
   the first fetches from a 1 GB file that is not in the page cache, and (an experiment)
   the same with the mapping advised ``MADV_RANDOM``;
5. peak RSS of 20 training steps on the real token directory and on a synthetic 1 GB one
   (read right after it is written, and again dropped from the page cache): memory must
   not grow with the token file (it is read through ``np.memmap``).

The contenders of table 2 run in one fresh process (``harness.measure``) with
``torch.set_num_threads`` (``--threads``, default 2), in alternating blocks of steps
(round 1: A B C, round 2: B C A, ...), so a change in machine load hits every side alike.
Inputs live in ``bench/.data`` (git-ignored): the 10,000-token tokenizer and the prepared
token directory are built from ``stdlib_py.txt`` on first use; the 1 GB token directory is
written for each run and deleted afterwards unless ``--keep``. Nothing here asserts a
timing: the issue's targets are printed beside the measured ratios, for people to read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from harness import (
    BENCH,
    REPO,
    Report,
    Run,
    Table,
    cores,
    load_average,
    measure_torch,
    package_version,
    ratio,
    time_limit,
)

DATA = BENCH / ".data"
CORPUS = DATA / "stdlib_py.txt"
TOKENIZER = DATA / "tok10k"
PREPARED = DATA / "stdlib10k"
SYNTHETIC = DATA / "stdlib10k_synthetic_1gb"
PRESET = "small"
BATCH = 8
TARGETS = {  # from issue 4: printed beside the measured values, never asserted
    "speed": 1.1,  # ours / HF tokens/s, whole loop
    "data_share": 2.0,  # batch fetch, % of our step time
}


# --------------------------------------------------------------------------------------
# Running one child in a fresh process
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Child tasks: each runs in its own process and returns a JSON-ready dict
# --------------------------------------------------------------------------------------


def _trainer(data: str, out: Path, compile: bool = False):
    """A set-up Trainer of the preset on ``data`` (fp32, CPU, no eval/checkpoints/logging
    in the steps), ready for ``_train_step()``."""
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.trainer import Trainer

    config = TrainConfig(
        data=data,
        out=str(out),
        preset=PRESET,
        batch_size=BATCH,
        steps=10_000,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        device="cpu",
        precision="fp32",
        sample_tokens=0,
        compile=compile,
    )
    trainer = Trainer(config, echo=lambda line: None)
    trainer._setup()
    trainer.started = time.perf_counter()  # run() sets it; _event() reads it on a skip
    return trainer


class _OptimizerClock:
    """Times ``optimizer.step`` through the optimizer's step hooks: the seconds of each
    step go to the list ``into`` points at when the step ends."""

    def __init__(self, optimizer) -> None:
        self.into: list[float] = []
        self._start = 0.0
        optimizer.register_step_pre_hook(self._pre)
        optimizer.register_step_post_hook(self._post)

    def _pre(self, optimizer, args, kwargs) -> None:
        self._start = time.perf_counter()

    def _post(self, optimizer, args, kwargs) -> None:
        self.into.append(time.perf_counter() - self._start)


def _top_ops(step: Callable[[], object], steps: int, top: int) -> dict:
    """``steps`` calls of ``step`` under torch.profiler: the ``top`` ops by self CPU time
    (ms per step and share of all ops' self time) and the wall ms per step."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    wall_ms = (time.perf_counter() - start) / steps * 1e3
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {
        "wall_ms": wall_ms,
        "self_ms": total / 1e3 / steps,
        "ops": [
            {
                "name": e.key if len(e.key) <= 60 else e.key[:57] + "...",
                "self_ms": e.self_cpu_time_total / 1e3 / steps,
                "share": e.self_cpu_time_total / total,
                "calls": e.count // steps,
            }
            for e in events[:top]
        ],
    }


def train_speed(
    data: str,
    rounds: int,
    block: int,
    warmup: int,
    compiled: bool,
    compile_limit_s: int,
    profile_steps: int,
    fetch_repeats: int,
) -> dict:
    """Ours (Trainer._train_step), HF LlamaForCausalLM + torch AdamW and, with
    ``compiled``, ours with compile=True, stepped in alternating blocks of ``block`` timed
    steps for ``rounds`` rounds after ``warmup`` untimed steps each. Every side starts from
    the same weights and draws the same batches (its own sampler, same seed)."""
    import torch
    import torch.nn.functional as F
    import transformers

    from scratchlm.data import BatchSampler
    from scratchlm.export.hf import to_hf

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        ours = _trainer(data, tmp / "ours")
        c, model = ours.config, ours.model
        T = model.config.context_length
        hf = transformers.LlamaForCausalLM.from_pretrained(
            to_hf(model, None, tmp / "hf"), dtype=torch.float32, attn_implementation="sdpa"
        )
        hf.train()
        hf_optimizer = torch.optim.AdamW(
            hf.parameters(), lr=c.lr, betas=(0.9, 0.95), weight_decay=0.1
        )  # torch's default implementation for these (CPU) tensors
        hf_sampler = BatchSampler(ours.sampler.tokens, BATCH, T, seed=c.seed)

        def hf_step() -> float:
            x, y = hf_sampler.next("cpu")  # (B, T), (B, T): the batches ours draws
            logits = hf(input_ids=x, use_cache=False).logits  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), c.grad_clip)
            loss_value, _ = float(loss), float(norm)  # ours reads both on the host too
            hf_optimizer.step()
            hf_optimizer.zero_grad(set_to_none=True)
            return loss_value

        def trainer_step(trainer) -> Callable[[], float]:
            def step() -> float:
                done = trainer._train_step()
                assert done is not None, "the trainer rolled back in a benchmark"
                return done[0]

            return step

        sides: dict[str, dict] = {
            "hf": {"step": hf_step, "clock": _OptimizerClock(hf_optimizer)},
            "ours": {"step": trainer_step(ours), "clock": _OptimizerClock(ours.optimizer)},
        }
        compile_note = None
        if compiled:
            ours_c = _trainer(data, tmp / "ours-compiled", compile=True)
            sides["ours-compiled"] = {
                "step": trainer_step(ours_c),
                "clock": _OptimizerClock(ours_c.optimizer),
            }
        for name, side in sides.items():
            side.update(
                losses=[], warmup_s=[], step_s=[], blocks=[], optimizer_s=[], faults=0, sys_s=0.0
            )
            side["clock"].into = []  # warm-up optimizer steps are not kept
            for i in range(warmup):
                start = time.perf_counter()
                try:
                    limit = name == "ours-compiled" and i == 0
                    with time_limit(compile_limit_s, "compiling") if limit else nullcontext():
                        loss = side["step"]()
                except TimeoutError as e:
                    compile_note = str(e)
                    break
                side["warmup_s"].append(time.perf_counter() - start)
                side["losses"].append(loss)
        if compile_note:
            del sides["ours-compiled"]

        names = list(sides)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                side = sides[name]
                side["clock"].into = side["optimizer_s"]
                times = []
                before = resource.getrusage(resource.RUSAGE_SELF)
                for _ in range(block):
                    start = time.perf_counter()
                    side["step"]()
                    times.append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_SELF)
                side["faults"] += after.ru_minflt - before.ru_minflt
                side["sys_s"] += after.ru_stime - before.ru_stime
                side["step_s"] += times
                side["blocks"].append(times)

        # The data loading alone, on our trainer's sampler (its draws are done).
        fetch_s = []
        for _ in range(fetch_repeats):
            start = time.perf_counter()
            ours.sampler.next("cpu")
            fetch_s.append(time.perf_counter() - start)

        profiles = {}
        for name, side in sides.items():
            side["clock"].into = []
            side["step"]()  # one plain step between the timed ones and the profile
            if profile_steps:
                profiles[name] = _top_ops(side["step"], profile_steps, top=5)
        from torch._dynamo.utils import counters

        breaks = dict(counters["graph_break"])
        return {
            "sides": {name: {k: side[k] for k in SIDE_RESULTS} for name, side in sides.items()},
            "compile_note": compile_note,
            "graph_breaks": {(k.splitlines() or [""])[0][:120]: n for k, n in breaks.items()},
            "fetch_s": fetch_s,
            "profiles": profiles,
            "tokens_per_step": BATCH * T,
            "ours_optimizer": type(ours.optimizer).__module__
            + "."
            + type(ours.optimizer).__name__
            + (" (fused)" if ours.optimizer.defaults.get("fused") else ""),
            "hf_optimizer": _torch_adamw_kind(hf_optimizer),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SIDE_RESULTS = ("losses", "warmup_s", "step_s", "blocks", "optimizer_s", "faults", "sys_s")


def _torch_adamw_kind(optimizer) -> str:
    """Which implementation torch.optim.AdamW picks for its parameters: fused, foreach
    (multi-tensor) or the single-tensor for-loop (torch's default off CUDA)."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    d = optimizer.defaults
    if d.get("fused"):
        return "fused"
    if d.get("foreach") is not None:
        return "foreach" if d["foreach"] else "single-tensor"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    _, foreach = _default_to_fused_or_foreach(params, False, False)
    return "foreach (default)" if foreach else "single-tensor for-loop (default)"


def train_memory(clock, data: str, steps: int, fetch_repeats: int) -> dict:
    """``steps`` training steps of the preset on ``data``; this process's peak RSS as
    ``ru_maxrss`` and the resident size of the token file's mapping afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_mem_"))
    try:
        trainer = _trainer(data, tmp / "run")
        after_setup = _rss_mib("VmRSS")
        losses = []
        with clock("steps"):
            for _ in range(steps):
                losses.append(trainer._train_step()[0])
        train_file = Path(data).resolve() / "train.bin"
        mapped = _mapped_mib(train_file)  # before the fetches below touch more pages
        rss_end = {k: _rss_mib(k) for k in ("VmRSS", "RssAnon", "RssFile")}
        ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB
        fetch_s = []
        for _ in range(fetch_repeats):
            start = time.perf_counter()
            trainer.sampler.next("cpu")
            fetch_s.append(time.perf_counter() - start)
        return {
            "ru_maxrss_mib": ru_maxrss,
            "rss_after_setup_mib": after_setup,
            "rss_end_mib": rss_end,
            "mapped_mib": mapped,
            "train_tokens": len(trainer.sampler.tokens),
            "token_array": type(trainer.sampler.tokens).__name__,
            "train_bin_mb": train_file.stat().st_size / 1e6,
            "losses": losses,
            "fetch_s": fetch_s,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_cold(data: str, fetches: int, madvise_random: bool) -> dict:
    """``fetches`` batches from a fresh sampler on a token file that is not in the page
    cache (the parent dropped it): seconds per fetch, bytes this process read from disk,
    and the resident part of the mapping. ``madvise_random`` first tells the kernel that
    access is random (no read-ahead): an experiment, not what the library does."""
    import mmap

    from scratchlm.data import BatchSampler, open_tokens

    tokens = open_tokens(data, "train")
    if madvise_random:
        tokens._mmap.madvise(mmap.MADV_RANDOM)
    sampler = BatchSampler(tokens, BATCH, 256, seed=7)
    read_before = _io_read_bytes()
    fetch_s = []
    for _ in range(fetches):
        start = time.perf_counter()
        sampler.next("cpu")
        fetch_s.append(time.perf_counter() - start)
    return {
        "fetch_s": fetch_s,
        "disk_mb": (_io_read_bytes() - read_before) / 1e6,
        "mapped_mib": _mapped_mib(Path(data).resolve() / "train.bin"),
    }


def _io_read_bytes() -> int:
    """Bytes this process caused to be read from storage (/proc/self/io read_bytes)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def _rss_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _mapped_mib(file: Path) -> dict:
    """Size and resident part (MiB) of this process's mappings of ``file``."""
    size = rss = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().endswith(str(file))
            elif inside and first == "Size:":
                size += int(line.split()[1])
            elif inside and first == "Rss:":
                rss += int(line.split()[1])
    return {"size": size / 1024, "rss": rss / 1024}


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def _scratchlm(*args: str) -> None:
    cmd = [sys.executable, "-m", "scratchlm", *args]
    print("  $ scratchlm " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def ensure_inputs() -> dict:
    """The tokenizer and the prepared token directory, built when missing; facts about
    them for table 1."""
    if not CORPUS.exists():
        sys.exit(f"{CORPUS} is missing: run `bash ../shared/data/make_corpora.sh bench/.data`")
    if not (TOKENIZER / "tokenizer.json").exists():
        _scratchlm(
            "tokenizer", "train", str(CORPUS), "--vocab-size", "10000",
            "--special-token", "<|endoftext|>", "--out", str(TOKENIZER), "--quiet", "--force",
        )  # fmt: skip
    if not (PREPARED / "meta.json").exists():
        _scratchlm(
            "prepare", str(CORPUS), "--tokenizer", str(TOKENIZER), "--out", str(PREPARED),
            "--quiet", "--force",
        )  # fmt: skip
    meta = json.loads((PREPARED / "meta.json").read_text())
    return {
        "meta": meta,
        "train_mb": (PREPARED / "train.bin").stat().st_size / 1e6,
        "val_mb": (PREPARED / "val.bin").stat().st_size / 1e6,
    }


def make_synthetic(out: Path, tokens: int, vocab: int, chunk: int = 1 << 23) -> float:
    """A token directory at ``out`` that training accepts: ``tokens`` random uint16 ids
    below ``vocab`` as train.bin, written chunk by chunk (never all in memory), the real
    val.bin, tokenizer.json and meta.json with the train token count changed. Reused when
    a kept one of the same size is there; returns the seconds spent writing."""
    import numpy as np

    meta = json.loads((PREPARED / "meta.json").read_text())
    assert np.dtype(meta["dtype"]).itemsize == 2, meta["dtype"]
    train = out / "train.bin"
    if (out / "meta.json").exists() and train.exists() and train.stat().st_size == 2 * tokens:
        return 0.0
    print(f"  ... writing {2 * tokens / 1e9:.2f} GB of random token ids to {out}", file=sys.stderr)
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(train, "wb") as f:
        for first in range(0, tokens, chunk):
            n = min(chunk, tokens - first)
            ids = rng.integers(0, vocab, size=n, dtype=np.uint16)  # (n,)
            ids.astype("<u2", copy=False).tofile(f)  # the file format is little-endian
    for name in ("val.bin", "tokenizer.json"):
        shutil.copyfile(PREPARED / name, out / name)
    split = meta["splits"]["train"]
    split.update(tokens=tokens, documents=None, bytes=None, bytes_per_token=None)
    meta["synthetic"] = "train.bin: uniform random ids, written by bench/bench_train.py"
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return time.perf_counter() - start


def drop_from_page_cache(file: Path) -> None:
    """Ask the kernel to forget ``file``'s cached pages (written back first), so the next
    reader reads it from disk: posix_fadvise(DONTNEED) on this file alone."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


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


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few rounds, small synthetic file")
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every child")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 6, --quick 2)")
    p.add_argument("--block", type=int, help="timed steps per block (default 5, --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed steps per side (default 3, --quick 1)")
    p.add_argument("--no-compile", action="store_true", help="leave out ours with compile=True")
    p.add_argument(
        "--compile-limit", type=int, default=180, help="seconds allowed to compile (default 180)"
    )
    p.add_argument("--no-profile", action="store_true", help="leave out table 3")
    p.add_argument("--profile-steps", type=int, default=2, help="profiled steps per side")
    p.add_argument("--memory-steps", type=int, help="steps per memory run (default 20, --quick 5)")
    p.add_argument(
        "--big-tokens", type=int, help="synthetic train tokens (default 500M = 1 GB, --quick 50M)"
    )
    p.add_argument("--cold-fetches", type=int, default=20, help="fetches in the cold rows")
    p.add_argument("--keep", action="store_true", help="keep the synthetic token directory")
    args = p.parse_args(argv)
    defaults = {  # name: (full, quick)
        "rounds": (6, 2),
        "block": (5, 2),
        "warmup": (3, 1),
        "memory_steps": (20, 5),
        "big_tokens": (500_000_000, 50_000_000),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if min(args.rounds, args.block, args.warmup, args.memory_steps) < 1:
        p.error("--rounds, --block, --warmup and --memory-steps must be at least 1")
    compiled = not (args.no_compile or args.quick)

    report = Report()
    inputs = ensure_inputs()
    report.show(machine_table(inputs, args))
    speed = measure_torch(
        train_speed,
        threads=args.threads,
        data=str(PREPARED),
        rounds=args.rounds,
        block=args.block,
        warmup=args.warmup,
        compiled=compiled,
        compile_limit_s=args.compile_limit,
        profile_steps=0 if args.no_profile else args.profile_steps,
        fetch_repeats=200,
    )
    if not speed.error:
        speed.result["profile_steps"] = args.profile_steps
    report.show(speed_table(speed, args))
    if not args.no_profile:
        report.show(profile_table(speed))

    synthetic = SYNTHETIC if args.big_tokens == 500_000_000 else DATA / "stdlib10k_synthetic"
    gb = 2 * args.big_tokens / 1e9
    size = f"{gb:.1f} GB" if gb >= 1 else f"{1e3 * gb:,.0f} MB"
    memory: dict[str, Run] = {}
    cold: dict[str, Run] = {}
    try:
        write_s = make_synthetic(synthetic, args.big_tokens, inputs["meta"]["vocab_size"])
        contenders = [  # (label, directory, drop train.bin from the page cache first)
            ("real", PREPARED, False),
            (f"synthetic {size}, in page cache", synthetic, False),
            (f"synthetic {size}, dropped from page cache", synthetic, True),
        ]
        for label, folder, drop in contenders:
            if drop:
                drop_from_page_cache(folder / "train.bin")
            memory[label] = measure_torch(
                train_memory,
                threads=args.threads,
                data=str(folder),
                steps=args.memory_steps,
                fetch_repeats=200,
            )
        for advise in (False, True):
            label = f"synthetic {size}, cold, first {args.cold_fetches} fetches"
            label += ", MADV_RANDOM (experiment)" if advise else ""
            drop_from_page_cache(synthetic / "train.bin")
            cold[label] = measure_torch(
                fetch_cold,
                threads=args.threads,
                data=str(synthetic),
                fetches=args.cold_fetches,
                madvise_random=advise,
            )
    finally:
        if not args.keep:
            shutil.rmtree(synthetic, ignore_errors=True)
    report.show(data_table(speed, memory, cold))
    report.show(memory_table(memory, args.memory_steps, write_s))

    quick = " (--quick: few steps, not for docs)" if args.quick else ""
    report.finish(f"Training benchmark{quick}", args.markdown)


if __name__ == "__main__":
    main()
