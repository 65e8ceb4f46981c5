"""Preference tuning runs in the one training loop: it starts at the reference (loss
log 2), learns held-out preferences, caches the reference log-probabilities, and a run
killed with SIGKILL resumes to the uninterrupted run's losses exactly."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dpo_helpers import QUESTIONS, write_pairs
from train_helpers import ENV, wait_for_step

from scratchlm.checkpoint import load_model
from scratchlm.errors import ConfigError
from scratchlm.train.trainer import Trainer
from scratchlm.tune.dpo import DPOObjective, dpo_config
from scratchlm.tune.dpo_data import pair_rows, read_preferences
from scratchlm.tune.reference import CACHE_FILE, ReferenceCache

TRAIN = dict(list(QUESTIONS.items())[:8])
HELDOUT = dict(list(QUESTIONS.items())[8:])


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _settings(tmp_path: Path, model: Path, **changes) -> dict:
    return {
        "init_from": str(model),
        "conversations": [str(write_pairs(tmp_path / "train.jsonl", TRAIN))],
        "val_data": [str(write_pairs(tmp_path / "heldout.jsonl", HELDOUT))],
        "out": str(tmp_path / "run"),
        "steps": 40,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "eval_every": 20,
        "log_every": 1,
        "sample_tokens": 0,
        "device": "cpu",
        "progress": False,
        **changes,
    }


def test_dpo_starts_at_the_reference_and_learns_heldout_preferences(
    tmp_path, tiny_chat_model, one_thread
):
    config = dpo_config(**_settings(tmp_path, tiny_chat_model))
    result = Trainer(config, objective=DPOObjective(config)).run()
    assert result.step == 40
    first = _records(tmp_path / "run", "train")[0]
    # Step 1 measures the starting model against itself: every reward 0, the DPO loss
    # log 2 (beside the SFT loss on the chosen answers, at its weight).
    dpo_part = first["loss"] - config.sft_weight * first["nll_chosen"]
    assert dpo_part == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards_chosen"] == pytest.approx(0, abs=1e-5)
    assert first["margins"] == pytest.approx(0, abs=1e-5)
    val = _records(tmp_path / "run", "val")
    assert val[-1]["val_accuracy"] == 1.0  # 4 held-out questions, each answer preferred
    val_dpo_part = val[-1]["val_loss"] - config.sft_weight * val[-1]["val_nll_chosen"]
    assert val[-1]["val_margins"] > 0 and val_dpo_part < math.log(2)
    assert (tmp_path / "run" / CACHE_FILE).is_file()


def test_an_sft_loss_on_the_chosen_answers_keeps_them_likelier(
    tmp_path, tiny_chat_model, one_thread
):
    nll = {}
    for weight in (0.0, 1.0):
        settings = _settings(tmp_path, tiny_chat_model, out=str(tmp_path / f"run{weight}"))
        config = dpo_config(**settings, sft_weight=weight)
        Trainer(config, objective=DPOObjective(config)).run()
        first = _records(tmp_path / f"run{weight}", "train")[0]
        if weight:  # step 1: the DPO loss log 2 and the SFT loss at its weight
            assert first["loss"] == pytest.approx(math.log(2) + first["nll_chosen"], abs=1e-5)
        val = _records(tmp_path / f"run{weight}", "val")[-1]
        assert val["val_accuracy"] == 1.0  # the preference is learned either way
        nll[weight] = val["val_nll_chosen"]
    assert nll[1.0] < nll[0.0]  # the held-out chosen answers stay likelier
    with pytest.raises(ConfigError, match="sft_weight"):
        dpo_config(**_settings(tmp_path, tiny_chat_model), sft_weight=-1.0)


def test_reference_log_probs_are_cached_and_recomputed_when_data_or_model_change(
    tmp_path, tiny_chat_model, chat_tok, one_thread
):
    model, _ = load_model(tiny_chat_model)
    pairs, _ = read_preferences(write_pairs(tmp_path / "p.jsonl"))
    rows, _ = pair_rows(pairs, chat_tok, 64)
    cache = ReferenceCache(tmp_path)
    assert cache.attach(model, {"train": rows}, batch_size=4) is False  # computed
    computed = rows.ref.clone()
    cache.write()

    again, _ = pair_rows(pairs, chat_tok, 64)
    assert ReferenceCache(tmp_path).attach(model, {"train": again}, batch_size=4) is True
    assert torch.equal(again.ref, computed)

    fewer, _ = pair_rows(pairs[:-1], chat_tok, 64)  # another data set: recomputed
    assert ReferenceCache(tmp_path).attach(model, {"train": fewer}, batch_size=4) is False
    assert torch.equal(fewer.ref, computed[:-1])
    with torch.no_grad():
        model.lm_head.weight.mul_(2)  # another model: recomputed, other numbers
    other, _ = pair_rows(pairs, chat_tok, 64)
    assert ReferenceCache(tmp_path).attach(model, {"train": other}, batch_size=4) is False
    assert not torch.allclose(other.ref, computed)


def test_a_dpo_phase_needs_its_objective_and_a_starting_model(tmp_path, tiny_chat_model):
    config = dpo_config(**_settings(tmp_path, tiny_chat_model))
    with pytest.raises(ConfigError, match="scratchlm dpo"):
        Trainer(config)
    with pytest.raises(ConfigError, match="--from"):
        dpo_config(**_settings(tmp_path, tiny_chat_model, init_from=""))


def _command(tmp_path: Path, model: Path, out: Path) -> list[str]:
    s = _settings(tmp_path, model)
    return [
        sys.executable, "-m", "scratchlm", "dpo", "--from", s["init_from"],
        "--data", *s["conversations"], "--val-data", *s["val_data"], "--out", str(out),
        "--steps", "60", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "2",
        "--eval-every", "30", "--checkpoint-every", "10", "--log-every", "1",
        "--sample-tokens", "0", "--device", "cpu", "--quiet",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_killed_dpo_run_resumes_to_the_same_losses(tmp_path, tiny_chat_model):
    reference = subprocess.Popen(_command(tmp_path, tiny_chat_model, tmp_path / "ref"), env=ENV)
    killed = subprocess.Popen(
        _command(tmp_path, tiny_chat_model, tmp_path / "kill"), env=ENV, stdout=subprocess.PIPE
    )
    wait_for_step(killed, tmp_path / "kill", 25)  # past the checkpoint at step 20
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert reference.wait(timeout=300) == 0
    again = subprocess.run(
        _command(tmp_path, tiny_chat_model, tmp_path / "kill"),
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    assert "reference log-probabilities: read from" in again.stderr  # not recomputed

    def losses(run: Path) -> dict[int, float]:
        train = _records(run, "train")
        assert [r["step"] for r in train] == list(range(1, 61))  # one uninterrupted run
        return {r["step"]: r["loss"] for r in train}

    assert losses(tmp_path / "kill") == losses(tmp_path / "ref")  # exactly, step for step
