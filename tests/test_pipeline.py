"""The default run: tokenizer, token files, pretraining and samples on the built-in
corpus (a reduced model here), then a rerun that reuses every stage."""

from __future__ import annotations

import json

from scratchlm.builtin import END_OF_TEXT, builtin_chat_eval, builtin_chat_heldout, builtin_corpus
from scratchlm.evals import read_fact_questions
from scratchlm.pipeline import (
    QUESTIONS,
    SAMPLE_SENTENCE,
    DefaultRun,
    conversations_as_text,
    run_default,
)
from scratchlm.tokenizer import load_tokenizer, train_bpe


def test_default_run_trains_then_reuses(tmp_path):
    small = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "d_ff": 64}
    run = DefaultRun(
        out_dir=tmp_path / "run",
        model=small,
        context_length=64,
        batch_size=4,
        steps=6,
        sft_steps=4,
    )
    file = tmp_path / "run" / "tokenizer" / "tokenizer.json"

    lines: list[str] = []
    checkpoint = run_default(run, progress=False, echo=lines.append)
    text = "\n".join(lines)
    assert "training" in text and "reusing" not in text
    assert sum(line.endswith(" ...") for line in lines) == 3  # tokenizer, pretrain, sft
    assert file.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".lock",  # the run lock: one default run at a time in a directory
        "conversations.txt",  # their exchanges, pretrained on
        "data",
        "facts.json",
        "pretrain",
        "report.json",  # the report card, written at the end
        "report.md",
        "sft",
        "tokenizer",
    ]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["pretrain", "sft"]
    assert any(f"report card: {tmp_path / 'run' / 'report.md'}" in line for line in lines)
    assert checkpoint.name == "step_00000004" and checkpoint.parent.parent.name == "sft"
    for question in QUESTIONS:  # each question and the model's answer are shown
        at = next(i for i, line in enumerate(lines) if line.strip() == f"you> {question}")
        assert lines[at + 1].strip().startswith("model>")
    # The fact scores are printed and saved with every answer behind them.
    facts = json.loads((tmp_path / "run" / "facts.json").read_text())
    assert facts["checkpoint"] == str(checkpoint)
    for name, questions in (("trained", builtin_chat_eval()), ("reworded", builtin_chat_heldout())):
        asked = [q.question for q in read_fact_questions(questions)]
        assert [a["question"] for a in facts[name]["answers"]] == asked
        assert facts[name]["hits"] == sum(a["correct"] for a in facts[name]["answers"])
    summary = f"({facts['trained']['hits']} of {facts['trained']['total']}) of the trained"
    assert any(summary in line for line in lines)
    from scratchlm.checkpoint import load_model

    model, tok = load_model(checkpoint)
    assert model.config.d_model == 32 and model.config.vocab_size == 1024 + 4  # chat tokens

    # What was saved is what train_bpe gives on the built-in corpus.
    vocab, merges = train_bpe(builtin_corpus(), 1024, [END_OF_TEXT])
    base = load_tokenizer(file)
    assert base.merges == merges and base.vocab == vocab
    assert len(base.vocab) == 1024 and base.special_tokens == {END_OF_TEXT: 1023}
    assert tok.merges == merges and tok.special_tokens[END_OF_TEXT] == 1023
    assert load_tokenizer(file).merges == merges
    assert tok.decode(tok.encode(SAMPLE_SENTENCE)) == SAMPLE_SENTENCE
    # The sentence is echoed split into its tokens.
    split = "|".join(tok.decode([i]) for i in tok.encode(SAMPLE_SENTENCE))
    assert any(line.endswith(split) for line in lines)

    saved = file.read_bytes()
    mtime = file.stat().st_mtime_ns
    weights = (checkpoint / "model.safetensors").stat().st_mtime_ns
    again: list[str] = []
    assert run_default(run, progress=False, echo=again.append) == checkpoint
    rerun = "\n".join(again)
    assert rerun.count("reusing") == 3
    assert not any(line.endswith(" ...") for line in again)  # no stage started work
    assert file.read_bytes() == saved and file.stat().st_mtime_ns == mtime
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == weights
    assert load_tokenizer(file).vocab == base.vocab


def test_conversations_as_text_holds_the_exchanges_instruction_tuning_trains_on(tmp_path):
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.sft_data import split_conversations

    talks = [
        [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"A{i}."}]
        for i in range(60)
    ]
    talks[0] = [{"role": "system", "content": "Be brief."}, *talks[0]]
    file = tmp_path / "chats.jsonl"
    file.write_text("".join(json.dumps({"messages": t}) + "\n" for t in talks))

    docs = conversations_as_text([str(file)]).split(END_OF_TEXT)

    train, val = split_conversations(talks, TrainConfig().val_fraction)
    assert val  # some are held out, and none of them is pretrained on
    assert docs == ["\n".join(m["content"] for m in t if m["role"] != "system") for t in train]
    assert "Be brief." not in "".join(docs)
