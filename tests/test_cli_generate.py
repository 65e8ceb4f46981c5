"""The commands: ``scratchlm generate`` and ``scratchlm chat --prompt`` in-process (raw
completion in a batch, one-shot answers, the default checkpoint, one-line errors), and
``scratchlm chat`` as a child process through a pipe and on a pseudo-terminal.

The models are tiny and untrained, so tests check structure and determinism, not
content; their character vocabulary has no newline, so each text is one line.
"""

from __future__ import annotations

import copy
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import scratchlm
from scratchlm.chat import reply
from scratchlm.chat_format import chat_tokenizer
from scratchlm.chat_repl import ChatSession
from scratchlm.checkpoint import CheckpointManager, save_checkpoint
from scratchlm.cli import main
from scratchlm.config import SampleConfig, preset
from scratchlm.model import TransformerLM, prepare_for_inference
from scratchlm.textgen import generate
from scratchlm.tokenizer import CharTokenizer

EOT = "<|endoftext|>"
LETTERS = "abcdefghijklmnopqrstuvwxyz!?."


# Tiny models on shared cores: one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tok) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(preset("tiny", vocab_size=tok.vocab_size)).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Checkpoints of a base model and of a chat model: {name: (path, model, tokenizer)}."""
    folder = tmp_path_factory.mktemp("models")
    base = CharTokenizer(LETTERS, [EOT])
    found = {}
    for name, tok in (("base", base), ("chat", chat_tokenizer(base))):
        model = tiny(tok)
        found[name] = (save_checkpoint(model, None, 0, folder / name, tokenizer=tok), model, tok)
    return found


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scratchlm: error: "), err
    return lines[0]


def test_generate_n_samples_in_one_batch(models, capsys):
    path, model, tok = models["base"]
    argv = ("generate", str(path), "--prompt", "once", "--n", "3", "--seed", "1")
    code, out, _ = run(capsys, *argv, "--temperature", "1", "--max-new-tokens", "16")
    assert code == 0
    lines = out.splitlines()
    assert lines[0::2] == ["--- 1 ---", "--- 2 ---", "--- 3 ---"] and len(lines) == 6
    texts = lines[1::2]
    assert all(t.startswith("once") for t in texts)
    assert len(set(texts)) == 3  # one generator for the batch: the rows differ
    expected = generate(model, tok, ["once"] * 3, temperature=1, max_new_tokens=16, seed=1)
    assert texts == ["once" + t for t in expected]
    assert run(capsys, *argv, "--temperature", "1", "--max-new-tokens", "16")[1] == out


def test_generate_one_sample_streams_prompt_and_continuation(models, capsys):
    path, model, tok = models["base"]
    code, out, _ = run(
        capsys, "generate", str(path), "--prompt", "hi", "--temperature", "0", "--top-k", "3"
    )
    expected = generate(model, tok, "hi", temperature=0, max_new_tokens=256)
    assert code == 0 and out == "hi" + expected + "\n"


def test_generate_works_on_a_chat_model_too(models, capsys):
    path, _, _ = models["chat"]
    code, out, _ = run(capsys, "generate", str(path), "--prompt", "x", "--max-new-tokens", "4")
    assert code == 0 and out.startswith("x") and out.endswith("\n")


def test_chat_prompt_answers_once(models, capsys):
    path, model, tok = models["chat"]
    code, out, err = run(
        capsys, "chat", str(path), "--prompt", "why?", "--system", "brief.", "--temperature", "0"
    )
    assert code == 0 and err == ""
    messages = [{"role": "system", "content": "brief."}, {"role": "user", "content": "why?"}]
    assert out == reply(model, tok, messages, SampleConfig(temperature=0)) + "\n"
    assert "\n" not in out[:-1]


def test_int8_flag_answers_with_the_quantized_model(models, capsys):
    path, model, tok = models["chat"]
    quantized = prepare_for_inference(copy.deepcopy(model), int8=True)
    code, out, err = run(
        capsys, "chat", str(path), "--prompt", "why?", "--int8", "--temperature", "0"
    )
    assert code == 0 and err == ""
    messages = [{"role": "user", "content": "why?"}]
    assert out == reply(quantized, tok, messages, SampleConfig(temperature=0)) + "\n"
    path, model, tok = models["base"]
    code, out, _ = run(
        capsys, "generate", str(path), "--prompt", "hi", "--int8", "--temperature", "0"
    )
    expected = generate(
        prepare_for_inference(copy.deepcopy(model), int8=True), tok, "hi", temperature=0
    )
    assert code == 0 and out == "hi" + expected + "\n"


def test_bf16_flag_generates_with_bfloat16_weights_and_excludes_int8(models, capsys):
    path, model, tok = models["base"]
    code, out, _ = run(
        capsys, "generate", str(path), "--prompt", "hi", "--bf16", "--temperature", "0"
    )
    expected = generate(
        prepare_for_inference(copy.deepcopy(model), bf16=True), tok, "hi", temperature=0
    )
    assert code == 0 and out == "hi" + expected + "\n"
    with pytest.raises(SystemExit):  # argparse: not allowed with --int8
        run(capsys, "generate", str(path), "--prompt", "hi", "--bf16", "--int8")
    assert "not allowed with argument" in capsys.readouterr().err


def test_chat_refuses_a_base_model(models, capsys):
    path, _, _ = models["base"]
    code, _, err = run(capsys, "chat", str(path), "--prompt", "hi")
    assert code == 2
    assert "not instruction-tuned" in one_error_line(err) and "scratchlm generate" in err


def test_chat_without_a_checkpoint_uses_the_newest_run(models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "chat", "--prompt", "hi")
    assert code == 2 and "no checkpoint found under runs/" in one_error_line(err)
    _, model, tok = models["chat"]
    _, base_model, base_tok = models["base"]
    now = time.time()
    for name, (m, t), age in (("base", (base_model, base_tok), 10), ("mine", (model, tok), 100)):
        CheckpointManager(tmp_path / "runs" / name).save(m, None, 5, tokenizer=t)
        os.utime(tmp_path / "runs" / name / "checkpoints", (now - age, now - age))
    code, _, err = run(capsys, "chat", "--prompt", "hi")  # runs/base is newest: not a chat model
    assert code == 2 and "not instruction-tuned" in one_error_line(err)
    CheckpointManager(tmp_path / "runs" / "default" / "sft").save(model, None, 1, tokenizer=tok)
    os.utime(tmp_path / "runs" / "default" / "sft" / "checkpoints", (now - 500, now - 500))
    code, out, err = run(capsys, "chat", "--prompt", "hi", "--temperature", "0")
    assert code == 0, err  # runs/default/sft wins though older
    assert out == reply(model, tok, [{"role": "user", "content": "hi"}], temperature=0) + "\n"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["chat", "{chat}", "--top-p", "2"], "top_p must be in (0, 1]"),
        (["chat", "{chat}", "--temperature", "-1"], "temperature must be >= 0"),
        (["generate", "{base}", "--n", "0"], "--n must be at least 1"),
        (["generate", "{missing}"], "neither a checkpoint directory"),
        (["chat", "{chat}", "--prompt", "HI"], "is not in this CharTokenizer's vocabulary"),
    ],
)
def test_bad_input_is_one_error_line(models, tmp_path, capsys, argv, words):
    paths = {"chat": models["chat"][0], "base": models["base"][0], "missing": tmp_path / "nope"}
    code, _, err = run(capsys, *(a.format(**paths) for a in argv))
    assert code == 2 and words in one_error_line(err)


@pytest.mark.parametrize("command", ["chat", "generate"])
def test_help_has_examples(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"scratchlm {command} " in out and "examples:" in out and "--temperature" in out


# ------------------------------------------------------------ through the command


def child_env() -> dict[str, str]:
    src = Path(scratchlm.__file__).resolve().parents[1]
    paths = [str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}
    return {**env, "TERM": "dumb"}  # no terminal escape codes from readline


def chat_argv(checkpoint: Path, *flags: str) -> list[str]:
    """``python -m scratchlm chat CHECKPOINT`` greedy on the CPU (the answers then match
    the in-process ones exactly), with more flags."""
    argv = [sys.executable, "-m", "scratchlm", "chat", str(checkpoint), "--temperature", "0"]
    return [*argv, "--device", "cpu", *flags]


@pytest.fixture(scope="module")
def endless_checkpoint(tmp_path_factory) -> Path:
    """A chat model that greedily says "!" forever: all logits 0 picks id 0."""
    tok = chat_tokenizer(CharTokenizer(LETTERS, [EOT]))
    model = tiny(tok)
    model.norm.weight.data.zero_()
    return save_checkpoint(model, None, 0, tmp_path_factory.mktemp("endless") / "ck", tokenizer=tok)


def test_chat_through_a_pipe(tmp_path, models):
    ckpt, model, tok = models["chat"]
    result = subprocess.run(
        chat_argv(ckpt, "--max-new-tokens", "10"),
        input="hello\nagain\nbye\n",
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert len(lines) == 4 and lines[-1] == ""  # three answers, each ending its line
    assert "you>" not in result.stdout and "scratchlm chat" not in result.stdout
    session = ChatSession(model, tok, SampleConfig(temperature=0, max_new_tokens=10))
    assert lines[:3] == [
        "".join(session.send(m)) for m in ("hello", "again", "bye")
    ]  # the same answers as in-process


class Terminal:
    """The master side of a pseudo-terminal, read as the child writes to it.

    ``read_until`` searches everything after the previous match, including bytes an
    earlier call already read: "[stopped]\r\nyou> " can arrive in one read, and the
    prompt in it must count for the ``read_until(b"you> ")`` that follows."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = bytearray()
        self.matched = 0  # where the previous match ended

    def read_until(self, wanted: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (found := self.seen.find(wanted, self.matched)) < 0:
            got = bytes(self.seen[self.matched :])
            left = deadline - time.monotonic()
            assert left > 0, f"no {wanted!r} within {timeout}s; got {got!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, f"terminal closed before {wanted!r}; got {got!r}"
                self.seen += chunk
        self.matched = found + len(wanted)


def test_terminal_finds_what_an_earlier_read_fetched():
    """The prompt that came in the same read as "[stopped]" is found, and a match is
    never found twice (the regression behind a flaky Ctrl-C test)."""
    read_end, write_end = os.pipe()
    try:
        terminal = Terminal(read_end)
        os.write(write_end, b"!!!\r\n[stopped]\r\nyou> ")
        terminal.read_until(b"[stopped]", timeout=5)
        terminal.read_until(b"you> ", timeout=5)  # already read: must not wait
        with pytest.raises(AssertionError, match="no b'you> ' within"):
            terminal.read_until(b"you> ", timeout=0.2)  # consumed by the previous match
        os.write(write_end, b"hello\r\nyou> ")
        terminal.read_until(b"you> ", timeout=5)
    finally:
        os.close(read_end)
        os.close(write_end)


def _ctrl_c_as_on_a_terminal() -> None:
    """In the child before it starts: SIGINT does what it does for a program started at a
    terminal. A test run started in the background by a script (``pytest ... &``) ignores
    SIGINT, its children inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_chat_on_a_terminal_survives_ctrl_c(endless_checkpoint, tmp_path):
    master, slave = os.openpty()
    child = subprocess.Popen(
        chat_argv(endless_checkpoint, "--max-new-tokens", "1000000"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=child_env(),
        cwd=tmp_path,
        start_new_session=True,
        preexec_fn=_ctrl_c_as_on_a_terminal,
    )
    os.close(slave)
    terminal = Terminal(master)
    read_until, seen = terminal.read_until, terminal.seen
    try:
        read_until(b"you> ")
        assert b"/help" in seen and b"parameters" in seen
        os.write(master, b"hello\n")
        read_until(b"!" * 50)  # the answer streams
        child.send_signal(signal.SIGINT)  # what Ctrl-C sends
        read_until(b"[stopped]")
        read_until(b"you> ")  # back at the prompt
        os.write(master, b"/set max_new_tokens 3\n")
        read_until(b"max_new_tokens = 3")
        os.write(master, b"again\n")
        read_until(b"!!!\r\nyou> ")
        # Ctrl-C at the prompt: leave. A signal that lands while input() is setting up,
        # just before it waits on the terminal, is only acted on at the next one (as in
        # Python's own REPL), so press it again until the child is gone.
        for _ in range(30):
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                continue
        assert child.wait(timeout=5) == 0, bytes(seen)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
    assert b"Traceback" not in seen
