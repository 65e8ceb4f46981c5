"""What a training run shows while it runs: the console progress line, tokens per
second over recent steps, and model FLOPs utilisation (MFU) against the device's peak."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TextIO

import torch
from tqdm import tqdm

from scratchlm.errors import ConfigError


def format_stats(
    *,
    loss: float,
    lr: float,
    grad_norm: float | None = None,
    tokens_per_s: float | None = None,
    mfu: float | None = None,
) -> str:
    """``loss 3.1416  lr 3.00e-04  gnorm 0.877  12,346 tok/s  mfu 41.2%``; unknown values
    are left out."""
    parts = [f"loss {loss:.4f}", f"lr {lr:.2e}"]
    if grad_norm is not None:
        parts.append(f"gnorm {grad_norm:.3f}")
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:,.0f} tok/s")
    if mfu is not None:
        parts.append(f"mfu {mfu:.1%}")
    return "  ".join(parts)


# The live line is redrawn when this many seconds have passed since it last was: by
# time, not step count, so a slow run (a step every few seconds) shows each step and a
# fast one does not spend its time drawing.
REFRESH_SECONDS = 1.0
# The ETA is the mean time of this many recent steps times the steps left.
ETA_WINDOW = 50


class RedrawTimer:
    """Says when a live line is due for a redraw: at the first call, then whenever
    ``every`` seconds have passed since the last redraw. ``clock`` returns seconds;
    tests pass a fake one."""

    def __init__(self, every: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        """True (and the redraw counted as done now) when a redraw is due."""
        now = self._clock()
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return True


class Progress:
    """The one-line console display of a training run, drawn by tqdm.

    ``step 1200/5000  24%|██▍       | ETA 41:10 | loss 3.1416  lr 3.00e-04 ...``. The ETA
    comes first so that a narrow terminal, which cuts the line, still shows it. It is the
    steps left times the mean time of the recent steps of this process, each step's own
    time (``update(seconds=...)``): time before a resume, evaluations, checkpoints and
    pauses do not count, so stopping and resuming does not throw it off. The line is
    redrawn by time (``RedrawTimer``). ``enabled=False`` (other ranks, --quiet, not a
    terminal) prints nothing at all. ``file`` defaults to stderr, so that stdout stays
    clean for results.
    """

    BAR_FORMAT = "step {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar:10}| {desc}"

    def __init__(
        self,
        total_steps: int,
        *,
        initial_step: int = 0,
        enabled: bool = True,
        file: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        if total_steps < 1:
            raise ConfigError(f"total steps must be at least 1, got {total_steps}")
        self.enabled = enabled
        self.total = total_steps
        self._file = file if file is not None else sys.stderr
        self._redraw = RedrawTimer(refresh_seconds, clock=clock)
        self._step_seconds: deque[float] = deque(maxlen=ETA_WINDOW)
        self._stats = "starting"
        self._rates: dict[str, float | None] = {"tokens_per_s": None, "mfu": None}
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc="ETA ? | starting",
            bar_format=self.BAR_FORMAT,
            file=self._file,
            disable=not enabled,
            dynamic_ncols=True,
            leave=True,
        )

    def eta(self, step: int) -> float | None:
        """Seconds until the last step at the recent steps' pace; None before any step
        of this process has been timed."""
        if not self._step_seconds:
            return None
        mean = sum(self._step_seconds) / len(self._step_seconds)
        return max(self.total - step, 0) * mean

    def update(
        self,
        step: int,
        *,
        loss: float,
        lr: float,
        grad_norm: float | None,
        tokens_per_s: float | None = None,
        mfu: float | None = None,
        seconds: float | None = None,
    ) -> None:
        """Show that ``step`` (1-based, absolute) finished with these numbers, taking
        ``seconds`` of its own (None: not timed). Throughput and MFU, measured over
        several steps, keep their last known values when None. The line is redrawn when
        the redraw timer says so, and at the last step."""
        if not self.enabled:
            return
        if seconds is not None:
            self._step_seconds.append(seconds)
        for name, value in (("tokens_per_s", tokens_per_s), ("mfu", mfu)):
            if value is not None:
                self._rates[name] = value
        self._stats = format_stats(loss=loss, lr=lr, grad_norm=grad_norm, **self._rates)
        self._bar.n = step  # tqdm's own rate and ETA are not used: no update() call
        if self._redraw.due() or step >= self.total:
            self._describe()
            self._bar.refresh()

    def _describe(self) -> None:
        eta = self.eta(self._bar.n)
        shown = "?" if eta is None else tqdm.format_interval(eta)
        self._bar.set_description_str(f"ETA {shown} | {self._stats}", refresh=False)

    def write(self, message: str) -> None:
        """Print ``message`` on its own line above the progress line."""
        if self.enabled:
            self._bar.write(message, file=self._file)

    def close(self) -> None:
        """Draw the final state and leave the line in place."""
        if self.enabled:
            self._describe()  # the latest numbers; close() draws them
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Dense peak FLOP/s as the vendors publish them (datasheets; the "with sparsity" figures
# are twice these and never apply to training). Columns: fp16 and bf16 on tensor cores
# with fp32 accumulation (what PyTorch uses), tf32 on tensor cores, plain fp32. None: the
# chip has no such unit. First match wins, so a name that contains another comes first.
PEAK_FLOPS: tuple[tuple[str, float, float | None, float | None, float], ...] = (
    # substring of torch.cuda.get_device_name()  fp16      bf16      tf32      fp32
    ("H200 NVL", 835.5e12, 835.5e12, 417.5e12, 60.0e12),
    ("H200", 989.4e12, 989.4e12, 494.7e12, 66.9e12),
    ("H100 PCIe", 756.0e12, 756.0e12, 378.0e12, 51.2e12),
    ("H100 NVL", 835.5e12, 835.5e12, 417.5e12, 60.0e12),
    ("H100", 989.4e12, 989.4e12, 494.7e12, 66.9e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0e12, 312.0e12, 156.0e12, 19.5e12),  # SXM and PCIe alike
    ("A10G", 125.0e12, 125.0e12, 62.5e12, 31.2e12),  # AWS's A10: the A10's datasheet
    ("L40S", 362.1e12, 362.1e12, 183.0e12, 91.6e12),
    ("L4", 121.0e12, 121.0e12, 60.0e12, 30.3e12),
    ("RTX 4090", 165.2e12, 165.2e12, 82.6e12, 82.6e12),
    ("RTX 3090", 71.0e12, 71.0e12, 35.6e12, 35.6e12),
    ("V100", 125.0e12, None, None, 15.7e12),  # SXM2; Volta has no bf16 or tf32
    ("T4", 65.0e12, None, None, 8.1e12),  # Turing: no bf16 or tf32 either
)


def peak_flops(device: torch.device | str, dtype: torch.dtype) -> float | None:
    """Dense peak FLOP/s of one ``device`` for matmuls in ``dtype`` (under autocast, the
    autocast dtype), or None where it is not known: CPU, MPS, accelerators missing from
    ``PEAK_FLOPS``, and dtypes other than float16, bfloat16 and float32. For float32 the
    TF32 figure is used when PyTorch is allowed to use TF32 for matmuls."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, fp16, bf16, tf32, fp32 in PEAK_FLOPS:
        if key in name:
            if dtype == torch.float16:
                return fp16
            if dtype == torch.bfloat16:
                return bf16
            if dtype == torch.float32:
                tf32_on = (
                    torch.backends.cuda.matmul.allow_tf32
                    or torch.get_float32_matmul_precision() != "highest"
                )
                return tf32 if tf32_on and tf32 is not None else fp32
            return None
    return None


def mfu(tokens_per_s: float | None, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: the fraction of ``peak`` FLOP/s that the model's own
    arithmetic (``flops_per_token``, forward and backward) uses at ``tokens_per_s``.
    Pass per-device throughput with a per-device peak. None when either is unknown."""
    if tokens_per_s is None or peak is None or peak <= 0:
        return None
    return tokens_per_s * flops_per_token / peak


def peak_memory_bytes(device: torch.device | str) -> int | None:
    """The most memory this run has held so far: on a GPU, what torch allocated on it at
    the peak; elsewhere the process's peak resident set (VmHWM of /proc/self/status, so
    Linux only). None where neither is known. Logged with each training record."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except OSError:  # not Linux: no /proc
        return None
    return None


class Throughput:
    """Tokens per second over the last ``window`` steps, not counting paused time.

    The clock starts when the object is made; each ``step(tokens)`` closes one step that
    processed ``tokens`` tokens and began when the previous one ended. Time between
    ``pause()`` and ``resume()`` (evaluation, sampling, checkpoints) is left out of the
    step it falls in. ``clock`` returns seconds; tests pass a fake one.

        throughput = Throughput(window=20)
        for step in ...:
            train_step()
            throughput.step(tokens_per_step)
            if step % eval_every == 0:
                with throughput.paused():
                    evaluate()
    """

    def __init__(self, window: int = 20, *, clock: Callable[[], float] = time.perf_counter):
        if window < 1:
            raise ConfigError(f"the throughput window must be at least 1 step, got {window}")
        self._clock = clock
        self._steps: deque[tuple[int, float]] = deque(maxlen=window)  # (tokens, seconds)
        self._mark = clock()  # when the current step began (shifted past pauses)
        self._paused_at: float | None = None

    def step(self, tokens: int) -> None:
        """Record that a step of ``tokens`` tokens has just finished."""
        assert self._paused_at is None, "Throughput.step while paused: resume() first"
        now = self._clock()
        self._steps.append((tokens, now - self._mark))
        self._mark = now

    def pause(self) -> None:
        """Stop counting time until ``resume()``."""
        assert self._paused_at is None, "Throughput.pause while already paused"
        self._paused_at = self._clock()

    def resume(self) -> None:
        """Count time again; the pause is not charged to any step."""
        assert self._paused_at is not None, "Throughput.resume without pause"
        self._mark += self._clock() - self._paused_at
        self._paused_at = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with throughput.paused():`` around work that is not training."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens per second over the window; None before the first step."""
        seconds = sum(s for _, s in self._steps)
        if not self._steps or seconds <= 0:
            return None
        return sum(t for t, _ in self._steps) / seconds
