"""Flags made from config dataclasses: each default is the dataclass's, shown in --help."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import scratchlm
from scratchlm.cli import COMMANDS, build_parser, main
from scratchlm.cli.chat import sample_config
from scratchlm.cli.config_flags import flag_fields, flag_name
from scratchlm.cli.train import DPO_ONLY, PRETRAIN_ONLY, SFT_ONLY, _flags
from scratchlm.config import SampleConfig
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import sft_config
from scratchlm.tune.dpo import dpo_config


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def flag_help(text: str) -> dict[str, str]:
    """``{flag: its help, on one line}`` from an argparse help text."""
    entries: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        m = re.match(r"^  (-[-\w]+)(.*)", line)
        if m:
            flag = m.group(1)
            entries[flag] = m.group(2)
        elif flag and line.startswith("     "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def shown(value) -> str:
    return ", ".join(repr(v) for v in value) if isinstance(value, list) else str(value)


CASES = [
    # command, the settings it runs with when no flag is given, fields it does not offer
    ("chat", SampleConfig, set()),
    ("generate", SampleConfig, set()),
    ("train", TrainConfig, SFT_ONLY | DPO_ONLY),
    ("sft", lambda: sft_config(init_from="ckpt"), PRETRAIN_ONLY | DPO_ONLY),
    ("dpo", lambda: dpo_config(init_from="ckpt"), PRETRAIN_ONLY),
]


@pytest.mark.parametrize(("command", "settings", "skip"), CASES, ids=[c[0] for c in CASES])
def test_every_flag_field_is_in_the_help_with_its_default(capsys, command, settings, skip):
    helps = flag_help(help_of(capsys, command))
    config = settings()
    fields = [f for f in flag_fields(type(config)) if f.name not in skip]
    assert len(fields) >= 10
    for f in fields:
        text = helps[flag_name(f)]
        assert f.metadata["help"] in text
        value = getattr(config, f.name)
        if value is None or isinstance(value, bool) or value in ("", []):
            assert "(default: " not in text.replace(f.metadata["help"], "")
        else:
            assert f"(default: {shown(value)})" in text, (f.name, text)


def test_chat_and_generate_parse_to_sample_configs_defaults():
    for argv in (["chat"], ["generate", "ckpt"]):
        args = build_parser(argv[0]).parse_args(argv)
        assert sample_config(args) == SampleConfig()
    args = build_parser("chat").parse_args(["chat", "--temperature", "0", "--stop", "x"])
    assert sample_config(args) == SampleConfig(temperature=0.0, stop=["x"])


def test_the_chat_temperature_default_is_stated_once():
    """0.7 is the default of the library and of both commands (it was 0.7 in the commands
    and 1.0 in SampleConfig)."""
    assert SampleConfig().temperature == 0.7
    args = build_parser("chat").parse_args(["chat"])
    assert sample_config(args).temperature == 0.7


def test_sft_help_shows_the_settings_sft_runs_with(capsys):
    helps = flag_help(help_of(capsys, "sft"))
    runs_with = sft_config(init_from="ckpt")
    assert (runs_with.steps, runs_with.lr, runs_with.batch_size) == (300, 3e-4, 16)
    assert "(default: 300)" in helps["--steps"]
    assert "(default: 0.0003)" in helps["--lr"]
    assert "(default: 16)" in helps["--batch-size"]
    assert "(default: runs/sft)" in helps["--out"]
    assert "conversation files" in helps["--data"] and "--from" in helps
    for gone in ("--preset", "--init-from", "--tokenizer"):
        assert gone not in helps
    train = flag_help(help_of(capsys, "train"))
    assert "(default: 1000)" in train["--steps"] and "(default: 0.001)" in train["--lr"]
    assert {"--preset", "--init-from", "--tokenizer"} <= set(train)
    assert "--val-fraction" not in train and "--skip-bad" not in train


@pytest.mark.parametrize("command", ["sft", "dpo"])
@pytest.mark.parametrize("flag", ["--preset", "--init-from", "--tokenizer"])
def test_tuning_refuses_flags_that_mean_nothing_beside_from(capsys, tmp_path, command, flag):
    argv = [command, "--from", str(tmp_path), flag, "x"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"scratchlm: error: {command} takes no {flag}: the model")
    assert "\n" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("command", "needs"),
    [("sft", "instruction tuning starts from a pretrained model"), ("dpo", "a tuned model")],
)
def test_tuning_without_from_is_one_line(capsys, tmp_path, command, needs):
    assert main([command, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert needs in err and err.endswith("pass --from DIR") and "\n" not in err


def test_flags_not_given_leave_the_defaults_and_a_config_file_alone():
    args = build_parser("train").parse_args(["train", "--steps", "5", "--quiet"])
    assert _flags(args) == {"steps": 5, "progress": False}


def test_every_command_has_a_parser_in_its_module():
    for name, (module, _) in COMMANDS.items():
        assert name in importlib.import_module(f"scratchlm.cli.{module}").PARSERS


def test_top_level_help_lists_every_command_without_importing_torch(tmp_path):
    src = Path(scratchlm.__file__).resolve().parents[1]
    paths = [str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    code = (
        "import sys\nfrom scratchlm.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("False")
    for name, (_, text) in COMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(text[:20])}", result.stdout, re.M), name


def test_config_dataclasses_round_trip_with_their_flag_metadata():
    """The metadata changes nothing of the JSON round trip."""
    for config in (SampleConfig(stop=["a"]), TrainConfig(sample_prompts=["x"])):
        assert type(config).from_dict(config.to_dict()) == config
        assert all(isinstance(f.metadata.get("help", ""), str) for f in dataclasses.fields(config))


def test_model_info_shows_derived_values_as_numbers(capsys):
    assert main(["model", "info", "gpt2-small", "--json"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    # gpt2-small leaves both unset: 12 key/value heads, 8/3 * 768 = 2048 exactly
    assert (config["n_kv_heads"], config["d_ff"]) == (12, 2048)
