"""Output redirected to a file gets no progress bars: a bar's carriage-return frames
would stay there as stray lines (``reading: 0.00char [00:00, ?char/s]``)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from scratchlm.console import live_progress


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_live_progress_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeStream(tty=True))
    assert live_progress() and not live_progress(quiet=True)
    monkeypatch.setattr(sys, "stderr", FakeStream(tty=False))
    assert not live_progress()


def test_tokenizer_and_prepare_leave_no_bar_in_a_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    text = "<|endoftext|>".join(
        f"Document {i}: the rain falls and the sun shines." for i in range(50)
    )
    corpus.write_text(text, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = [
        ["tokenizer", "train", str(corpus), "--vocab-size", "300",
         "--special-token", "<|endoftext|>", "--out", str(tmp_path / "tok")],
        ["prepare", str(corpus), "--tokenizer", str(tmp_path / "tok"),
         "--out", str(tmp_path / "data"), "--workers", "1"],
    ]  # fmt: skip
    for args in commands:
        with open(tmp_path / "err.txt", "w") as err:
            done = subprocess.run(
                [sys.executable, "-m", "scratchlm", *args],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                timeout=120,
            )
        logged = (tmp_path / "err.txt").read_text()
        assert done.returncode == 0, logged
        assert "\r" not in logged and "it/s" not in logged and "char/s" not in logged, logged
        assert done.stdout.strip()  # the command still reports what it did
