"""Instruction tuning on the user's own conversations: the samples ask the user's held-out
questions (not built-in ones), the run says how many conversations it read, skipped and
held out, and warns when its steps go over a tiny set hundreds of times."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from scratchlm.chat_format import chat_tokenizer
from scratchlm.data.chat_sources import read_conversations
from scratchlm.model.loss import IGNORE_INDEX
from scratchlm.tokenizer import load_tokenizer
from scratchlm.train.config_files import sft_config
from scratchlm.train.sft_data import (
    evenly_spaced,
    heldout_prompts,
    load_sft_data,
    passes_warning,
    split_conversations,
)
from scratchlm.train.sources import training_data

T = 128


@pytest.fixture(scope="module")
def chat_tok(prepared):
    return chat_tokenizer(load_tokenizer(prepared / "tokenizer.json"))


def python_conversations(n: int) -> list[list[dict[str, str]]]:
    """Conversations about Python, nothing like the built-in science questions."""
    return [
        [
            {"role": "user", "content": f"What is len(x{i})?"},
            {"role": "assistant", "content": f"It is {i * 7}."},
        ]
        for i in range(n)
    ]


def write_jsonl(path: Path, conversations, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps({"messages": m}) for m in conversations] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(path: Path, tok, **settings):
    options = {"batch_size": 4, "seed": 0, "val_fraction": 0.1, "skip_bad": False, **settings}
    return load_sft_data([str(path)], tok, T, **options)


def test_sample_prompts_are_the_users_held_out_questions(tmp_path, chat_tok):
    conversations = python_conversations(30)
    path = write_jsonl(tmp_path / "mine.jsonl", conversations)
    config = sft_config(init_from="unused", conversations=[str(path)], out=str(tmp_path / "o"))
    assert config.sample_prompts == []  # sft's default: no fixed prompts
    *_, prompts = training_data(config, chat_tok, T, rank=0, world_size=1)
    train, val = split_conversations(conversations, config.val_fraction)
    assert prompts == [m[0]["content"] for m in val][:2]
    assert not set(prompts) & {m[0]["content"] for m in train}  # never trained on

    given = config.replace(sample_prompts=["Why is the sky blue?"])
    *_, prompts = training_data(given, chat_tok, T, rank=0, world_size=1)
    assert prompts == ["Why is the sky blue?"]  # prompts the user names win


def test_heldout_prompts_leave_room_for_the_answer(chat_tok):
    long_question = "Explain every detail of the garbage collector, step by step. " * 3
    conversations = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": long_question}],
        [{"role": "user", "content": "Short?"}],
        [{"role": "user", "content": "Short?"}],
        [{"role": "user", "content": "Other?"}],
        [{"role": "user", "content": "Third?"}],
    ]
    assert len(chat_tok.encode(long_question)) > T // 2
    assert heldout_prompts(conversations, chat_tok, T, 2) == ["Short?", "Other?"]
    assert heldout_prompts(conversations[:2], chat_tok, T, 2) == ["Short?"]


def test_counts_are_logged(tmp_path, chat_tok, caplog):
    conversations = python_conversations(30)
    path = write_jsonl(tmp_path / "mine.jsonl", conversations)
    train, val = split_conversations(conversations, 0.1)
    with caplog.at_level(logging.INFO, logger="scratchlm"):
        data = load(path, chat_tok)
    rows = len(data.sampler.rows.x)
    expected = (
        f"conversations: 30 read, 0 skipped; {len(train)} for training ({rows} packed rows "
        f"of {T} tokens), {len(val)} held out for validation (val_fraction 0.1)"
    )
    assert [r.getMessage() for r in caplog.records] == [expected]
    assert caplog.records[0].levelno == logging.INFO
    assert data.trained == len(train) and data.val_x.shape[0] == len(val)


def test_skipped_conversations_are_counted_by_reason(tmp_path, chat_tok, caplog):
    too_long = [
        {"role": "user", "content": "tell me everything " * 200},
        {"role": "assistant", "content": "no"},
    ]
    bad = ('{"messages": []}', "not json at all")
    path = write_jsonl(tmp_path / "mine.jsonl", [*python_conversations(30), too_long], bad)
    conversations, malformed = read_conversations([str(path)], skip_bad=True)
    assert malformed == 2 and len(conversations) == 31
    with caplog.at_level(logging.INFO, logger="scratchlm"):
        load(path, chat_tok, skip_bad=True)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "conversations: 33 read, 3 skipped (2 malformed, 1 too long for the context);" in text
    assert f"skipped 1 conversation(s) too long for the model's context of {T} tokens" in text


def test_passes_warning_numbers():
    assert passes_warning(rows=50, rows_per_step=16, steps=300, conversations=90) is None
    text = passes_warning(rows=7, rows_per_step=16, steps=300, conversations=27)
    assert text is not None
    assert "about 686 passes over the 27 training conversations (7 packed rows)" in text
    assert "--steps 5 makes 10 passes" in text  # ceil(10 * 7 / 16)


def test_a_tiny_set_trained_for_long_is_warned_about(tmp_path, chat_tok, caplog):
    path = write_jsonl(tmp_path / "mine.jsonl", python_conversations(30))
    config = sft_config(init_from="unused", conversations=[str(path)], out=str(tmp_path / "o"))
    with caplog.at_level(logging.WARNING, logger="scratchlm"):
        training_data(config, chat_tok, T, rank=0, world_size=1)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{config.steps} steps of {config.batch_size} rows make about" in warning
    assert "learn them by heart" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scratchlm"):
        training_data(config.replace(steps=2), chat_tok, T, rank=0, world_size=1)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_run_sized_in_time_is_not_warned_about_steps_it_never_asked_for(
    tmp_path, chat_tok, caplog
):
    path = write_jsonl(tmp_path / "mine.jsonl", python_conversations(30))
    config = sft_config(
        init_from="unused", conversations=[str(path)], out=str(tmp_path / "o"), time_budget="1m"
    )
    assert config.steps == 300  # the default stays, sizing nothing
    with caplog.at_level(logging.WARNING, logger="scratchlm"):
        training_data(config, chat_tok, T, rank=0, world_size=1)
    assert not [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_evenly_spaced_keeps_the_ends_and_the_order():
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced(list(range(10)), 1) == [0]
    assert evenly_spaced(list(range(3)), 5) == [0, 1, 2]  # fewer than asked: all of them


def test_sft_validation_scores_eval_windows_held_out_conversations(tmp_path, chat_tok):
    """--eval-windows caps the held-out conversations an evaluation scores (a large file
    holds out thousands), spread over all of them, not the first few."""
    path = write_jsonl(tmp_path / "mine.jsonl", python_conversations(200))
    config = sft_config(init_from="unused", conversations=[str(path)], out=str(tmp_path / "o"))
    _, all_x, all_y, *_ = training_data(
        config.replace(eval_windows=1000), chat_tok, T, rank=0, world_size=1
    )
    assert len(all_x) > 10  # the cap below keeps fewer than were held out
    _, x, y, *_ = training_data(config.replace(eval_windows=3), chat_tok, T, rank=0, world_size=1)
    assert len(x) == 3
    width = x.shape[1]  # padded to the longest kept row

    def position(row: int) -> int:
        """Where validation row ``row`` is among all held-out rows; nothing it scores
        lies beyond ``width``."""
        for i in range(len(all_x)):
            same = torch.equal(all_x[i, :width], x[row]) and torch.equal(all_y[i, :width], y[row])
            if same and (all_y[i, width:] == IGNORE_INDEX).all():
                return i
        raise AssertionError(f"validation row {row} is not a held-out conversation")

    first, middle, last = (position(row) for row in range(3))
    assert (first, last) == (0, len(all_x) - 1)
    assert abs(middle - (len(all_x) - 1) / 2) <= 1
