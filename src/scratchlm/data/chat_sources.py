"""Conversation files -> conversations in the chat format (see ``chat``).

Formats, by extension (a directory stands for every such file under it, sorted):

- ``.jsonl``: one object per line, either OpenAI's ``{"messages": [{"role", "content"},
  ...]}`` or ``{"prompt": ..., "completion": ...}`` (a user message and the answer).
- ``.json``: a list whose elements are objects as in ``.jsonl`` or strings in the
  ``"User: ... Assistant: ..."`` style: role labels (System, User, Assistant, any case) at
  line starts, several turns per string, an optional system message first; each
  message's text is stripped of surrounding whitespace.
- ``.csv``: a header row naming one pair of columns: ``question``/``answer``,
  ``prompt``/``response`` or ``instruction``/``output`` (any case). With
  ``instruction``/``output`` a non-empty ``input`` cell is added to the instruction after
  a blank line (the Alpaca layout); a non-empty ``system`` cell becomes a system message.

A record is malformed when it is not valid JSON, lacks the keys above, has a role other
than system/user/assistant, empty or whitespace-only content, roles out of order, or does
not end with an assistant message. Each one stops the read with a DataError naming
``FILE:LINE``; with ``skip_bad`` it is left out and counted instead. Whole-file problems
(a .json file that is not a list, a CSV header without the columns, bytes that are not
UTF-8 in a .json or .csv file) are never skipped.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from scratchlm.chat_format import conversation_problem
from scratchlm.data.readers import CSV_FIELD_LIMIT
from scratchlm.errors import DataError

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]
SUFFIXES = (".jsonl", ".json", ".csv")
# Accepted CSV header pairs: user message column, assistant message column.
CSV_COLUMNS = (("question", "answer"), ("prompt", "response"), ("instruction", "output"))
# A role label at the start of a line of a "User: ... Assistant: ..." string.
ROLE_LABEL = re.compile(r"^[ \t]*(system|user|assistant)[ \t]*:", re.IGNORECASE | re.MULTILINE)
_WHITESPACE = re.compile(r"[ \t\r\n]*")  # what JSON allows between values


class BadRecord(Exception):
    """One malformed record (internal: read_conversations turns it into a DataError or a
    skip, adding the file and line)."""


# A record as read: where it is ("FILE:LINE"), and its conversation or what is wrong.
Record = tuple[str, Conversation | BadRecord]


def read_conversations(
    paths: str | os.PathLike | Sequence[str | os.PathLike], *, skip_bad: bool = False
) -> tuple[list[Conversation], int]:
    """Read every conversation of the files (and directories) named, in order.

    Returns ``(conversations, skipped)``: each conversation a list of ``{"role",
    "content"}`` dicts ending with an assistant message, and the number of malformed
    records left out (always 0 without ``skip_bad``, which raises on the first).
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files = [f for p in paths for f in _expand(Path(p))]
    if not files:
        raise DataError("no conversation files given: name .jsonl, .json or .csv files")
    records = (record for file in files for record in _records(file))
    conversations, skipped = good_records(records, skip_bad, "conversation")
    if not conversations:
        names = ", ".join(map(str, files[:3])) + (" ..." if len(files) > 3 else "")
        raise DataError(f"no usable conversations in {names} ({skipped} skipped as malformed)")
    return conversations, skipped


def _expand(path: Path) -> list[Path]:
    """A file, or every conversation file under a directory (sorted, hidden ones left out)."""
    if path.is_dir():
        found = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file()
            and p.suffix.lower() in SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        if not found:
            raise DataError(f"directory {path} holds no .jsonl, .json or .csv files")
        return found
    if not path.exists():
        raise DataError(f"conversation file {path} does not exist: check the spelling")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(
            f"{path}: conversation files must end in .jsonl, .json or .csv, not "
            f"{path.suffix or 'no extension'!r}"
        )
    return [path]


def _records(path: Path) -> Iterator[Record]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_records(path)
    if suffix == ".json":
        return _json_records(path)
    return _csv_records(path)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check its permissions") from None


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 (a byte-order mark dropped); DataError at the first bad byte."""
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: invalid UTF-8 at byte {e.start}; save the file as UTF-8"
        ) from None


# ------------------------------------------------------------------ one record


def _conversation(value: Any) -> Conversation:
    """The conversation in one JSON record (an object, or a dialogue string), checked."""
    if isinstance(value, str):
        messages = parse_dialogue(value)
    elif isinstance(value, dict) and "messages" in value:
        messages = value["messages"]
        if isinstance(messages, list):  # keep only role and content, drop e.g. "name"
            messages = [
                {k: m[k] for k in ("role", "content") if k in m} if isinstance(m, dict) else m
                for m in messages
            ]
    elif isinstance(value, dict) and "prompt" in value and "completion" in value:
        messages = [
            {"role": "user", "content": value["prompt"]},
            {"role": "assistant", "content": value["completion"]},
        ]
    elif isinstance(value, dict):
        keys = ", ".join(map(repr, list(value)[:10])) or "none"
        raise BadRecord(f"expected a 'messages' key or 'prompt' and 'completion' (keys: {keys})")
    else:
        raise BadRecord(
            f"expected an object with 'messages' or 'prompt' and 'completion', found "
            f"{type(value).__name__}"
        )
    return checked_conversation(messages)


def checked_conversation(messages: Any) -> Conversation:
    """``messages`` as a training conversation, or BadRecord: the format's rules, plus
    non-blank content that is valid Unicode and a last message from the assistant."""
    problem = conversation_problem(messages)
    if problem is not None:
        raise BadRecord(problem)
    for i, m in enumerate(messages):
        if not m["content"].strip():
            raise BadRecord(f"message {i} ({m['role']}) has empty content")
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError:  # JSON can spell a lone surrogate: "\ud800"
            raise BadRecord(f"message {i} ({m['role']}) holds a lone surrogate") from None
    if messages[-1]["role"] != "assistant":
        raise BadRecord(
            f"the conversation ends with a {messages[-1]['role']} message, not the answer"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def parse_dialogue(text: str) -> Conversation:
    """``"System: ...\\nUser: ...\\nAssistant: ..."`` -> messages (not yet checked)."""
    labels = list(ROLE_LABEL.finditer(text))
    if not labels:
        raise BadRecord("no 'User:' or 'Assistant:' label at the start of a line")
    before = text[: labels[0].start()].strip()
    if before:
        raise BadRecord(f"text before the first role label: {before[:40]!r}")
    ends = [m.start() for m in labels[1:]] + [len(text)]
    return [
        {"role": m.group(1).lower(), "content": text[m.end() : end].strip()}
        for m, end in zip(labels, ends, strict=True)
    ]


# ----------------------------------------------------------------------- formats


def good_records(
    records: Iterable[tuple[str, Any]], skip_bad: bool, what: str
) -> tuple[list[Any], int]:
    """The records of ``(FILE:LINE, record or BadRecord)`` pairs that are not BadRecords,
    and how many were skipped: the first bad one is a DataError naming its place, or with
    ``skip_bad`` each is counted and the first named in one warning."""
    good: list[Any] = []
    skipped, first_bad = 0, ""
    for where, record in records:
        if isinstance(record, BadRecord):
            if not skip_bad:
                raise DataError(f"{where}: {record}; fix it or pass --skip-bad")
            skipped += 1
            first_bad = first_bad or f"{where}: {record}"
        else:
            good.append(record)
    if skipped:
        log.warning("skipped %d malformed %s record(s); the first: %s", skipped, what, first_bad)
    return good, skipped


def jsonl_values(path: Path, data: bytes) -> Iterator[tuple[str, Any]]:
    """``(FILE:LINE, value)`` for each non-blank line of the JSONL text ``data`` read from
    ``path``: the parsed JSON value, or a BadRecord saying why the line is not one (bad
    UTF-8 or bad JSON spoils only its own line)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield where, BadRecord(f"invalid UTF-8 at column {e.start + 1}")
            continue
        if not line.strip():
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            yield where, BadRecord(f"invalid JSON ({e.msg} at column {e.colno})")


def _jsonl_records(path: Path) -> Iterator[Record]:
    """One conversation per non-blank line."""
    for where, value in jsonl_values(path, _read_bytes(path)):
        yield where, value if isinstance(value, BadRecord) else _parsed(value)


def _parsed(value: Any) -> Conversation | BadRecord:
    try:
        return _conversation(value)
    except BadRecord as e:
        return e


def _json_records(path: Path) -> Iterator[Record]:
    """The elements of a JSON list, each with the line it starts on. A syntax error ends
    the file (nothing after it can be trusted), so it is a DataError, never skipped."""
    text = _read_text(path)
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end()
    if not text.startswith("[", pos):
        found = "an empty file" if pos == len(text) else f"{text[pos]!r} first"
        raise DataError(
            f"{path}:{line_of(pos)}: expected a JSON list of conversations, found {found}; "
            "for one object per line use a .jsonl file"
        )
    pos = _WHITESPACE.match(text, pos + 1).end()
    closed = text.startswith("]", pos)
    while not closed:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{line_of(e.pos)}: invalid JSON ({e.msg}); fix the file"
            ) from None
        yield f"{path}:{line_of(pos)}", _parsed(value)
        pos = _WHITESPACE.match(text, end).end()
        closed = text.startswith("]", pos)
        if not closed and not text.startswith(",", pos):
            found = "the end of the file" if pos == len(text) else repr(text[pos])
            raise DataError(
                f"{path}:{line_of(pos)}: expected ',' or ']' after a list element, found "
                f"{found}; fix the file"
            )
        if not closed:
            pos = _WHITESPACE.match(text, pos + 1).end()
    after = _WHITESPACE.match(text, pos + 1).end()
    if after != len(text):
        raise DataError(f"{path}:{line_of(after)}: text after the JSON list; fix the file")


def _csv_records(path: Path) -> Iterator[Record]:
    """One record per row after the header; each row's line is the one it starts on."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    # csv's field limit is process-wide; raised only while this file is being read.
    old_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        header = next(reader, None)
        columns = _csv_columns(header, path)
        start = reader.line_num + 1
        for row in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if not row:  # a blank line
                continue
            yield where, _csv_row(row, columns)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e}); fix the file") from None
    finally:
        csv.field_size_limit(old_limit)


def _csv_columns(header: list[str] | None, path: Path) -> dict[str, int]:
    """Column index of "user", "assistant" and, when present, "input" and "system"."""
    names = [h.strip().lower() for h in header or ()]
    for user, assistant in CSV_COLUMNS:
        if user in names and assistant in names:
            columns = {"user": names.index(user), "assistant": names.index(assistant)}
            if user == "instruction" and "input" in names:
                columns["input"] = names.index("input")
            if "system" in names:
                columns["system"] = names.index("system")
            return columns
    found = ", ".join(map(repr, names[:20])) or "none"
    pairs = ", ".join(f"{u}/{a}" for u, a in CSV_COLUMNS)
    raise DataError(
        f"{path}:1: the header row has no question and answer columns (columns: {found}); "
        f"name them {pairs}"
    )


def _csv_row(row: list[str], columns: dict[str, int]) -> Conversation | BadRecord:
    need = max(columns.values()) + 1
    if len(row) < need:
        return BadRecord(f"the row has {len(row)} cell(s), the header needs {need}")
    user = row[columns["user"]]
    if "input" in columns and row[columns["input"]].strip():
        user = f"{user}\n\n{row[columns['input']]}"
    messages = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": row[columns["assistant"]]},
    ]
    if "system" in columns and row[columns["system"]].strip():
        messages.insert(0, {"role": "system", "content": row[columns["system"]]})
    try:
        return checked_conversation(messages)
    except BadRecord as e:
        return e
