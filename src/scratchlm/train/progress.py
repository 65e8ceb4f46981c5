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


class Progress:
    """The one-line console display of a training run, drawn by tqdm.

    ``step 1200/5000  24%|██▍       | ETA 41:10 | loss 3.1416  lr 3.00e-04 ...``. The ETA
    comes first so that a narrow terminal, which cuts the line, still shows it.
    ``enabled=False`` (other ranks, --quiet) prints nothing at all. ``file`` defaults to
    stderr, so that stdout stays clean for results.
    """

    BAR_FORMAT = "step {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar:10}| ETA {remaining} | {desc}"

    def __init__(
        self,
        total_steps: int,
        *,
        initial_step: int = 0,
        enabled: bool = True,
        file: TextIO | None = None,
    ) -> None:
        if total_steps < 1:
            raise ConfigError(f"total steps must be at least 1, got {total_steps}")
        self.enabled = enabled
        self._file = file if file is not None else sys.stderr
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc="starting",
            bar_format=self.BAR_FORMAT,
            file=self._file,
            disable=not enabled,
            dynamic_ncols=True,
            leave=True,
        )

    def update(
        self,
        step: int,
        *,
        loss: float,
        lr: float,
        grad_norm: float | None,
        tokens_per_s: float | None,
        mfu: float | None = None,
    ) -> None:
        """Show that ``step`` (1-based, absolute) finished with these numbers. The line
        is redrawn at most ten times a second, whatever the step rate."""
        if not self.enabled:
            return
        stats = format_stats(
            loss=loss, lr=lr, grad_norm=grad_norm, tokens_per_s=tokens_per_s, mfu=mfu
        )
        self._bar.set_description_str(stats, refresh=False)
        self._bar.update(step - self._bar.n)  # negative after a rollback: tqdm allows it

    def write(self, message: str) -> None:
        """Print ``message`` on its own line above the progress line."""
        if self.enabled:
            self._bar.write(message, file=self._file)

    def close(self) -> None:
        """Draw the final state and leave the line in place."""
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
