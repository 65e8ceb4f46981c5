"""The measurements of ``bench_train.py``: the tasks each run in a fresh process
(``harness.measure``) and return a JSON-ready dict. Their inputs: ``train_inputs``.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from harness import time_limit

PRESET = "small"
BATCH = 8


def _trainer(data: str, out: Path, compile: bool = False):
    """A Trainer of the preset on ``data`` (fp32, CPU, no eval/checkpoints/logging in the
    steps), ready for ``_train_step()`` (the constructor builds everything)."""
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
    return Trainer(config, echo=lambda line: None)


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
