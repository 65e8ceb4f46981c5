"""``scratchlm train`` with --data, --config and --resume, through the CLI entry point."""

from __future__ import annotations

import json

from train_helpers import TINY

from scratchlm.cli import main

MODEL = [f"--model={k}={v}" for k, v in TINY.items()]
QUICK = ["--context-length", "32", "--batch-size", "2", "--eval-windows", "2", "--quiet"]
QUICK += ["--sample-tokens", "0", "--warmup-steps", "1", "--device", "cpu", *MODEL]


def test_train_from_flags_saves_the_resolved_settings(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", str(prepared), "--out", str(run), "--preset", "tiny",
                 "--steps", "3", "--lr", "0.002", *QUICK])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "done: 3 steps" in out and "step_00000003" in out
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["lr"] == 0.002 and saved["steps"] == 3 and saved["model"] == TINY
    assert (run / "checkpoints" / "step_00000003" / "manifest.json").is_file()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    peaks = [r["peak_memory_bytes"] for r in records if r.get("kind") == "train"]
    # The process's peak resident set: at least the torch it imported (tens of MB).
    assert peaks and all(isinstance(p, int) and p > 10 * 2**20 for p in peaks), peaks
    assert peaks == sorted(peaks)  # a peak never goes down


def test_a_config_file_with_a_flag_on_top(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    file = tmp_path / "run.toml"
    file.write_text(
        f'data = "{prepared}"\nout = "{run}"\npreset = "tiny"\nsteps = 5\nlr = 0.01\n'
        f"[model]\nd_model = 48\nn_layers = 1\nn_heads = 2\n"
    )
    assert main(["train", "--config", str(file), "--steps", "2", *QUICK[: -len(MODEL)]]) == 0
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["steps"] == 2 and saved["lr"] == 0.01 and saved["model"]["d_model"] == 48


def test_resume_continues_with_the_saved_settings(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(prepared), "--out", str(run), "--preset", "tiny", *QUICK]
    assert main([*args, "--steps", "2"]) == 0
    # More steps is a change a resumed run may make; the rest comes from the run directory.
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "done: 4 steps" in out
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("resumed from step_00000002" in r.get("message", "") for r in records)


def test_errors_are_one_line(prepared, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratchlm: error:") and "\n" not in err and "resume" in err
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "r"),
                 "--precision", "fp8", "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "precision" in err and "\n" not in err
