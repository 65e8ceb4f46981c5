"""The training loss is the mean over the target tokens of the whole step: with masked
conversations, accumulating micro-batches (or splitting the batch across DDP processes)
gives the gradient of the same batch in one piece, however the answer tokens are spread
over the micro-batches."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scratchlm.checkpoint import load_model
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import SFT_DEFAULTS
from scratchlm.train.trainer import Trainer

ANIMALS = ["cat", "dog", "cow", "bird", "fish", "horse", "sheep", "bee"]
PLACES = ["house", "field", "river", "garden", "forest"]


def _write_uneven_conversations(path: Path) -> Path:
    """Conversations whose answers range from one token to most of the row: the packed
    rows hold very different numbers of answer (target) tokens."""
    with path.open("w") as f:
        for i in range(48):
            animal, place = ANIMALS[i % len(ANIMALS)], PLACES[i % len(PLACES)]
            if i % 2:
                question = f"If a {animal} saw {i} birds and then {i % 5} more, how many?"
                answer = f"{i + i % 5}."
            else:
                question = f"Tell me about the {animal}."
                answer = f"The {animal} lives in the {place} and it is {i} years old."
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def _sft_config(pretrained: Path, data: Path, out: Path, **settings) -> TrainConfig:
    # Plain SGD without clipping, decay or warmup: the update is the gradient times lr.
    return TrainConfig.from_dict({
        **TrainConfig().to_dict(), **SFT_DEFAULTS,
        "init_from": str(pretrained), "conversations": [str(data)], "out": str(out),
        "steps": 1, "optimizer": "sgd", "lr": 0.5, "weight_decay": 0.0, "grad_clip": 0.0,
        "warmup_steps": 0, "schedule": "constant", "eval_every": 0, "eval_windows": 2,
        "sample_tokens": 0, "val_fraction": 0.25, "progress": False, "device": "cpu",
        "precision": "fp32", "seed": 11, **settings,
    })  # fmt: skip


def _first_step(config: TrainConfig) -> tuple[float, list[torch.Tensor], list[int]]:
    """The loss of the first step, the gradients its update used, and each
    micro-batch's number of target tokens."""
    trainer = Trainer(config)
    peek = copy.deepcopy(trainer.sampler)  # the same draws the step will make
    counts = [int((peek.next()[1] != -100).sum()) for _ in range(config.grad_accum)]
    grads: list[torch.Tensor] = []
    update = trainer.optimizer.step

    def record_then_update(*args, **kwargs):
        grads.extend(p.grad.clone() for p in trainer.model.parameters())
        return update(*args, **kwargs)

    trainer.optimizer.step = record_then_update
    loss, _, _ = trainer._train_step()
    return loss, grads, counts


def test_grad_accum_gives_the_gradient_of_the_whole_batch(pretrained, tmp_path):
    data = _write_uneven_conversations(tmp_path / "uneven.jsonl")
    whole = _sft_config(pretrained, data, tmp_path / "whole", batch_size=4)
    split = _sft_config(pretrained, data, tmp_path / "split", batch_size=1, grad_accum=4)
    loss, grads, counts = _first_step(whole)
    split_loss, split_grads, split_counts = _first_step(split)

    assert sum(split_counts) == counts[0]  # the same rows, drawn in four micro-batches
    assert max(split_counts) > 1.5 * min(split_counts)  # unevenly filled with answers
    assert split_loss == pytest.approx(loss, rel=1e-5)
    assert len(grads) == len(split_grads) > 0
    for g, s in zip(grads, split_grads, strict=True):
        torch.testing.assert_close(s, g, rtol=1e-4, atol=1e-6)


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _sft_command(pretrained: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "scratchlm", "sft", "--from", str(pretrained), "--data",
        str(data), "--out", str(out), "--steps", "2", "--optimizer", "sgd", "--lr", "0.5",
        "--weight-decay", "0", "--grad-clip", "0", "--warmup-steps", "0", "--schedule",
        "constant", "--eval-every", "0", "--eval-windows", "2", "--sample-tokens", "0",
        "--val-fraction", "0.25", "--log-every", "1", "--seed", "11", "--device", "cpu",
        "--precision", "fp32",
        "--quiet", *extra,
    ]  # fmt: skip


def _losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


@pytest.mark.slow
def test_two_gloo_processes_give_the_gradient_of_the_whole_batch(pretrained, tmp_path):
    """2 processes x 1 row x 2 micro-batches against 1 process x 4 rows: the same rows,
    so the same losses and (plain SGD) the same weights after two updates."""
    data = _write_uneven_conversations(tmp_path / "uneven.jsonl")
    single = _sft_command(pretrained, data, tmp_path / "one", "--batch-size", "4")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = _sft_command(pretrained, data, tmp_path / "two", "--batch-size", "1", "--grad-accum", "2")
    ddp = [*torchrun, *ddp[1:]]  # python -m torch.distributed.run -m scratchlm sft ...

    one = subprocess.run(single, env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(ddp, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 2
    assert b == pytest.approx(a, rel=1e-5)
    model, _ = load_model(tmp_path / "two")
    reference, _ = load_model(tmp_path / "one")
    start, _ = load_model(pretrained)
    moved = False
    for (name, p), q in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    for name, p in start.state_dict().items():  # (the new chat-token rows aside)
        moved |= not torch.allclose(p, reference.state_dict()[name][: len(p)], atol=1e-4)
    assert moved  # the updates were large enough for the comparison to mean something
