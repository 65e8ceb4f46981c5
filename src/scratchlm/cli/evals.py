"""``scratchlm eval ...``: measure what a trained model knows."""

from __future__ import annotations

import argparse
import json

from scratchlm.chat import default_chat_checkpoint, require_chat_tokens
from scratchlm.cli.chat import add_chat_checkpoint, add_model_options, load_chat_model
from scratchlm.cli.config_flags import keyword_default
from scratchlm.console import CountProgress
from scratchlm.evals import check_facts, read_fact_questions
from scratchlm.pipeline import DefaultRun

FMT = argparse.RawDescriptionHelpFormatter
EPILOG_FACTS = """\
A question file is JSONL: {"question": "Why is the sky blue?", "expect": ["scatter"]}.
An answer is correct when it contains every "expect" string, ignoring case.

examples:
  scratchlm eval facts                                 # the default run, built-in questions
  scratchlm eval facts runs/my-chat --questions mine.jsonl --show-misses
"""


def _facts(args: argparse.Namespace) -> int:
    run = DefaultRun()
    files = args.questions or [run.trained_questions, run.reworded_questions]
    sets = {f: read_fact_questions(f) for f in files}  # bad files fail before the model loads
    path = args.checkpoint if args.checkpoint is not None else default_chat_checkpoint()
    model, tokenizer = load_chat_model(path, args.device, args.int8)
    require_chat_tokens(tokenizer)
    reports = {}
    total = sum(len(questions) for questions in sets.values())
    with CountProgress(total, "answering", "questions") as progress:
        for f, questions in sets.items():
            reports[f] = check_facts(
                model,
                tokenizer,
                questions,
                max_new_tokens=args.max_new_tokens,
                on_progress=progress.part(),
            )
    if args.json:
        print(json.dumps({f: r.to_dict() for f, r in reports.items()}, indent=1))
        return 0
    for f, report in reports.items():
        print(f"{report.summary():>16}  {f}")
        if args.show_misses:
            for question, answer in report.misses():
                print(f"    {question.question}  (expected {', '.join(question.expect)})")
                print(f"      -> {answer.strip()[:200]}")
    return 0


def eval_parser(evals: argparse.ArgumentParser) -> None:
    esub = evals.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    p = esub.add_parser(
        "facts",
        help="ask a chat model questions and check its answers for the expected facts",
        description="Ask each question greedily (as `scratchlm chat --temperature 0` would) "
        "and print the share of answers that hold the expected fact, per question file.",
        epilog=EPILOG_FACTS,
        formatter_class=FMT,
    )
    add_chat_checkpoint(p)
    p.add_argument(
        "--questions",
        nargs="+",
        metavar="FILE",
        help="question files (default: the built-in trained and reworded questions)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=keyword_default(check_facts, "max_new_tokens"),
        help="answer budget (default: %(default)s)",
    )
    p.add_argument("--show-misses", action="store_true", help="print every wrong answer")
    p.add_argument("--json", action="store_true", help="print every answer as JSON")
    add_model_options(p)
    p.set_defaults(func=_facts)


PARSERS = {"eval": eval_parser}
