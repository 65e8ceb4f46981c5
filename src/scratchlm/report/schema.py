"""The schema of report.json (version 1): what a report holds about each run (stage),
as dataclasses; ``card.Report`` holds them together with the environment and the
comparison. docs/report.md describes every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataFacts:
    """What a run trained on. Token counts come from the data directory's meta.json
    (pretraining); an instruction-tuning run names its conversation sources only."""

    sources: list[str]
    data_dir: str | None = None
    train_tokens: int | None = None
    val_tokens: int | None = None
    train_documents: int | None = None
    val_documents: int | None = None
    bytes_per_token: float | None = None  # train split: UTF-8 bytes / tokens


@dataclass
class ModelFacts:
    parameters: int
    non_embedding_parameters: int
    flops_per_token: float  # training (forward + backward) at the full context
    config: dict[str, Any]


@dataclass
class TrainingFacts:
    """How training went, from metrics.jsonl (or, without it, the checkpoint's state:
    steps, tokens and wall time only). ``tokens_per_s`` and ``mfu``: medians of the
    logged values; ``None`` where nothing was logged (MFU: the device's peak FLOP/s is
    not known, e.g. on a CPU)."""

    phase: str | None
    steps: int
    tokens: int
    wall_time_s: float | None = None
    tokens_per_parameter: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_memory_bytes: int | None = None
    final_train_loss: float | None = None
    best_val_loss: float | None = None
    best_val_loss_step: int | None = None
    best_val_bpb: float | None = None
    best_val_bpb_step: int | None = None
    last_val_loss: float | None = None
    events: list[str] = field(default_factory=list)
    # [[step, loss], ...] (thinned to MAX_CURVE_POINTS) and [[step, val_loss, val_bpb]].
    train_curve: list[list[float]] = field(default_factory=list)
    val_curve: list[list[float | None]] = field(default_factory=list)


@dataclass
class Evaluation:
    """An evaluation results file found in the run: its scalar fields, flattened
    (``trained.accuracy``); lists (e.g. every answer) are left out."""

    file: str
    scores: dict[str, Any]
    error: str | None = None  # the file could not be read as JSON


@dataclass
class ExportFacts:
    """An export found in the run, and how closely it matches the checkpoint."""

    path: str
    format: str  # "hf" or "gguf"
    max_abs_logit_diff: float | None = None
    checked_with: str | None = None  # what read the export back
    note: str | None = None


@dataclass
class Sample:
    prompt: str
    text: str
    source: str  # "greedy" (made by the report) or "step N" (logged while training)


@dataclass
class DecodeSpeed:
    """Batch-1 greedy decoding with the KV cache, tokens per second after the prompt."""

    fp32_tokens_per_s: float | None
    int8_tokens_per_s: float | None
    prompt_tokens: int
    new_tokens: int
    repeats: int  # the figures are the best of this many runs
    threads: int
    # CPU seconds the report's process got per wall-clock second while measuring (all
    # its threads): about ``threads`` when the cores were its own (torch's threads spin
    # while they wait for work), well under when other work took turns. The 1-minute
    # load average and the core count are kept for context (the load lags, and counts
    # the report itself).
    cpu_per_wall: float | None = None
    load_average: float | None = None
    cpu_count: int | None = None


# Below this share of its threads' CPU time, the measuring process waited for other work.
MIN_CPU_SHARE = 0.8


def is_busy(decode: dict[str, Any]) -> bool:
    """Whether a decode speed (DecodeSpeed as a dict) was measured while other work
    shared the CPU: its process got less than MIN_CPU_SHARE of its threads' time."""
    share, threads = decode.get("cpu_per_wall"), decode.get("threads") or 1
    return share is not None and share / threads < MIN_CPU_SHARE


@dataclass
class Stage:
    """One training run of a report (a pipeline directory has several)."""

    name: str
    path: str
    checkpoint: str | None = None
    data: DataFacts | None = None
    model: ModelFacts | None = None
    training: TrainingFacts | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    decode: DecodeSpeed | None = None
    exports: list[ExportFacts] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # relative to the report's folder
    missing: dict[str, str] = field(default_factory=dict)  # section -> why it is missing
