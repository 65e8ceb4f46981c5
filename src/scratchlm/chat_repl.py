"""The interactive chat: a session holding the conversation, its commands, and the loop
that reads lines and streams answers (``scratchlm chat``).

The session keeps the whole conversation (``/save`` writes all of it); each answer is
generated from as much of it as fits the context (``scratchlm.chat.stream_reply`` drops
the oldest exchanges), and the REPL says so in one line when the dropping begins. Ctrl-C
while an answer streams stops that answer, keeps what was said of it, and returns to the
prompt; Ctrl-C at the prompt ends the chat.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from scratchlm.atomic import atomic_write_text
from scratchlm.chat import hidden_exchanges, require_chat_tokens, stream_reply
from scratchlm.chat_format import conversation_problem
from scratchlm.config import SampleConfig
from scratchlm.errors import ConfigError, DataError, ScratchLMError
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import Tokenizer

PROMPT = "you> "

HELP = """\
commands:
  /help              this list
  /reset             forget the conversation (the system message stays)
  /system TEXT       set the system message and start a new conversation
  /system            remove the system message and start a new conversation
  /set NAME VALUE    change a sampling setting, e.g. /set temperature 0 (greedy)
  /set               show the sampling settings
  /save FILE         write the conversation as JSON {"messages": [...]}
  /load FILE         continue a conversation saved with /save
  /exit, /quit       leave (so do Ctrl-D and Ctrl-C at the prompt)
Start a message with // to send one that begins with /.
Ctrl-C while the model answers stops the answer."""


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


# The settings /set may change, with the parser of each value.
SETTABLE: dict[str, Callable[[str], Any]] = {
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "repetition_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "max_new_tokens": int,
    "seed": _optional_int,
}


class ChatSession:
    """One conversation with a model: ``send`` a message and stream the answer, or run a
    REPL ``command``. ``messages`` is the whole conversation, system message first."""

    def __init__(
        self,
        model: TransformerLM,
        tokenizer: Tokenizer,
        sample: SampleConfig,
        system: str | None = None,
        *,
        name: str = "model",
    ) -> None:
        require_chat_tokens(tokenizer)  # refuse a base model before the first message
        self.model = model
        self.tokenizer = tokenizer
        self.sample = sample
        self.name = name
        self.messages: list[dict[str, str]] = []
        # Exchanges the model no longer sees (dropped to fit its context) as of the last
        # message, and the line that says so when that message began the dropping (once
        # per conversation: from then on nearly every message drops another).
        self.hidden = 0
        self.context_notice: str | None = None
        self.set_system(system)

    @property
    def system(self) -> str | None:
        first = self.messages[0] if self.messages else None
        return first["content"] if first and first["role"] == "system" else None

    def send(self, text: str) -> Iterator[str]:
        """Add the user message ``text`` and stream the answer. The answer joins the
        conversation when it ends, also when it is cut short (Ctrl-C, or the stream
        closed early): the conversation holds what was said. If no answer could be
        started (the message cannot be encoded or does not fit the context), the
        ScratchLMError propagates and the message leaves the conversation."""
        self.messages.append({"role": "user", "content": text})
        try:  # stream_reply renders the prompt at once: a bad message fails here
            stream = stream_reply(self.model, self.tokenizer, self.messages, self.sample)
        except ScratchLMError:
            self.messages.pop()  # nothing was answered
            raise
        self._note_hidden()
        pieces: list[str] = []
        try:
            for piece in stream:
                pieces.append(piece)
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": "".join(pieces)})

    def _note_hidden(self) -> None:
        """Count the exchanges the prompt just left out; a notice if it is the first time."""
        budget = self.sample.max_new_tokens
        hidden = hidden_exchanges(self.model, self.tokenizer, self.messages, budget)
        self.context_notice = None
        if hidden and not self.hidden:
            context = self.model.config.context_length
            self.context_notice = (
                f"[the conversation no longer fits the model's context of {context} tokens: "
                "from now on it sees only the latest exchanges; /reset starts afresh]"
            )
        self.hidden = hidden

    def reset(self) -> None:
        """Forget the conversation; the system message stays."""
        self.set_system(self.system)

    def set_system(self, text: str | None) -> None:
        """Start a new conversation under the system message ``text`` (None or empty:
        none). The old turns are dropped: they were answered under other instructions.
        A text the tokenizer cannot encode is refused now (TokenizerError), not at every
        later message."""
        if text:
            self.tokenizer.encode(text, allow_special=False)
        self.messages = [{"role": "system", "content": text}] if text else []
        self.hidden, self.context_notice = 0, None

    def set_option(self, name: str, value: str) -> str:
        """Change one sampling setting from its text (``/set top_p 0.9``) and return its
        field name; ConfigError naming the problem for an unknown name or a bad value."""
        key = name.replace("-", "_")
        if key not in SETTABLE:
            raise ConfigError(f"unknown setting {name!r}: choose one of {', '.join(SETTABLE)}")
        try:
            parsed = SETTABLE[key](value)
        except ValueError:
            kind = "a number" if SETTABLE[key] is float else "an integer"
            raise ConfigError(f"{key} takes {kind}, got {value!r}") from None
        self.sample = dataclasses.replace(self.sample, **{key: parsed})  # validates
        return key

    def save(self, path: str | os.PathLike) -> None:
        """Write the conversation to ``path`` as ``{"messages": [...]}`` (atomically)."""
        text = json.dumps({"messages": self.messages}, ensure_ascii=False, indent=2)
        try:
            atomic_write_text(path, text + "\n")
        except OSError as e:
            raise DataError(f"cannot save the conversation to {path}: {e.strerror}") from None

    def load(self, path: str | os.PathLike) -> None:
        """Replace the conversation with the one saved in ``path`` (its system message
        included); DataError if the file is not a saved conversation."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} is not a JSON file: {e}") from None
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list):
            raise DataError(f'{path} is not a saved conversation: expected {{"messages": [...]}}')
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "user":
            raise DataError(f"{path}: the conversation ends with an unanswered user message")
        # A saved chat may hold no exchange yet (nothing, or the system message alone):
        # check it as the conversation it becomes once the next message is added.
        problem = conversation_problem([*messages, {"role": "user", "content": ""}])
        if problem is not None:
            raise DataError(f"{path} is not a valid conversation: {problem}")
        self.messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        self.hidden, self.context_notice = 0, None

    def settings_text(self) -> str:
        return "  ".join(f"{k}={getattr(self.sample, k)}" for k in SETTABLE)

    def command(self, line: str) -> str | None:
        """Run the REPL command ``line`` (it starts with ``/``). Returns the text to show
        the user, or None when the command ends the chat (/exit, /quit). A bad command or
        value raises a ScratchLMError with a one-line message; the session is unchanged."""
        name, *rest = line.split(maxsplit=1)
        arg = rest[0].strip() if rest else ""
        if name in ("/exit", "/quit"):
            return None
        if name == "/help":
            return HELP
        if name == "/reset":
            self.reset()
            return "conversation reset"
        if name == "/system":
            self.set_system(arg or None)
            return "system message set; new conversation" if arg else "no system message"
        if name == "/set":
            if not arg:
                return self.settings_text()
            parts = arg.split()
            if len(parts) != 2:
                raise ConfigError("usage: /set NAME VALUE, e.g. /set temperature 0.7")
            key = self.set_option(*parts)
            return f"{key} = {getattr(self.sample, key)}"
        if name in ("/save", "/load"):
            if not arg:
                raise ConfigError(f"usage: {name} FILE")
            if name == "/save":
                self.save(arg)
                return f"saved {len(self.messages)} messages to {arg}"
            self.load(arg)
            return f"loaded {len(self.messages)} messages from {arg}"
        raise ConfigError(f"unknown command {name}: /help lists the commands")


def header(session: ChatSession) -> str:
    """The lines an interactive chat starts with."""
    config = session.model.config
    params = session.model.num_parameters() / 1e6
    return (
        f"scratchlm chat: {session.name} ({params:.2f}M parameters, context "
        f"{config.context_length} tokens)\n"
        "type a message and press Enter; /help lists the commands, /exit quits"
    )


def run_repl(
    session: ChatSession,
    *,
    input_stream: TextIO,
    output_stream: TextIO,
    interactive: bool,
    error_stream: TextIO | None = None,
) -> tuple[int, int]:
    """Read lines until EOF, ``/exit`` or Ctrl-C at the prompt; each line is a command
    (``/...``) or a message whose answer is streamed, flushed piece by piece. Returns
    ``(messages sent, messages that failed)``.

    Interactive (a terminal): a header, a ``you> `` prompt, command output and errors on
    ``output_stream``; Ctrl-C during an answer prints ``[stopped]``. Piped: no header or
    prompts; ``output_stream`` gets exactly one line per message, the answer (an empty
    line when it failed), while command output and errors go to ``error_stream``
    (default: stderr). A message is its line without surrounding whitespace; blank lines
    are skipped, and ``//`` at the start sends a message that begins with ``/``.
    """
    out = output_stream
    err = error_stream or (out if interactive else sys.stderr)
    # input() gives line editing and history when readline is loaded and the streams
    # are the terminal's; otherwise read the stream directly.
    use_input = interactive and input_stream is sys.stdin and out is sys.stdout
    if interactive:
        out.write(header(session) + "\n")
        out.flush()
    sent = failed = 0
    while True:
        try:
            line = _read_line(input_stream, out, interactive, use_input)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: leave
            if interactive:
                out.write("\n")
                out.flush()
            return sent, failed
        if line is None:  # EOF (Ctrl-D)
            if interactive:
                out.write("\n")
                out.flush()
            return sent, failed
        text = line.strip()
        if not text:
            continue
        if text.startswith("//"):  # a message that starts with "/"
            text = text[1:]
        elif text.startswith("/"):
            try:
                shown = session.command(text)
            except ScratchLMError as e:
                _write_line(err, f"error: {e}")
                continue
            if shown is None:
                return sent, failed
            _write_line(out if interactive else err, shown)
            continue
        sent += 1
        failed += not _answer(session, text, out, err, interactive)


def _read_line(stream: TextIO, out: TextIO, interactive: bool, use_input: bool) -> str | None:
    """The next line (its newline may remain), or None at EOF."""
    if use_input:
        try:
            return input(PROMPT)
        except EOFError:
            return None
    if interactive:
        out.write(PROMPT)
        out.flush()
    line = stream.readline()
    return line if line else None


def _answer(session: ChatSession, text: str, out: TextIO, err: TextIO, interactive: bool) -> bool:
    """Stream the answer to ``text`` onto ``out``, then end the line; False when it
    failed (an error, not a Ctrl-C)."""
    answer = session.send(text)
    try:
        for piece in answer:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        # Ctrl-C stops this answer, not the chat. close() ends the stream where it was
        # suspended (if the interrupt came while writing), so the partial answer is kept.
        answer.close()
        if interactive:
            out.write("\n[stopped]")
    except ScratchLMError as e:
        if interactive:
            _write_line(err, f"error: {e}")
            return False
        out.write("\n")  # piped: one output line per message, even a failed one
        out.flush()
        _write_line(err, f"error: {e}")
        return False
    out.write("\n")
    out.flush()
    if session.context_notice:  # piped: stdout keeps one line per answer
        _write_line(out if interactive else err, session.context_notice)
    return True


def _write_line(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()
