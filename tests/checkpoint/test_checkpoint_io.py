"""save_checkpoint / load_checkpoint / load_model / read_train_state round trips."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from scratchlm.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    inspect_checkpoint,
    load_checkpoint,
    load_model,
    read_config,
    read_train_state,
    restore_rng_state,
    save_checkpoint,
    verify_checkpoint,
)
from scratchlm.errors import CheckpointError, OutputExistsError


def _assert_same_optimizer_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        for name, value in sa["state"][i].items():
            other = sb["state"][i][name]
            if isinstance(value, torch.Tensor):
                assert other.dtype == value.dtype and torch.equal(other, value), (i, name)
            else:
                assert other == value, (i, name)


def test_round_trip_is_bitwise_and_training_continues_identically(
    tmp_path, trained, make_model, train_step
):
    model, opt = trained(steps=2)
    path = save_checkpoint(model, opt, 2, tmp_path / "ckpt")
    assert path == tmp_path / "ckpt"

    fresh = make_model(seed=1)  # other initial weights: the load must overwrite all of them
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1)
    assert load_checkpoint(path, fresh, fresh_opt) == 2
    for (name, p), q in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    _assert_same_optimizer_state(opt, fresh_opt)
    assert isinstance(fresh_opt.state_dict()["param_groups"][0]["betas"], tuple)

    # One more step on each gives the same weights as never having stopped.
    train_step(model, opt, seed=7)
    train_step(fresh, fresh_opt, seed=7)
    for (name, p), q in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_files_and_config(tmp_path, trained, char_tokenizer):
    model, opt = trained(steps=1)
    path = save_checkpoint(
        model, opt, 5, tmp_path / "c", tokenizer=char_tokenizer, train_state={"a": 1}
    )
    names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert names == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "manifest.json",
        "trainer_state/optimizer.safetensors",
        "trainer_state/optimizer.json",
        "trainer_state/state.json",
    }
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["step"] == 5
    assert config["model"] == model.config.to_dict()
    assert read_config(path)["created"] == config["created"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}
    opt_tensors = load_file(path / "trainer_state/optimizer.safetensors")
    assert "state.0.exp_avg" in opt_tensors
    assert opt_tensors["state.0.step"].shape == ()  # AdamW's 0-dim step survives as 0-dim


def test_tied_embeddings_stored_once_and_restored(tmp_path, trained, make_model):
    model, opt = trained(steps=1, tie_embeddings=True)
    path = save_checkpoint(model, opt, 1, tmp_path / "c")
    stored = load_file(path / "model.safetensors")
    assert "embed_tokens.weight" in stored and "lm_head.weight" not in stored

    fresh = make_model(seed=3, tie_embeddings=True)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1)
    load_checkpoint(path, fresh, fresh_opt)
    assert fresh.lm_head.weight is fresh.embed_tokens.weight
    assert torch.equal(fresh.embed_tokens.weight, model.embed_tokens.weight)
    _assert_same_optimizer_state(opt, fresh_opt)
    rebuilt, _ = load_model(path)
    assert rebuilt.lm_head.weight is rebuilt.embed_tokens.weight


def test_weights_saved_and_loaded_exactly_in_place(tmp_path, make_model):
    model = make_model()
    q = model.layers[0].self_attn.q_proj.weight
    path = save_checkpoint(model, None, 0, tmp_path / "c")
    assert torch.equal(load_file(path / "model.safetensors")["layers.0.self_attn.q_proj.weight"], q)

    fresh = make_model(seed=9)
    strides = {n: p.stride() for n, p in fresh.named_parameters()}
    load_checkpoint(path, fresh)
    for name, p in fresh.named_parameters():
        assert p.stride() == strides[name], name
        assert torch.equal(p, dict(model.named_parameters())[name]), name


def test_generic_module_with_sgd(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(5, 4)
    for _ in range(2):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    path = save_checkpoint(net, opt, 2, tmp_path / "g")
    assert read_config(path)["model"] is None

    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    other_opt = torch.optim.SGD(other.parameters(), lr=0.5, momentum=0.1)
    assert load_checkpoint(path, other, other_opt) == 2
    assert torch.equal(other(x), net(x))
    _assert_same_optimizer_state(opt, other_opt)
    with pytest.raises(CheckpointError, match="generic torch module"):
        load_model(path)


def test_load_model_rebuilds_model_and_tokenizer(tmp_path, trained, char_tokenizer, batch):
    model, opt = trained(steps=1, position="learned", norm="layernorm", ffn="gelu", bias=True)
    path = save_checkpoint(model, opt, 1, tmp_path / "c", tokenizer=char_tokenizer)
    rebuilt, tok = load_model(path)
    assert rebuilt.config == model.config
    assert not rebuilt.training
    ids = batch(model.config.vocab_size, seed=1)
    model.eval()
    assert torch.equal(rebuilt(ids), model(ids))
    assert tok.vocab == char_tokenizer.vocab
    assert tok.special_tokens == char_tokenizer.special_tokens
    assert tok.encode("the lazy fox") == char_tokenizer.encode("the lazy fox")


def test_load_model_keeps_saved_dtype(tmp_path, make_model):
    model = make_model().to(torch.bfloat16)
    path = save_checkpoint(model, None, 0, tmp_path / "c")
    rebuilt, tok = load_model(path)
    assert tok is None
    assert {p.dtype for p in rebuilt.parameters()} == {torch.bfloat16}
    assert torch.equal(rebuilt.embed_tokens.weight, model.embed_tokens.weight)


def test_strict_loading_names_key_and_shapes(tmp_path, make_model):
    path = save_checkpoint(make_model(), None, 0, tmp_path / "c")  # n_kv_heads=2
    with pytest.raises(CheckpointError, match=r"k_proj\.weight has shape \(32, 64\).*\(64, 64\)"):
        load_checkpoint(path, make_model(n_kv_heads=4))
    with pytest.raises(CheckpointError, match=r"no tensor layers\.1\.\S+ that the model needs"):
        load_checkpoint(path, make_model(n_layers=2))
    learned = save_checkpoint(make_model(position="learned"), None, 0, tmp_path / "learned")
    with pytest.raises(CheckpointError, match=r"tensor embed_positions\.weight that the model"):
        load_checkpoint(learned, make_model())


def test_optimizer_problems(tmp_path, trained, make_model):
    model, opt = trained(steps=1)
    weights_only = save_checkpoint(model, None, 1, tmp_path / "w")
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        load_checkpoint(weights_only, make_model(), torch.optim.AdamW(make_model().parameters()))
    full = save_checkpoint(model, opt, 1, tmp_path / "f")
    other = make_model()
    one_group_short = torch.optim.AdamW(list(other.parameters())[:-1])
    with pytest.raises(CheckpointError, match="does not fit this optimizer"):
        load_checkpoint(full, other, one_group_short)


def test_existing_path_needs_force(tmp_path, make_model):
    first = make_model(seed=0)
    path = save_checkpoint(first, None, 1, tmp_path / "c")
    second = make_model(seed=1)
    with pytest.raises(OutputExistsError):
        save_checkpoint(second, None, 2, path)
    assert read_config(path)["step"] == 1
    save_checkpoint(second, None, 2, path, force=True)
    assert read_config(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary folders left


def test_bad_arguments_fail_before_writing(tmp_path, make_model):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(make_model(), None, 0, tmp_path / "a", train_state={"x": object()})
    with pytest.raises(CheckpointError, match="step must be an integer"):
        save_checkpoint(make_model(), None, -1, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_train_state_and_tensors(tmp_path, make_model):
    model = make_model()
    empty = save_checkpoint(model, None, 0, tmp_path / "empty")
    assert read_train_state(empty) == ({}, {})

    state = {"step": 3, "tokens_seen": 1536, "losses": [3.2, 2.9], "nan_loss": float("nan")}
    shared = torch.arange(6.0)
    extra = {"sampler": torch.tensor([1, 2, 3]), "a": shared[:3], "b": shared[3:]}
    path = save_checkpoint(model, None, 3, tmp_path / "s", train_state=state, tensors=extra)
    got_state, got_tensors = read_train_state(path)
    assert got_state["losses"] == [3.2, 2.9] and got_state["tokens_seen"] == 1536
    assert got_state["nan_loss"] != got_state["nan_loss"]  # NaN survives
    assert got_tensors.keys() == extra.keys()
    for k, t in extra.items():
        assert torch.equal(got_tensors[k], t), k


def test_nothing_is_unpickled(tmp_path, monkeypatch, trained, make_model, char_tokenizer):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint operation unpickled something")

    for target, name in (
        (torch, "load"),
        (torch.serialization, "load"),
        (pickle, "load"),
        (pickle, "loads"),
    ):
        monkeypatch.setattr(target, name, refuse)
    model, opt = trained(steps=1)
    manager = CheckpointManager(tmp_path / "run")
    path = manager.save(
        model,
        opt,
        1,
        tokenizer=char_tokenizer,
        train_state={"tokens_seen": 8},
        tensors=capture_rng_state(),
        val_loss=2.0,
    )
    assert manager.latest_valid() == path
    verify_checkpoint(path)
    fresh = make_model(seed=4)
    load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters()))
    state, tensors = read_train_state(path)
    assert state == {"tokens_seen": 8}
    restore_rng_state(tensors)
    load_model(tmp_path / "run")
    assert inspect_checkpoint(path)["tokens_seen"] == 8


def test_tensor_hyperparameters_and_unsavable_state(tmp_path):
    net = nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=torch.tensor(0.01), betas=(0.8, 0.9))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(net, opt, 1, tmp_path / "c")
    other = nn.Linear(3, 2)
    other_opt = torch.optim.Adam(other.parameters(), lr=torch.tensor(0.5))
    load_checkpoint(path, other, other_opt)
    _assert_same_optimizer_state(opt, other_opt)
    assert isinstance(other_opt.param_groups[0]["lr"], torch.Tensor)
    assert other_opt.param_groups[0]["lr"].item() == pytest.approx(0.01)

    opt.state[net.weight]["custom"] = {1, 2}  # a set has no JSON form
    with pytest.raises(CheckpointError, match=r"optimizer state state\.0\.custom is a set"):
        save_checkpoint(net, opt, 2, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_fused_adamw_continues_identically_after_a_round_trip(tmp_path, make_model, train_step):
    """torch's fused CPU AdamW pairs elements by memory position: the moments loaded
    from the file must have the layout of their parameters."""
    model = make_model(seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for seed in range(2):
        train_step(model, opt, seed=seed)
    path = save_checkpoint(model, opt, 2, tmp_path / "ckpt")

    fresh = make_model(seed=1)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2, fused=True)
    load_checkpoint(path, fresh, fresh_opt)
    for p in fresh.parameters():
        for value in fresh_opt.state[p].values():
            if value.shape == p.shape:
                assert value.stride() == p.stride()
    train_step(model, opt, seed=7)
    train_step(fresh, fresh_opt, seed=7)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
