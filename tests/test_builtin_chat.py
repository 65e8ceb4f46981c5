"""The built-in chat data: well-formed conversations and eval files that match them."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from scratchlm.builtin import (
    builtin_chat,
    builtin_chat_eval,
    builtin_chat_heldout,
    builtin_corpus,
)
from scratchlm.data.chat_sources import read_conversations
from scratchlm.train.config import TrainConfig
from scratchlm.train.sft_data import split_conversations

ROLES = {"system", "user", "assistant"}
EVAL_KEYS = {"question", "expect", "source"}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            assert line.strip(), f"{path.name}:{number}: empty line"
            row = json.loads(line)
            assert isinstance(row, dict), f"{path.name}:{number}: not a JSON object"
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def conversations() -> list[list[dict]]:
    return [row["messages"] for row in _read_jsonl(builtin_chat())]


@pytest.fixture(scope="module")
def eval_rows() -> list[dict]:
    return _read_jsonl(builtin_chat_eval())


@pytest.fixture(scope="module")
def heldout_rows() -> list[dict]:
    return _read_jsonl(builtin_chat_heldout())


@pytest.fixture(scope="module")
def answer_of(conversations) -> dict[str, list[str]]:
    """Each user message mapped to the assistant answers that follow it."""
    answers: dict[str, list[str]] = {}
    for messages in conversations:
        for user, reply in itertools.pairwise(messages):
            if user["role"] == "user" and reply["role"] == "assistant":
                answers.setdefault(user["content"], []).append(reply["content"])
    return answers


def test_accessors_point_at_files_next_to_the_corpus():
    folder = builtin_corpus().parent
    for path, name in [
        (builtin_chat(), "chat.jsonl"),
        (builtin_chat_eval(), "chat_eval.jsonl"),
        (builtin_chat_heldout(), "chat_heldout.jsonl"),
    ]:
        assert path == folder / name
        assert path.is_file()


def test_conversations_are_well_formed(conversations):
    assert 3000 <= len(conversations) <= 4000
    for number, messages in enumerate(conversations, 1):
        where = f"chat.jsonl:{number}"
        assert isinstance(messages, list) and messages, where
        for message in messages:
            assert set(message) == {"role", "content"}, where
            assert message["role"] in ROLES, where
            assert isinstance(message["content"], str) and message["content"].strip(), where
        roles = [m["role"] for m in messages]
        if roles[0] == "system":
            roles = roles[1:]
        assert "system" not in roles, f"{where}: system message not first"
        assert roles, f"{where}: only a system message"
        assert roles[0] == "user", where
        assert roles[-1] == "assistant", f"{where}: must end with an assistant answer"
        for i, role in enumerate(roles):
            assert role == ("user" if i % 2 == 0 else "assistant"), f"{where}: roles must alternate"


def test_first_questions_are_unique(conversations):
    firsts = [next(m for m in messages if m["role"] == "user") for messages in conversations]
    questions = [m["content"].strip().lower() for m in firsts]
    assert len(questions) == len(set(questions))


def test_has_small_talk_and_multi_turn_conversations(conversations):
    turns = [sum(m["role"] == "user" for m in messages) for messages in conversations]
    assert sum(t > 1 for t in turns) >= 5
    assert sum(messages[0]["role"] == "system" for messages in conversations) >= 3
    answers = [m["content"].lower() for c in conversations for m in c if m["role"] == "assistant"]
    assert sum("everyday science" in a for a in answers) >= 40


@pytest.mark.parametrize("name", ["eval", "heldout"])
def test_eval_rows_are_well_formed(name, eval_rows, heldout_rows):
    rows = eval_rows if name == "eval" else heldout_rows
    assert 60 <= len(rows) <= 100
    questions = set()
    for row in rows:
        assert set(row) == EVAL_KEYS, row
        assert isinstance(row["question"], str) and row["question"].strip(), row
        assert isinstance(row["source"], str) and row["source"].strip(), row
        assert isinstance(row["expect"], list) and 1 <= len(row["expect"]) <= 2, row
        assert all(isinstance(w, str) and w.strip() for w in row["expect"]), row
        questions.add(row["question"])
    assert len(questions) == len(rows), "duplicate questions"


def test_eval_questions_are_trained_with_the_expected_answer(eval_rows, answer_of):
    for row in eval_rows:
        answers = answer_of.get(row["question"])
        assert answers, f"eval question not in chat.jsonl: {row['question']!r}"
        for answer in answers:
            for word in row["expect"]:
                assert word.lower() in answer.lower(), (row["question"], word, answer)


def test_eval_questions_are_in_the_training_share(eval_rows):
    """A taught question is one the default run trains on: instruction tuning holds a
    tenth of the conversations out for validation (and pretraining leaves out the same
    tenth), so no question of chat_eval.jsonl may fall in that tenth."""
    conversations, _ = read_conversations([str(builtin_chat())])
    _, held_out = split_conversations(conversations, TrainConfig().val_fraction)
    unseen = {m["content"] for talk in held_out for m in talk if m["role"] == "user"}
    assert len(unseen) > 300  # the check below looks at a real validation share
    assert [row["question"] for row in eval_rows if row["question"] in unseen] == []


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def test_heldout_questions_are_new_wordings_of_taught_facts(heldout_rows, answer_of):
    """No trained question is a held-out one or a near copy of it: fewer than 80% of
    their words in common (the new wordings added to chat.jsonl were kept under 50%)."""
    trained = [_words(q) for q in answer_of]
    all_answers = [a.lower() for answers in answer_of.values() for a in answers]
    for row in heldout_rows:
        held = _words(row["question"])
        nearest = max(len(held & t) / len(held | t) for t in trained)
        assert nearest < 0.8, row["question"]
        for word in row["expect"]:
            assert any(word.lower() in a for a in all_answers), (row["question"], word)


def test_most_answers_are_taught_in_several_wordings(conversations):
    """The lever for answering reworded questions: one answer, many questions."""
    wordings: dict[str, set[str]] = {}
    for messages in conversations:
        talk = [m for m in messages if m["role"] != "system"]
        if len(talk) == 2:
            wordings.setdefault(talk[1]["content"], set()).add(talk[0]["content"].lower())
    counts = sorted(len(q) for q in wordings.values())
    assert len(counts) >= 300
    assert counts[len(counts) // 10] >= 8  # nine answers in ten have at least eight


def test_no_special_token_like_text():
    for path in (builtin_chat(), builtin_chat_eval(), builtin_chat_heldout()):
        assert "<|" not in path.read_text(encoding="utf-8"), path.name


def test_builtin_folder_stays_small():
    folder = builtin_corpus().parent
    size = sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert size < 1_200_000  # chat.jsonl (880 KB) and the preference pairs (110 KB)


# The words a refusal's first sentence may use: it says that the model cannot answer,
# never what the question was about, so a refusal learned for one off-theme question
# ("How do I bake a cake?") cannot name a wrong topic when it answers another one.
NEUTRAL_REFUSAL_WORDS = _words(
    "i i'm don't know that this sorry can't cannot help with answer not able to about "
    "anything much the do how look up give advice good at have no way it a an question "
    "and is big"
)


def test_refusals_name_no_topic(conversations):
    refusals = {
        m["content"]
        for messages in conversations
        for m in messages
        if m["role"] == "assistant"
        and "everyday science" in m["content"]
        and re.search(r"\b(don't know|can't|not able|not good)\b", m["content"])
    }
    assert len(refusals) >= 15  # the check below sees the refusals, not nothing
    for text in refusals:
        first_sentence = re.split(r"[.!?]", text)[0]
        topic_words = _words(first_sentence) - NEUTRAL_REFUSAL_WORDS
        assert not topic_words, (text, topic_words)
