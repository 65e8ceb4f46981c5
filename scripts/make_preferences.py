"""Write the built-in preference pairs (src/scratchlm/builtin/preferences*.jsonl).

Deterministic: the same chat.jsonl gives the same files. Each pair asks one question of
the built-in conversations (chat.jsonl, whose facts come from science.txt); ``chosen`` is
the concise, correct answer those conversations teach, ``rejected`` either the same
answer wrapped in rambling (an aimless opening and closing) or a wrong answer (another
training question's, stated as confidently). Questions whose answer is small talk (a
greeting, a goodbye) or a refusal are left out. One question per fact; every fifth fact
is held out (preferences_heldout.jsonl), and no held-out answer appears in a training
pair, so the held-out accuracy measures preferences learned, not answers seen.

    python scripts/make_preferences.py
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

BUILTIN = Path(__file__).resolve().parent.parent / "src" / "scratchlm" / "builtin"

OPENINGS = (
    "Well, that is a really good question. ",
    "Hmm, let me think about that for a bit. ",
    "Oh, people ask this a lot, so here goes. ",
    "Okay, so, where do I even start with this? ",
)
CLOSINGS = (
    " Anyway, that is more or less it.",
    " But it is all quite complicated, really.",
    " I hope that makes some sense, maybe.",
    " There is a lot more to say, but whatever.",
)
NOT_A_FACT = re.compile(
    r"\b(I|I'm|I am|me|you're welcome|hello|hi|good morning|goodbye|nice to meet)\b",
    re.IGNORECASE,
)


def facts(chat: Path) -> list[tuple[str, list[str]]]:
    """(answer, the questions asked for it) of each single-exchange fact, in file order."""
    questions: dict[str, list[str]] = {}
    for line in chat.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        if [m["role"] for m in messages] != ["user", "assistant"]:
            continue
        question, answer = messages[0]["content"], messages[1]["content"]
        if not NOT_A_FACT.search(answer):
            questions.setdefault(answer, []).append(question)
    return [(a, q) for a, q in questions.items() if len(q) >= 5]  # taught, not incidental


def pairs(found: list[tuple[str, list[str]]]) -> tuple[list[dict], list[dict]]:
    """The training and held-out pairs. Every wrong answer is a training fact's answer,
    in both shares, so the held-out pairs are the kind the training pairs are (a new
    question and its new answer against an answer taught for another question: the
    mistake the fact check's misses show), while a held-out fact's answer appears in no
    training pair, not even as a rejected one (which would teach the model to avoid the
    answer its held-out pair prefers and its fact check asks for)."""
    train = [(i, fact) for i, fact in enumerate(found) if i % 5 != 4]
    heldout = [(i, fact) for i, fact in enumerate(found) if i % 5 == 4]
    wrong = [answer for _, (answer, _) in train]
    n = len(wrong)
    # A training fact's wrong answer is the fact half the list away (never itself); a
    # held-out fact's is spread over the training facts the same way.
    return _pairs(train, wrong, lambda k: (k + n // 2) % n), _pairs(
        heldout, wrong, lambda k: (4 * k + n // 2) % n
    )


def _pairs(
    share: list[tuple[int, tuple[str, list[str]]]], wrong: list[str], pick: Callable[[int], int]
) -> list[dict]:
    rows = []
    for k, (i, (answer, questions)) in enumerate(share):
        if i % 2 == 0:  # rambling: the right answer, padded
            rejected = OPENINGS[i // 2 % 4] + answer + CLOSINGS[i // 8 % 4]
        else:  # wrong: a training fact's answer to another question
            rejected = wrong[pick(k)]
        question = questions[i % len(questions)]
        rows.append({"prompt": question, "chosen": answer, "rejected": rejected})
    return rows


def main() -> None:
    train, heldout = pairs(facts(BUILTIN / "chat.jsonl"))
    for name, rows in (("preferences.jsonl", train), ("preferences_heldout.jsonl", heldout)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (BUILTIN / name).write_text(text, encoding="utf-8")
        print(f"{name}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
