"""Fact checks of a chat model: the matching rule, the question files, and batched greedy
answers that equal what ``scratchlm chat --temperature 0`` says one question at a time."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.chat import reply
from scratchlm.chat_format import chat_tokenizer
from scratchlm.config import preset
from scratchlm.errors import DataError
from scratchlm.evals import (
    FactQuestion,
    FactReport,
    answer_questions,
    check_facts,
    contains_fact,
    read_fact_questions,
)
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import CharTokenizer

QUESTIONS = ["why is the sky blue?", "hi!", "what makes rain?", "a", "is ice cold?"]


@pytest.fixture(scope="module")
def chat_model() -> tuple[TransformerLM, CharTokenizer]:
    """An untrained tiny model: its answers are gibberish of different lengths."""
    tok = chat_tokenizer(CharTokenizer("abcdefghijklmnopqrstuvwxyz !?.", ["<|endoftext|>"]))
    torch.manual_seed(0)
    return TransformerLM(preset("tiny", vocab_size=tok.vocab_size)).eval(), tok


def test_a_fact_is_every_expected_string_in_any_case():
    assert contains_fact("Water boils at 100 Degrees.", ["100 degrees"])
    assert contains_fact("It is LIQUID IRON, spinning.", ["liquid iron", "spin"])
    assert not contains_fact("It is liquid rock.", ["liquid iron"])
    assert not contains_fact("liquid iron", ["liquid iron", "spin"])  # all, not any
    assert contains_fact("anything", [])


def test_report_counts_hits_and_lists_misses():
    questions = [
        FactQuestion("q1", ["blue"]),
        FactQuestion("q2", ["rain"]),
        FactQuestion("q3", ["ice", "cold"]),
    ]
    report = FactReport(questions, ["The sky is BLUE.", "Clouds.", "Ice is cold."])
    assert report.correct == [True, False, True]
    assert (report.hits, report.total) == (2, 3)
    assert report.accuracy == pytest.approx(2 / 3)
    assert report.summary() == "67% (2 of 3)"
    assert report.misses() == [(questions[1], "Clouds.")]
    saved = json.loads(json.dumps(report.to_dict()))
    assert saved["hits"] == 2 and [a["correct"] for a in saved["answers"]] == [True, False, True]
    assert FactReport([], []).accuracy == 0.0


def test_reads_questions_and_names_the_bad_line(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text(
        '{"question": "Why?", "expect": ["because"], "source": "x"}\n\n'
        '{"question": "What?", "expect": ["this", "that"]}\n'
    )
    assert read_fact_questions(good) == [
        FactQuestion("Why?", ["because"], "x"),
        FactQuestion("What?", ["this", "that"], ""),
    ]
    cases = {
        '{"question": "Why?", "expect": ["a"]}\n{"question": "x"\n': "q.jsonl:2: not valid JSON",
        '{"question": "", "expect": ["a"]}\n': 'q.jsonl:1: needs a non-empty "question"',
        '{"question": "Why?", "expect": "a"}\n': '"expect" must be a non-empty list',
        '{"question": "Why?", "expect": []}\n': '"expect" must be a non-empty list',
        '["Why?"]\n': 'q.jsonl:1: needs a non-empty "question"',
        "\n": "holds no questions",
    }
    for text, message in cases.items():
        good.write_text(text)
        with pytest.raises(DataError, match=message.replace("?", r"\?").replace("[", r"\[")):
            read_fact_questions(good)
    with pytest.raises(DataError, match="cannot read question file"):
        read_fact_questions(tmp_path / "missing.jsonl")


def test_batched_answers_equal_chat_one_question_at_a_time(chat_model):
    model, tok = chat_model
    alone = [
        reply(model, tok, [{"role": "user", "content": q}], temperature=0, max_new_tokens=12)
        for q in QUESTIONS
    ]
    assert len(set(alone)) > 1  # the questions lead to different answers
    for batch_size in (1, 2, len(QUESTIONS)):
        got = answer_questions(model, tok, QUESTIONS, max_new_tokens=12, batch_size=batch_size)
        assert got == alone


def test_check_facts_scores_the_models_own_answers(chat_model):
    model, tok = chat_model
    answers = answer_questions(model, tok, QUESTIONS, max_new_tokens=12)
    assert answers[0] and answers[1]
    # Expect the first two answers' own text back, and something no answer holds.
    questions = [FactQuestion(QUESTIONS[0], [answers[0][:5]]),
                 FactQuestion(QUESTIONS[1], [answers[1].upper()]),
                 FactQuestion(QUESTIONS[2], ["<never said>"])]  # fmt: skip
    report = check_facts(model, tok, questions, max_new_tokens=12)
    assert report.answers == answers[:3]
    assert report.correct == [True, True, False]


def test_a_question_too_long_for_the_context_is_named(chat_model):
    model, tok = chat_model
    long = "why " * model.config.context_length
    with pytest.raises(DataError, match="does not fit the model's context"):
        answer_questions(model, tok, ["hi", long], max_new_tokens=8)


def test_eval_facts_command(chat_model, tmp_path, capsys):
    from scratchlm.checkpoint import save_checkpoint
    from scratchlm.cli import main

    model, tok = chat_model
    checkpoint = save_checkpoint(model, None, 0, tmp_path / "ck", tokenizer=tok)
    answers = answer_questions(model, tok, QUESTIONS[:2], max_new_tokens=12)
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"question": QUESTIONS[0], "expect": [answers[0][:4]]})
        + "\n"
        + json.dumps({"question": QUESTIONS[1], "expect": ["<never said>"]})
        + "\n"
    )
    argv = ["eval", "facts", str(checkpoint), "--questions", str(questions)]
    assert main([*argv, "--max-new-tokens", "12", "--show-misses"]) == 0
    out = capsys.readouterr().out
    assert f"50% (1 of 2)  {questions}" in out
    assert QUESTIONS[1] in out and QUESTIONS[0] not in out  # only the miss is shown
    assert main([*argv, "--max-new-tokens", "12", "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert [a["answer"] for a in saved[str(questions)]["answers"]] == answers

    questions.write_text('{"question": "x"}\n')
    assert main(argv) == 2
    assert "q.jsonl:1" in capsys.readouterr().err
