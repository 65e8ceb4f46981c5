"""The facts of a run read from its files: what it trained on, the model, how training
went, the evaluations and exports it holds. Nothing here loads weights or runs a model
(``measure.py`` does); anything missing is returned as None with the reason in the
stage's ``missing``, never raised, so that a half-finished run still gets a report.

The files read: ``train_config.json`` (the run's settings), the data directory's
``meta.json`` (sources, tokens, bytes per token), the checkpoint's ``config.json`` and
``trainer_state/state.json``, ``metrics.jsonl`` (train, val and sample records), any
other ``*.json`` of the run as an evaluation, and HF folders or ``.gguf`` files as
exports.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scratchlm.checkpoint import read_config, resolve_checkpoint
from scratchlm.checkpoint.files import CONFIG, MANIFEST, STATE_JSON
from scratchlm.checkpoint.manager import CHECKPOINTS
from scratchlm.config import ModelConfig
from scratchlm.errors import DataError, ScratchLMError
from scratchlm.model import TransformerLM
from scratchlm.report.schema import (
    DataFacts,
    Evaluation,
    ExportFacts,
    ModelFacts,
    Sample,
    Stage,
    TrainingFacts,
)
from scratchlm.train.config_files import CONFIG_FILE
from scratchlm.train.metrics import METRICS_FILE, read_metrics

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
# JSON files of a run that are not evaluation results.
NOT_EVALUATIONS = {
    REPORT_JSON,
    CONFIG_FILE,
    CONFIG,
    MANIFEST,
    "meta.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
}
# Folders of a run where evaluation results may also be kept.
EVAL_FOLDERS = ("evals", "eval")
# An evaluation file's numbers shown at most (a file of thousands is summarised).
MAX_EVAL_FIELDS = 100
# Train-loss points kept in report.json (the full curve is in metrics.jsonl).
MAX_CURVE_POINTS = 400
# Fields a train record may carry for peak accelerator memory, in bytes.
PEAK_MEMORY_FIELDS = ("peak_memory_bytes", "peak_mem_bytes", "max_memory_allocated")


def _looks_like_run(folder: Path) -> bool:
    """A run (metrics, checkpoints, settings) or a checkpoint (its manifest: an HF
    export also has a config.json, but no manifest)."""
    return any(
        (folder / name).exists() for name in (METRICS_FILE, CHECKPOINTS, CONFIG_FILE, MANIFEST)
    )


def find_stages(run_dir: Path) -> list[Path]:
    """The runs a report covers: ``run_dir`` itself when it is a run (metrics,
    checkpoints, settings) or a checkpoint, else its subdirectories that are runs (a
    pipeline directory: pretrain/, sft/). DataError when there is none."""
    if not run_dir.exists():
        raise DataError(f"{run_dir} does not exist: give a run directory (e.g. runs/default)")
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a directory: give a run directory")
    if _looks_like_run(run_dir):
        return [run_dir]
    stages = sorted(p for p in run_dir.iterdir() if p.is_dir() and _looks_like_run(p))
    if not stages:
        raise DataError(
            f"{run_dir} is not a run directory: it holds no {METRICS_FILE}, {CHECKPOINTS}/, "
            f"{CONFIG_FILE} or checkpoint, and no run folder inside"
        )
    return stages


def read_json_file(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (logged)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("ignoring %s: %s", path, e)
        return None


def find_checkpoint(stage: Path) -> Path | None:
    """The stage's newest valid checkpoint (or the stage itself when it is one)."""
    try:
        return resolve_checkpoint(stage)
    except ScratchLMError as e:
        log.debug("no checkpoint in %s: %s", stage, e)
        return None


def _existing_data_dir(configured: str, stage: Path) -> Path | None:
    """The data directory a run's settings name, found from where the report runs:
    the path as written (relative to where training ran), or its tail under the
    stage's ancestors (``runs/default/data`` from ``/tmp/default/pretrain``)."""
    path = Path(configured)
    if (path / "meta.json").is_file():
        return path
    for ancestor in [stage, *stage.resolve().parents][:4]:
        for k in range(len(path.parts)):
            candidate = ancestor.joinpath(*path.parts[k:])
            if (candidate / "meta.json").is_file():
                return candidate
    return None


def data_facts(settings: dict[str, Any] | None, stage: Path) -> tuple[DataFacts | None, str]:
    """What the run trained on, or None and why."""
    if settings is None:
        return None, f"no {CONFIG_FILE} in the run"
    conversations = settings.get("conversations") or []
    if settings.get("phase") == "sft" and conversations:
        return DataFacts(sources=[str(c) for c in conversations]), ""
    configured = settings.get("data") or ""
    folder = _existing_data_dir(configured, stage) if configured else None
    meta = read_json_file(folder / "meta.json") if folder else None
    if not isinstance(meta, dict):
        return None, f"its data directory ({configured or 'not set'}) has no readable meta.json"
    splits = meta.get("splits", {})
    train, val = splits.get("train", {}), splits.get("val", {})
    return DataFacts(
        sources=[str(s) for s in meta.get("inputs", [])],
        data_dir=str(folder),
        train_tokens=train.get("tokens"),
        val_tokens=val.get("tokens"),
        train_documents=train.get("documents"),
        val_documents=val.get("documents"),
        bytes_per_token=train.get("bytes_per_token"),
    ), ""


def model_facts(checkpoint: Path) -> ModelFacts:
    """Parameter count and FLOPs per token from the checkpoint's config.json (the model
    is built on the meta device: no memory for weights)."""
    config = ModelConfig.from_dict(read_config(checkpoint)["model"])
    with torch.device("meta"):
        model = TransformerLM(config)
    return ModelFacts(
        parameters=model.num_parameters(),
        non_embedding_parameters=model.num_parameters(non_embedding=True),
        flops_per_token=model.flops_per_token(),
        config=config.to_dict(),
    )


def _median(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return statistics.median(numbers) if numbers else None


def _best(records: list[dict[str, Any]], key: str) -> tuple[float | None, int | None]:
    """The lowest finite ``key`` of ``records`` and its step (the first, on a tie)."""
    found = [r for r in records if isinstance(r.get(key), int | float) and r[key] == r[key]]
    if not found:
        return None, None
    best = min(found, key=lambda r: r[key])
    return float(best[key]), best.get("step")


def _thin(points: list[list[float]], most: int) -> list[list[float]]:
    """At most ``most`` points, evenly spaced, the last one always kept."""
    if len(points) <= most:
        return points
    stride = -(-len(points) // most)
    kept = points[::stride]
    return kept if kept[-1] is points[-1] else [*kept, points[-1]]


def training_facts(
    records: list[dict[str, Any]], state: dict[str, Any] | None, phase: str | None
) -> TrainingFacts | None:
    """How training went, from the run's metrics records; from the checkpoint's trainer
    state when there are none; None when there is neither."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train and not val:
        if not isinstance(state, dict) or "step" not in state:
            return None
        return TrainingFacts(
            phase=state.get("phase", phase),
            steps=int(state["step"]),
            tokens=int(state.get("tokens", 0)),
            wall_time_s=state.get("elapsed"),
            best_val_loss=state.get("best_val"),
            last_val_loss=state.get("last_val"),
            final_train_loss=state.get("last_loss"),
        )
    last = max(train + val, key=lambda r: (r.get("step", 0), r.get("time") or 0.0))
    best_loss, best_loss_step = _best(val, "val_loss")
    best_bpb, best_bpb_step = _best(val, "val_bpb")
    peaks = [r[f] for r in train for f in PEAK_MEMORY_FIELDS if isinstance(r.get(f), int | float)]
    return TrainingFacts(
        phase=phase,
        steps=int(last.get("step", 0)),
        tokens=int(last.get("tokens", 0)),
        wall_time_s=max((r.get("time") or 0.0 for r in records), default=None),
        tokens_per_s=_median([r.get("tokens_per_s") for r in train]),
        mfu=_median([r.get("mfu") for r in train]),
        peak_memory_bytes=int(max(peaks)) if peaks else None,
        final_train_loss=train[-1].get("loss") if train else None,
        best_val_loss=best_loss,
        best_val_loss_step=best_loss_step,
        best_val_bpb=best_bpb,
        best_val_bpb_step=best_bpb_step,
        last_val_loss=val[-1].get("val_loss") if val else None,
        events=[str(r.get("message")) for r in records if r.get("kind") == "event"],
        train_curve=_thin(
            [[r["step"], r["loss"]] for r in train if "step" in r and "loss" in r],
            MAX_CURVE_POINTS,
        ),
        val_curve=[[r.get("step"), r.get("val_loss"), r.get("val_bpb")] for r in val],
    )


def logged_samples(records: list[dict[str, Any]]) -> list[Sample]:
    """The samples of the last evaluation that logged any (one per prompt)."""
    samples = [r for r in records if r.get("kind") == "sample"]
    if not samples:
        return []
    step = samples[-1].get("step")
    return [
        Sample(prompt=str(r.get("prompt", "")), text=str(r.get("text", "")), source=f"step {step}")
        for r in samples
        if r.get("step") == step
    ]


def flatten_scores(data: Any, prefix: str = "") -> dict[str, Any]:
    """The scalar fields of a JSON value under dotted names; lists are left out, long
    strings too (an answer's text is no score)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_scores(value, f"{prefix}{key}."))
    elif isinstance(data, bool | int | float) or (isinstance(data, str) and len(data) <= 80):
        out[prefix.rstrip(".")] = data
    return out


def _entry_name(index: int, entry: dict[str, Any]) -> str:
    for key in ("task", "name", "file"):
        if isinstance(entry.get(key), str):
            return entry[key]
    return str(index)


def find_evaluations(folder: Path, root: Path) -> list[Evaluation]:
    """Every evaluation results file in ``folder`` (and its ``evals/`` folder): each
    ``*.json`` that is not a file of the run's own (settings, checkpoint, tokenizer,
    this report). Paths are relative to ``root``."""
    files = sorted(p for p in folder.glob("*.json") if p.name not in NOT_EVALUATIONS)
    for name in EVAL_FOLDERS:
        files += sorted((folder / name).rglob("*.json")) if (folder / name).is_dir() else []
    found = []
    for path in files:
        where = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            found.append(Evaluation(file=where, scores={}, error=str(e)))
            continue
        if isinstance(data, list):  # one result per entry (a file, a task): by its name
            data = {_entry_name(i, x): x for i, x in enumerate(data) if isinstance(x, dict)}
        scores = flatten_scores(data)
        if len(scores) > MAX_EVAL_FIELDS:
            scores = dict(list(scores.items())[:MAX_EVAL_FIELDS])
        found.append(Evaluation(file=where, scores=scores))
    return found


def find_exports(folder: Path, root: Path, skip: Sequence[Path] = ()) -> list[ExportFacts]:
    """Exports kept in ``folder`` or one level below (but not in ``skip``: the stages of
    a pipeline directory): Hugging Face folders (config.json with a ``model_type``, no
    checkpoint manifest) and ``.gguf`` files."""
    found = []
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    for path in candidates:
        if path.name == CHECKPOINTS or path in skip:
            continue
        rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        config = read_json_file(path / CONFIG) if not (path / MANIFEST).exists() else None
        if isinstance(config, dict) and "model_type" in config:
            found.append(ExportFacts(path=rel, format="hf"))
        for gguf in sorted(path.glob("*.gguf")):
            gguf_rel = str(gguf.relative_to(root)) if gguf.is_relative_to(root) else str(gguf)
            found.append(ExportFacts(path=gguf_rel, format="gguf"))
    return found


def collect_stage(stage: Path, root: Path) -> Stage:
    """The facts of one run that its files hold (no model is run)."""
    name = stage.name if stage != root else stage.resolve().name
    facts = Stage(name=name, path=str(stage))
    settings = read_json_file(stage / CONFIG_FILE)
    settings = settings if isinstance(settings, dict) else None
    checkpoint = find_checkpoint(stage)
    facts.checkpoint = str(checkpoint) if checkpoint else None
    if checkpoint is None:
        facts.missing["model"] = "no valid checkpoint"
    else:
        facts.model = model_facts(checkpoint)
    facts.data, why = data_facts(settings, stage)
    if facts.data is None:
        facts.missing["data"] = why
    try:
        records = read_metrics(stage) if (stage / METRICS_FILE).is_file() else []
    except DataError as e:
        log.warning("%s", e)
        records = []
    state = read_json_file(checkpoint / STATE_JSON) if checkpoint else None
    phase = (settings or {}).get("phase") or (state or {}).get("phase")
    facts.training = training_facts(records, state, phase)
    if facts.training is None:
        facts.missing["training"] = f"no {METRICS_FILE} records and no trainer state"
    elif facts.model is not None and facts.model.parameters:
        facts.training.tokens_per_parameter = facts.training.tokens / facts.model.parameters
    if not records:
        facts.missing["curves"] = f"no {METRICS_FILE}"
    facts.samples = logged_samples(records)
    facts.evaluations = find_evaluations(stage, root) if stage != root else []
    facts.exports = find_exports(stage, root)
    return facts
