"""`scratchlm report`: the report card of a real (tiny) training run, and of runs with
pieces missing; its JSON holds the run's own figures and the Markdown names them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from scratchlm.builtin import END_OF_TEXT, builtin_corpus
from scratchlm.checkpoint import CheckpointManager, load_model
from scratchlm.cli import main
from scratchlm.config import ModelConfig
from scratchlm.data import prepare
from scratchlm.model import TransformerLM
from scratchlm.report import REPORT_VERSION, build_report
from scratchlm.tokenizer import BPETokenizer, train_bpe
from scratchlm.tokenizer.files import write_tokenizer_dir
from scratchlm.train.config import TrainConfig
from scratchlm.train.metrics import MetricsLog, read_metrics
from scratchlm.train.trainer import Trainer

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "d_ff": 64}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real 6-step run of a tiny model (evaluated at steps 3 and 6, one checkpoint)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    vocab, merges = train_bpe(builtin_corpus(), 300, [END_OF_TEXT])
    tok = BPETokenizer(vocab, merges, [END_OF_TEXT])
    write_tokenizer_dir(tok, root / "tok")
    prepare(
        [str(builtin_corpus())], tok, root / "data", val_fraction=0.1, workers=1, progress=False
    )
    config = TrainConfig(data=str(root / "data"), out=str(root / "run"), preset="tiny",
                         model=dict(TINY), context_length=32, steps=6, batch_size=4,
                         warmup_steps=1, eval_every=3, eval_windows=2, log_every=1,
                         sample_prompts=["Water"], sample_tokens=4, progress=False,
                         device="cpu", seed=5, grad_accum=1)  # fmt: skip
    Trainer(config).run()
    torch.set_num_threads(threads)
    return root / "run"


def test_report_holds_the_runs_figures(trained_run, tmp_path, one_thread, capsys):
    out = tmp_path / "out"
    assert main(["report", str(trained_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "report.md"), str(out / "report.json")]
    report = json.loads((out / "report.json").read_text())
    assert report["version"] == REPORT_VERSION == 1
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["torch_threads"] == 1
    [stage] = report["stages"]

    records = read_metrics(trained_run)
    val = [r for r in records if r["kind"] == "val"]
    best = min(val, key=lambda r: r["val_bpb"])
    model, _ = load_model(trained_run)
    tr = stage["training"]
    assert tr["steps"] == 6 and tr["phase"] == "pretrain"
    assert tr["tokens"] == 6 * 4 * 32
    assert tr["best_val_bpb"] == best["val_bpb"] and tr["best_val_bpb_step"] == best["step"]
    assert [p[0] for p in tr["val_curve"]] == [3, 6]
    assert len(tr["train_curve"]) == 6
    assert tr["tokens_per_s"] > 0 and tr["mfu"] is None  # no peak FLOP/s known for a CPU
    logged_peaks = [r["peak_memory_bytes"] for r in records if r.get("kind") == "train"]
    assert tr["peak_memory_bytes"] == max(logged_peaks) > 0
    assert stage["model"]["parameters"] == model.num_parameters()
    assert stage["model"]["flops_per_token"] == model.flops_per_token()
    assert math.isclose(tr["tokens_per_parameter"], tr["tokens"] / model.num_parameters())
    meta = json.loads((trained_run.parent / "data" / "meta.json").read_text())
    assert stage["data"]["train_tokens"] == meta["splits"]["train"]["tokens"]
    assert stage["data"]["bytes_per_token"] == meta["splits"]["train"]["bytes_per_token"]
    assert stage["data"]["sources"] == meta["inputs"]
    assert stage["decode"]["fp32_tokens_per_s"] > 0 and stage["decode"]["int8_tokens_per_s"] > 0
    assert stage["decode"]["cpu_count"] == os.cpu_count()
    greedy = [s for s in stage["samples"] if s["source"] == "greedy"]
    assert greedy and greedy[0]["prompt"] == "Water"  # the run's own prompt first
    assert any(s["source"] == "step 6" for s in stage["samples"])  # logged while training
    assert stage["exports"] == [] and stage["missing"] == {}
    for plot in stage["plots"]:
        assert (out / plot).read_bytes()[:8] == PNG
    assert sorted(stage["plots"]) == sorted(
        ["loss_vs_steps.png", "loss_vs_time.png", "loss_vs_tokens.png", "val_bpb.png"]
    )

    page = (out / "report.md").read_text()
    assert f"{best['val_bpb']:.4f} at step {best['step']}" in page
    assert f"{model.num_parameters():,}" in page
    assert "not exported" in page
    assert '<img src="loss_vs_steps.png"' in page
    assert not (trained_run / "report.json").exists()  # --out: nothing in the run


def test_a_checkpoint_only_is_reported_with_its_gaps(tmp_path, one_thread):
    model = TransformerLM(ModelConfig(vocab_size=64, context_length=32, **TINY))
    run = tmp_path / "bare"
    CheckpointManager(run).save(model, None, 10)  # no tokenizer, no metrics, no settings
    report = build_report(run, speed=False).to_dict()
    [stage] = report["stages"]
    assert stage["model"]["parameters"] == model.num_parameters()
    assert stage["training"] is None and stage["data"] is None and stage["decode"] is None
    assert stage["missing"] == {
        "data": "no train_config.json in the run",
        "training": "no metrics.jsonl records and no trainer state",
        "curves": "no metrics.jsonl",
        "decode": "not measured (--no-speed)",
        "samples": "the checkpoint has no tokenizer",
    }
    assert main(["report", str(run), "--no-speed"]) == 0
    page = (run / "report.md").read_text()
    assert "*missing: the checkpoint has no tokenizer*" in page
    assert "*missing: no metrics.jsonl records and no trainer state*" in page
    assert "Loss curves: *missing: no metrics.jsonl*" in page


def write_metrics(run: Path, bpbs: list[float], speed: float = 1000.0) -> None:
    """Hand-written metrics: a train record per step, a val record every 2 steps."""
    with MetricsLog(run) as log:
        for i, bpb in enumerate(bpbs):
            step = 2 * (i + 1)
            for s in (step - 1, step):
                stamp = {"step": s, "tokens": 100 * s, "time": 0.5 * s}
                log.log({**stamp, "kind": "train", "loss": 4.0 - 0.1 * s, "tokens_per_s": speed})
            log.log({"step": step, "tokens": 100 * step, "time": 0.5 * step, "kind": "val",
                     "val_loss": 2 * bpb, "val_bpb": bpb})  # fmt: skip


def test_metrics_only_no_checkpoint(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, [2.0, 1.5, 1.7])
    report = build_report(run, speed=False).to_dict()
    [stage] = report["stages"]
    tr = stage["training"]
    assert (tr["steps"], tr["tokens"], tr["wall_time_s"]) == (6, 600, 3.0)
    assert (tr["best_val_bpb"], tr["best_val_bpb_step"]) == (1.5, 4)
    assert tr["tokens_per_parameter"] is None  # no model to count
    assert stage["model"] is None and stage["missing"]["model"] == "no valid checkpoint"
    assert stage["missing"]["decode"] == "no checkpoint to measure"
    assert stage["missing"]["samples"] == "no checkpoint to ask"
    assert "val_bpb.png" in stage["plots"]


def test_evaluation_files_in_the_run_are_shown(tmp_path):
    root = tmp_path / "pipeline"
    write_metrics(root / "pretrain", [2.0])
    write_metrics(root / "sft", [1.0])
    facts = {"checkpoint": "x", "trained": {"accuracy": 0.5, "hits": 1, "total": 2, "answers": []}}
    (root / "facts.json").write_text(json.dumps(facts))
    (root / "sft" / "evals").mkdir()
    (root / "sft" / "evals" / "tasks.json").write_text(json.dumps({"arc_easy": {"acc": 0.31}}))
    (root / "sft" / "broken.json").write_text("{not json")
    report = build_report(root, speed=False).to_dict()
    assert [s["name"] for s in report["stages"]] == ["pretrain", "sft"]
    assert report["evaluations"] == [
        {
            "file": "facts.json",
            "scores": {
                "checkpoint": "x",
                "trained.accuracy": 0.5,
                "trained.hits": 1,
                "trained.total": 2,
            },
            "error": None,
        }
    ]
    sft = report["stages"][1]
    assert [e["file"] for e in sft["evaluations"]] == ["sft/broken.json", "sft/evals/tasks.json"]
    assert sft["evaluations"][0]["error"] and sft["evaluations"][1]["scores"] == {
        "arc_easy.acc": 0.31
    }
    assert main(["report", str(root), "--no-speed"]) == 0
    page = (root / "report.md").read_text()
    assert "| trained | 50.0% (1 of 2) |" in page
    assert "| arc_easy.acc | 0.31 |" in page
    assert "## Stage: pretrain" in page and "## Stage: sft" in page
    assert (root / "pretrain" / "loss_vs_steps.png").is_file()


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_bad_run_dir_is_one_line(tmp_path, capsys, make):
    path = tmp_path / "x"
    if make == "empty":
        path.mkdir()
    elif make == "file":
        path.write_text("hi")
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1
    assert str(path) in err


def test_hf_export_parity_is_measured(trained_run, tmp_path, one_thread):
    pytest.importorskip("transformers")
    from scratchlm.export.hf import to_hf

    model, tok = load_model(trained_run)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes((trained_run / "metrics.jsonl").read_bytes())
    CheckpointManager(run).save(model, None, 6, tokenizer=tok)
    to_hf(model, tok, run / "hf")
    [stage] = build_report(run, speed=False).to_dict()["stages"]
    [export] = stage["exports"]
    assert export["path"] == "hf" and export["format"] == "hf"
    assert export["checked_with"] == "transformers"
    assert export["max_abs_logit_diff"] < 1e-4


def test_exports_at_the_top_of_a_pipeline_belong_to_its_last_stage(tmp_path):
    root = tmp_path / "pipeline"
    write_metrics(root / "pretrain", [2.0])
    write_metrics(root / "sft", [1.0])
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "model.gguf").write_bytes(b"GGUF")
    report = build_report(root, speed=False).to_dict()
    assert [s["name"] for s in report["stages"]] == ["pretrain", "sft"]  # hf is no run
    pretrain, sft = report["stages"]
    assert pretrain["exports"] == []
    assert [(e["path"], e["format"]) for e in sft["exports"]] == [
        ("model.gguf", "gguf"),
        ("hf", "hf"),
    ]
