"""Conversation readers: every input format, its loss masks, and malformed records named by
file and line (or skipped and counted)."""

from __future__ import annotations

import json
import logging
import re

import pytest

from scratchlm.chat_format import END_OF_TURN, chat_tokenizer, render_conversation
from scratchlm.data.chat_sources import read_conversations
from scratchlm.errors import DataError


def conv(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


@pytest.fixture(scope="module")
def chat_tok(tok):
    return chat_tokenizer(tok)


def write(path, text: str):
    path.write_text(text, encoding="utf-8", newline="")
    return path


def jsonl(path, records) -> object:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def trained_text(messages, tok) -> str:
    ids, mask = render_conversation(messages, tok)
    return tok.decode([i for i, m in zip(ids, mask, strict=True) if m])


def answers(messages) -> str:
    return "".join(m["content"] + END_OF_TURN for m in messages if m["role"] == "assistant")


# ------------------------------------------------------------------------- formats


def test_jsonl_openai_messages(tmp_path, chat_tok):
    path = jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Why rain?", "name": "ann"},
                    {"role": "assistant", "content": "Heavy drops."},
                    {"role": "user", "content": "日本語?"},
                    {"role": "assistant", "content": "はい 😀"},
                ]
            },
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Yo"},
                ]
            },
        ],
    )
    convs, skipped = read_conversations(path)
    assert skipped == 0
    assert convs == [
        conv(
            ("system", "Be brief."),
            ("user", "Why rain?"),
            ("assistant", "Heavy drops."),
            ("user", "日本語?"),
            ("assistant", "はい 😀"),
        ),
        conv(("user", "Hi"), ("assistant", "Yo")),
    ]
    assert trained_text(convs[0], chat_tok) == f"Heavy drops.{END_OF_TURN}はい 😀{END_OF_TURN}"


def test_jsonl_prompt_completion(tmp_path, chat_tok):
    path = write(
        tmp_path / "pc.jsonl",
        "\ufeff"
        + json.dumps({"prompt": "Name a plant.", "completion": " A fern."})
        + "\r\n\n   \n"
        + json.dumps({"prompt": "2+2?", "completion": "4"})
        + "\n",
    )
    convs, _ = read_conversations([str(path)])
    assert convs == [
        conv(("user", "Name a plant."), ("assistant", " A fern.")),
        conv(("user", "2+2?"), ("assistant", "4")),
    ]
    assert trained_text(convs[0], chat_tok) == f" A fern.{END_OF_TURN}"


def test_json_dialogue_strings_and_objects(tmp_path, chat_tok):
    items = [
        "User: Why is the sky blue?\nAssistant: Air scatters blue light.\n",
        "system: Be kind.\nUSER:  first line\nsecond line\n  assistant:ok\n"
        "User: and?\nAssistant: done.",
        {"prompt": "p", "completion": "c"},
        {"messages": conv(("user", "u"), ("assistant", "a"))},
    ]
    path = write(tmp_path / "d.json", json.dumps(items, ensure_ascii=False, indent=2))
    convs, _ = read_conversations(path)
    assert convs == [
        conv(("user", "Why is the sky blue?"), ("assistant", "Air scatters blue light.")),
        conv(
            ("system", "Be kind."),
            ("user", "first line\nsecond line"),
            ("assistant", "ok"),
            ("user", "and?"),
            ("assistant", "done."),
        ),
        conv(("user", "p"), ("assistant", "c")),
        conv(("user", "u"), ("assistant", "a")),
    ]
    for messages in convs:
        assert trained_text(messages, chat_tok) == answers(messages)


@pytest.mark.parametrize(
    ("header", "user", "assistant"),
    [
        ("question,answer", "question", "answer"),
        ("Prompt,Response", "prompt", "response"),
        (" instruction , output", "instruction", "output"),
    ],
)
def test_csv_column_pairs(tmp_path, chat_tok, header, user, assistant):
    path = write(
        tmp_path / "qa.csv",
        f'id,{header}\r\n1,What falls?,Rain.\r\n\r\n2,"Two\nlines, quoted","Yes, ""quoted"""\r\n',
    )
    convs, _ = read_conversations(path)
    assert convs == [
        conv(("user", "What falls?"), ("assistant", "Rain.")),
        conv(("user", "Two\nlines, quoted"), ("assistant", 'Yes, "quoted"')),
    ]
    for messages in convs:
        assert trained_text(messages, chat_tok) == answers(messages)


def test_csv_alpaca_input_and_system_columns(tmp_path, chat_tok):
    path = write(
        tmp_path / "alpaca.csv",
        "system,instruction,input,output\n,Translate.,Bonjour,Hello\nBe terse.,Say hi.,,Hi\n",
    )
    convs, _ = read_conversations(path)
    assert convs == [
        conv(("user", "Translate.\n\nBonjour"), ("assistant", "Hello")),
        conv(("system", "Be terse."), ("user", "Say hi."), ("assistant", "Hi")),
    ]
    assert trained_text(convs[1], chat_tok) == f"Hi{END_OF_TURN}"


def test_directories_read_every_conversation_file_sorted(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    jsonl(folder / "b.jsonl", [{"prompt": "b", "completion": "B"}])
    write(folder / "sub" / "c.csv", "question,answer\nc,C\n")
    write(folder / "a.json", json.dumps(["User: a\nAssistant: A"]))
    write(folder / "notes.txt", "ignored")
    jsonl(folder / ".hidden" / "x.jsonl", [{"prompt": "x", "completion": "X"}])
    convs, _ = read_conversations(folder)
    assert [c[0]["content"] for c in convs] == ["a", "b", "c"]


# ----------------------------------------------------------------- malformed records

GOOD = json.dumps({"prompt": "fine", "completion": "ok"})


@pytest.mark.parametrize(
    ("name", "text", "line", "problem"),
    [
        ("a.jsonl", GOOD + "\n{not json\n", 2, "invalid JSON"),
        ("a.jsonl", GOOD + "\n\n" + json.dumps({"text": "x"}), 3, "expected a 'messages' key"),
        ("a.jsonl", json.dumps([1, 2]), 1, "found list"),
        (
            "a.jsonl",
            json.dumps({"messages": conv(("user", "a"), ("bot", "b"))}),
            1,
            "role 'bot'",
        ),
        ("a.jsonl", json.dumps({"prompt": "q", "completion": "  \n"}), 1, "empty content"),
        ("a.jsonl", json.dumps({"prompt": "q", "completion": 3}), 1, "content of type int"),
        (
            "a.jsonl",
            json.dumps({"messages": conv(("user", "a"), ("assistant", "b"), ("user", "c"))}),
            1,
            "ends with a user message",
        ),
        (
            "a.jsonl",
            json.dumps({"messages": conv(("user", "a"), ("system", "s"), ("assistant", "b"))}),
            1,
            "only the first message may be one",
        ),
        ("a.jsonl", '{"prompt": "\\ud800", "completion": "x"}', 1, "lone surrogate"),
        ("a.json", '[\n  "User: a\\nAssistant: b",\n  "just text"\n]', 3, "no 'User:'"),
        ("a.json", '[\n  "Hello\\nUser: a\\nAssistant: b"\n]', 2, "text before the first"),
        ("a.json", '["User: a\\nAssistant: b",\n\n 7]', 3, "found int"),
        ("a.json", '[\n"User: a\\nUser: b\\nAssistant: c"]', 2, "user but assistant"),
        ("a.csv", 'question,answer\nq,a\n\n"multi\nline",\n', 4, "empty content"),
        ("a.csv", "question,answer\nq,a\nonly\n", 3, "the row has 1 cell(s)"),
    ],
)
def test_bad_record_names_file_and_line(tmp_path, name, text, line, problem):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as info:
        read_conversations(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ")
    assert problem in message
    assert message.endswith("fix it or pass --skip-bad")
    assert "\n" not in message


def test_invalid_utf8_spoils_only_its_jsonl_line(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(
        GOOD.encode() + b"\n" + b'{"prompt": "\xff", "completion": "x"}\n' + GOOD.encode()
    )
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: invalid UTF-8"):
        read_conversations(path)
    convs, skipped = read_conversations(path, skip_bad=True)
    assert (len(convs), skipped) == (2, 1)


def test_skip_bad_counts_and_warns_with_the_first(tmp_path, caplog):
    path = write(
        tmp_path / "mixed.jsonl",
        "\n".join(
            [
                GOOD,
                "{broken",
                json.dumps({"messages": conv(("user", "only a question"))}),
                GOOD,
                json.dumps({"prompt": "", "completion": "x"}),
            ]
        ),
    )
    csv_path = write(tmp_path / "qa.csv", "question,answer\nq,\nq,a\n")
    with caplog.at_level(logging.WARNING, logger="scratchlm"):
        convs, skipped = read_conversations([path, csv_path], skip_bad=True)
    assert len(convs) == 3
    assert skipped == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 4 malformed" in warnings[0]
    assert f"{path}:2: invalid JSON" in warnings[0]


# --------------------------------------------------------------- whole-file problems


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.json", '{"prompt": "p", "completion": "c"}', r":1: expected a JSON list"),
        ("a.json", "", r":1: expected a JSON list of conversations, found an empty file"),
        ("a.json", '[\n"User: a\\nAssistant: b",\n"unterminated\n]', r":3: invalid JSON"),
        ("a.json", '["User: a\\nAssistant: b"\n"User: c"]', r":2: expected ',' or ']'"),
        ("a.json", '["User: a\\nAssistant: b"]\n[]', r":2: text after the JSON list"),
        ("a.csv", "q,a\nx,y\n", r":1: the header row has no question and answer columns"),
        ("a.txt", "User: a\nAssistant: b", r"must end in \.jsonl, \.json or \.csv"),
    ],
)
def test_file_level_problems_are_never_skipped(tmp_path, name, text, expected):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError, match=expected) as info:
        read_conversations(path, skip_bad=True)
    assert str(info.value).startswith(str(path))


def test_invalid_utf8_in_a_json_file_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'[\n"User: a\\nAssistant: b",\n"\xff"]')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: invalid UTF-8 at byte 28"):
        read_conversations(path, skip_bad=True)


def test_missing_inputs_and_nothing_usable(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"no \.jsonl, \.json or \.csv files"):
        read_conversations(tmp_path)
    with pytest.raises(DataError, match="no conversation files given"):
        read_conversations([])
    path = write(tmp_path / "bad.jsonl", "{\n")
    with pytest.raises(DataError, match=r"no usable conversations in .*bad.jsonl \(1 skipped"):
        read_conversations(path, skip_bad=True)
