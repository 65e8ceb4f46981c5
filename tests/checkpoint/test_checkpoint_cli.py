"""`scratchlm checkpoint inspect|verify`, `scratchlm export hf` and `scratchlm import hf`,
called in-process through ``scratchlm.cli.main``."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.checkpoint import CheckpointManager, load_model, read_config, save_checkpoint
from scratchlm.cli import main
from scratchlm.config import preset
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import BPETokenizer, train_bpe

EOT = "<|endoftext|>"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every command from an empty folder, so nothing lands in the working tree."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def run_dir(tmp_path, trained, char_tokenizer):
    """A run directory with checkpoints at steps 1 and 2."""
    model, opt = trained(steps=1)
    manager = CheckpointManager(tmp_path / "run")
    for step in (1, 2):
        state = {"step": step, "tokens_seen": 18 * step, "train_loss": 4.0 - step}
        manager.save(model, opt, step, tokenizer=char_tokenizer, train_state=state)
    return tmp_path / "run"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("scratchlm: error: "), err
    return err


def test_inspect_text_and_json(run_dir, capsys):
    assert main(["checkpoint", "inspect", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "step_00000002" in text
    assert "tokens seen  36" in text and "train_loss=2.0" in text
    assert "layers.0.self_attn.q_proj.weight" in text

    step1 = run_dir / "checkpoints" / "step_00000001"
    assert main(["checkpoint", "inspect", str(step1), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 1 and info["tokens_seen"] == 18
    assert info["losses"] == {"train_loss": 3.0}
    assert info["tensors"]["norm.weight"]["shape"] == [info["model"]["d_model"]]


def test_verify_checkpoint(run_dir, capsys):
    step2 = run_dir / "checkpoints" / "step_00000002"
    files = [p for p in step2.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert main(["checkpoint", "verify", str(step2)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {len(files)} files verified")

    (step2 / "trainer_state" / "optimizer.safetensors").write_bytes(b"")
    assert main(["checkpoint", "verify", str(step2)]) == 2
    assert "trainer_state/optimizer.safetensors is truncated" in _one_error_line(capsys)


def test_verify_run_directory_reports_each(run_dir, capsys):
    assert main(["checkpoint", "verify", str(run_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[:2] for line in out] == [
        ["ok", " step_00000001"],
        ["ok", " step_00000002"],
    ]

    (run_dir / "checkpoints" / "step_00000001" / "tokenizer.json").unlink()
    assert main(["checkpoint", "verify", str(run_dir)]) == 2
    captured = capsys.readouterr()
    assert "step_00000001" in captured.out and "missing file tokenizer.json" in captured.out
    assert "ok: step_00000002" in captured.out
    assert "1 of 2 checkpoints" in captured.err


def test_verify_and_inspect_refuse_other_paths(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["checkpoint", "verify", str(tmp_path / "plain")]) == 2
    assert "no manifest.json" in _one_error_line(capsys)
    assert main(["checkpoint", "inspect", str(tmp_path / "plain")]) == 2
    assert "is neither a checkpoint directory" in _one_error_line(capsys)


@pytest.fixture
def bpe_tokenizer(tmp_path) -> BPETokenizer:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Once upon a time a small robot counted the stars. " * 10, encoding="utf-8")
    vocab, merges = train_bpe(corpus, 280, [EOT], num_workers=1)
    return BPETokenizer(vocab, merges, [EOT])


def test_export_then_import_gives_the_same_logits(tmp_path, bpe_tokenizer, capsys):
    torch.manual_seed(0)
    model = TransformerLM(preset("tiny", vocab_size=bpe_tokenizer.vocab_size, n_layers=1))
    with torch.no_grad():  # random norm weights: ones would hide a norm mapped wrongly
        for layer in model.modules():
            if hasattr(layer, "weight") and "Norm" in type(layer).__name__:
                layer.weight.uniform_(0.5, 1.5)
    CheckpointManager(tmp_path / "run").save(model, None, 7, tokenizer=bpe_tokenizer)

    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "imported")]) == 0
    capsys.readouterr()

    config = read_config(tmp_path / "imported")
    assert config["step"] == 0
    assert not (tmp_path / "imported" / "trainer_state").exists()
    imported, tok = load_model(tmp_path / "imported")
    ids = torch.tensor([bpe_tokenizer.encode("Once upon a time a robot")])
    model.eval()
    torch.testing.assert_close(imported(ids), model(ids), rtol=1e-5, atol=1e-5)
    assert tok.encode("small stars") == bpe_tokenizer.encode("small stars")

    # An existing output is refused without --force, replaced with it.
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    assert "--force" in _one_error_line(capsys)
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "imported")]) == 2
    assert "--force" in _one_error_line(capsys)
    argv = ["import", "hf", str(tmp_path / "hf"), str(tmp_path / "imported"), "--force"]
    assert main(argv) == 0


def test_export_needs_a_tokenizer(tmp_path, make_model, capsys):
    save_checkpoint(make_model(), None, 0, tmp_path / "c")
    assert main(["export", "hf", str(tmp_path / "c"), str(tmp_path / "hf")]) == 2
    assert "has no tokenizer.json" in _one_error_line(capsys)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["checkpoint", "inspect", "--help"],
        ["checkpoint", "verify", "--help"],
        ["export", "hf", "--help"],
        ["import", "hf", "--help"],
    ],
)
def test_help_has_an_example(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert f"example:\n  scratchlm {argv[0]} {argv[1]}" in capsys.readouterr().out
