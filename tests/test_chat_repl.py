"""Chat: ``stream_reply`` over the engine, the ``ChatSession`` commands, the REPL loop
(piped, interactive, Ctrl-C) and the default checkpoint, all in-process (the command
itself, through a pipe and a terminal, is tested in test_cli_generate.py).

Where the exact answer matters, a scripted stand-in model emits a fixed list of ids and
records the prompts it is given. Elsewhere a tiny untrained model talks gibberish, so
tests check structure (lines, prompts, history, determinism), not content. Its
character vocabulary has no newline, so every answer fits on one line.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from scratchlm import chat_repl
from scratchlm.chat import (
    chat_prompt_ids,
    default_chat_checkpoint,
    hidden_exchanges,
    prompt_budget,
    reply,
    stream_reply,
)
from scratchlm.chat_format import END_OF_TURN, ROLE_TOKENS, chat_tokenizer
from scratchlm.chat_repl import ChatSession, run_repl
from scratchlm.checkpoint import CheckpointManager
from scratchlm.config import SampleConfig, preset
from scratchlm.errors import CheckpointError, DataError, TokenizerError
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import BPETokenizer, CharTokenizer

EOT = "<|endoftext|>"
LETTERS = "abcdefghijklmnopqrstuvwxyz!?."  # sorted, "!" is id 0
GREEDY = SampleConfig(temperature=0, max_new_tokens=12)


# Tiny models on shared cores: one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def char_tokenizers() -> tuple[CharTokenizer, CharTokenizer]:
    base = CharTokenizer(LETTERS, [EOT])
    return base, chat_tokenizer(base)


def tiny_model(vocab_size: int, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(preset("tiny", vocab_size=vocab_size)).eval()


def byte_chat_tokenizer() -> BPETokenizer:
    """Every byte is a token (no merges), plus <|endoftext|> and the chat tokens."""
    base = BPETokenizer({i: bytes([i]) for i in range(256)}, [], [EOT], use_tiktoken=False)
    return chat_tokenizer(base)


class ScriptedLM(nn.Module):
    """Stands in for TransformerLM in the engine: the n-th token after a prompt is
    ``script[n]`` (the last entry repeats). Records every prompt it prefills."""

    def __init__(self, script: Sequence[int], vocab_size: int, context_length: int = 64) -> None:
        super().__init__()
        self.config = preset("tiny", vocab_size=vocab_size, context_length=context_length)
        self.anchor = nn.Parameter(torch.zeros(1))  # the engine reads device and dtype here
        self.script = list(script)
        self.prompts: list[list[int]] = []
        self.step = 0

    def num_parameters(self) -> int:  # the interactive header shows it
        return 1

    def forward(self, ids, cache=None, positions=None, attention_mask=None, last_only=False):
        if ids.shape[1] > 1:  # a prefill (prompts are >= 2 tokens): a new answer starts
            self.prompts.append(ids[0].tolist())
            self.step = 0
        token = self.script[min(self.step, len(self.script) - 1)]
        self.step += 1
        logits = torch.full((ids.shape[0], 1, self.config.vocab_size), -1e4)
        logits[:, :, token] = 0.0
        return logits


def script_of(tok, text: str, end: bool = True) -> list[int]:
    """The byte ids of ``text``, then <|end|>."""
    ids = tok.encode(text, allow_special=False)
    return [*ids, tok.special_tokens[END_OF_TURN]] if end else ids


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------- stream_reply


def test_stream_reply_stops_at_end_and_never_splits_a_character():
    tok = byte_chat_tokenizer()
    answer = "Héllo 日本🎉!"
    model = ScriptedLM(script_of(tok, answer) + script_of(tok, "never"), tok.vocab_size)
    pieces = list(stream_reply(model, tok, user("hi"), temperature=0))
    assert "".join(pieces) == answer
    # One token per byte: the multi-byte characters came in pieces but were held back
    # until complete.
    assert all("\ufffd" not in p for p in pieces)
    assert {"é", "日", "本", "🎉"} <= set(pieces)
    special = tok.special_tokens
    turn = [special[ROLE_TOKENS["user"]], *tok.encode("hi"), special[END_OF_TURN]]
    assert model.prompts == [[*turn, special[ROLE_TOKENS["assistant"]]]]
    assert reply(model, tok, user("hi"), GREEDY, max_new_tokens=64) == answer


def test_other_special_tokens_and_stop_strings_end_the_answer():
    tok = byte_chat_tokenizer()
    for special in (EOT, ROLE_TOKENS["user"]):
        script = [*script_of(tok, "abc", end=False), tok.special_tokens[special]]
        model = ScriptedLM(script + script_of(tok, "zz"), tok.vocab_size)
        assert reply(model, tok, user("q"), GREEDY) == "abc"
    model = ScriptedLM(script_of(tok, "one. two"), tok.vocab_size)
    assert reply(model, tok, user("q"), GREEDY, stop=["."]) == "one"
    assert reply(model, tok, user("q"), GREEDY, max_new_tokens=2) == "on"


def test_long_history_is_cut_to_the_prompt_budget_and_the_system_stays():
    tok = byte_chat_tokenizer()
    model = ScriptedLM(script_of(tok, "ok"), tok.vocab_size, context_length=64)
    session = ChatSession(model, tok, SampleConfig(temperature=0, max_new_tokens=20), "sys")
    for i in range(8):
        assert "".join(session.send(f"message {i}")) == "ok"
    assert len(session.messages) == 1 + 2 * 8  # the session keeps everything
    prompt = model.prompts[-1]
    assert len(prompt) <= 64 - 20
    assert prompt[: len("sys") + 2] == [
        tok.special_tokens[ROLE_TOKENS["system"]],
        *tok.encode("sys"),
        tok.special_tokens[END_OF_TURN],
    ]
    assert tok.decode(prompt).endswith("message 7<|end|><|assistant|>")
    assert "message 0" not in tok.decode(prompt)  # the oldest exchanges went first


def test_prompt_budget_keeps_half_the_context_for_a_large_answer():
    assert prompt_budget(128, 20) == 108
    assert prompt_budget(128, 100) == 64
    assert prompt_budget(128, 10_000) == 64
    assert prompt_budget(1, 5) == 1
    tok = byte_chat_tokenizer()
    model = ScriptedLM(script_of(tok, "ok"), tok.vocab_size, context_length=64)
    long = [
        m
        for i in range(6)
        for m in ({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * 9})
    ]
    # An exchange is 4 + 11 tokens; the last message and <|assistant|> 7.
    reply(model, tok, [*long, *user("last")], GREEDY, max_new_tokens=20)
    assert len(model.prompts[-1]) == 7 + 2 * 15  # budget 44
    reply(model, tok, [*long, *user("last")], GREEDY, max_new_tokens=1000)
    assert len(model.prompts[-1]) == 7 + 15  # budget 32, not 0


def test_a_base_model_is_refused_with_a_pointer_to_generate():
    base, _ = char_tokenizers()
    model = tiny_model(base.vocab_size)
    with pytest.raises(TokenizerError, match=r"not instruction-tuned.*scratchlm generate"):
        stream_reply(model, base, user("hi"))  # at the call, before any piece
    with pytest.raises(TokenizerError, match="not instruction-tuned"):
        ChatSession(model, base, GREEDY)


# ------------------------------------------------------------- session and commands


@pytest.fixture(scope="module")
def chat_model() -> tuple[TransformerLM, CharTokenizer]:
    _, tok = char_tokenizers()
    return tiny_model(tok.vocab_size), tok


def piped(session: ChatSession, text: str) -> tuple[list[str], list[str]]:
    """Run the REPL on piped ``text``: (stdout lines, stderr lines)."""
    out, err = io.StringIO(), io.StringIO()
    run_repl(
        session,
        input_stream=io.StringIO(text),
        output_stream=out,
        interactive=False,
        error_stream=err,
    )
    return out.getvalue().splitlines(), err.getvalue().splitlines()


def test_piped_one_answer_line_per_message_and_greedy_is_repeatable(chat_model):
    model, tok = chat_model
    session = ChatSession(model, tok, SampleConfig(temperature=1.0, max_new_tokens=12, seed=3))
    out, err = piped(session, "hello\n\n/set temperature 0\n/reset\nhello\n/reset\nhello\n")
    assert len(out) == 3  # the blank line is skipped
    # Piped: what commands say goes to stderr, never between the answers.
    assert err == ["temperature = 0.0", "conversation reset", "conversation reset"]
    assert out[1] == out[2]  # greedy, same conversation after /reset
    assert all(set(line) <= set(LETTERS) for line in out)
    assert len(session.messages) == 2  # /reset dropped the earlier exchanges
    assert session.sample.temperature == 0


def test_bad_commands_print_one_error_line_and_the_chat_goes_on(chat_model):
    model, tok = chat_model
    session = ChatSession(model, tok, GREEDY)
    out, err = piped(
        session,
        "/set temperature hot\n/set top_p 2\n/set nope 1\n/set seed\n/frobnicate\n"
        "/set top-k 5\nhi\n",
    )
    assert len(out) == 1
    assert [line.split(":")[0] for line in err] == ["error"] * 5 + ["top_k = 5"]
    assert "temperature takes a number" in err[0] and "top_p must be in (0, 1]" in err[1]
    assert "unknown setting 'nope'" in err[2] and "unknown command /frobnicate" in err[4]
    assert session.sample.top_k == 5 and session.sample.top_p == 1.0


def test_unencodable_message_is_an_error_and_leaves_no_trace(chat_model):
    model, tok = chat_model
    session = ChatSession(model, tok, GREEDY)
    out, err = piped(session, "hi\nHÉ\nok\n")
    assert len(out) == 3 and out[1] == ""  # piped: a failed message still gets its line
    assert len(err) == 1 and err[0].startswith("error: ")
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["hi", "ok"]


def test_save_and_load_round_trip(chat_model, tmp_path):
    model, tok = chat_model
    session = ChatSession(model, tok, GREEDY, system="brief.")
    file = tmp_path / "sub" / "talk.json"
    piped(session, f"hi\nwhy?\n/save {file}\n")
    data = json.loads(file.read_text(encoding="utf-8"))
    assert list(data) == ["messages"] and data["messages"] == session.messages
    assert [m["role"] for m in data["messages"]] == ["system"] + ["user", "assistant"] * 2
    fresh = ChatSession(model, tok, GREEDY)
    piped(fresh, f"/load {file}\n")
    assert fresh.messages == session.messages and fresh.system == "brief."
    # The loaded conversation goes on as the original would have.
    assert piped(fresh, "more\n")[0] == piped(session, "more\n")[0]


def test_load_refuses_what_is_not_a_saved_conversation(chat_model, tmp_path):
    model, tok = chat_model
    session = ChatSession(model, tok, GREEDY)
    bad = tmp_path / "bad.json"
    for content, words in (
        ("{", "not a JSON file"),
        ('{"chat": []}', "not a saved conversation"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "unanswered"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "user first"),
    ):
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(DataError, match=words):
            session.load(bad)
    with pytest.raises(DataError, match="cannot read"):
        session.load(tmp_path / "missing.json")
    bad.write_text('{"messages": [{"role": "system", "content": "s"}]}', encoding="utf-8")
    session.load(bad)  # a system message alone is a conversation not yet started
    assert session.system == "s"


def test_system_sets_the_message_and_starts_over(chat_model):
    model, tok = chat_model
    session = ChatSession(model, tok, GREEDY)
    out, err = piped(session, "hi\n/system cat.\nhi\n")
    assert len(out) == 2 and err == ["system message set; new conversation"]
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[0]["content"] == "cat."
    piped(session, "/system\n")
    assert session.messages == [] and session.system is None


def test_a_message_may_start_with_a_slash_and_keeps_its_inner_spaces():
    tok = byte_chat_tokenizer()
    session = ChatSession(ScriptedLM(script_of(tok, "ok"), tok.vocab_size), tok, GREEDY)
    out, err = piped(session, "  //usr/bin  is  a dir \n")
    assert out == ["ok"] and err == []
    assert session.messages[0] == {"role": "user", "content": "/usr/bin  is  a dir"}


def test_exit_and_eof_end_the_loop(chat_model):
    model, tok = chat_model
    session = ChatSession(model, tok, GREEDY)
    out, _ = piped(session, "hi\n/exit\nnever\n")
    assert len(out) == 1 and len(session.messages) == 2
    out, _ = piped(session, "again")  # EOF without a final newline
    assert len(out) == 1 and len(session.messages) == 4


def test_interactive_prompts_header_and_help(chat_model):
    model, tok = chat_model
    session = ChatSession(model, tok, GREEDY, name="my-model")
    out = io.StringIO()
    run_repl(session, input_stream=io.StringIO("/help\nhi\n"), output_stream=out, interactive=True)
    text = out.getvalue()
    assert text.startswith("scratchlm chat: my-model (") and "/help" in text.splitlines()[1]
    assert text.count("you> ") == 3  # before /help, before hi, before EOF
    assert "/save FILE" in text


# ------------------------------------------------------- a conversation outgrows the context

NOTICE = "no longer fits the model's context of 64 tokens"


def outgrowing_session() -> tuple[ChatSession, BPETokenizer]:
    """A 64-token context with 20 kept for the answer: each exchange ("message i",
    "ok") takes 17 tokens, so the fourth message no longer fits beside the first."""
    tok = byte_chat_tokenizer()
    model = ScriptedLM(script_of(tok, "ok"), tok.vocab_size, context_length=64)
    return ChatSession(model, tok, SampleConfig(temperature=0, max_new_tokens=20)), tok


def test_hidden_exchanges_counts_what_the_prompt_leaves_out():
    session, tok = outgrowing_session()
    messages = []
    for i in range(6):
        messages += [{"role": "user", "content": f"message {i}"}]
        prompt = tok.decode(chat_prompt_ids(session.model, tok, messages, 20))
        shown = [j for j in range(i + 1) if f"message {j}<" in prompt]
        assert hidden_exchanges(session.model, tok, messages, 20) == i + 1 - len(shown)
        messages += [{"role": "assistant", "content": "ok"}]
    assert hidden_exchanges(session.model, tok, messages[:-1], 20) > 0


def test_the_repl_says_once_when_old_turns_start_to_be_dropped():
    session, _ = outgrowing_session()
    talk = "".join(f"message {i}\n" for i in range(6))
    lines = talk + "/reset\n" + talk
    out = io.StringIO()
    run_repl(session, input_stream=io.StringIO(lines), output_stream=out, interactive=True)
    said = out.getvalue().splitlines()
    notices = [i for i, line in enumerate(said) if NOTICE in line]
    assert len(notices) == 2  # when it begins, and again after /reset starts afresh
    first = said[notices[0]]
    assert first.startswith("[") and "/reset starts afresh]" in first
    assert said[notices[0] - 1].endswith("ok")  # right after the answer it concerns
    answers_before = sum(line.endswith("ok") for line in said[: notices[0]])
    assert answers_before == 4  # the fourth message was the first to drop one
    assert session.hidden > 0


def test_piped_the_notice_goes_to_stderr():
    session, _ = outgrowing_session()
    out, err = piped(session, "".join(f"message {i}\n" for i in range(6)))
    assert out == ["ok"] * 6  # still exactly one line per message
    assert [line for line in err if NOTICE in line] == [err[0]] and len(err) == 1


def test_a_short_chat_has_no_notice(chat_model):
    model, tok = chat_model  # a context of 128 characters
    out, err = piped(ChatSession(model, tok, GREEDY), "hi\nho\n")
    assert len(out) == 2 and err == []


# ------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_in_the_engine_stops_the_answer_and_keeps_it(chat_model, monkeypatch):
    model, tok = chat_model

    def interrupted(*args, **kwargs) -> Iterator[str]:
        yield "ab"
        yield "cd"
        raise KeyboardInterrupt

    session = ChatSession(model, tok, GREEDY)
    monkeypatch.setattr(chat_repl, "stream_reply", interrupted)
    out = io.StringIO()
    feed = io.StringIO("first\n/exit\n")
    run_repl(session, input_stream=feed, output_stream=out, interactive=True)
    assert "abcd\n[stopped]\nyou> " in out.getvalue()  # and the loop read /exit
    assert session.messages[-1] == {"role": "assistant", "content": "abcd"}
    monkeypatch.undo()
    out, _ = piped(session, "second\n")  # the conversation goes on from the partial answer
    assert len(out) == 1 and len(session.messages) == 4


def test_ctrl_c_inside_the_model_forward(chat_model):
    _, tok = chat_model
    model = tiny_model(tok.vocab_size)
    calls = []

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return TransformerLM.forward(model, *args, **kwargs)

    model.forward = forward  # the engine calls model(...), which calls this
    session = ChatSession(model, tok, SampleConfig(temperature=0, max_new_tokens=100))
    model.norm.weight.data.zero_()  # all logits 0: greedy picks id 0 ("!") forever
    out, _ = piped(session, "hi\n")
    assert out == ["!!!!"]  # four tokens, then Ctrl-C during the fifth forward
    assert session.messages[-1]["content"] == "!!!!"


def test_ctrl_c_while_writing_closes_the_stream_and_keeps_the_partial(chat_model, monkeypatch):
    model, tok = chat_model

    class Fragile(io.StringIO):
        def write(self, s: str) -> int:
            if s == "y":
                raise KeyboardInterrupt
            return super().write(s)

    def pieces(*args, **kwargs) -> Iterator[str]:
        yield from ("x", "y", "z")

    session = ChatSession(model, tok, GREEDY)
    monkeypatch.setattr(chat_repl, "stream_reply", pieces)
    out = Fragile()
    run_repl(session, input_stream=io.StringIO("q\n"), output_stream=out, interactive=False)
    assert out.getvalue() == "x\n"
    assert session.messages[-1]["content"] == "xy"  # what was handed out before the stop


def test_ctrl_c_at_the_prompt_leaves_quietly(chat_model):
    model, tok = chat_model

    class CtrlC(io.StringIO):
        def readline(self, *args) -> str:
            raise KeyboardInterrupt

    session = ChatSession(model, tok, GREEDY)
    out = io.StringIO()
    run_repl(session, input_stream=CtrlC(), output_stream=out, interactive=True)
    assert out.getvalue().endswith("you> \n")


# ------------------------------------------------------------- default checkpoint


def save_run(run_dir: Path, model: nn.Module, tok, mtime: float) -> Path:
    path = CheckpointManager(run_dir).save(model, None, 1, tokenizer=tok)
    os.utime(run_dir / "checkpoints", (mtime, mtime))
    return path


def test_default_checkpoint_rule(tmp_path, chat_model):
    model, tok = chat_model
    runs = tmp_path / "runs"
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        default_chat_checkpoint(runs)
    now = time.time()
    old = save_run(runs / "old", model, tok, now - 300)
    new = save_run(runs / "default" / "pretrain", model, tok, now - 100)  # two levels down
    (runs / "notes").mkdir()
    assert default_chat_checkpoint(runs) == new
    (new / "model.safetensors").write_bytes(b"damaged")
    assert default_chat_checkpoint(runs) == old  # the newest valid one
    sft = save_run(runs / "default" / "sft", model, tok, now - 1000)
    assert default_chat_checkpoint(runs) == sft  # preferred even when older
