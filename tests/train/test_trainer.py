"""The training loop, in process: loss falls, metrics and checkpoints appear, settings
resolve and resume safely, bad steps are skipped and rolled back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from train_helpers import TINY

from scratchlm.errors import ConfigError
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import resolve_config
from scratchlm.train.runtime import LossModule
from scratchlm.train.state import TrainState
from scratchlm.train.trainer import Trainer, TrainingDiverged


def _records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_tiny_run_learns_and_leaves_a_complete_run_directory(tiny_config):
    result = Trainer(tiny_config).run()
    run = Path(tiny_config.out)

    assert result.step == 30 and result.interrupted is None
    assert result.tokens == 30 * 4 * 32
    train = _records(run, "train")
    assert [r["step"] for r in train] == list(range(1, 31))
    first = sum(r["loss"] for r in train[:3]) / 3
    last = sum(r["loss"] for r in train[-3:]) / 3
    assert first > math.log(300) - 0.5  # starts near chance over the 300-token vocab
    assert last < first - 1.0  # and learns

    val = _records(run, "val")
    assert [r["step"] for r in val] == [10, 20, 30]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert val[-1]["val_ppl"] == pytest.approx(math.exp(val[-1]["val_loss"]))
    # bits per byte = loss / ln 2 / (bytes per token of the validation text)
    assert 0 < val[-1]["val_bpb"] < val[-1]["val_loss"] / math.log(2)
    assert len(_records(run, "sample")) == 3 * len(tiny_config.sample_prompts)

    assert json.loads((run / "train_config.json").read_text()) == tiny_config.to_dict()
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step_00000010", "step_00000020", "step_00000030"]
    assert result.checkpoint.name == "step_00000030"


def test_checkpoint_rebuilds_the_trained_model(tiny_config):
    from scratchlm.checkpoint import load_model

    trainer = Trainer(tiny_config)
    result = trainer.run()
    model, tok = load_model(result.checkpoint)
    x = torch.randint(0, 300, (2, 16))
    trainer.model.eval()
    model.eval()
    assert torch.equal(model(x), trainer.model(x))
    assert tok.vocab_size == 300


def test_rerunning_a_finished_run_trains_no_more(tiny_config):
    Trainer(tiny_config.replace(steps=10)).run()
    again = Trainer(tiny_config.replace(steps=10)).run()
    assert again.step == 10
    assert [r["step"] for r in _records(Path(tiny_config.out), "train")] == (list(range(1, 11)))


def test_resume_refuses_changed_settings(tiny_config):
    Trainer(tiny_config.replace(steps=5)).run()
    with pytest.raises(ConfigError, match="lr"):
        Trainer(tiny_config.replace(steps=5, lr=1e-2)).run()


def test_resume_of_an_empty_directory_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="nothing to resume"):
        Trainer(tiny_config.replace(resume=True)).run()


def test_gradient_accumulation_equals_the_larger_batch(tiny_config, tmp_path):
    one = Trainer(tiny_config.replace(steps=4, batch_size=4, out=str(tmp_path / "a"))).run()
    two = Trainer(
        tiny_config.replace(steps=4, batch_size=2, grad_accum=2, out=str(tmp_path / "b"))
    ).run()
    a = [r["loss"] for r in _records(tmp_path / "a", "train")]
    b = [r["loss"] for r in _records(tmp_path / "b", "train")]
    assert one.tokens == two.tokens
    assert a == pytest.approx(b, rel=1e-5)


def _poison(monkeypatch, bad_calls):
    """Make the training loss NaN on the given (1-based) forward calls."""
    calls = {"n": 0}
    forward = LossModule.forward

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = forward(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] in bad_calls else loss

    monkeypatch.setattr(LossModule, "forward", poisoned)


def test_a_nan_step_is_skipped_and_leaves_the_weights_alone(tiny_config, monkeypatch):
    _poison(monkeypatch, {4})
    trainer = Trainer(tiny_config.replace(steps=6))
    seen = {}
    step = Trainer._train_step

    def spy(self):
        before = [p.detach().clone() for p in self.model.parameters()]
        out = step(self)
        seen[self.state.step] = all(
            torch.equal(a, b) for a, b in zip(before, self.model.parameters(), strict=True)
        )
        return out

    monkeypatch.setattr(Trainer, "_train_step", spy)
    result = trainer.run()
    assert result.step == 6
    assert seen[4] is True and seen[3] is False and seen[5] is False
    events = [r["message"] for r in _records(Path(tiny_config.out), "event")]
    assert any("skipped the update of step 4" in m for m in events)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_bad_steps_in_a_row_roll_back_with_a_lower_learning_rate(tiny_config, monkeypatch):
    _poison(monkeypatch, {12, 13, 14})
    config = tiny_config.replace(steps=16, max_skips=3, checkpoint_every=10, eval_every=0)
    trainer = Trainer(config)
    result = trainer.run()
    events = [r["message"] for r in _records(Path(config.out), "event")]
    assert any("rolled back to step_00000010" in m for m in events)
    assert trainer.state.lr_scale == pytest.approx(config.rollback_lr)
    assert result.step == 16 and trainer.state.rollbacks == 1
    train = _records(Path(config.out), "train")
    assert [r["step"] for r in train] == list(range(1, 17))  # steps 11-14 were redone


def test_divergence_before_any_checkpoint_stops_with_advice(tiny_config, monkeypatch):
    _poison(monkeypatch, set(range(1, 100)))
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        Trainer(tiny_config.replace(steps=10, max_skips=2)).run()


def test_divergence_after_the_last_rollback_stops(tiny_config, monkeypatch):
    _poison(monkeypatch, set(range(6, 100)))
    config = tiny_config.replace(steps=20, checkpoint_every=5, max_skips=2, max_rollbacks=2)
    with pytest.raises(TrainingDiverged, match="after 2 rollbacks"):
        Trainer(config).run()


def test_config_file_then_flags(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text("lr = 0.002\nsteps = 50\nbetas = [0.8, 0.9]\n[model]\nn_layers = 3\n")
    config = resolve_config(file, {"steps": 70, "batch_size": None})
    assert config.lr == 0.002 and config.steps == 70 and config.batch_size == 8
    assert config.betas == (0.8, 0.9) and config.model == {"n_layers": 3}
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.model_config(vocab_size=123).n_layers == 3


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"lr": -1.0}, "lr"),
        ({"steps": 0}, "steps"),
        ({"precision": "fp8"}, "precision"),
        ({"preset": "huge"}, "preset"),
        ({"betas": [0.9, 1.5]}, "betas"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_bad_settings_are_named(settings, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(settings)


def test_bad_config_file_is_named(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text("lr = = 1\n")
    with pytest.raises(ConfigError, match=r"run\.toml"):
        resolve_config(file)


def test_a_crashed_run_resumes_to_the_same_losses(tiny_config, tmp_path, monkeypatch):
    """In process: an exception after step 7 (checkpoint at 5), then a rerun. The
    fused AdamW moments must come back in the parameters' memory layout for this."""
    config = tiny_config.replace(steps=12, checkpoint_every=5, eval_every=0)
    Trainer(config.replace(out=str(tmp_path / "a"))).run()

    step = Trainer._train_step

    def crash(self):
        if self.state.step == 7:
            raise RuntimeError("power cut")
        return step(self)

    monkeypatch.setattr(Trainer, "_train_step", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        Trainer(config.replace(out=str(tmp_path / "b"))).run()
    monkeypatch.setattr(Trainer, "_train_step", step)
    Trainer(config.replace(out=str(tmp_path / "b"))).run()

    a = [(r["step"], r["loss"]) for r in _records(tmp_path / "a", "train")]
    b = [(r["step"], r["loss"]) for r in _records(tmp_path / "b", "train")]
    assert a == b and len(a) == 12


def test_a_failed_start_leaves_no_settings_behind(tiny_config):
    with pytest.raises(ConfigError, match="warmup"):
        Trainer(tiny_config.replace(steps=5, warmup_steps=10)).run()
    assert not (Path(tiny_config.out) / "train_config.json").exists()
    assert Trainer(tiny_config.replace(steps=5, warmup_steps=2)).run().step == 5


def test_a_tokenizer_other_than_the_data_s_is_refused_before_writing(tiny_config, tmp_path):
    from scratchlm.errors import DataError
    from scratchlm.tokenizer import CharTokenizer
    from scratchlm.tokenizer.files import write_tokenizer_dir

    other = CharTokenizer.train(["some other text"], ["<|endoftext|>"])
    write_tokenizer_dir(other, tmp_path / "other")
    with pytest.raises(DataError, match="prepare"):
        Trainer(tiny_config.replace(tokenizer=str(tmp_path / "other"))).run()
    assert not Path(tiny_config.out).exists()


def test_windows_longer_than_the_data_are_refused_before_writing(tiny_config):
    from scratchlm.errors import DataError

    with pytest.raises((DataError, ConfigError), match="context"):
        Trainer(tiny_config.replace(context_length=100_000, model={**TINY})).run()
    assert not Path(tiny_config.out).exists()


def test_a_missing_data_directory_is_named(tiny_config, tmp_path):
    from scratchlm.errors import ScratchLMError

    with pytest.raises(ScratchLMError, match="nowhere"):
        Trainer(tiny_config.replace(data=str(tmp_path / "nowhere"))).run()


def test_bf16_autocast_on_a_cpu_trains(tiny_config):
    result = Trainer(tiny_config.replace(steps=8, precision="bf16", eval_every=0)).run()
    train = _records(Path(tiny_config.out), "train")
    assert result.step == 8 and all(math.isfinite(r["loss"]) for r in train)
    assert train[-1]["loss"] < train[0]["loss"]


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_config, tmp_path):
    """torch.compile wraps the training model only; it computes the same losses."""
    config = tiny_config.replace(steps=4, eval_every=0)
    Trainer(config.replace(out=str(tmp_path / "eager"))).run()
    Trainer(config.replace(out=str(tmp_path / "compiled"), compile=True)).run()
    eager = [r["loss"] for r in _records(tmp_path / "eager", "train")]
    compiled = [r["loss"] for r in _records(tmp_path / "compiled", "train")]
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_checkpointed_activations_train_the_same_steps(tiny_config, tmp_path):
    """--checkpoint-activations recomputes each block in backward: the same losses and
    gradient norms as keeping every activation (dropout on: the same masks replayed)."""
    config = tiny_config.replace(steps=4, eval_every=0, model={**TINY, "dropout": 0.1})
    Trainer(config.replace(out=str(tmp_path / "kept"))).run()
    Trainer(config.replace(out=str(tmp_path / "ckpt"), checkpoint_activations=True)).run()
    kept = [r[k] for r in _records(tmp_path / "kept", "train") for k in ("loss", "grad_norm")]
    ckpt = [r[k] for r in _records(tmp_path / "ckpt", "train") for k in ("loss", "grad_norm")]
    assert len(kept) == 8 and ckpt == pytest.approx(kept, rel=1e-5)


def test_a_token_budget_sets_the_number_of_steps(tiny_config):
    # 4 windows of 32 tokens = 128 tokens per step: 1,000 tokens take 8 steps.
    result = Trainer(tiny_config.replace(tokens=1000, eval_every=0)).run()
    assert result.step == 8 and result.tokens == 8 * 128


def test_train_state_round_trips_with_the_keys_checkpoints_have_always_had():
    # Checkpoints store these counters at the top level of trainer_state/state.json (so
    # those written before TrainState existed still resume).
    state = TrainState(3, 96, 1.5, 0.5, 1, best_val=2.0, last_val=2.5, last_loss=2.25)
    saved = json.loads(json.dumps({**state.state_dict(), "guard": {}, "phase": "pretrain"}))
    keys = {"step", "tokens", "elapsed", "lr_scale", "rollbacks", "best_val", "last_val"}
    assert set(state.state_dict()) == keys | {"last_loss"}
    restored = TrainState()
    restored.load_state_dict(saved)
    assert restored == state


def test_best_is_the_lowest_validation_loss_even_between_checkpoint_steps(tiny_config, monkeypatch):
    """An evaluation that beats every earlier one saves a checkpoint there and then, so
    ``best`` names the lowest validation loss seen; one that does not saves nothing."""
    import scratchlm.train.objective as objective
    from scratchlm.checkpoint import CheckpointManager

    losses = iter([5.0, 4.0, 4.5, 4.2])  # the evaluations at steps 3, 6, 9 and 12
    monkeypatch.setattr(objective, "evaluate", lambda *a, **k: {"val_loss": next(losses)})
    config = tiny_config.replace(
        steps=12, eval_every=3, checkpoint_every=12, keep_last=10, sample_tokens=0
    )
    Trainer(config).run()
    manager = CheckpointManager(config.out)
    assert [p.name for p in manager.list()] == ["step_00000003", "step_00000006", "step_00000012"]
    assert manager.best().name == "step_00000006"
    assert manager.best_val_loss() == 4.0


@pytest.mark.parametrize("name", ["tiny", "small", "gpt2-classic"])
@pytest.mark.parametrize("changes", [{}, {"n_layers": 7}, {"shared_depth": 3}])
def test_size_from_two_layers_is_the_built_model_size(name, changes):
    """The memory check counts parameters from models of one and two layers; the
    count must be that of the whole model."""
    from scratchlm.config import preset
    from scratchlm.model import TransformerLM
    from scratchlm.train.assembly import _sizes

    config = preset(name, **changes)
    with torch.device("meta"):
        model = TransformerLM(config)
    assert _sizes(config) == (model.num_parameters(), sum(b.numel() for b in model.buffers()))
