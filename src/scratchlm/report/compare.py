"""Two reports side by side: the key figures of both runs, the difference, and the
regressions, each judged against a stated threshold (``THRESHOLDS``).

Works on report dicts (``Report.to_dict()`` or a report.json read back), so a run can be
compared with a report written long ago. Stages are matched by name (pretrain with
pretrain); two lone runs are matched whatever their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scratchlm.report.schema import is_busy

# How much worse a figure may get before it is flagged as a regression, relative to the
# other run's value. Validation bpb and loss are deterministic for a given run on a CPU,
# so a small margin suffices; speeds vary with the machine's load, hence 10%; a fact
# score is a count of right answers, and one fewer is already a regression.
THRESHOLDS = {
    "bpb": 0.005,  # best validation bits per byte: flagged when > 0.5% higher
    "loss": 0.005,  # best validation loss (runs without bpb): > 0.5% higher
    "speed": 0.10,  # tokens per second (training, decode): > 10% lower
    "score": 0.0,  # evaluation accuracies and scores: any drop
}
# Evaluation fields judged as scores (higher is better) or as bits per byte (lower).
SCORE_SUFFIXES = ("accuracy", "acc", "acc_norm", "score", "centred", "centered", "average", "core")
BPB_MARK = "bpb"


@dataclass
class Figure:
    """One row of the comparison: this run's value, the other's, this minus other."""

    name: str
    this: float | None
    other: float | None
    delta: float | None
    better: str | None = None  # "lower", "higher", or None when neither is better
    regression: bool = False


@dataclass
class Comparison:
    other: str  # the run (or report.json) compared with
    thresholds: dict[str, float]
    # Speeds are judged only between reports made on the same kind of machine (CPU,
    # GPU, threads): on another machine a slower figure says nothing about the run.
    same_machine: bool = True
    plot: str | None = None  # both runs' curves, relative to report.md
    # A decode speed of either run was measured on a busy machine: not judged.
    busy: bool = False
    figures: list[Figure] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)  # one line each


def _get(data: dict[str, Any] | None, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return float(value)


# The figures of a stage: (label, path in the stage dict, which way is better, threshold).
STAGE_FIGURES = (
    ("parameters", "model.parameters", None, None),
    ("steps", "training.steps", None, None),
    ("tokens", "training.tokens", None, None),
    ("tokens per parameter", "training.tokens_per_parameter", None, None),
    ("best val bpb", "training.best_val_bpb", "lower", "bpb"),
    ("best val loss", "training.best_val_loss", "lower", "loss"),
    ("final train loss", "training.final_train_loss", "lower", None),
    ("train tokens/s", "training.tokens_per_s", "higher", "speed"),
    ("wall time (s)", "training.wall_time_s", None, None),
    ("decode fp32 tokens/s", "decode.fp32_tokens_per_s", "higher", "speed"),
    ("decode int8 tokens/s", "decode.int8_tokens_per_s", "higher", "speed"),
)


def is_regression(this: float, other: float, better: str, threshold: float) -> bool:
    """Whether ``this`` is worse than ``other`` by more than ``threshold`` (relative)."""
    if better == "lower":
        return this > other * (1 + threshold) if other >= 0 else this > other
    return this < other * (1 - threshold) if other >= 0 else this < other


def _figure(
    name: str, this: Any, other: Any, better: str | None, kind: str | None
) -> Figure | None:
    a, b = _number(this), _number(other)
    if a is None and b is None:
        return None
    delta = a - b if a is not None and b is not None else None
    flagged = (
        delta is not None
        and better is not None
        and kind is not None
        and is_regression(a, b, better, THRESHOLDS[kind])
    )
    return Figure(name, a, b, delta, better, flagged)


def _evaluation_kind(key: str) -> tuple[str | None, str | None]:
    """Which way an evaluation field is better and its threshold; (None, None) when it
    is no score (a count, a setting)."""
    parts = key.lower().split(".")
    # {"acc": {"value": 0.3, "stderr": 0.01}}: the value is acc's
    last = parts[-2] if parts[-1] == "value" and len(parts) > 1 else parts[-1]
    if BPB_MARK in last:
        return "lower", "bpb"
    if last.endswith(SCORE_SUFFIXES):
        return "higher", "score"
    return None, None


def _scores(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        f"{e['file']}: {key}": value
        for e in evaluations or []
        for key, value in (e.get("scores") or {}).items()
        if _evaluation_kind(key)[0] is not None
    }


def _busy(stage: dict[str, Any] | None) -> bool:
    return is_busy((stage or {}).get("decode") or {})


def _machine(report: dict[str, Any]) -> tuple[Any, ...]:
    env = report.get("environment") or {}
    return env.get("cpu"), env.get("gpu"), env.get("torch_threads")


def stage_pairs(
    this: dict[str, Any], other: dict[str, Any]
) -> list[tuple[str, dict | None, dict | None]]:
    """``(stage name, this run's stage, the other's)``, matched by name; two lone runs
    are one pair (name "") whatever their names."""
    mine, theirs = this.get("stages") or [], other.get("stages") or []
    if len(mine) == 1 and len(theirs) == 1:
        return [("", mine[0], theirs[0])]
    by_name = {s["name"]: s for s in theirs}
    pairs = [(s["name"], s, by_name.get(s["name"])) for s in mine]
    pairs += [(s["name"], None, s) for s in theirs if s["name"] not in {m["name"] for m in mine}]
    return pairs


def compare_reports(
    this: dict[str, Any], other: dict[str, Any], *, other_name: str = "other"
) -> Comparison:
    """The key figures of ``this`` report beside ``other``'s, with regressions flagged."""
    result = Comparison(other=other_name, thresholds=dict(THRESHOLDS))
    result.same_machine = _machine(this) == _machine(other)
    for stage_name, mine, theirs in stage_pairs(this, other):
        prefix = f"{stage_name}: " if stage_name else ""
        for label, path, better, kind in STAGE_FIGURES:
            if label == "best val loss" and (
                _get(mine, "training.best_val_bpb") is not None
                or _get(theirs, "training.best_val_bpb") is not None
            ):
                kind = None  # judged by bpb, which does not depend on the tokenizer
            if kind == "speed" and not result.same_machine:
                kind = None
            if path.startswith("decode.") and (_busy(mine) or _busy(theirs)):
                kind = None  # measured while other work shared the CPU
                result.busy = True
            row = _figure(prefix + label, _get(mine, path), _get(theirs, path), better, kind)
            if row is not None:
                result.figures.append(row)
        a = _scores((mine or {}).get("evaluations"))
        b = _scores((theirs or {}).get("evaluations"))
        for key in dict.fromkeys([*a, *b]):
            better, kind = _evaluation_kind(key)
            row = _figure(prefix + key, a.get(key), b.get(key), better, kind)
            if row is not None:
                result.figures.append(row)
    a, b = _scores(this.get("evaluations")), _scores(other.get("evaluations"))
    for key in dict.fromkeys([*a, *b]):
        better, kind = _evaluation_kind(key)
        row = _figure(key, a.get(key), b.get(key), better, kind)
        if row is not None:
            result.figures.append(row)
    for row in result.figures:
        if row.regression:
            assert row.this is not None and row.other is not None
            result.regressions.append(
                f"{row.name}: {row.this:.4g} vs {row.other:.4g} ({row.better} is better)"
            )
    return result
