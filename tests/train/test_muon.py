"""Muon: the Newton-Schulz iteration, the update against torch.optim.Muon and written out,
which parameters it steps, build_optimizer and the settings, a tiny run that learns, exact
resume after SIGKILL, and DDP on two gloo processes equal to one process."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import ENV, train_command, wait_for_step

from scratchlm.config import preset
from scratchlm.errors import ConfigError
from scratchlm.model import TransformerLM
from scratchlm.train.config import TrainConfig
from scratchlm.train.muon import Muon, newton_schulz
from scratchlm.train.optim import build_optimizer, muon_param_groups
from scratchlm.train.trainer import Trainer


def tiny_model(seed: int = 0, **overrides) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(preset("tiny", **overrides))


def tiny_batch(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def step(model: TransformerLM, optimizers: list[torch.optim.Optimizer], batch) -> None:
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    model.loss(*batch).backward()
    for opt in optimizers:
        opt.step()


# ----------------------------------------------------------------------------- Newton-Schulz


@pytest.mark.parametrize("shape", [(32, 64), (64, 16), (48, 48), (100, 30), (8, 200)])
def test_newton_schulz_gives_near_orthogonal_matrices_with_the_same_singular_vectors(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    o = newton_schulz(g)
    assert o.shape == g.shape and o.dtype == torch.float32
    # The quintic's known band: singular values land in about [0.5, 1.5], not exactly 1.
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.5
    # An odd polynomial of g keeps its singular vectors: U^T O V is diagonal.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    d = u.T @ o @ vh.T
    off = d - torch.diag(torch.diagonal(d))
    assert off.abs().max() < 1e-3
    # Scale does not matter: the iteration starts from g / ||g||.
    assert torch.allclose(newton_schulz(1000 * g), o, atol=1e-5)


def test_newton_schulz_of_an_orthogonal_matrix_stays_near_it():
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(1)))
    s = torch.linalg.svdvals(newton_schulz(q))
    assert s.min() > 0.5 and s.max() < 1.5


# ----------------------------------------------------------------------------- the update


def test_muon_matches_torch_muon_and_adamw_with_bfloat16_iteration(one_thread):
    """torch.optim.Muon always iterates in bfloat16 and has no AdamW part: ours with
    ns_dtype="bfloat16" equals torch's Muon on the matrices plus torch's AdamW on the rest,
    step for step, including the lr ratio and decoupled weight decay."""
    ours_model, ref_model = tiny_model(), tiny_model()
    groups = muon_param_groups(ours_model, 0.1, lr_ratio=20.0)
    ours = Muon(groups, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), ns_dtype="bfloat16")
    ref_groups = muon_param_groups(ref_model, 0.1, lr_ratio=20.0)
    ref_muon = torch.optim.Muon(ref_groups[0]["params"], lr=0.02, weight_decay=0.1)
    ref_adamw = torch.optim.AdamW(
        [{k: g[k] for k in ("params", "weight_decay")} for g in ref_groups[1:]],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    start = {n: p.detach().clone() for n, p in ours_model.named_parameters()}
    for i in range(5):
        batch = tiny_batch(seed=i)
        step(ours_model, [ours], batch)
        step(ref_model, [ref_muon, ref_adamw], batch)
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), name
        assert not torch.equal(p, start[name]), f"{name} did not move"


def test_muon_update_written_out_for_one_step(one_thread):
    """First step: b = (1 - m) g, the Nesterov update (1 - m) g + m b is a multiple of g,
    and the orthogonalisation ignores scale, so p1 = p0 (1 - lr wd) - lr s NS(g) with
    s = sqrt(max(1, rows / cols)); AdamW's first step moves by lr * sign(g) (roughly)."""
    model = tiny_model()
    lr, ratio, wd = 1e-3, 20.0, 0.1
    opt = Muon(muon_param_groups(model, wd, lr_ratio=ratio), lr=lr, weight_decay=wd)
    p = model.layers[0].mlp.gate_proj.weight  # (d_ff, d_model): tall, scaled by sqrt(2)
    rows, cols = p.shape
    assert rows == 2 * cols
    before = p.detach().clone()
    model.loss(*tiny_batch()).backward()
    g = p.grad.clone()
    opt.step()
    expected = before * (1 - lr * ratio * wd) - lr * ratio * math.sqrt(2) * newton_schulz(g)
    assert torch.allclose(p, expected, rtol=0, atol=1e-6)


def test_muon_refuses_non_matrices_and_bad_settings():
    with pytest.raises(ConfigError, match="matrices only"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(3))], "use_muon": True}])
    with pytest.raises(ConfigError, match="momentum"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(2, 3))]}], momentum=1.0)


# ----------------------------------------------------------------------------- the split


@pytest.mark.parametrize("tie", [False, True])
def test_muon_steps_the_hidden_matrices_and_adamw_the_rest(tie):
    model = tiny_model(tie_embeddings=tie, bias=True)
    names = {id(p): n for n, p in model.named_parameters()}
    muon, adamw_decay, adamw_rest = (
        {names[id(p)] for p in g["params"]} for g in muon_param_groups(model, 0.1, 20.0)
    )
    hidden = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    expected_muon = {
        n for n in names.values() if n.endswith(".weight") and n.split(".")[-2] in hidden
    }
    assert muon == expected_muon and len(muon) == 7 * model.config.n_layers
    assert adamw_decay == (set() if tie else {"lm_head.weight"})
    assert "embed_tokens.weight" in adamw_rest
    assert any(n.endswith(".bias") for n in adamw_rest)
    assert any("norm" in n for n in adamw_rest)
    # Every trainable parameter is in exactly one group.
    assert sorted([*muon, *adamw_decay, *adamw_rest]) == sorted(names.values())


def test_build_optimizer_makes_muon_with_its_own_learning_rate(tiny_config):
    config = dataclasses.replace(tiny_config, optimizer="muon", lr=2e-3, muon_lr=0.05)
    opt = build_optimizer(tiny_model(), config)
    assert isinstance(opt, Muon)
    muon_group, *adamw_groups = opt.param_groups
    assert muon_group["use_muon"] and muon_group["lr_ratio"] == pytest.approx(25.0)
    assert not any(g["use_muon"] for g in adamw_groups)
    # The default optimizer is still AdamW.
    assert not isinstance(build_optimizer(tiny_model(), tiny_config), Muon)


def test_config_refuses_muon_with_fsdp_and_a_bad_muon_lr(tiny_config):
    with pytest.raises(ConfigError, match="--optimizer muon does not work with --fsdp"):
        dataclasses.replace(tiny_config, optimizer="muon", fsdp=True)  # asked for by name
    with pytest.raises(ConfigError, match="muon_lr"):
        dataclasses.replace(tiny_config, optimizer="muon", muon_lr=-1.0)


def test_the_default_optimizer_is_muon_and_adamw_with_fsdp():
    default = TrainConfig()
    assert default.optimizer == "auto"
    assert default.resolved_optimizer() == "muon" and default.optimizer_note() is None
    sharded = TrainConfig(fsdp=True)  # not refused for the default's sake
    assert sharded.resolved_optimizer() == "adamw"
    assert "muon does not work with --fsdp" in sharded.optimizer_note()
    assert TrainConfig(fsdp=True, optimizer="sgd").resolved_optimizer() == "sgd"
    assert TrainConfig(fsdp=True, optimizer="adamw").optimizer_note() is None  # chosen
    model = tiny_model()
    assert isinstance(build_optimizer(model, default), Muon)
    assert not isinstance(build_optimizer(model, sharded), Muon)


# ----------------------------------------------------------------------------- training


def test_a_run_saves_the_optimizer_auto_stood_for_and_resumes_with_auto(tiny_config, one_thread):
    config = dataclasses.replace(
        tiny_config, optimizer="auto", steps=4, eval_every=0, sample_tokens=0, checkpoint_every=2
    )
    Trainer(config).run()
    run = Path(config.out)
    assert json.loads((run / "train_config.json").read_text())["optimizer"] == "muon"
    checkpoint = run / "checkpoints" / "step_00000004"
    state = json.loads((checkpoint / "trainer_state" / "state.json").read_text())
    assert state["config"]["optimizer"] == "muon"
    # The same command again (optimizer auto) resumes the run, with its Muon state.
    result = Trainer(dataclasses.replace(config, steps=6)).run()
    assert result.step == 6


def test_a_tiny_muon_run_learns(tiny_config, one_thread):
    config = dataclasses.replace(tiny_config, optimizer="muon", eval_every=0, sample_tokens=0)
    Trainer(config).run()
    lines = (Path(config.out) / "metrics.jsonl").read_text().splitlines()
    train = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    first = sum(r["loss"] for r in train[:3]) / 3
    last = sum(r["loss"] for r in train[-3:]) / 3
    assert first > math.log(300) - 0.5  # starts near chance over the 300-token vocab
    assert last < first - 1.0  # and learns


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    steps = [r["step"] for r in train]
    assert steps == sorted(set(steps)), "the metrics must read as one uninterrupted run"
    return {r["step"]: r["loss"] for r in train}


@pytest.mark.slow
def test_a_killed_muon_run_resumes_to_the_same_losses(prepared, tmp_path):
    """The momentum buffers are in the checkpoints: killed after the checkpoint at step 25
    and rerun, the run's losses equal the uninterrupted run's exactly."""
    extra = ["--steps", "50", "--optimizer", "muon"]
    reference = subprocess.Popen(
        train_command(prepared, tmp_path / "ref", *extra), env=ENV, stdout=subprocess.PIPE
    )
    killed = subprocess.Popen(
        train_command(prepared, tmp_path / "kill", *extra), env=ENV, stdout=subprocess.PIPE
    )
    wait_for_step(killed, tmp_path / "kill", 35)  # past the checkpoint at step 25
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert reference.wait(timeout=300) == 0
    state = tmp_path / "kill" / "checkpoints" / "step_00000025" / "trainer_state"
    saved = json.loads((state / "optimizer.json").read_text())
    assert saved["param_groups"][0]["use_muon"] is True
    tensors = load_file(state / "optimizer.safetensors")
    assert any(name.endswith("momentum_buffer") for name in tensors)
    again = subprocess.run(
        train_command(prepared, tmp_path / "kill", *extra), env=ENV, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    expected = _losses(tmp_path / "ref")
    assert sorted(expected) == list(range(1, 51))
    assert "rolled back" not in (tmp_path / "ref" / "metrics.jsonl").read_text()
    assert _losses(tmp_path / "kill") == expected  # exactly, step for step


@pytest.mark.slow
def test_muon_on_two_gloo_processes_matches_one_process(prepared, tmp_path):
    """DDP all-reduces the gradients before the step: each process orthogonalises the
    same full update, so two processes of 4 windows equal one of 8."""
    common = ["--steps", "8", "--checkpoint-every", "4", "--eval-every", "4", "--warmup-steps"]
    common += ["2", "--optimizer", "muon", "--precision", "fp32"]  # bf16 rounds per shape
    single = train_command(prepared, tmp_path / "one", *common)
    single[single.index("--batch-size") + 1] = "8"
    ddp = train_command(prepared, tmp_path / "two", *common)
    ddp[ddp.index("--batch-size") + 1] = "4"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = [*torchrun, *ddp[1:]]
    one = subprocess.run(single, env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(ddp, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    for run in ("one", "two"):
        saved = json.loads((tmp_path / run / "train_config.json").read_text())
        assert saved["optimizer"] == "muon"
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert [b[s] for s in a] == pytest.approx([a[s] for s in a], rel=1e-5)
