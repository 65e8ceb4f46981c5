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
    assert comparison["plot"] == "compare.png"
    assert (new / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (new / "report.md").read_text()
    assert '<img src="compare.png"' in page
    assert f"## Compared with `{old}`" in page
    assert "**2 regression(s):**" in page
    assert "| figure | new | old | Δ |  |" in page  # the runs by name
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
    busy = {"stages": [_stage(1000, 50, 100)], "evaluations": []}
    busy["stages"][0]["decode"].update(cpu_per_wall=1.0, threads=2)  # half its time
    result = compare_reports(busy, base)
    assert result.busy and result.regressions == []  # a busy machine's speeds: not judged
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


def eval_results(run: Path, acc: float, bpb: float) -> None:
    """Result files as `scratchlm eval tasks --json` and `eval bpb --json` print them."""
    (run / "evals").mkdir()
    task = {"task": "piqa", "questions": 10, "chance": 0.5, "acc": {"value": acc, "stderr": 0.1},
            "acc_norm": None, "centred": 2 * acc - 1}  # fmt: skip
    tasks = {"tasks": {"piqa": task}, "limit": 10, "centred_average": 2 * acc - 1}
    (run / "evals" / "tasks.json").write_text(json.dumps(tasks))
    rows = [{"file": "a.txt", "bpb": bpb, "tokens": 5, "bytes": 20, "nats": 3.0}]
    (run / "evals" / "bpb.json").write_text(json.dumps(rows))


def test_eval_results_are_shown_and_compared(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    for run, acc, bpb in ((old, 0.7, 1.2), (new, 0.6, 1.3)):
        write_metrics(run, [1.5])
        eval_results(run, acc, bpb)
    report = report_of(new, capsys, "--compare", str(old))
    [bpb_file, tasks_file] = report["evaluations"]
    assert bpb_file["file"] == "evals/bpb.json" and bpb_file["scores"]["a.txt.bpb"] == 1.3
    assert tasks_file["scores"]["tasks.piqa.acc.value"] == 0.6
    page = (new / "report.md").read_text()
    assert "| tasks.piqa.acc | 0.6000 ± 0.1000 |" in page
    flagged = {f["name"] for f in report["comparison"]["figures"] if f["regression"]}
    assert flagged == {
        "evals/bpb.json: a.txt.bpb",
        "evals/tasks.json: tasks.piqa.acc.value",
        "evals/tasks.json: tasks.piqa.centred",
        "evals/tasks.json: centred_average",
    }
