"""Model overrides that would be silently ignored are refused in one line (issue 13,
item 8): one that contradicts a model loaded with --init-from, and a vocab_size that
contradicts the tokenizer. train_config.json never records a value the run did not use."""

from __future__ import annotations

import pytest
from train_helpers import TINY

from scratchlm.cli import main
from scratchlm.errors import ConfigError
from scratchlm.train.assembly import build_model, run_tokenizer


def test_an_override_contradicting_the_loaded_model_is_refused(tiny_config, pretrained):
    config = tiny_config.replace(init_from=str(pretrained), model={**TINY, "n_layers": 3})
    with pytest.raises(ConfigError, match=r"n_layers=3 contradicts the model loaded from"):
        build_model(config, run_tokenizer(config))
    same = tiny_config.replace(init_from=str(pretrained), model=dict(TINY))
    assert build_model(same, run_tokenizer(same)).config.n_layers == TINY["n_layers"]
    with pytest.raises(ConfigError, match=r"unknown model field.*n_layer"):  # refused up front
        tiny_config.replace(init_from=str(pretrained), model={"n_layer": 3})


def test_a_vocab_size_contradicting_the_tokenizer_is_refused(tiny_config):
    with pytest.raises(
        ConfigError, match=r"vocab_size=999 contradicts the tokenizer, which has 300"
    ):
        tiny_config.replace(model={**TINY, "vocab_size": 999}).model_config(300)
    assert (
        tiny_config.replace(model={**TINY, "vocab_size": 300}).model_config(300).vocab_size == 300
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--init-from", "{pretrained}", "--model", "d_model=64"], "d_model=64 contradicts"),
        (["--model", "vocab_size=50000"], "vocab_size=50000 contradicts the tokenizer"),
    ],
)
def test_train_refuses_ignored_overrides_in_one_line(
    prepared, pretrained, tmp_path, capsys, flags, named
):
    run = tmp_path / "run"
    flags = [f.format(pretrained=pretrained) for f in flags]
    argv = ["train", "--data", str(prepared), "--out", str(run), "--preset", "tiny"]
    assert main([*argv, "--steps", "1", "--device", "cpu", "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("scratchlm: error: ") and named in err, err
    assert not (run / "train_config.json").exists()
