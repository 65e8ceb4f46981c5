"""Loss curves of a training run as PNG files, drawn from ``RUN_DIR/metrics.jsonl``; for
a pipeline directory such as ``runs/default``, the curves of each run (stage) inside it.

Matplotlib is an optional extra and is imported only here, when a plot is asked for.
Figures are drawn through ``matplotlib.figure.Figure`` and the Agg canvas directly, not
pyplot, so plotting changes no global backend state of the process that calls it (the
training loop may plot while it runs).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scratchlm.atomic import atomic_write_bytes
from scratchlm.errors import ConfigError, DataError
from scratchlm.train.metrics import METRICS_FILE, metrics_path, read_metrics

# The x axes of the loss plots: (record field, file name part, axis label).
LOSS_AXES = (("step", "steps", "step"), ("tokens", "tokens", "tokens"), ("time", "time", None))
# About this many smoothing spans fit across the train curve (see smoothing_beta).
SMOOTHING_SPANS = 50


def ema(values: Sequence[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction: ``avg_t / (1 - beta^t)``, so the
    curve does not start at 0. Non-finite values (a NaN loss) are passed over: the
    average holds its last value there."""
    assert 0 <= beta < 1, f"ema beta must be in [0, 1), got {beta}"
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg = beta * avg + (1 - beta) * v
            weight = beta * weight + (1 - beta)  # = 1 - beta^t over the finite values
        out.append(avg / weight if weight > 0 else math.nan)
    return out


def smoothing_beta(n_points: int) -> float | None:
    """The EMA beta that averages over about ``n_points / SMOOTHING_SPANS`` points, or
    None when that is under two points and smoothing would change nothing visible."""
    span = n_points / SMOOTHING_SPANS
    return 1 - 1 / span if span >= 2 else None


def matplotlib_parts() -> tuple[Any, Any, Any]:
    """``(Figure, FigureCanvasAgg, EngFormatter)``; ConfigError naming the extra when
    matplotlib is not installed. (Also used by the report's comparison plot.)"""
    try:  # deferred: matplotlib is an optional extra, and a slow import
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import EngFormatter
    except ImportError as e:
        raise ConfigError("plotting needs matplotlib: pip install 'scratchlm[plot]'") from e
    return Figure, FigureCanvasAgg, EngFormatter


def _time_unit(max_seconds: float) -> tuple[float, str]:
    """Divisor and axis label that keep wall-time ticks short."""
    if max_seconds >= 2 * 3600:
        return 3600.0, "wall time (hours)"
    if max_seconds >= 120:
        return 60.0, "wall time (minutes)"
    return 1.0, "wall time (seconds)"


def _points(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """x and y of the records that have both (NaN kept: matplotlib draws it as a gap)."""
    pairs = [(r[x], r[y]) for r in records if r.get(x) is not None and r.get(y) is not None]
    return [float(a) for a, _ in pairs], [float(b) for _, b in pairs]


def _loss_records(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The train records with a loss and the val records with a validation loss."""
    records = read_metrics(path)
    train = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    val = [r for r in records if r.get("kind") == "val" and r.get("val_loss") is not None]
    return train, val


def plot_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    title: str | None = None,
) -> list[Path]:
    """Write PNGs of a run's loss curves into ``out_dir`` (default: the run directory)
    and return their paths: ``loss_vs_steps.png``, ``loss_vs_tokens.png`` and
    ``loss_vs_time.png`` (train loss, raw and smoothed, with validation loss when the
    run has evaluated), and ``val_bpb.png`` when validation reported bits per byte.
    ``run_dir`` may also be the metrics file itself. The plots' titles start with
    ``title`` (default: the run directory's name). Each file is replaced atomically."""
    path = metrics_path(run_dir)
    train, val = _loss_records(path)
    if not train and not val:
        raise DataError(
            f"{path} has no train or val records: nothing to plot yet; "
            "run again once training has logged a step"
        )
    Figure, FigureCanvasAgg, EngFormatter = matplotlib_parts()
    out = Path(out_dir) if out_dir is not None else path.parent
    out.mkdir(parents=True, exist_ok=True)
    title = title or path.parent.resolve().name

    def save(fig: Any, name: str) -> Path:
        buf = io.BytesIO()
        FigureCanvasAgg(fig).print_png(buf)
        atomic_write_bytes(out / name, buf.getvalue())
        return out / name

    written = []
    max_time = max((r.get("time") or 0.0 for r in train + val), default=0.0)
    for field, name_part, label in LOSS_AXES:
        tx, ty = _points(train, field, "loss")
        vx, vy = _points(val, field, "val_loss")
        if not tx and not vx:
            continue  # e.g. records written without that field
        scale = 1.0
        if field == "time":
            scale, label = _time_unit(max_time)
        fig = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
        ax = fig.add_subplot()
        if tx:
            beta = smoothing_beta(len(ty))
            tx = [x / scale for x in tx]
            ax.plot(tx, ty, color="C0", lw=1, alpha=0.35 if beta else 1.0, label="train")
            if beta is not None:
                ax.plot(tx, ema(ty, beta), color="C0", lw=1.8, label="train (smoothed)")
        if vx:
            ax.plot([x / scale for x in vx], vy, "o-", color="C1", ms=3, label="validation")
        if field == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter())
        ax.set(xlabel=label, ylabel="loss (nats per token)", title=f"{title}: loss")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(save(fig, f"loss_vs_{name_part}.png"))

    bx, by = _points(val, "step", "val_bpb")
    if bx:
        fig = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
        ax = fig.add_subplot()
        ax.plot(bx, by, "o-", color="C1", ms=3)
        ax.set(xlabel="step", ylabel="bits per byte", title=f"{title}: validation bits per byte")
        ax.grid(alpha=0.3)
        written.append(save(fig, "val_bpb.png"))
    return written


def run_stages(folder: str | os.PathLike) -> list[Path]:
    """The runs directly inside ``folder``, by name: its subdirectories that hold a
    metrics log (``runs/default`` gives ``pretrain`` and ``sft``). Empty for a run
    directory itself or anything else."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / METRICS_FILE).exists():
        return []
    return sorted(p for p in folder.iterdir() if (p / METRICS_FILE).is_file())


def plot_runs(
    path: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> dict[str, list[Path]]:
    """``plot_run`` for a run directory (or its metrics file), or for each run of a
    pipeline directory (``run_stages``), each stage into its own directory or into
    ``OUT_DIR/STAGE``. Returns the PNGs written per run, keyed by the run's path; a stage
    with nothing to plot yet gets an empty list (DataError when no stage has anything)."""
    stages = run_stages(path)
    if not stages:
        return {str(path): plot_run(path, out_dir)}
    written: dict[str, list[Path]] = {}
    for stage in stages:
        out = Path(out_dir) / stage.name if out_dir is not None else None
        has_losses = any(_loss_records(stage / METRICS_FILE))  # a stage may have just begun
        title = f"{stage.resolve().parent.name}/{stage.name}"  # default/pretrain
        written[str(stage)] = plot_run(stage, out, title=title) if has_losses else []
    if not any(written.values()):
        names = ", ".join(stage.name for stage in stages)
        raise DataError(f"the runs in {path} ({names}) have no train or val records yet")
    return written
