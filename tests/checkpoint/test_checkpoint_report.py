"""inspect_checkpoint and format_report: what a checkpoint holds, with tensor statistics."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from torch import nn

from scratchlm.checkpoint import (
    CheckpointManager,
    format_report,
    inspect_checkpoint,
    save_checkpoint,
)


class _Probe(nn.Module):
    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(values).reshape(2, 3))
        self.register_buffer("count", torch.tensor([1, 2, 3, 4], dtype=torch.int64))


def test_tensor_statistics_over_finite_values(tmp_path):
    values = [1.0, -2.0, float("nan"), 4.5, float("inf"), 0.25]
    path = save_checkpoint(_Probe(values), None, 9, tmp_path / "c")
    info = inspect_checkpoint(path)
    assert info["step"] == 9 and info["model"] is None and info["tokenizer"] is None
    w = info["tensors"]["w"]
    finite = [v for v in values if math.isfinite(v)]
    assert w["shape"] == [2, 3] and w["dtype"] == "float32"
    assert w["nonfinite"] == 2
    assert math.isclose(w["mean"], statistics.fmean(finite), rel_tol=1e-12)
    assert math.isclose(w["std"], statistics.pstdev(finite), rel_tol=1e-12)
    assert (w["min"], w["max"]) == (min(finite), max(finite))
    count = info["tensors"]["count"]
    assert count["dtype"] == "int64" and count["mean"] == 2.5 and count["nonfinite"] == 0
    assert info["parameters"] == 6 + 4
    text = format_report(info)
    assert "generic torch module" in text
    assert "count" in text and "int64" in text


def test_inspect_model_run(tmp_path, trained, char_tokenizer):
    model, opt = trained(steps=1, tie_embeddings=True)
    state = {"step": 1, "tokens": 18, "train_loss": 3.5, "best_val": 3.7, "lr": 0.01}
    CheckpointManager(tmp_path).save(
        model, opt, 1, tokenizer=char_tokenizer, train_state=state, val_loss=3.7
    )
    info = inspect_checkpoint(tmp_path)  # a run directory: its latest valid checkpoint
    assert info["step"] == 1
    assert info["model"] == model.config.to_dict()
    assert info["tokens_seen"] == 18
    assert info["losses"] == {"train_loss": 3.5, "best_val": 3.7}
    assert info["tokenizer"]["vocab_size"] == char_tokenizer.vocab_size
    assert info["tied"] == {"lm_head.weight": "embed_tokens.weight"}
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert set(info["tensors"]) == set(model.state_dict()) - {"lm_head.weight"}
    group = info["optimizer"]["param_groups"][0]
    assert group["lr"] == 0.01 and group["betas"] == [0.9, 0.999]
    assert group["num_params"] == len(list(model.parameters()))
    on_disk = {
        p.relative_to(info["path"]).as_posix(): p.stat().st_size
        for p in Path(info["path"]).rglob("*")
        if p.is_file()
    }
    assert info["files"] == on_disk
    assert info["total_bytes"] == sum(on_disk.values())
    emb = info["tensors"]["embed_tokens.weight"]
    assert math.isclose(emb["mean"], model.embed_tokens.weight.double().mean().item())

    text = format_report(info)
    for expected in (
        "step         1",
        "tokens seen  18",
        "best_val=3.7",
        "embed_tokens.weight",
        "lm_head.weight = embed_tokens.weight",
        "CharTokenizer",
    ):
        assert expected in text, expected
