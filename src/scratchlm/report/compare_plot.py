"""The curves of two runs in one picture, for ``scratchlm report --compare``: per stage,
validation bits per byte (or loss, where a run has no bpb) and train loss against steps,
this run in one colour and the other in another. Drawn from the report dicts, so a run
can be set beside a report.json written long ago."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from scratchlm.atomic import atomic_write_bytes
from scratchlm.train.plot import ema, matplotlib_parts, smoothing_beta


def _val_series(stage: dict[str, Any] | None, column: int) -> tuple[list[float], list[float]]:
    """Steps and column 1 (val loss) or 2 (val bpb) of a stage's val_curve."""
    curve = ((stage or {}).get("training") or {}).get("val_curve") or []
    points = [(p[0], p[column]) for p in curve if p[0] is not None and p[column] is not None]
    return [float(x) for x, _ in points], [float(y) for _, y in points]


def _train_series(stage: dict[str, Any] | None) -> tuple[list[float], list[float]]:
    curve = ((stage or {}).get("training") or {}).get("train_curve") or []
    return [float(p[0]) for p in curve], [float(p[1]) for p in curve]


def compare_plot(
    pairs: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
    names: tuple[str, str],
    path: Path,
) -> Path | None:
    """One PNG at ``path`` with a row per stage pair ``(label, this, other)``: train loss
    (left) and validation bpb or loss (right) of both runs. None when no stage of
    either run has a curve."""
    rows = [p for p in pairs if any(_train_series(s)[0] for s in p[1:])]
    if not rows:
        return None
    Figure, FigureCanvasAgg, _ = matplotlib_parts()
    fig = Figure(figsize=(10, 3.6 * len(rows)), dpi=100, layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for (label, this, other), (left, right) in zip(rows, axes, strict=True):
        has_bpb = all(_val_series(s, 2)[0] for s in (this, other) if s is not None)
        column, what = (2, "validation bits per byte") if has_bpb else (1, "validation loss")
        # The other run dashed: where the two runs agree, both lines still show.
        for stage, name, style in ((this, names[0], "C0-"), (other, names[1], "C3--")):
            x, y = _train_series(stage)
            if x:
                beta = smoothing_beta(len(y))
                left.plot(x, ema(y, beta) if beta else y, style, lw=1.5, label=name)
            vx, vy = _val_series(stage, column)
            if vx:
                right.plot(vx, vy, style, marker="o", ms=3, label=name)
        prefix = f"{label}: " if label else ""
        left.set(xlabel="step", ylabel="loss (nats per token)", title=f"{prefix}train loss")
        right.set(xlabel="step", ylabel=what, title=f"{prefix}{what}")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    atomic_write_bytes(path, buf.getvalue())
    return path
