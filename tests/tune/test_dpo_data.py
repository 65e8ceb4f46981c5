"""Preference files: TRL's formats read into pairs, rendered with the chat format,
targets on the final answer only; bad records named by file and line."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.chat_format import render_conversation
from scratchlm.errors import DataError
from scratchlm.model.loss import IGNORE_INDEX
from scratchlm.tune import dpo_data
from scratchlm.tune.dpo_data import (
    PreferenceSampler,
    batch_of,
    pair_rows,
    read_preferences,
    render_answer,
)


def _write(path, *records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


def test_strings_conversations_and_implicit_prompts_read_as_the_same_pair(tmp_path):
    strings = {"prompt": "Why is the sky blue?", "chosen": "Scattering.", "rejected": "Paint."}
    conversational = {
        "prompt": [_user("Why is the sky blue?")],
        "chosen": [_assistant("Scattering.")],
        "rejected": [_assistant("Paint.")],
    }
    implicit = {
        "chosen": [_user("Why is the sky blue?"), _assistant("Scattering.")],
        "rejected": [_user("Why is the sky blue?"), _assistant("Paint.")],
    }
    pairs, skipped = read_preferences(
        _write(tmp_path / "p.jsonl", strings, conversational, implicit)
    )
    assert skipped == 0 and len(pairs) == 3
    assert pairs[0] == pairs[1] == pairs[2]
    assert pairs[0].prompt == (("user", "Why is the sky blue?"),)
    assert (pairs[0].chosen, pairs[0].rejected) == ("Scattering.", "Paint.")


def test_targets_cover_the_final_answer_and_its_end_of_turn_only(tmp_path, chat_tok):
    """A multi-turn prompt's earlier answer is context, not the answer being judged."""
    record = {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            _user("Hi"),
            _assistant("Hello."),
            _user("What is ice?"),
        ],
        "chosen": [_assistant("Frozen water.")],
        "rejected": [_assistant("Hot rock.")],
    }
    (pair,), _ = read_preferences(_write(tmp_path / "p.jsonl", record))
    x, y = render_answer(pair, pair.chosen, chat_tok)
    ids, _ = render_conversation(pair.messages(pair.chosen), chat_tok)
    assert x == ids[:-1] and len(y) == len(x)
    answer = [*chat_tok.encode("Frozen water."), chat_tok.special_tokens["<|end|>"]]
    assert [t for t in y if t != IGNORE_INDEX] == answer
    assert y[-len(answer) :] == answer  # the last targets, contiguous
    assert all(t == IGNORE_INDEX for t in y[: -len(answer)])


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("{not json", "invalid JSON"),
        ({"prompt": "q", "chosen": "a"}, "'chosen' and 'rejected'"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "the same answer"),
        ({"prompt": "q", "chosen": "a", "rejected": 3}, "string or a list"),
        ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "empty content"),
        (
            {"prompt": "q", "chosen": [_assistant("a"), _user("b")], "rejected": "c"},
            "one assistant message",
        ),
        ({"chosen": "a", "rejected": "b"}, "lists of messages"),
        (
            {"chosen": [_user("a"), _assistant("b")], "rejected": [_user("c"), _assistant("d")]},
            "share no",
        ),
        ({"prompt": [_assistant("a")], "chosen": "b", "rejected": "c"}, "user"),
    ],
)
def test_a_bad_record_is_named_by_file_and_line_or_skipped_and_counted(tmp_path, record, problem):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = _write(tmp_path / "p.jsonl", good, record, good)
    with pytest.raises(DataError, match=f"p.jsonl:2: .*{problem}.*--skip-bad"):
        read_preferences(path)
    pairs, skipped = read_preferences(path, skip_bad=True)
    assert (len(pairs), skipped) == (2, 1)


def test_files_are_refused_by_name_and_size_before_reading(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        read_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="JSONL"):
        read_preferences(_write(tmp_path / "p.csv", "a,b"))
    path = _write(tmp_path / "big.jsonl", {"prompt": "q", "chosen": "a", "rejected": "b"})
    monkeypatch.setattr(dpo_data, "MAX_FILE_BYTES", 10)
    with pytest.raises(DataError, match=r"more than the 10 .*split it"):
        read_preferences(path)


def test_pairs_too_long_for_the_context_are_left_out_and_counted(tmp_path, chat_tok):
    short = {"prompt": "q", "chosen": "a", "rejected": "b"}
    long = {"prompt": "q", "chosen": "a", "rejected": "word " * 200}
    pairs, _ = read_preferences(_write(tmp_path / "p.jsonl", short, long, short))
    rows, too_long = pair_rows(pairs, chat_tok, 64)
    assert too_long == 1 and rows.x.shape == (2, 2, 64)


def test_a_batch_puts_the_chosen_answers_first_and_cuts_to_the_longest(tmp_path, chat_tok):
    records = [
        {"prompt": "What is ice?", "chosen": "Frozen water.", "rejected": "Hot rock."},
        {
            "prompt": "Why is the sky blue?",
            "chosen": "Scattering.",
            "rejected": "Blue paint, I think.",
        },
    ]
    pairs, _ = read_preferences(_write(tmp_path / "p.jsonl", *records))
    rows, _ = pair_rows(pairs, chat_tok, 64)
    rows.ref = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x, y, ref = batch_of(rows, torch.tensor([1, 0]))
    width = int(rows.lengths.max())
    assert x.shape == y.shape == (4, width)
    for row, (pair, answer) in enumerate(
        [(1, "chosen"), (0, "chosen"), (1, "rejected"), (0, "rejected")]
    ):
        inputs, targets = render_answer(pairs[pair], getattr(pairs[pair], answer), chat_tok)
        assert x[row, : len(inputs)].tolist() == inputs
        assert y[row, : len(targets)].tolist() == targets
        assert (y[row, len(targets) :] == IGNORE_INDEX).all()
    assert ref.tolist() == [3.0, 1.0, 4.0, 2.0]

    sampler = PreferenceSampler(rows, 2, seed=1)
    first = [t.clone() for t in sampler.next()]
    state = sampler.state_dict()
    after = [t.clone() for t in sampler.next()]
    again = PreferenceSampler(rows, 2, seed=1)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(again.next(), after, strict=True))
    assert first[0].shape[0] == 4


def test_the_built_in_pairs_hold_out_other_questions_and_facts():
    train, _ = read_preferences("builtin:preferences")
    heldout, _ = read_preferences("builtin:preferences_heldout")
    assert 150 <= len(train) <= 300 and len(heldout) >= 40
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    assert not {p.chosen for p in train} & {p.chosen for p in heldout}  # other facts
    # nor as a rejected one: training never pushes down an answer a held-out pair prefers.
    assert not {p.rejected for p in train} & {p.chosen for p in heldout}
    # A wrong answer, in either share, is one taught for another training question.
    taught = {p.chosen for p in train}
    for pair in train + heldout:
        assert pair.chosen in pair.rejected or pair.rejected in taught - {pair.chosen}
