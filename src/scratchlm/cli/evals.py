"""``scratchlm eval ...``: measure what a trained model knows."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from scratchlm.chat import default_chat_checkpoint, require_chat_tokens
from scratchlm.cli.chat import add_chat_checkpoint, add_model_options, load_chat_model
from scratchlm.cli.config_flags import keyword_default
from scratchlm.console import CountProgress
from scratchlm.errors import ConfigError, DataError
from scratchlm.evals import check_facts, read_fact_questions
from scratchlm.evals.bpb import BitsPerByte, file_bits_per_byte
from scratchlm.evals.scoring import centred_average, format_table
from scratchlm.evals.tasks import EXTRA_HINT, TASKS, data_root, parse_task_names, run_tasks

# lm-eval is the optional extra `eval`: without it the other eval commands still run,
# and `eval tasks` says what to install instead of a traceback.
try:
    from scratchlm.evals.lm_eval_model import ScratchLMEval
except ModuleNotFoundError as missing:
    if (missing.name or "").split(".")[0] != "lm_eval":
        raise  # not the extra: a real error
    ScratchLMEval = None
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
    model, tokenizer = load_chat_model(path, args.device, args.int8, args.bf16)
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


EPILOG_BPB = """\
Bits per byte: the model's negative log2-likelihood of the text over its UTF-8 bytes
(8.0 is a uniform guess over bytes; lower is better). Files are streamed: any size.

examples:
  scratchlm eval bpb runs/default/pretrain held_out.txt
  scratchlm eval bpb runs/my-run a.txt b.txt --stride 64
"""

EPILOG_TASKS = f"""\
Zero-shot accuracy on standard benchmarks, with lm-eval's own prompts and metrics, on
validation splits installed locally by scripts/install_eval_data.sh (no network).
acc_norm ranks choices by log-likelihood per byte; "centred" is (acc - chance) /
(1 - chance) of acc_norm where a task has it, acc otherwise (docs/evals.md).

tasks: {", ".join(TASKS)}

examples:
  scratchlm eval tasks runs/default/pretrain --tasks hellaswag,arc_easy,piqa
  scratchlm eval tasks runs/my-run --tasks all --limit 200 --json
"""


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _bpb(args: argparse.Namespace) -> int:
    _check_positive(stride=args.stride, batch_size=args.batch_size)
    files = [Path(f) for f in args.files]
    for f in files:  # a typo fails before the model loads
        if not f.is_file():
            raise DataError(f"{f} is not a file")
    model, tokenizer = load_chat_model(args.checkpoint, args.device)
    total, results = None, []
    sizes = [os.path.getsize(f) for f in files]
    with CountProgress(sum(sizes), "scoring", "bytes") as progress:
        for i, f in enumerate(files):
            before = sum(sizes[:i])
            result = file_bits_per_byte(
                model,
                tokenizer,
                f,
                stride=args.stride,
                batch_size=args.batch_size,
                on_bytes=lambda n, before=before: progress.update(before + n),
            )
            results.append(result)
            total = result if total is None else total + result
    if args.json:
        rows = [*results, total] if len(results) > 1 else results
        print(json.dumps([_bpb_dict(r) for r in rows], indent=1))
        return 0
    for r in [*results, total] if len(results) > 1 else results:
        print(f"{r.bpb:.4f} bits/byte  {r.tokens:>10} tokens {r.bytes:>11} bytes  {r.name}")
    return 0


def _bpb_dict(r: BitsPerByte) -> dict:
    return {"file": r.name, "bpb": r.bpb, "tokens": r.tokens, "bytes": r.bytes, "nats": r.nats}


def _tasks(args: argparse.Namespace) -> int:
    names = parse_task_names(args.tasks)  # a bad name fails before the model loads
    if ScratchLMEval is None:
        raise ConfigError(f"evaluating tasks needs lm-eval: {EXTRA_HINT}")
    _check_positive(limit=args.limit, batch_size=args.batch_size)
    data_root()  # missing data fails before the model loads
    # The data is local; never let the datasets library look for it on the Hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    model, tokenizer = load_chat_model(args.checkpoint, args.device)
    lm = ScratchLMEval(model, tokenizer, batch_size=args.batch_size)  # progress: on stderr
    scores = run_tasks(lm, names, limit=args.limit)
    if args.json:
        doc = {
            "checkpoint": str(args.checkpoint),
            "limit": args.limit,
            "tasks": {s.task: s.to_dict() for s in scores},
            "centred_average": centred_average(scores),
        }
        print(json.dumps(doc, indent=1))
        return 0
    print(format_table(scores))
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

    p = esub.add_parser(
        "bpb",
        help="bits per byte of a model on text files",
        description="Score each text file with the model in sliding windows of its context "
        "and print bits per UTF-8 byte, per file and in total.",
        epilog=EPILOG_BPB,
        formatter_class=FMT,
    )
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files")
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="tokens each window moves (default: half the context; the context: disjoint)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_bpb)

    p = esub.add_parser(
        "tasks",
        help="zero-shot accuracy on standard benchmarks (HellaSwag, ARC, PIQA, ...)",
        description="Run standard multiple-choice benchmarks through lm-evaluation-harness "
        "with locally installed data and print accuracy with bootstrap standard errors and "
        "the centred average.",
        epilog=EPILOG_TASKS,
        formatter_class=FMT,
    )
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument(
        "--tasks",
        default="all",
        help="comma-separated task names, or all (default: %(default)s)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N questions of each")
    p.add_argument("--batch-size", type=int, default=32, help="requests per forward pass")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_tasks)


PARSERS = {"eval": eval_parser}
