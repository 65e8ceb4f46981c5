"""`scratchlm report RUN --compare OTHER`: both runs' key figures side by side, and the
regressions flagged against the stated thresholds, not below them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchlm.cli import main
from scratchlm.report import THRESHOLDS, compare_reports
from test_report import write_metrics


def report_of(run: Path, capsys, *extra: str) -> dict:
    assert main(["report", str(run), "--no-speed", *extra]) == 0
    capsys.readouterr()
    return json.loads((run / "report.json").read_text())


def pipeline(root: Path, bpbs: list[float], trained_accuracy: float) -> Path:
    write_metrics(root / "pretrain", bpbs)
    write_metrics(root / "sft", [1.0, 0.9])
    hits = round(trained_accuracy * 10)
    facts = {"trained": {"accuracy": trained_accuracy, "hits": hits, "total": 10, "answers": []}}
    (root / "facts.json").write_text(json.dumps(facts))
    return root


def test_worse_bpb_and_fewer_facts_are_flagged(tmp_path, capsys):
    old = pipeline(tmp_path / "old", [2.0, 1.5], 0.9)
    new = pipeline(tmp_path / "new", [2.0, 1.6], 0.8)
    report = report_of(new, capsys, "--compare", str(old))
    comparison = report["comparison"]
    assert comparison["other"] == str(old)
    flagged = {f["name"] for f in comparison["figures"] if f["regression"]}
    assert flagged == {"pretrain: best val bpb", "facts.json: trained.accuracy"}
    assert len(comparison["regressions"]) == 2
    row = next(f for f in comparison["figures"] if f["name"] == "pretrain: best val bpb")
    assert (row["this"], row["other"]) == (1.6, 1.5)
    assert row["delta"] == pytest.approx(0.1)
    page = (new / "report.md").read_text()
    assert f"## Compared with `{old}`" in page
    assert "**2 regression(s):**" in page
    assert "| pretrain: best val bpb | 1.6 | 1.5 | +0.1 | ⚠ regression |" in page
    assert "| sft: best val loss | 1.8 | 1.8 | +0 |  |" in page  # same on both sides


def test_the_better_run_has_no_regressions(tmp_path, capsys):
    old = pipeline(tmp_path / "old", [2.0, 1.6], 0.8)
    new = pipeline(tmp_path / "new", [2.0, 1.5], 0.9)
    report = report_of(new, capsys, "--compare", str(old))
    assert report["comparison"]["regressions"] == []
    assert "**No regressions.**" in (new / "report.md").read_text()


def test_changes_within_the_thresholds_are_not_flagged(tmp_path, capsys):
    old = tmp_path / "old"
    new = tmp_path / "new"
    write_metrics(old, [1.5], speed=1000.0)
    write_metrics(
        new, [1.5 * (1 + THRESHOLDS["bpb"] / 2)], speed=1000.0 * (1 - THRESHOLDS["speed"] / 2)
    )
    comparison = report_of(new, capsys, "--compare", str(old))["comparison"]
    assert comparison["regressions"] == []
    names = {f["name"] for f in comparison["figures"]}
    assert {"best val bpb", "train tokens/s", "steps"} <= names  # lone runs: no stage prefix


def _stage(tokens_per_s: float, fp32: float, int8: float) -> dict:
    return {
        "name": "run",
        "training": {"tokens_per_s": tokens_per_s, "best_val_bpb": 1.0},
        "decode": {"fp32_tokens_per_s": fp32, "int8_tokens_per_s": int8},
    }


def test_speed_threshold():
    base = {"stages": [_stage(1000, 100, 200)], "evaluations": []}
    just_under = 1 - THRESHOLDS["speed"] + 0.01
    just_over = 1 - THRESHOLDS["speed"] - 0.01
    slower = {"stages": [_stage(1000 * just_under, 100 * just_over, 200)], "evaluations": []}
    result = compare_reports(slower, base)
    assert [f.name for f in result.figures if f.regression] == ["decode fp32 tokens/s"]
    assert compare_reports(base, slower).regressions == []  # faster is never a regression
    elsewhere = {**slower, "environment": {"cpu": "another CPU", "torch_threads": 8}}
    result = compare_reports(elsewhere, base)
    assert not result.same_machine and result.regressions == []  # shown, not judged
    assert any(
        f.name == "decode fp32 tokens/s" and f.delta == pytest.approx(-11) for f in result.figures
    )


def test_compare_reads_the_other_runs_report_json(tmp_path, capsys):
    old = tmp_path / "old"
    new = tmp_path / "new"
    write_metrics(old, [1.5])
    write_metrics(new, [1.5])
    saved = report_of(old, capsys)
    saved["stages"][0]["training"]["best_val_bpb"] = 1.2  # what the old report said
    (old / "report.json").write_text(json.dumps(saved))
    comparison = report_of(new, capsys, "--compare", str(old))["comparison"]
    assert comparison["regressions"] == ["best val bpb: 1.5 vs 1.2 (lower is better)"]


def test_compare_with_no_run_is_one_line(tmp_path, capsys):
    write_metrics(tmp_path / "new", [1.5])
    assert main(["report", str(tmp_path / "new"), "--compare", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: ") and "nope does not exist" in err
