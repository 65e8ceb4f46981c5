"""Instruction tuning: conversations become masked rows; the same Trainer teaches a tiny
model fixed answers; the chat tokens are added to the tokenizer and the model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scratchlm.builtin import resolve_builtin
from scratchlm.chat_format import END_OF_TURN, render_conversation, render_prompt
from scratchlm.config import SampleConfig
from scratchlm.data.chat_sources import read_conversations
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import SFT_DEFAULTS
from scratchlm.train.sft_data import (
    PAD_SEGMENT,
    ConversationSampler,
    conversation_rows,
    pack_examples,
    split_conversations,
)
from scratchlm.train.trainer import Trainer

FACTS = {
    "What color is the sky?": "Blue.",
    "How many legs does a spider have?": "Eight.",
    "What do plants need?": "Light and water.",
    "What is ice?": "Frozen water.",
    "Where does rain come from?": "Clouds.",
    "What makes wind?": "Moving air.",
    "What is the Sun?": "A star.",
    "What do bees make?": "Honey.",
    "What is snow?": "Ice crystals.",
    "What do fish breathe with?": "Gills.",
    "What pulls things down?": "Gravity.",
    "What is fog?": "A low cloud.",
    "What carries blood?": "Veins.",
    "What is thunder?": "A sound.",
    "What do cows eat?": "Grass.",
    "What is a bird's coat made of?": "Feathers.",
}


def _conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _write_conversations(path: Path) -> Path:
    with path.open("w") as f:
        for question, answer in FACTS.items():
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def test_rows_have_targets_only_on_the_answer(prepared):
    from scratchlm.chat_format import chat_tokenizer
    from scratchlm.tokenizer import load_tokenizer

    tok = chat_tokenizer(load_tokenizer(prepared / "tokenizer.json"))
    messages = _conversation("Hi there", "Hello!")
    x, y, lengths = conversation_rows([messages], tok, context_length=32)
    ids, mask = render_conversation(messages, tok)
    n = len(ids) - 1
    assert lengths.tolist() == [n]
    assert x[0, :n].tolist() == ids[:-1]
    expected = [t if m else -100 for t, m in zip(ids[1:], mask[1:], strict=True)]
    assert y[0, :n].tolist() == expected and (y[0, n:] == -100).all()
    # The answer and its end-of-turn token are targets; the question is not.
    answer = [*tok.encode("Hello!"), tok.special_tokens[END_OF_TURN]]
    assert [t for t in y[0].tolist() if t != -100] == answer


def test_sampler_packs_conversations_cuts_to_the_longest_row_and_resumes():
    # Conversation i: i + 1 tokens, each of value i (its targets: i + 100).
    examples = [([i] * (i + 1), [i + 100] * (i + 1)) for i in range(1, 9)]
    rows = pack_examples(examples, 10, seed=0)
    assert (rows.lengths <= 10).all() and int(rows.lengths.sum()) == sum(range(2, 10))
    a = ConversationSampler(rows, 2, seed=0)
    bx, by, seg = a.next()
    for x, y, s in zip(bx, by, seg, strict=True):
        for segment in s.unique().tolist():
            ids = x[s == segment]
            if segment == PAD_SEGMENT:
                assert (y[s == segment] == -100).all()
                continue
            i = int(ids[0])  # a whole conversation, with its own targets
            assert ids.tolist() == [i] * (i + 1) and (y[s == segment] == i + 100).all()
    assert bx.shape[1] == int((seg != PAD_SEGMENT).sum(dim=1).max())
    state = a.state_dict()
    expected = [a.next() for _ in range(3)]
    b = ConversationSampler(rows, 2, seed=99)
    b.load_state_dict(state)
    for batch in expected:
        assert all(torch.equal(e, got) for e, got in zip(batch, b.next(), strict=True))


def test_instruction_tuning_teaches_fixed_answers(pretrained, tmp_path):
    data = _write_conversations(tmp_path / "facts.jsonl")
    config = TrainConfig.from_dict({
        **TrainConfig().to_dict(), **SFT_DEFAULTS,
        "init_from": str(pretrained), "conversations": [str(data)], "out": str(tmp_path / "sft"),
        "steps": 120, "lr": 1e-2, "batch_size": 8, "val_fraction": 0.25, "eval_every": 60,
        "sample_tokens": 8, "progress": False, "device": "cpu",
    })  # fmt: skip
    result = Trainer(config).run()
    assert result.step == 120

    from scratchlm.checkpoint import load_model
    from scratchlm.generate import generate_ids

    model, tok = load_model(result.checkpoint)
    assert END_OF_TURN in tok.special_tokens and model.config.vocab_size == tok.vocab_size
    end = tok.special_tokens[END_OF_TURN]
    trained, held_out = split_conversations(
        [_conversation(q, a) for q, a in FACTS.items()], config.val_fraction
    )
    assert trained and held_out
    # The samples at each evaluation answer the user's own held-out questions.
    records = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    prompts = {r["prompt"] for r in records if r["kind"] == "sample"}
    assert prompts and prompts <= {messages[0]["content"] for messages in held_out}
    right = 0
    for messages in trained:
        ids = render_prompt(messages[:1], tok)
        settings = SampleConfig(temperature=0, max_new_tokens=12)
        steps = generate_ids(model, [ids], settings, stop_ids=[end])
        right += tok.decode([t for (t,) in steps if t is not None]) == messages[1]["content"]
    assert right >= 0.8 * len(trained)  # the trained answers, word for word


def test_sft_command_on_the_builtin_conversations(pretrained, tmp_path, capsys):
    from scratchlm.cli import main

    out = tmp_path / "chat"
    args = ["sft", "--from", str(pretrained), "--data", "builtin:chat", "--out", str(out),
            "--steps", "2", "--batch-size", "2", "--eval-windows", "2", "--sample-tokens", "4",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["phase"] == "sft" and saved["lr"] == SFT_DEFAULTS["lr"]
    assert saved["conversations"] == ["builtin:chat"]
    samples = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in samples if r["kind"] == "sample"]
    # No prompts given: the first questions of built-in conversations held out of training.
    conversations, _ = read_conversations([str(resolve_builtin("builtin:chat"))])
    train, val = split_conversations(conversations, saved["val_fraction"])
    first_questions = {next(m["content"] for m in c if m["role"] == "user") for c in val}
    assert len(set(prompts)) == 2 and set(prompts) <= first_questions
    assert not set(prompts) & {m["content"] for messages in train for m in messages}
    assert main(["sft", "--data", "x.jsonl"]) == 2
    assert "--from" in capsys.readouterr().err
