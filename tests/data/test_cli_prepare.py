"""`scratchlm prepare`, called in-process: a summary on success, a rerun that changes
nothing, and one line on stderr with exit status 2 on bad input."""

from __future__ import annotations

import json

import pytest
from data_helpers import make_docs, write_eot_file

from scratchlm.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every command from an empty folder, so nothing lands in the working tree."""
    monkeypatch.chdir(tmp_path)


def test_prepare_prints_a_summary_and_a_rerun_changes_nothing(tok_dir, tmp_path, capsys):
    corpus = write_eot_file(tmp_path / "c.txt", make_docs(30))
    records = tmp_path / "r.jsonl"
    records.write_text("".join(json.dumps({"body": d}) + "\n" for d in make_docs(5, "j")))
    args = [
        "prepare",
        str(corpus),
        str(records),
        "--tokenizer",
        str(tok_dir),
        "--out",
        "data",
        "--val-docs",
        "4",
        "--text-field",
        "body",
        "--workers",
        "1",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["splits"]["val"]["documents"] == 4 and meta["splits"]["train"]["documents"] == 31
    assert f"{meta['splits']['train']['tokens']:,} tokens" in printed
    assert "31 documents" in printed and "uint16" in printed and "tokens/s" in printed
    stamp = (tmp_path / "data" / "train.bin").stat().st_mtime_ns
    assert main(args) == 0
    assert "unchanged" in capsys.readouterr().out
    assert (tmp_path / "data" / "train.bin").stat().st_mtime_ns == stamp


def test_bad_input_is_one_line_and_status_2(tok_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n["not an object"]\n', encoding="utf-8")
    status = main(["prepare", str(bad), "--tokenizer", str(tok_dir), "--out", "data", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1
    assert f"{bad}, line 2" in err
    assert not (tmp_path / "data").exists()


def test_exclusive_split_options_and_help(tok_dir, capsys):
    both = ["--val-fraction", "0.1", "--val-docs", "3"]
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "x.txt", "--tokenizer", str(tok_dir), "--out", "d", *both])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "example:" in capsys.readouterr().out
