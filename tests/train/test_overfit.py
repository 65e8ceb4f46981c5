"""The overfitting warning: said once, with the best step and its checkpoint, when the
validation loss rises well above its best; never for a run that keeps improving."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from scratchlm.builtin import END_OF_TEXT
from scratchlm.checkpoint import CheckpointManager
from scratchlm.data import prepare
from scratchlm.pipeline import _training_stage
from scratchlm.train.config import TrainConfig
from scratchlm.train.overfit import RISE, overfit_warning
from scratchlm.train.trainer import Trainer

BEST = Path("runs/x/checkpoints/step_00000080")


@pytest.mark.parametrize(
    ("val", "best", "checkpoint", "warns"),
    [
        (5.91, 4.48, BEST, True),  # far above its best
        (4.48 * (1 + RISE) + 0.01, 4.48, BEST, True),  # just past the bar
        (4.48 * (1 + RISE) - 0.01, 4.48, BEST, False),  # within the noise
        (4.40, 4.48, BEST, False),  # a new best
        (5.91, None, None, False),  # no best yet
        (float("nan"), 4.48, BEST, False),  # not a loss to judge
    ],
)
def test_warning_only_when_the_loss_rose_well_above_its_best(val, best, checkpoint, warns):
    warning = overfit_warning(400, val, best, checkpoint)
    assert (warning is not None) == warns
    if warns:
        assert "step 400" in warning and "best, 4.480 at step 80" in warning
        assert str(BEST) in warning and "fewer steps" in warning and "dropout" in warning


def _events(run: Path) -> list[str]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["message"] for r in records if r["kind"] == "event"]


@pytest.fixture
def memorising(prepared, tiny_config, tmp_path) -> TrainConfig:
    """A tiny run that overfits: two documents, each one sentence repeated, one trained
    on and the other validating. A model that learns the first by heart grows ever surer
    of it, and ever more wrong about the second."""
    docs = ["the cat sat on the mat. " * 40, "a dog ran to the park! " * 40]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(END_OF_TEXT.join(docs))
    data = tmp_path / "data"
    prepare([corpus], prepared / "tokenizer.json", data, val_docs=1, workers=1, progress=False)
    assert json.loads((data / "meta.json").read_text())["splits"]["val"]["documents"] == 1
    return dataclasses.replace(tiny_config, data=str(data), steps=120, lr=1e-2, eval_every=10)


def test_a_run_that_memorises_its_data_warns_once(memorising):
    config = memorising
    Trainer(config).run()

    run = Path(config.out)
    warnings = [m for m in _events(run) if m.startswith("overfitting")]
    assert len(warnings) == 1, _events(run)
    vals = [
        r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "val"
    ]  # fmt: skip
    best = min(vals, key=lambda r: r["val_loss"])
    best_dir = run / "checkpoints" / f"step_{best['step']:08d}"
    assert f"at step {best['step']}" in warnings[0] and str(best_dir) in warnings[0]
    assert best_dir.is_dir()


def test_a_run_that_keeps_improving_does_not_warn(tiny_config):
    Trainer(tiny_config).run()
    assert not [m for m in _events(Path(tiny_config.out)) if m.startswith("overfitting")]


def test_the_default_run_goes_on_from_the_best_pretraining_checkpoint(memorising):
    lines: list[str] = []
    chosen = _training_stage(3, "pretraining", memorising, lines.append, best=True)

    checkpoints = CheckpointManager(memorising.out)
    assert chosen == checkpoints.best() != checkpoints.latest_valid()  # it overfitted
    assert any("continuing from the lowest validation loss" in line for line in lines)
    again: list[str] = []
    assert _training_stage(3, "pretraining", memorising, again.append, best=True) == chosen
    assert any(f"reusing {chosen}" in line for line in again)
    # Without best (instruction tuning), the last checkpoint.
    assert _training_stage(3, "pretraining", memorising, again.append) == checkpoints.latest_valid()
