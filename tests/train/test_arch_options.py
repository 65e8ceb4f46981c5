"""The architecture options of the speedrun recipes (``ffn="relu2"``, ``zero_init_proj``,
``logit_softcap``) reach the model from ``--model KEY=VALUE`` flags and a TOML ``[model]``
table, train, land in the checkpoint, and a model with an option Hugging Face cannot
represent is refused by ``export hf`` in one line."""

from __future__ import annotations

import json

from train_helpers import TINY

from scratchlm.checkpoint import load_model
from scratchlm.cli import main
from scratchlm.train.config_files import resolve_config

OPTIONS = {"ffn": "relu2", "zero_init_proj": True, "logit_softcap": 30.0}
QUICK = ["--context-length", "32", "--batch-size", "2", "--eval-windows", "2", "--quiet"]
QUICK += ["--sample-tokens", "0", "--warmup-steps", "1", "--device", "cpu", "--steps", "2"]


def test_flags_train_a_model_with_the_options_and_export_refuses_it(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    model = [f"--model={k}={v}" for k, v in TINY.items() if k != "d_ff"]
    model += ["--model=ffn=relu2", "--model=zero_init_proj=true", "--model=logit_softcap=30"]
    argv = ["train", "--data", str(prepared), "--out", str(run), "--preset", "tiny"]
    assert main([*argv, *QUICK, *model]) == 0, capsys.readouterr().err
    trained, _ = load_model(run)
    c = trained.config
    assert (c.ffn, c.zero_init_proj, c.logit_softcap) == ("relu2", True, 30)
    assert json.loads((run / "train_config.json").read_text())["model"]["ffn"] == "relu2"
    # Two steps of training moved the zero-initialised projections off zero.
    assert all(layer.self_attn.o_proj.weight.any() for layer in trained.layers)
    capsys.readouterr()
    assert main(["export", "hf", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1
    assert "ffn='relu2'" in err and "logit_softcap=30" in err


def test_a_toml_model_table_sets_the_options(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text(
        '[model]\nffn = "relu2"\nzero_init_proj = true\nlogit_softcap = 30.0\n', encoding="utf-8"
    )
    config = resolve_config(file).model_config(vocab_size=300)
    assert {k: getattr(config, k) for k in OPTIONS} == OPTIONS
