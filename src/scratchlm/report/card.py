"""The report card of a run: gather the facts (``collect``), measure with the model
(``measure``), draw the loss curves (``train.plot``), then write ``report.json`` and
``report.md`` (``render``), with a comparison against another run when asked
(``compare``).

``report.json`` is versioned (``"version": 1``); its fields are the dataclasses of this
package (``Report`` -> ``Environment``, ``Stage`` -> ``DataFacts`` ...), documented in
docs/report.md. A pipeline directory (runs/default: pretrain/ and sft/) reports each
stage; the evaluations kept at its top (facts.json) belong to the whole run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.atomic import atomic_write_text
from scratchlm.checkpoint import load_model
from scratchlm.errors import DataError, ScratchLMError
from scratchlm.report.collect import (
    REPORT_JSON,
    collect_stage,
    find_evaluations,
    find_exports,
    find_stages,
)
from scratchlm.report.compare import Comparison, compare_reports, stage_pairs
from scratchlm.report.compare_plot import compare_plot
from scratchlm.report.environment import Environment, collect_environment
from scratchlm.report.measure import decode_speed, export_parity, greedy_samples, has_chat_tokens
from scratchlm.report.render import render_markdown
from scratchlm.report.schema import Evaluation, Stage
from scratchlm.train.plot import plot_run

log = logging.getLogger(__name__)

REPORT_VERSION = 1
REPORT_MD = "report.md"
COMPARE_PNG = "compare.png"


@dataclass
class Report:
    """Everything ``report.json`` holds (version 1)."""

    run_dir: str
    created: str  # ISO 8601, UTC
    environment: Environment
    stages: list[Stage]
    evaluations: list[Evaluation] = field(default_factory=list)  # the run directory's own
    comparison: Comparison | None = None
    version: int = REPORT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, **dataclasses.asdict(self)}


def _measure(stage: Stage, root: Path, speed: bool, echo: Callable[[str], None]) -> None:
    """Fill in what needs the model: decode speed, greedy samples, export parity."""
    if stage.checkpoint is None:
        stage.missing["decode"] = "no checkpoint to measure"
        if not stage.samples:  # none logged either
            stage.missing["samples"] = "no checkpoint to ask"
        return
    try:
        model, tokenizer = load_model(stage.checkpoint)
    except ScratchLMError as e:
        stage.missing["decode"] = f"the checkpoint did not load: {e}"
        if not stage.samples:
            stage.missing["samples"] = stage.missing["decode"]
        return
    model = model.float()
    if speed:
        echo(f"  {stage.name}: measuring decode speed (fp32, int8)")
        stage.decode = decode_speed(model)
    else:
        stage.missing["decode"] = "not measured (--no-speed)"
    if tokenizer is None:
        stage.missing["samples"] = "the checkpoint has no tokenizer"
    else:
        prompts = [s.prompt for s in stage.samples]
        chat = has_chat_tokens(tokenizer)  # a tuned model answers; a base one continues
        stage.samples = greedy_samples(model, tokenizer, prompts, chat=chat) + stage.samples
    stage.exports = [export_parity(model, e, root) for e in stage.exports]


def build_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    speed: bool = True,
    plots: bool = True,
    echo: Callable[[str], None] = lambda line: None,
) -> Report:
    """The report of ``run_dir`` (a run, a checkpoint, or a pipeline directory of runs),
    with its plots written under ``out_dir`` (default: ``run_dir``). DataError when
    ``run_dir`` is no run at all; missing pieces are recorded as missing."""
    root = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else root
    stages = []
    stage_dirs = find_stages(root)
    for stage_dir in stage_dirs:
        stage = collect_stage(stage_dir, root)
        if stage_dir != root and stage_dir == stage_dirs[-1]:
            # Exports at the top of a pipeline directory are of its final model.
            stage.exports += find_exports(root, root, skip=stage_dirs)
        _measure(stage, root, speed, echo)
        if (
            plots
            and stage.training is not None
            and stage.training.train_curve + stage.training.val_curve
        ):
            plot_dir = out if stage_dir == root else out / stage.name
            title = stage.name if stage_dir == root else f"{root.resolve().name}/{stage.name}"
            try:
                written = plot_run(stage_dir, plot_dir, title=title)
            except ScratchLMError as e:  # matplotlib missing: the report goes on without
                stage.missing["plots"] = str(e)
            else:
                stage.plots = [os.path.relpath(p, out) for p in written]
        stages.append(stage)
    return Report(
        run_dir=str(root),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        environment=collect_environment(),
        stages=stages,
        evaluations=find_evaluations(root, root),
    )


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report.json (or the one in a run directory) as a dict; DataError when it is not
    a report of a version this code reads."""
    path = Path(path)
    file = path / REPORT_JSON if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read the report {file}: {e}") from None
    if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
        raise DataError(f"{file} is not a version-{REPORT_VERSION} scratchlm report")
    return data


def write_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    compare: str | os.PathLike | None = None,
    speed: bool = True,
    echo: Callable[[str], None] = lambda line: None,
) -> Path:
    """Write ``report.json`` and ``report.md`` (plots beside them) for ``run_dir`` into
    ``out_dir`` (default: ``run_dir``); returns the path of report.md. ``compare``: a
    run directory (or its report.json) to set this run beside; its report.json is used
    when it has one, else it is reported afresh (without plots, and without decode
    speed when ``speed`` is False)."""
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    if compare is not None and not Path(compare).exists():  # before the work, not after
        raise DataError(f"{compare} does not exist: --compare takes a run directory")
    report = build_report(run_dir, out, speed=speed, echo=echo)
    if compare is not None:
        other_path = Path(compare)
        if (other_path / REPORT_JSON).is_file() or other_path.suffix == ".json":
            other = read_report(other_path)
        else:
            echo(f"  {other_path}: no {REPORT_JSON}, reporting it first")
            other = build_report(other_path, speed=speed, plots=False, echo=echo).to_dict()
        this = report.to_dict()
        report.comparison = compare_reports(this, other, other_name=str(other_path))
        names = (Path(run_dir).resolve().name, other_path.resolve().name)
        if names[0] == names[1]:
            names = ("this run", "other run")
        out.mkdir(parents=True, exist_ok=True)
        try:
            drawn = compare_plot(stage_pairs(this, other), names, out / COMPARE_PNG)
        except ScratchLMError as e:  # matplotlib missing: the table says it all
            log.warning("no comparison plot: %s", e)
        else:
            report.comparison.plot = COMPARE_PNG if drawn else None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / REPORT_JSON, json.dumps(report.to_dict(), indent=1) + "\n")
    atomic_write_text(out / REPORT_MD, render_markdown(report.to_dict()))
    return out / REPORT_MD
