"""Does a chat model know its facts? Ask questions, answer greedily, look for the fact.

A question set is a JSONL file of ``{"question": ..., "expect": [...]}`` objects (extra
keys, such as ``"source"``, are kept but not used). An answer counts as correct when it
contains every ``expect`` string, ignoring case: a fact check, not a judge of style.

The answers come from the same path as ``scratchlm chat --temperature 0``: the question is
rendered by ``chat_prompt_ids`` and continued by the engine until ``<|end|>``, many
questions at once (a row of a batch computes what it would alone, so batching changes
speed, not answers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scratchlm.builtin import resolve_builtin
from scratchlm.chat import chat_prompt_ids, reply_stop_ids
from scratchlm.chat_format import ConversationTooLongError
from scratchlm.config import SampleConfig
from scratchlm.errors import DataError
from scratchlm.model import TransformerLM
from scratchlm.textgen import generate_rows
from scratchlm.tokenizer import Tokenizer


@dataclass
class FactQuestion:
    """One question and the strings a correct answer contains."""

    question: str
    expect: list[str]
    source: str = ""


@dataclass
class FactReport:
    """The questions asked, the model's answers, and which answers held the fact."""

    questions: list[FactQuestion]
    answers: list[str]
    correct: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.correct = [
            contains_fact(answer, q.expect)
            for q, answer in zip(self.questions, self.answers, strict=True)
        ]

    @property
    def hits(self) -> int:
        return sum(self.correct)

    @property
    def total(self) -> int:
        return len(self.questions)

    @property
    def accuracy(self) -> float:
        """Fraction of answers that contain their fact (0.0 for no questions)."""
        return self.hits / self.total if self.total else 0.0

    def misses(self) -> list[tuple[FactQuestion, str]]:
        """The questions answered without their fact, with those answers."""
        return [
            (q, a)
            for q, a, ok in zip(self.questions, self.answers, self.correct, strict=True)
            if not ok
        ]

    def summary(self) -> str:
        """One line: ``83% (75 of 90)``."""
        return f"{self.accuracy:.0%} ({self.hits} of {self.total})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "hits": self.hits,
            "total": self.total,
            "answers": [
                {"question": q.question, "expect": q.expect, "answer": a, "correct": ok}
                for q, a, ok in zip(self.questions, self.answers, self.correct, strict=True)
            ],
        }


def contains_fact(answer: str, expect: Sequence[str]) -> bool:
    """True when ``answer`` contains every string of ``expect``, ignoring case."""
    text = answer.casefold()
    return all(word.casefold() in text for word in expect)


def read_fact_questions(path: str | os.PathLike) -> list[FactQuestion]:
    """The questions of a JSONL file (or ``builtin:chat_eval``, ``builtin:chat_heldout``);
    DataError naming the file and line of a bad one."""
    path = resolve_builtin(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"cannot read question file {path}: {e.strerror or e}") from e
    questions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from e
        question = row.get("question") if isinstance(row, dict) else None
        expect = row.get("expect") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise DataError(f'{where}: needs a non-empty "question" string')
        if (
            not isinstance(expect, list)
            or not expect
            or not all(isinstance(w, str) and w for w in expect)
        ):
            raise DataError(f'{where}: "expect" must be a non-empty list of non-empty strings')
        questions.append(FactQuestion(question, expect, str(row.get("source", ""))))
    if not questions:
        raise DataError(f"{path} holds no questions")
    return questions


def answer_questions(
    model: TransformerLM,
    tokenizer: Tokenizer,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> list[str]:
    """The greedy answer to each question, asked as the only user message, in order.

    ``batch_size`` questions go through the engine together; the answers are the same
    as one at a time (with int8 weights they can differ slightly: docs/model.md).
    ``on_progress(answered)`` hears how many answers are complete as they end."""
    sample = SampleConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    stop_ids = reply_stop_ids(tokenizer)
    report = on_progress or (lambda answered: None)
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        prompts = [_prompt(model, tokenizer, q, max_new_tokens) for q in batch]

        def on_step(steps: int, ended: int, start: int = start) -> None:
            report(start + ended)

        answers += generate_rows(
            model, tokenizer, prompts, sample, stop_ids=stop_ids, on_step=on_step
        )
        report(len(answers))  # rows cut by the budget end with the batch
    return answers


def _prompt(
    model: TransformerLM, tokenizer: Tokenizer, question: str, max_new_tokens: int
) -> list[int]:
    try:
        return chat_prompt_ids(
            model, tokenizer, [{"role": "user", "content": question}], max_new_tokens
        )
    except ConversationTooLongError as e:
        raise DataError(
            f"the question {question[:60]!r} does not fit the model's context "
            f"({model.config.context_length} tokens, {max_new_tokens} kept for the answer): "
            "ask for fewer new tokens or shorten the question"
        ) from e


def check_facts(
    model: TransformerLM,
    tokenizer: Tokenizer,
    questions: Sequence[FactQuestion],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> FactReport:
    """Ask every question greedily and check each answer for its fact (``on_progress``:
    as in ``answer_questions``)."""
    answers = answer_questions(
        model,
        tokenizer,
        [q.question for q in questions],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_progress=on_progress,
    )
    return FactReport(list(questions), answers)
