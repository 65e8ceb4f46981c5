"""Long commands show progress: ``eval facts`` (questions answered of the total) and
``generate --n`` (tokens of the budget), as a bar on a terminal and as an occasional
plain line elsewhere; a job that ends quickly prints nothing off a terminal."""

from __future__ import annotations

import fcntl
import io
import json
import os
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

import scratchlm
from scratchlm import console
from scratchlm.chat_format import chat_tokenizer
from scratchlm.checkpoint import save_checkpoint
from scratchlm.cli import main
from scratchlm.config import preset
from scratchlm.console import CountProgress
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import CharTokenizer

QUESTIONS = ["why is the sky blue?", "hi!", "what makes rain?", "is ice cold?", "a"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_now_and_then_off_a_terminal():
    clock, out = FakeClock(), io.StringIO()
    with CountProgress(100, "answering", "questions", live=False, file=out, clock=clock) as p:
        for done in range(1, 101):
            clock.now += 0.5  # 50 s in all: a line every 10 s
            p.update(done)
    lines = out.getvalue().splitlines()
    assert lines == [f"answering: {n}/100 questions" for n in (20, 40, 60, 80, 100, 100)]


def test_a_quick_job_prints_nothing_off_a_terminal():
    clock, out = FakeClock(), io.StringIO()
    with CountProgress(100, "answering", "questions", live=False, file=out, clock=clock) as p:
        for done in range(1, 101):
            clock.now += 0.01
            p.update(done)
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal():
    out = io.StringIO()
    with CountProgress(3, "answering", "questions", live=True, file=out) as p:
        for done in (1, 2, 3):
            p.update(done)
    frames = out.getvalue()
    assert "answering" in frames and "3/3" in frames and "questions" in frames


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory) -> Path:
    tok = chat_tokenizer(CharTokenizer("abcdefghijklmnopqrstuvwxyz !?.", ["<|endoftext|>"]))
    torch.manual_seed(0)
    model = TransformerLM(preset("tiny", vocab_size=tok.vocab_size)).eval()
    folder = tmp_path_factory.mktemp("progress")
    return save_checkpoint(model, None, 0, folder / "ck", tokenizer=tok)


@pytest.fixture
def question_file(tmp_path) -> Path:
    path = tmp_path / "q.jsonl"
    rows = [json.dumps({"question": q, "expect": ["sky"]}) for q in QUESTIONS]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_eval_facts_off_a_terminal(chat_checkpoint, question_file, monkeypatch, capsys):
    monkeypatch.setattr(console, "LINE_EVERY_SECONDS", 0.0)  # a line at every update
    argv = ["eval", "facts", str(chat_checkpoint), "--questions", str(question_file)]
    assert main([*argv, "--max-new-tokens", "8", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert f"(0 of {len(QUESTIONS)})  {question_file}" in out  # results stay on stdout
    counts = [int(x.split()[1].split("/")[0]) for x in err.splitlines()]
    assert err.splitlines()[-1] == f"answering: {len(QUESTIONS)}/{len(QUESTIONS)} questions"
    assert counts == sorted(counts) and "\r" not in err


def test_generate_n_off_a_terminal(chat_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(console, "LINE_EVERY_SECONDS", 0.0)
    argv = ["generate", str(chat_checkpoint), "--prompt", "a", "--n", "3", "--seed", "1"]
    assert main([*argv, "--max-new-tokens", "6", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.count("--- ") == 3
    assert err.splitlines()[0] == "sampling 3: 1/6 tokens"
    assert err.splitlines()[-1].startswith("sampling 3: ")


def test_eval_facts_on_a_terminal(chat_checkpoint, question_file, tmp_path):
    src = Path(scratchlm.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "TERM": "dumb"}
    argv = [sys.executable, "-m", "scratchlm", "eval", "facts", str(chat_checkpoint),
            "--questions", str(question_file), "--max-new-tokens", "8",
            "--device", "cpu"]  # fmt: skip
    master, slave = os.openpty()
    # A new pseudo-terminal is 0 columns wide, and a bar cut to its width shows nothing.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    child = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    seen = bytearray()  # everything the terminal showed, searched as a whole at the end
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if child.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert child.wait(timeout=30) == 0, bytes(seen)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
    text = bytes(seen).decode("utf-8", errors="replace")
    n = len(QUESTIONS)
    assert "answering" in text and f"{n}/{n}" in text and "questions" in text, text
    assert f"(0 of {n})" in text  # and the result


def test_parts_add_up():
    clock, out = FakeClock(), io.StringIO()
    with CountProgress(
        5, "answering", "questions", live=False, every=0, file=out, clock=clock
    ) as p:
        first = p.part()
        first(2)
        first(3)  # the first file's 3 questions
        second = p.part()
        second(1)
        second(2)
    assert out.getvalue().splitlines() == [f"answering: {n}/5 questions" for n in (2, 3, 4, 5, 5)]
