"""Fixtures of the server tests: tiny checkpoints, and real ``scratchlm serve`` processes.

``start_server(checkpoint, *flags)`` starts ``python -m scratchlm serve CHECKPOINT --port 0
--device cpu FLAGS`` with one torch thread, waits for its ready line, and returns a
``ServerProcess`` (``.url``, ``.api``, ``.process``, ``.log()``, ``.stop()``); whatever is
still running stops at the end of the session.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import scratchlm
from scratchlm.chat_format import chat_tokenizer
from scratchlm.checkpoint import save_checkpoint
from scratchlm.config import preset
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import CharTokenizer

EOT = "<|endoftext|>"
# Letters, a space and the characters of the chat tokens, so a user can type one.
CHARS = "abcdefghijklmnopqrstuvwxyz!?.,' <|>"
READY = re.compile(r"^scratchlm serve: page at (http://\S+)/  API at (http://\S+)/v1$")
START_TIMEOUT = 120  # seconds: importing torch on a loaded machine takes a while


def tiny_model(tokenizer, **overrides) -> TransformerLM:
    torch.manual_seed(0)
    config = preset("tiny", vocab_size=tokenizer.vocab_size, **overrides)
    return TransformerLM(config).eval()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny untrained checkpoints: "chat" (context 128, an instruction-tuned
    tokenizer), "endless" (the chat model with a context of 4096 and its final norm
    zeroed: all logits are equal, so greedy repeats token 0, a space, for thousands of
    tokens and never stops by itself), "base" (context 128, no chat tokens)."""
    folder = tmp_path_factory.mktemp("serve-models")
    base = CharTokenizer(CHARS, [EOT])
    chat = chat_tokenizer(base)
    found = {}
    for name, tok in (("chat", chat), ("endless", chat), ("base", base)):
        model = tiny_model(tok, context_length=4096 if name == "endless" else 128)
        if name == "endless":
            model.norm.weight.data.zero_()
        found[name] = save_checkpoint(model, None, 0, folder / name, tokenizer=tok)
    return found


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """``child_environment()``, for tests that start other commands."""
    return child_environment()


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout's source first on PYTHONPATH,
    one torch thread."""
    src = Path(scratchlm.__file__).resolve().parents[1]
    paths = [str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}
    env.pop(  # a key in the test runner's environment must not leak into the server
        "SCRATCHLM_API_KEY", None
    )
    return {**env, **extra}


@dataclass
class ServerProcess:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log_path: Path
    lines: list[str] = field(default_factory=list)  # stdout after the ready line

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit status (killed if it does not exit)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def _read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def launch(
    checkpoint: Path | None, *flags: str, cwd: Path, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start a server and wait for its ready line; AssertionError with its log if it
    exits or stays silent instead."""
    argv = [sys.executable, "-m", "scratchlm", "serve"]
    argv += [str(checkpoint)] if checkpoint is not None else []
    argv += ["--port", "0", "--device", "cpu", *flags]
    log_path = cwd / f"serve-{len(list(cwd.glob('serve-*.log')))}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env if env is not None else child_environment(),
            cwd=cwd,
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    server = ServerProcess("", process, log_path)
    try:
        line = lines.get(timeout=START_TIMEOUT)
    except queue.Empty:
        server.stop(signal.SIGKILL)
        raise AssertionError(f"no ready line in {START_TIMEOUT} s; log:\n{server.log()}") from None
    match = READY.match((line or "").rstrip("\n"))
    if match is None:
        server.stop(signal.SIGKILL)
        raise AssertionError(f"expected the ready line, got {line!r}; log:\n{server.log()}")
    server.url = match.group(1)
    assert match.group(2) == server.url
    return server


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """``start_server(checkpoint, *flags, env=None, cwd=None) -> ServerProcess`` (checkpoint
    None: the server's default, found under ``cwd``/runs); every server still running
    at the end of the session is stopped."""
    started: list[ServerProcess] = []
    folder = tmp_path_factory.mktemp("serve-logs")

    def start(
        checkpoint: Path | None,
        *flags: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ServerProcess:
        server = launch(checkpoint, *flags, cwd=cwd or folder, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL, timeout=10)
