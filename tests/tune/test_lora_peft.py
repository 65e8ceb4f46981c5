"""LoRA adapters against real PEFT: the adapter folder we write, loaded by
``peft.PeftModel.from_pretrained`` onto our Hugging Face export of the base model,
computes our logits; and ``scratchlm lora merge|export`` on an sft --lora run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.checkpoint import load_model, save_checkpoint
from scratchlm.cli import main
from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError
from scratchlm.model import TransformerLM
from scratchlm.tune.lora import LoraConfig, apply_lora, export_adapter, lora_parameters
from scratchlm.tune.peft_files import write_peft_adapter

peft = pytest.importorskip("peft")  # installed by the test set-up (the tune extra)
transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=61, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


def adapted(lora: LoraConfig, **overrides) -> TransformerLM:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**{**BASE, **overrides})).eval()
    apply_lora(model, lora)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking adapters: B = 0 would hide a wrong key or scale
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def peft_logits(hf_dir, adapter_dir, ids: torch.Tensor) -> torch.Tensor:
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, adapter_dir).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    ("lora", "overrides"),
    [
        (LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj")), {}),
        (LoraConfig(r=2, alpha=5, targets=("all-linear", "lm_head")), {"tie_embeddings": False}),
        (LoraConfig(r=3, alpha=3, targets=("layers.1.mlp.down_proj", "k_proj")), {}),
        (LoraConfig(r=4, alpha=8, base="int8", targets=("all-linear",)), {}),  # dequantized
        (LoraConfig(r=4, alpha=8, base="bf16", targets=("all-linear",)), {}),  # bf16 values
    ],
)
def test_peft_loads_our_adapter_onto_our_export(tmp_path, lora, overrides):
    model = adapted(lora, **overrides)
    ckpt = save_checkpoint(model, None, 0, tmp_path / "ckpt")
    adapter = export_adapter(ckpt, tmp_path / "adapter", base_hf=tmp_path / "hf")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["bias"]) == (lora.r, lora.alpha, "none")
    keys = set(load_file(adapter / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight" in keys or (
        "k_proj" not in lora.targets
    )
    ids = torch.randint(0, BASE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(ids)
    torch.testing.assert_close(peft_logits(tmp_path / "hf", adapter, ids), ours, rtol=0, atol=1e-5)


def test_target_modules_are_short_names_when_they_pick_exactly_the_wrapped_layers(tmp_path):
    out = write_peft_adapter(adapted(LoraConfig(targets=("q_proj", "v_proj"))), tmp_path / "a")
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == [
        "q_proj",
        "v_proj",
    ]
    out = write_peft_adapter(adapted(LoraConfig(targets=("layers.0.mlp.up_proj",))), tmp_path / "b")
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == [
        "model.layers.0.mlp.up_proj"
    ]


def test_gpt2_architecture_is_refused_with_advice(tmp_path):
    model = adapted(
        LoraConfig(), position="learned", norm="layernorm", ffn="gelu", bias=True, n_kv_heads=4
    )
    with pytest.raises(ConfigError, match="merge the adapters"):
        write_peft_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


# ------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def lora_run(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    args = ["sft", "--from", str(pretrained), "--out", str(out), "--data", "builtin:chat",
            "--steps", "4", "--batch-size", "2", "--eval-windows", "2", "--sample-tokens", "0",
            "--device", "cpu", "--quiet", "--lr", "1e-2", "--lora", "r=4,alpha=8"]  # fmt: skip
    assert main(args) == 0
    return out


def test_an_sft_lora_run_writes_its_adapter_and_export_matches_peft(lora_run, tmp_path, capsys):
    assert (lora_run / "adapter" / "adapter_config.json").is_file()
    assert main(["lora", "export", str(lora_run), str(tmp_path / "a"), "--base-hf",
                 str(tmp_path / "hf")]) == 0  # fmt: skip
    want = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    got = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    model, tok = load_model(lora_run)  # merged on loading
    ids = torch.tensor([tok.encode("Water boils at a hundred degrees")])
    with torch.no_grad():
        ours = model(ids)
    torch.testing.assert_close(
        peft_logits(tmp_path / "hf", tmp_path / "a", ids), ours, rtol=0, atol=1e-5
    )


def test_merge_writes_an_ordinary_checkpoint(lora_run, tmp_path, capsys):
    assert main(["lora", "merge", str(lora_run), str(tmp_path / "merged")]) == 0
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "lora" not in config
    merged, tok = load_model(tmp_path / "merged")
    direct, _ = load_model(lora_run)
    ids = torch.tensor([tok.encode("The")])
    torch.testing.assert_close(merged(ids), direct(ids), rtol=0, atol=0)
    # Exporting the LoRA run merges on the fly: the same folder as the merged checkpoint's.
    assert main(["export", "hf", str(lora_run), str(tmp_path / "hf1")]) == 0
    assert main(["export", "hf", str(tmp_path / "merged"), str(tmp_path / "hf2")]) == 0
    a = load_file(tmp_path / "hf1" / "model.safetensors")
    b = load_file(tmp_path / "hf2" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_merging_an_ordinary_checkpoint_is_a_one_line_error(pretrained, tmp_path, capsys):
    assert main(["lora", "merge", str(pretrained), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "holds no LoRA adapters" in err and err.count("\n") == 1
