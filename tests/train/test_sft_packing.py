"""Packed instruction-tuning rows: whole conversations per row with their loss masks,
rows that never overflow, a sampler that is reproducible, resumable and different per
rank, and a packed SFT run that resumes to the same losses."""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest
import torch

from scratchlm.chat_format import END_OF_TURN, chat_tokenizer
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import SFT_DEFAULTS
from scratchlm.train.sft_data import (
    PAD_SEGMENT,
    ConversationSampler,
    load_sft_data,
    pack_examples,
    render_examples,
)
from scratchlm.train.trainer import Trainer

T = 16


def examples(n: int = 40, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Random (inputs, targets) of 1..T tokens; each input starts with its own number so
    it can be told apart, targets have -100 on a random prompt part."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(1, T + 1, (1,), generator=gen))
        inputs = [1000 + i, *torch.randint(0, 50, (length - 1,), generator=gen).tolist()]
        prompt = int(torch.randint(0, length, (1,), generator=gen))
        targets = [-100] * prompt + torch.randint(0, 50, (length - prompt,), generator=gen).tolist()
        out.append((inputs, targets))
    return out


def unpack(rows) -> list[tuple[list[int], list[int]]]:
    """Every conversation of packed rows as (inputs, targets), read back by segment."""
    found = []
    for x, y, seg, n in zip(rows.x, rows.y, rows.segment_ids, rows.lengths, strict=True):
        assert (seg[n:] == PAD_SEGMENT).all() and (y[n:] == -100).all() and (x[n:] == 0).all()
        ids = seg[:n].tolist()
        assert PAD_SEGMENT not in ids
        # Segments are numbered 0, 1, 2, ... in order, each one contiguous run.
        runs = [s for i, s in enumerate(ids) if i == 0 or s != ids[i - 1]]
        assert runs == list(range(len(runs)))
        for s in runs:
            keep = seg == s
            found.append((x[keep].tolist(), y[keep].tolist()))
    return found


def test_every_conversation_lands_whole_in_exactly_one_row_with_its_loss_mask():
    data = examples()
    rows = pack_examples(data, T, seed=1)
    assert rows.x.shape == rows.y.shape == rows.segment_ids.shape == (len(rows.x), T)
    assert (rows.lengths <= T).all()
    key = lambda e: (tuple(e[0]), tuple(e[1]))  # noqa: E731
    assert Counter(map(key, unpack(rows))) == Counter(map(key, data))
    assert int(rows.lengths.sum()) == sum(len(inputs) for inputs, _ in data)


def test_packing_is_tight_and_seeded():
    data = examples(200, seed=2)
    rows = pack_examples(data, T, seed=1)
    # A row is opened only for a conversation that fits in no other, so no two rows
    # could have been one: at most one row is half empty.
    n = rows.lengths.tolist()
    assert all(a + b > T for i, a in enumerate(n) for b in n[i + 1 :])
    assert torch.equal(pack_examples(data, T, seed=1).x, rows.x)
    assert not torch.equal(pack_examples(data, T, seed=2).x, rows.x)


def test_a_conversation_of_exactly_T_tokens_fills_a_row():
    data = [([7] * T, [1] * T), ([8] * 3, [-100, 2, 2]), ([9] * (T - 3), [3] * (T - 3))]
    rows = pack_examples(data, T, seed=0)
    assert len(rows.x) == 2 and rows.lengths.tolist() == [T, T]


def _batches(sampler: ConversationSampler, n: int) -> list[tuple[torch.Tensor, ...]]:
    return [sampler.next() for _ in range(n)]


def _same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return all(
        p.shape == q.shape and torch.equal(p, q)
        for batch_a, batch_b in zip(a, b, strict=True)
        for p, q in zip(batch_a, batch_b, strict=True)
    )


def test_sampler_is_reproducible_resumable_and_cuts_to_the_longest_row():
    rows = pack_examples(examples(), T, seed=1)
    a = ConversationSampler(rows, 3, seed=5)
    first = _batches(a, 4)
    assert _same(first, _batches(ConversationSampler(rows, 3, seed=5), 4))
    assert not _same(first, _batches(ConversationSampler(rows, 3, seed=6), 4))
    for x, y, seg in first:
        assert x.shape == y.shape == seg.shape and x.shape[0] == 3
        used = (seg != PAD_SEGMENT).sum(dim=1)
        assert x.shape[1] == int(used.max())  # cut to the longest row drawn
    state = a.state_dict()
    expected = _batches(a, 3)
    b = ConversationSampler(rows, 3, seed=99)
    b.load_state_dict(state)
    assert _same(expected, _batches(b, 3))


def test_ranks_draw_different_rows_that_together_are_the_global_batch():
    rows = pack_examples(examples(), T, seed=1)
    whole = ConversationSampler(rows, 4, seed=5).draw(len(rows.x))  # one process, B = 4
    ranks = [ConversationSampler(rows, 2, seed=5, rank=r, world_size=2) for r in (0, 1)]
    x0, _, _ = ranks[0].next()
    x1, _, _ = ranks[1].next()
    width = lambda picked: int(rows.lengths[picked].max())  # noqa: E731
    assert torch.equal(x0, rows.x[whole[:2], : width(whole[:2])])
    assert torch.equal(x1, rows.x[whole[2:], : width(whole[2:])])
    assert not torch.equal(x0[:, :1], x1[:, :1])  # their first conversations differ


@pytest.fixture(scope="module")
def chat_tok(prepared):
    from scratchlm.tokenizer import load_tokenizer

    return chat_tokenizer(load_tokenizer(prepared / "tokenizer.json"))


def test_builtin_conversations_pack_into_rows_the_model_accepts(chat_tok):
    data = load_sft_data(["builtin:chat"], chat_tok, 256, batch_size=4,
                         seed=3, val_fraction=0.1, skip_bad=False)  # fmt: skip
    sampler, val_x, val_y = data.sampler, data.val_x, data.val_y
    rows = sampler.rows
    assert rows.x.shape[1] == 256 and (rows.lengths <= 256).all()
    assert float(rows.lengths.sum()) / rows.x.numel() > 0.85  # little padding
    assert (rows.segment_ids.max(dim=1).values >= 1).float().mean() > 0.5  # mostly >= 2 each
    # Each conversation's answers end with <|end|>, a target; the user's text is not one.
    end = chat_tok.special_tokens[END_OF_TURN]
    user = chat_tok.special_tokens["<|user|>"]
    assert (rows.y == end).any() and not (rows.y == user).any()
    x, y, seg = sampler.next()
    assert x.shape == y.shape == seg.shape and x.shape[0] == 4
    # Validation stays one conversation per row.
    assert val_x.shape == val_y.shape and val_x.shape[1] <= 256


def test_render_examples_shift_targets_and_mask_the_prompt(chat_tok):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    ((inputs, targets),) = render_examples([messages], chat_tok, 32)
    answer = [*chat_tok.encode("Hello!"), chat_tok.special_tokens[END_OF_TURN]]
    assert len(inputs) == len(targets)
    assert [t for t in targets if t != -100] == answer
    assert targets[-len(answer) :] == answer and inputs[-len(answer) + 1 :] == answer[:-1]


def _sft_config(pretrained, data, out, steps):
    return TrainConfig.from_dict({
        **TrainConfig().to_dict(), **SFT_DEFAULTS,
        "init_from": str(pretrained), "conversations": [str(data)], "out": str(out),
        "steps": steps, "batch_size": 4, "checkpoint_every": 0, "eval_every": 0,
        "eval_windows": 2, "sample_tokens": 0, "log_every": 1, "progress": False,
        "device": "cpu", "seed": 11,
    })  # fmt: skip


def _losses(run) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.slow
def test_a_packed_sft_run_resumes_to_the_same_losses(pretrained, tmp_path, monkeypatch):
    data = tmp_path / "sums.jsonl"
    with data.open("w") as f:
        for a in range(40):
            messages = [{"role": "user", "content": f"What is {a} plus {a % 7}?"},
                        {"role": "assistant", "content": f"{a + a % 7}."}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")
    Trainer(_sft_config(pretrained, data, tmp_path / "whole", 6)).run()
    step = Trainer._train_step

    def interrupted_at_step_4(self):
        out = step(self)
        if self.state.step == 4:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: save a checkpoint and stop
        return out

    monkeypatch.setattr(Trainer, "_train_step", interrupted_at_step_4)
    stopped = Trainer(_sft_config(pretrained, data, tmp_path / "split", 6)).run()
    assert stopped.interrupted == "SIGINT" and stopped.step == 4
    monkeypatch.setattr(Trainer, "_train_step", step)
    resumed = Trainer(_sft_config(pretrained, data, tmp_path / "split", 6)).run()
    assert resumed.step == 6
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
