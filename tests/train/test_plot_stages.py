"""`scratchlm plot` of a directory of runs (runs/default: pretrain/ and sft/): the loss
curves of each run, next to its metrics or under OUT/RUN."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchlm.cli import main
from scratchlm.errors import DataError
from scratchlm.train.metrics import MetricsLog
from scratchlm.train.plot import plot_runs, run_stages

PNGS = ["loss_vs_steps.png", "loss_vs_time.png", "loss_vs_tokens.png", "val_bpb.png"]


def write_metrics(run_dir: Path, steps: int) -> None:
    with MetricsLog(run_dir) as log:
        for step in range(1, steps + 1):
            record = {"step": step, "tokens": 512 * step, "time": 0.5 * step}
            log.log({**record, "kind": "train", "loss": 5.0 / step})
            if step % 5 == 0:
                log.log({**record, "kind": "val", "val_loss": 6.0 / step, "val_bpb": 2.0 / step})


@pytest.fixture
def pipeline_dir(tmp_path) -> Path:
    root = tmp_path / "default"
    write_metrics(root / "pretrain", 20)
    write_metrics(root / "sft", 10)
    (root / "tokenizer").mkdir()  # not a run: no metrics
    (root / "facts.json").write_text("{}")
    return root


def test_run_stages(pipeline_dir):
    assert run_stages(pipeline_dir) == [pipeline_dir / "pretrain", pipeline_dir / "sft"]
    assert run_stages(pipeline_dir / "sft") == []  # a run is no directory of runs
    assert run_stages(pipeline_dir / "facts.json") == []


def test_cli_plots_each_run_next_to_its_metrics(pipeline_dir, capsys):
    assert main(["plot", str(pipeline_dir)]) == 0
    printed = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 2 * len(PNGS)
    for stage in ("pretrain", "sft"):
        written = sorted(p.name for p in printed if p.parent == pipeline_dir / stage)
        assert written == PNGS, stage
    for path in printed:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(pipeline_dir.glob("*.png"))


def test_out_gets_a_folder_per_run(pipeline_dir, tmp_path):
    written = plot_runs(pipeline_dir, tmp_path / "plots")
    assert list(written) == [str(pipeline_dir / "pretrain"), str(pipeline_dir / "sft")]
    for stage in ("pretrain", "sft"):
        assert sorted(p.name for p in (tmp_path / "plots" / stage).iterdir()) == PNGS


def test_a_run_that_has_not_logged_yet_is_passed_over(pipeline_dir, capsys):
    (pipeline_dir / "sft" / "metrics.jsonl").write_text("")  # the stage has just begun
    assert main(["plot", str(pipeline_dir)]) == 0
    captured = capsys.readouterr()
    assert all(Path(line).parent.name == "pretrain" for line in captured.out.splitlines())
    assert f"{pipeline_dir / 'sft'}: nothing to plot yet" in captured.err
    (pipeline_dir / "pretrain" / "metrics.jsonl").write_text("")
    with pytest.raises(DataError, match=r"\(pretrain, sft\) have no train or val records yet"):
        plot_runs(pipeline_dir)
