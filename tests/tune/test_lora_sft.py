"""``scratchlm sft --lora``: only the adapters train, checkpoints record them, loading
merges them, and bad specs or a changed spec on resume are refused in one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.checkpoint import format_report, inspect_checkpoint, load_model, resolve_checkpoint
from scratchlm.cli import main
from scratchlm.tune.lora import LoraConfig, LoraLinear, lora_parameters

ARGS = ["--data", "builtin:chat", "--batch-size", "2", "--eval-windows", "2",
        "--sample-tokens", "0", "--device", "cpu", "--quiet", "--lr", "1e-2"]  # fmt: skip


def sft(pretrained, out, *extra):
    return main(["sft", "--from", str(pretrained), "--out", str(out), *ARGS, *extra])


@pytest.fixture(scope="module")
def lora_run(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    assert sft(pretrained, out, "--steps", "6", "--lora", "r=4,alpha=8,targets=q_proj,v_proj") == 0
    return out


def test_only_the_adapters_change(pretrained, lora_run):
    start = load_file(resolve_checkpoint(pretrained) / "model.safetensors")
    folder = resolve_checkpoint(lora_run)
    config = json.loads((folder / "config.json").read_text())
    assert config["lora"] == LoraConfig(r=4, alpha=8).to_dict()
    assert "lora         r=4 alpha=8.0" in format_report(inspect_checkpoint(folder))
    saved = load_file(folder / "model.safetensors")
    adapters = {k for k in saved if ".lora_" in k}
    assert len(adapters) == 2 * 2 * 2  # two layers, q and v, A and B
    for key, tensor in start.items():
        old = tensor.shape[0]  # the chat tokens added rows to the embedding: frozen too
        torch.testing.assert_close(saved[key][:old], tensor, rtol=0, atol=0)
    assert all(saved[k].abs().sum() > 0 for k in adapters if k.endswith("lora_B"))
    # The optimizer holds state for the adapters alone.
    numbers = sum(saved[k].numel() for k in adapters)
    moments = load_file(folder / "trainer_state" / "optimizer.safetensors")
    big = sum(t.numel() for t in moments.values() if t.dim() > 0)
    assert big == 2 * numbers  # AdamW's two moments of each adapter


def test_loading_merges_the_adapters_exactly(lora_run):
    merged, tok = load_model(lora_run)
    wrapped, _ = load_model(lora_run, merge_adapters=False)
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())
    assert len(lora_parameters(wrapped)) == 8
    x = torch.tensor([tok.encode("The water is warm and the sky")])
    torch.testing.assert_close(merged(x), wrapped(x), rtol=0, atol=1e-6)


def test_chat_works_on_a_lora_run(lora_run, capsys):
    assert main(["generate", str(lora_run), "--prompt", "The", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0  # fmt: skip


def test_an_int8_base_trains_and_merges(pretrained, tmp_path):
    spec = "r=4,alpha=8,base=int8,targets=all-linear"
    assert sft(pretrained, tmp_path / "q", "--steps", "3", "--lora", spec) == 0
    folder = resolve_checkpoint(tmp_path / "q")
    saved = load_file(folder / "model.safetensors")
    assert saved["layers.0.mlp.up_proj.qweight"].dtype == torch.int8
    wrapped, tok = load_model(folder, merge_adapters=False)
    merged, _ = load_model(folder)
    x = torch.tensor([tok.encode("The water")])
    torch.testing.assert_close(merged(x), wrapped(x), rtol=0, atol=1e-5)


def test_a_different_spec_on_resume_is_refused(pretrained, lora_run, capsys):
    capsys.readouterr()
    code = sft(pretrained, lora_run, "--steps", "6", "--lora", "r=8,targets=q_proj,v_proj")
    assert code == 2
    err = capsys.readouterr().err
    assert "lora" in err and "other settings" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rank=8", "unknown LoRA setting 'rank'"),
        ("r=4,targets=qkv", "LoRA target 'qkv' matches no Linear layer"),
        ("r=-1", "positive integer"),
    ],
)
def test_bad_specs_are_one_line_errors(pretrained, tmp_path, capsys, spec, message):
    assert sft(pretrained, tmp_path / "bad", "--steps", "1", "--lora", spec) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("scratchlm: error:")
