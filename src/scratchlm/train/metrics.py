"""What a training run reports while it runs: the JSONL metrics log, the console progress
line, tokens per second and model FLOPs utilisation (MFU).

``RUN_DIR/metrics.jsonl`` holds one JSON object per line, each with a ``kind``:
``train`` (step, tokens, time, loss, lr, grad_norm, tokens_per_s, mfu), ``val`` (step,
tokens, time, val_loss, val_ppl, val_bpb), ``sample`` (step, prompt, text) and ``event``
(step, message). The file is only ever appended to, one flushed line per record, so a
crash loses at most the line being written; after a resume, ``truncate_after`` drops the
records of steps the restored checkpoint never saw, and the file reads as one run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import torch
from tqdm import tqdm

from scratchlm.atomic import atomic_write_bytes
from scratchlm.errors import ConfigError, DataError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def metrics_path(run_dir_or_file: str | os.PathLike) -> Path:
    """``RUN_DIR/metrics.jsonl`` for a run directory; a file path is returned as given."""
    path = Path(run_dir_or_file)
    return path / METRICS_FILE if path.is_dir() else path


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    """The JSON object on one line, or None when the line is not one."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _records(path: Path, data: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """``(raw line, record)`` for every record in ``data``, the bytes of ``path``.

    Split on b"\\n" only: str.splitlines would also split at U+2028 and friends, which
    may appear unescaped inside a sample's text. A last line without its newline is kept
    only if it is a whole record: otherwise it is what a crash cut short, and ignored.
    """
    *lines, tail = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record = _parse_record(raw)
        if record is None:
            raise DataError(f"{path}, line {number}: not a JSON object; fix or delete that line")
        yield raw, record
    record = _parse_record(tail) if tail.strip() else None
    if record is not None:
        yield tail, record


def read_metrics(run_dir_or_file: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run, oldest first.

    Accepts the run directory or the metrics file. A run directory without a metrics
    file yet gives ``[]``; a path that does not exist is a DataError.
    """
    path = metrics_path(run_dir_or_file)
    if not path.exists():
        if path.parent.is_dir() and path.name == METRICS_FILE:
            return []
        raise DataError(
            f"{run_dir_or_file} does not exist: give a run directory or its {METRICS_FILE}"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e
    return [record for _, record in _records(path, data)]


def _end_on_newline(path: Path) -> None:
    """Make an existing metrics file end with a newline, so that the next record starts
    a line of its own. A last line a crash cut short is cut off (it holds no whole
    record); a whole record that only lacks its newline gets one."""
    data = path.read_bytes()  # once per open; truncate_after reads it all too
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1  # where the last line begins
    with open(path, "r+b") as f:
        if _parse_record(data[start:]) is not None:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)


def _json_default(obj: Any) -> Any:
    """Let 0-d tensors and numpy scalars into a record as plain Python numbers."""
    if getattr(obj, "ndim", None) == 0 and callable(getattr(obj, "item", None)):
        return obj.item()  # .item() on a GPU tensor waits for the GPU: log sparingly
    raise TypeError(f"a metrics record cannot hold {type(obj).__name__}: {obj!r}")


class MetricsLog:
    """Appends records to ``RUN_DIR/metrics.jsonl`` (and optionally TensorBoard).

    ``log(record)`` writes one JSON line and flushes it, so the file is current even if
    the process dies. Values are JSON numbers, strings, lists, dicts or null; NaN and
    infinity are written as Python's json writes them (``NaN``, ``Infinity``), which
    ``read_metrics`` reads back, because a diverged loss is worth recording as it is.

    With ``tensorboard=True`` the numbers of ``train`` and ``val`` records also go to
    ``RUN_DIR/tensorboard`` as scalars (``train/loss``, ``val/val_bpb`` ...), samples and
    events as text. That needs the optional ``tensorboard`` package.
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self._writer: Any = None
        if tensorboard:  # first, so that a missing package fails before any file exists
            self._writer = _summary_writer(self.run_dir / TENSORBOARD_DIR)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = self._open()

    def _open(self) -> BinaryIO:
        if self.path.exists():
            _end_on_newline(self.path)
        return open(self.path, "ab")

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and flush it."""
        assert isinstance(record, dict), f"a metrics record is a dict, got {type(record)}"
        assert self._file is not None, "MetricsLog.log after close()"
        line = json.dumps(record, ensure_ascii=False, default=_json_default)
        # A lone surrogate (text cut mid-character) cannot be UTF-8; "\udc80" written as
        # that escape is still valid JSON and reads back as the same string.
        self._file.write(line.encode("utf-8", errors="backslashreplace") + b"\n")
        self._file.flush()
        if self._writer is not None:
            _write_tensorboard(self._writer, record)

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``step <= step`` (and any without a step), rewriting
        the file atomically: a crash leaves either the old file or the new one."""
        if self._file is not None:
            self._file.close()
            self._file = None  # until reopened: a failed rewrite leaves the log closed
        if self.path.exists():
            kept = []
            for raw, record in _records(self.path, self.path.read_bytes()):
                if record.get("step") is None or record["step"] <= step:
                    kept.append(raw + b"\n")
            atomic_write_bytes(self.path, b"".join(kept))
        self._file = self._open()
        if self._writer is not None:
            # TensorBoard drops its own events from purge_step on when a writer opens.
            self._writer.close()
            self._writer = _summary_writer(self.run_dir / TENSORBOARD_DIR, purge_step=step + 1)

    def close(self) -> None:
        """Close the file (and the TensorBoard writer); calling it again does nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary_writer(log_dir: str | os.PathLike, purge_step: int | None = None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            "TensorBoard logging needs the tensorboard package: "
            "pip install 'scratchlm[tensorboard]' (or turn TensorBoard logging off)"
        ) from e
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _write_tensorboard(writer: Any, record: dict[str, Any]) -> None:
    kind, step = record.get("kind"), record.get("step")
    if kind in ("train", "val"):
        for key, value in record.items():
            if key in ("kind", "step") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                writer.add_scalar(f"{kind}/{key}", value, global_step=step)
    elif kind == "sample":
        writer.add_text("sample", f"{record.get('prompt', '')}{record.get('text', '')}", step)
    elif kind == "event":
        writer.add_text("event", str(record.get("message", "")), step)


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
