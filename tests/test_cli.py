"""The `scratchlm` command, called in-process (plus one real `python -m scratchlm`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import scratchlm
from scratchlm.cli import main
from scratchlm.errors import DataError, OutputExistsError
from scratchlm.tokenizer import load_tokenizer

EOT = "<|endoftext|>"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every command from an empty folder, so nothing lands in the working tree."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def trained(tmp_path, mixed_corpus, capsys):
    """A tokenizer trained through the CLI: its folder."""
    out = tmp_path / "tok"
    status = main(
        [
            "tokenizer",
            "train",
            str(mixed_corpus),
            "--vocab-size",
            "400",
            "--special-token",
            EOT,
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    capsys.readouterr()
    return out


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("scratchlm: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"scratchlm {scratchlm.__version__}"


def test_version_as_a_module(tmp_path):
    src = Path(scratchlm.__file__).resolve().parents[1]
    paths = [str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(
        [sys.executable, "-m", "scratchlm", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"scratchlm {scratchlm.__version__}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["train"],
        ["sft"],
        ["chat"],
        ["generate"],
        ["eval", "facts"],
        ["tokenizer"],
        ["tokenizer", "train"],
        ["tokenizer", "encode"],
        ["tokenizer", "decode"],
        ["tokenizer", "info"],
        ["prepare"],
        ["checkpoint", "inspect"],
        ["checkpoint", "verify"],
        ["export", "hf"],
        ["import", "hf"],
        ["plot"],
        ["report"],
        ["model", "info"],
        ["lora", "merge"],
        ["lora", "export"],
    ],
)
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: scratchlm")
    if argv != ["tokenizer"]:
        assert "example:" in out or "examples:" in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_train_writes_a_tokenizer(tmp_path, mixed_corpus, capsys):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", str(mixed_corpus), "--vocab-size", "400", "--out", str(out)]
    assert main([*argv, "--special-token", EOT, "--pattern", "gpt4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "tokenizer.json") in printed
    assert "vocab size: 400" in printed
    tok = load_tokenizer(out)
    assert len(tok.vocab) == 400 and tok.special_tokens == {EOT: 399}
    assert tok.metadata["vocab_size"] == 400 and tok.metadata["pattern"] == "gpt4"
    from scratchlm.tokenizer import GPT4_PATTERN, train_bpe

    assert tok.pattern == GPT4_PATTERN
    assert tok.merges == train_bpe(mixed_corpus, 400, [EOT], pattern=GPT4_PATTERN)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.txt", "tok"]


def test_train_char(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world" + EOT)
    out = tmp_path / "char"
    assert main(["tokenizer", "train", str(corpus), "--char", "--special-token", EOT,
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    tok = load_tokenizer(out)
    assert tok.chars == list(" dehlorw") and tok.special_tokens == {EOT: 8}


def test_train_char_keeps_carriage_returns(tmp_path, capsys):
    """The character set is that of the file's bytes: "\r" (of "\r\n" and alone) is a
    character of the corpus like any other, so the corpus itself must encode."""
    corpus = tmp_path / "crlf.txt"
    corpus.write_bytes(b"ab\r\ncd\rz\n")
    out = tmp_path / "char"
    assert main(["tokenizer", "train", str(corpus), "--char", "--out", str(out), "--quiet"]) == 0
    tok = load_tokenizer(out)
    assert tok.chars == sorted("ab\r\ncdz")
    assert tok.decode(tok.encode("ab\r\ncd\rz\n")) == "ab\r\ncd\rz\n"


def test_encode_decode(trained, capsys):
    text = "Hello, 日本語 world! " + EOT + " 😀"
    tok = load_tokenizer(trained)
    expected = tok.encode(text)
    assert main(["tokenizer", "encode", str(trained), text]) == 0
    out = capsys.readouterr().out
    assert [int(x) for x in out.split()] == expected
    assert main(["tokenizer", "encode", str(trained), text, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert main(["tokenizer", "encode", str(trained), text, "--no-special", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == tok.encode(text, allow_special=False)
    assert main(["tokenizer", "decode", str(trained), *map(str, expected)]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_encode_show(trained, capsys):
    assert main(["tokenizer", "encode", str(trained / "tokenizer.json"), "the cat", "--show"]) == 0
    shown = capsys.readouterr().out.rstrip("\n")
    assert shown.replace("|", "") == "the cat"
    assert len(shown.split("|")) == len(load_tokenizer(trained).encode("the cat"))


def test_encode_file_and_stdin(trained, tmp_path, capsys, monkeypatch):
    text = "line one\r\nline two\n"
    path = tmp_path / "in.txt"
    path.write_bytes(text.encode())
    expected = load_tokenizer(trained).encode(text)
    assert main(["tokenizer", "encode", str(trained), "--file", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert main(["tokenizer", "encode", str(trained), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    # decode reads ids from stdin too, as a JSON list or separated by spaces
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(expected)))
    assert main(["tokenizer", "decode", str(trained)]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_decode_bad_ids(trained, capsys):
    assert main(["tokenizer", "decode", str(trained), "1", "two"]) == 2
    assert "integers" in one_error_line(capsys.readouterr().err)
    assert main(["tokenizer", "decode", str(trained), "72", "99999"]) == 2
    assert "99999" in one_error_line(capsys.readouterr().err)


def test_info(trained, mixed_corpus, capsys):
    assert main(["tokenizer", "info", str(trained), "--file", str(mixed_corpus), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    tok = load_tokenizer(trained)
    assert info["vocab_size"] == 400
    assert info["merges"] == 399 - 256
    assert info["special_tokens"] == {EOT: 399}
    n_bytes = mixed_corpus.stat().st_size
    n_tokens = len(tok.encode(mixed_corpus.read_bytes().decode()))
    assert info["compression"]["bytes"] == n_bytes
    assert info["compression"]["tokens"] == n_tokens
    assert info["compression"]["bytes_per_token"] == pytest.approx(n_bytes / n_tokens)
    longest = max((len(t), -i, t) for i, t in tok.vocab.items() if i != 399)[2]
    assert len(info["longest_tokens"]) == 10
    assert info["longest_tokens"][0] == longest.decode("utf-8", errors="replace")
    assert main(["tokenizer", "info", str(trained)]) == 0
    assert "vocab_size: 400" in capsys.readouterr().out


def test_existing_out_is_refused(trained, mixed_corpus, capsys):
    before = (trained / "tokenizer.json").read_bytes()
    argv = ["tokenizer", "train", str(mixed_corpus), "--vocab-size", "300", "--out", str(trained)]
    assert main([*argv, "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "--force" in one_error_line(captured.err)
    assert (trained / "tokenizer.json").read_bytes() == before
    assert main([*argv, "--quiet", "--force"]) == 0
    assert len(load_tokenizer(trained).vocab) == 300


def test_missing_input(tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", str(tmp_path / "missing.txt"), "--vocab-size", "300"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    assert "missing.txt" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--vocab-size", "100"], "vocab_size"),
        (["--special-token", ""], "special token"),
    ],
)
def test_bad_settings(mixed_corpus, tmp_path, capsys, extra, words):
    argv = ["tokenizer", "train", str(mixed_corpus), "--out", str(tmp_path / "tok"), "--quiet"]
    assert main([*argv, *extra]) == 2
    assert words in one_error_line(capsys.readouterr().err)


def test_strict_flag(tmp_path, capsys):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"fine words \xff more words " * 10)
    argv = ["tokenizer", "train", str(corpus), "--vocab-size", "270", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--strict"]) == 2
    assert "byte 11" in one_error_line(capsys.readouterr().err)
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert "invalid UTF-8" in capsys.readouterr().err  # the warning, through logging


def test_debug_lets_the_exception_through(tmp_path):
    argv = ["tokenizer", "train", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "t")]
    with pytest.raises(DataError, match=r"missing\.txt"):
        main(["--debug", *argv])
    (tmp_path / "t").mkdir()
    with pytest.raises(OutputExistsError):
        main(["--debug", *argv])


def test_missing_tokenizer(tmp_path, capsys):
    assert main(["tokenizer", "encode", str(tmp_path / "nope"), "hi"]) == 2
    assert "nope" in one_error_line(capsys.readouterr().err)


def test_default_train_command_runs_the_default_pipeline(tmp_path, monkeypatch):
    """`scratchlm train` with no data runs the pipeline (tested on a reduced
    configuration in test_pipeline.py; the full run takes minutes)."""
    import scratchlm.pipeline

    calls = []
    monkeypatch.setattr(
        scratchlm.pipeline, "run_default", lambda run, progress: calls.append((run, progress))
    )
    assert main(["train", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    ((run, progress),) = calls
    assert run.out_dir == tmp_path / "run" and progress is False
    assert run == scratchlm.pipeline.DefaultRun(out_dir=tmp_path / "run")
