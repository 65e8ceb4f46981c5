"""The default run: the whole path from the built-in text to a trained model, one stage
after another, each saved under ``runs/default`` so that a rerun reuses finished stages.

Stages: the tokenizer, the token files, pretraining, instruction tuning on the built-in
conversations, and three sample conversations with the tuned model. ``scratchlm train``
with no arguments runs it; ``scratchlm chat`` then talks to the result.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.atomic import atomic_write_text
from scratchlm.builtin import END_OF_TEXT, builtin_corpus, resolve_builtin
from scratchlm.chat import reply
from scratchlm.checkpoint import CheckpointManager, RunLock, load_model, read_config
from scratchlm.console import CountProgress
from scratchlm.data import prepare
from scratchlm.data.chat_sources import read_conversations
from scratchlm.errors import ScratchLMError, TokenizerError
from scratchlm.evals import FactReport, check_facts, read_fact_questions
from scratchlm.model import TransformerLM, prepare_for_inference
from scratchlm.report import write_report
from scratchlm.tokenizer import BPETokenizer, Tokenizer, load_tokenizer, train_bpe
from scratchlm.tokenizer.files import FILENAME, write_tokenizer_dir
from scratchlm.tokenizer.report import compression, longest_tokens, show_split
from scratchlm.train import TrainConfig, Trainer
from scratchlm.train.config_files import sft_config
from scratchlm.train.sft_data import split_conversations

SAMPLE_SENTENCE = (
    "Water boils at 100 degrees Celsius, and the sky looks blue because air scatters light."
)
PROMPTS = ("Water boils", "The sky looks blue because", "Plants")
QUESTIONS = ("Hello! Who are you?", "Why is the sky blue?", "What is the capital of France?")
STAGES = 5

log = logging.getLogger(__name__)


@dataclass
class DefaultRun:
    """Settings of the default run. The model is small enough to learn the built-in
    corpus in a few minutes on two CPU cores (bf16 where the CPU has it: ``precision``
    auto)."""

    out_dir: Path = Path("runs/default")
    vocab_size: int = 1024
    # Dropout: the built-in text is small enough to memorise, which helps no new question.
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "d_model": 256,
            "n_layers": 4,
            "n_heads": 8,
            "n_kv_heads": 8,
            "d_ff": 688,
            "dropout": 0.1,
            "attention_dropout": 0.0,
        }
    )
    # 256 tokens hold a few exchanges of a chat; 8 windows of it a step train on as many
    # tokens as 16 of 128 did, so the run takes about as long.
    context_length: int = 256
    batch_size: int = 8
    steps: int = 600
    lr: float = 2e-3
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    weight_decay: float = 0.1
    precision: str = "auto"
    sample_tokens: int = 40
    sft_steps: int = 700
    sft_lr: float = 1e-3
    sft_muon_lr: float = 0.01
    # What instruction tuning trains on, and the questions its answers are checked with:
    # ones taught in the conversations, and reworded ones held out of them.
    conversations: tuple[str, ...] = ("builtin:chat",)
    # Pretrain on the conversations' exchanges too (``conversations_as_text``): seven
    # times the text of the science corpus alone, which a model of this size memorises.
    pretrain_on_conversations: bool = True
    trained_questions: str = "builtin:chat_eval"
    reworded_questions: str = "builtin:chat_heldout"


def run_default(
    run: DefaultRun, *, progress: bool = True, echo: Callable[[str], None] = print
) -> Path:
    """Run (or reuse) every stage of the default pipeline; returns the directory of the
    instruction-tuned checkpoint. Holds ``run.out_dir``'s run lock throughout: a second
    default run in the same directory is refused (each training stage also locks its own
    run directory)."""
    with RunLock(run.out_dir):
        tok = tokenizer_stage(run, progress, echo)
        data = data_stage(run, tok, progress, echo)
        pretrained = pretrain_stage(run, data, progress, echo)
        tuned = sft_stage(run, pretrained, progress, echo)
        conversation_stage(run, tuned, progress, echo)
        report_stage(run, echo)
    return tuned


def tokenizer_stage(run: DefaultRun, progress: bool, echo: Callable[[str], None]) -> BPETokenizer:
    """[1] A byte-level BPE tokenizer trained on the built-in corpus."""
    corpus = builtin_corpus()
    tok_dir = run.out_dir / "tokenizer"
    if (tok_dir / FILENAME).exists():
        tok = load_tokenizer(tok_dir)
        if not isinstance(tok, BPETokenizer):
            raise TokenizerError(
                f"{tok_dir} holds a {type(tok).__name__}, not the run's BPE tokenizer: "
                "delete it to train again"
            )
        echo(f"[1/{STAGES}] tokenizer: reusing {tok_dir} (delete it to train again)")
    else:
        echo(f"[1/{STAGES}] tokenizer: training byte-level BPE on {corpus.name} ...")
        start = time.perf_counter()
        vocab, merges = train_bpe(corpus, run.vocab_size, [END_OF_TEXT], progress=progress)
        tok = BPETokenizer(
            vocab,
            merges,
            [END_OF_TEXT],
            metadata={"trained_on": [corpus.name], "vocab_size": run.vocab_size},
        )
        write_tokenizer_dir(tok, tok_dir)
        echo(f"      trained in {time.perf_counter() - start:.1f}s, saved to {tok_dir / FILENAME}")
    stats = compression(tok, corpus)
    n_merges = len(tok.merges)
    echo(f"      vocabulary: {tok.vocab_size} tokens ({n_merges} merges + 256 bytes + specials)")
    echo(f"      compression on the corpus: {stats['bytes_per_token']:.2f} bytes per token")
    longest = ", ".join(repr(t.decode("utf-8", errors="replace")) for t in longest_tokens(tok, 8))
    echo(f"      longest tokens: {longest}")
    first = ", ".join(repr((a + b).decode(errors="replace")) for a, b in tok.merges[:8])
    echo(f"      first merges: {first}")
    echo(f"      a sentence as tokens: {show_split(tok, SAMPLE_SENTENCE)}")
    return tok


def data_stage(
    run: DefaultRun, tok: BPETokenizer, progress: bool, echo: Callable[[str], None]
) -> Path:
    """[2] The corpus as token files, a tenth of the documents held out for validation;
    with ``run.pretrain_on_conversations``, the conversations' exchanges too."""
    data_dir = run.out_dir / "data"
    echo(f"[2/{STAGES}] data: encoding the corpus into token files in {data_dir}")
    inputs = ["builtin:science"]
    if run.pretrain_on_conversations:
        exchanges = run.out_dir / "conversations.txt"
        atomic_write_text(exchanges, conversations_as_text(run.conversations))
        inputs.append(str(exchanges))
        echo(f"      with the exchanges of the conversations' training share: {exchanges}")
    meta = prepare(inputs, tok, data_dir, val_fraction=0.1, workers=1, progress=False)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    echo(
        f"      train: {train['tokens']:,} tokens in {train['documents']} documents; "
        f"validation: {val['tokens']:,} tokens in {val['documents']} documents"
    )
    return data_dir


def conversations_as_text(names: Sequence[str]) -> str:
    """The question-and-answer exchanges of the conversation files ``names`` as plain
    text for pretraining: one document per conversation, each message on its own line,
    documents separated by ``<|endoftext|>``. Only the conversations instruction tuning
    trains on (``split_conversations``, at the default validation share): its validation
    tenth stays unseen. The built-in corpus is small, and a model pretrained on these
    sentences too meets more ways of asking about the same facts."""
    conversations, _ = read_conversations([str(resolve_builtin(n)) for n in names])
    train, _ = split_conversations(conversations, TrainConfig().val_fraction)
    docs = ["\n".join(m["content"] for m in talk if m["role"] != "system") for talk in train]
    return END_OF_TEXT.join(docs)


def pretrain_stage(
    run: DefaultRun, data_dir: Path, progress: bool, echo: Callable[[str], None]
) -> Path:
    """[3] A small Transformer pretrained on the token files; resumes an unfinished run."""
    config = TrainConfig(
        data=str(data_dir),
        out=str(run.out_dir / "pretrain"),
        preset="tiny",
        model=dict(run.model),
        context_length=run.context_length,
        batch_size=run.batch_size,
        grad_accum=1,
        steps=run.steps,
        lr=run.lr,
        optimizer=run.optimizer,
        muon_lr=run.muon_lr,
        weight_decay=run.weight_decay,
        precision=run.precision,
        eval_windows=16,
        sample_prompts=list(PROMPTS[:1]),
        sample_tokens=16,
        progress=progress,
        device="auto",
    )
    # The next stage starts from the lowest validation loss: a model that went on to
    # memorise the small built-in corpus is worse on new text than it was at its best.
    what = "pretraining a small Transformer on the token files"
    return _training_stage(3, what, config, echo, best=True)


def sft_stage(
    run: DefaultRun, pretrained: Path, progress: bool, echo: Callable[[str], None]
) -> Path:
    """[4] Instruction tuning on the built-in conversations (loss on the answers only)."""
    config = sft_config(
        init_from=str(pretrained),
        conversations=list(run.conversations),
        out=str(run.out_dir / "sft"),
        steps=run.sft_steps,
        lr=run.sft_lr,
        optimizer=run.optimizer,
        muon_lr=run.sft_muon_lr,
        weight_decay=run.weight_decay,
        precision=run.precision,
        batch_size=run.batch_size,
        grad_accum=1,
        sample_prompts=list(QUESTIONS[1:2]),
        sample_tokens=32,
        progress=progress,
        device="auto",
    )
    return _training_stage(4, "instruction tuning on the built-in conversations", config, echo)


def _training_stage(
    number: int, what: str, config: Any, echo: Callable[[str], None], *, best: bool = False
) -> Path:
    """Run ``config`` to its end, or reuse its finished run; its last checkpoint, or with
    ``best`` the one of lowest validation loss (the last one when none was evaluated)."""
    checkpoints = CheckpointManager(config.out)
    latest = checkpoints.latest_valid()
    if latest is not None and read_config(latest)["step"] >= config.steps:
        chosen = (checkpoints.best() if best else None) or latest
        echo(f"[{number}/{STAGES}] {what}: reusing {chosen} (delete {config.out} to redo it)")
        return chosen
    echo(f"[{number}/{STAGES}] {what} ...")
    result = Trainer(config, echo=lambda line: echo(f"      {line}")).run()
    if result.interrupted:
        raise KeyboardInterrupt  # the checkpoint is saved: a rerun continues from it
    assert result.checkpoint is not None
    echo(
        f"      done: {result.step} steps, validation loss {result.val_loss:.3f}; "
        f"checkpoint {result.checkpoint}"
    )
    lowest = checkpoints.best() if best else None
    if lowest is None or lowest == result.checkpoint:
        return result.checkpoint
    echo(
        f"      continuing from the lowest validation loss, {checkpoints.best_val_loss():.3f}: "
        f"{lowest}"
    )
    return lowest


def conversation_stage(
    run: DefaultRun, checkpoint: Path, progress: bool, echo: Callable[[str], None]
) -> None:
    """[5] Three questions to the tuned model (greedy), the way `scratchlm chat` asks, then
    its score on the built-in fact questions, saved to ``facts.json`` in the run."""
    model, tok = load_model(checkpoint)
    model = prepare_for_inference(model)
    echo(f"[5/{STAGES}] three conversations with the tuned model (greedy):")
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        text = reply(model, tok, messages, temperature=0, max_new_tokens=64)
        echo(f"      you> {question}")
        echo(f"      model> {_printable(text)}")
    echo("      checking its answers to the built-in fact questions (greedy)")
    trained, reworded = fact_scores(model, tok, run, live=progress)
    echo(
        f"      answers holding the expected fact: {trained.summary()} of the trained "
        f"questions, {reworded.summary()} of reworded ones it never saw"
    )
    report = {
        "checkpoint": str(checkpoint),
        "trained": trained.to_dict(),
        "reworded": reworded.to_dict(),
    }
    atomic_write_text(run.out_dir / "facts.json", json.dumps(report, indent=1) + "\n")
    echo(f"      every answer: {run.out_dir / 'facts.json'}")
    echo(f"      talk to it: scratchlm chat {checkpoint.parent.parent}")


def report_stage(run: DefaultRun, echo: Callable[[str], None]) -> None:
    """The run's report card (``scratchlm report``), written into its directory. A
    report that fails takes nothing from the trained model: the error is shown with
    the command that retries it."""
    try:
        path = write_report(run.out_dir)
    except ScratchLMError as e:
        log.debug("the report card failed", exc_info=True)  # the line below says why
        echo(f"      no report card ({e}); retry with: scratchlm report {run.out_dir}")
        return
    echo(f"      the run's report card: {path}")


def fact_scores(
    model: TransformerLM, tokenizer: Tokenizer, run: DefaultRun, *, live: bool = False
) -> tuple[FactReport, FactReport]:
    """Greedy answers to the run's fact questions, checked for their facts: the questions
    taught in the conversations (built in: ``chat_eval.jsonl``) and reworded ones held
    out of them (``chat_heldout.jsonl``). Progress on stderr: a bar when ``live``, else
    a line now and then (``console.CountProgress``)."""
    sets = [read_fact_questions(name) for name in (run.trained_questions, run.reworded_questions)]
    reports = []
    with CountProgress(sum(map(len, sets)), "answering", "questions", live=live) as shown:
        for questions in sets:
            reports.append(check_facts(model, tokenizer, questions, on_progress=shown.part()))
    trained, reworded = reports
    return trained, reworded


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)
