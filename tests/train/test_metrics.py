"""The metrics log, the progress line, peak FLOP/s and MFU, and throughput."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import types

import pytest
import torch

from scratchlm.errors import ConfigError, DataError
from scratchlm.train.metrics import MetricsLog, read_metrics
from scratchlm.train.progress import Progress, Throughput, mfu, peak_flops


def train_record(step: int, loss: float = 3.0) -> dict:
    return {
        "kind": "train",
        "step": step,
        "tokens": step * 128,
        "time": step * 0.5,
        "loss": loss,
        "lr": 3e-4,
        "grad_norm": 0.9,
        "tokens_per_s": 256.0,
        "mfu": None,
    }


def test_log_and_read_round_trip(tmp_path):
    records = [
        train_record(1, 10.5),
        {
            "kind": "val",
            "step": 1,
            "tokens": 128,
            "time": 0.7,
            "val_loss": 9.0,
            "val_ppl": math.exp(9.0),
            "val_bpb": 3.2,
        },
        # Newlines and U+2028 inside a string must not split the record's line.
        {"kind": "sample", "step": 1, "prompt": "Once", "text": " upon\na\u2028time 日本 😀"},
        # A lone surrogate (a character cut in half) is not UTF-8 but must still be logged.
        {"kind": "sample", "step": 1, "prompt": "x", "text": "broken \udc80 char"},
        {"kind": "event", "step": 1, "message": "resumed from step 0"},
    ]
    run = tmp_path / "run"
    with MetricsLog(run) as log:  # creates the run directory
        for record in records:
            log.log(record)
    assert read_metrics(run) == records
    assert read_metrics(run / "metrics.jsonl") == records
    assert len((run / "metrics.jsonl").read_bytes().split(b"\n")) == len(records) + 1


def test_log_keeps_nan_and_converts_scalar_tensors(tmp_path):
    with MetricsLog(tmp_path) as log:
        log.log({"kind": "train", "step": 1, "loss": float("nan"), "grad_norm": torch.tensor(2.5)})
        with pytest.raises(TypeError, match="Tensor"):
            log.log({"kind": "train", "step": 2, "loss": torch.ones(3)})
    (record,) = read_metrics(tmp_path)
    assert math.isnan(record["loss"])
    assert record["grad_norm"] == 2.5


def test_log_appends_to_an_existing_file(tmp_path):
    with MetricsLog(tmp_path) as log:
        log.log(train_record(1))
    with MetricsLog(tmp_path) as log:
        log.log(train_record(2))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_partial_last_line_is_ignored_and_the_next_log_starts_a_fresh_line(tmp_path):
    with MetricsLog(tmp_path) as log:
        log.log(train_record(1))
        log.log(train_record(2))
    path = tmp_path / "metrics.jsonl"
    with open(path, "ab") as f:  # what a crash in the middle of a write leaves
        f.write(b'{"kind": "train", "step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]

    with MetricsLog(tmp_path) as log:
        log.log(train_record(3))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert all(json.loads(line) for line in lines[:-1])  # no fragment left in the file


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(json.dumps(train_record(1)).encode())
    assert read_metrics(tmp_path) == [train_record(1)]
    with MetricsLog(tmp_path) as log:
        log.log(train_record(2))
    assert read_metrics(tmp_path) == [train_record(1), train_record(2)]


def test_a_broken_line_inside_the_file_is_a_data_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(train_record(1)) + "\nnot json\n" + json.dumps(train_record(2)))
    with pytest.raises(DataError, match="line 2"):
        read_metrics(tmp_path)


def test_read_metrics_of_a_new_run_and_of_a_missing_path(tmp_path):
    assert read_metrics(tmp_path) == []
    with pytest.raises(DataError, match="does not exist"):
        read_metrics(tmp_path / "no-such-run")


def test_truncate_after_keeps_earlier_records_and_appends_after_them(tmp_path):
    with MetricsLog(tmp_path) as log:
        for step in range(1, 11):
            log.log(train_record(step))
            if step % 5 == 0:
                log.log({"kind": "val", "step": step, "val_loss": 2.0})
        log.log({"kind": "note"})  # no step: not tied to any step, so it stays
        log.truncate_after(6)
        assert [(r["kind"], r.get("step")) for r in read_metrics(tmp_path)] == [
            ("train", 1),
            ("train", 2),
            ("train", 3),
            ("train", 4),
            ("train", 5),
            ("val", 5),
            ("train", 6),
            ("note", None),
        ]
        log.log(train_record(7))
    assert [r.get("step") for r in read_metrics(tmp_path)][-2:] == [None, 7]


def test_truncate_after_is_atomic(tmp_path, monkeypatch):
    with MetricsLog(tmp_path) as log:
        for step in range(1, 5):
            log.log(train_record(step))
        before = (tmp_path / "metrics.jsonl").read_bytes()

        def crash(src, dst):
            raise OSError("disk gone")

        monkeypatch.setattr(os, "replace", crash)  # the rename into place fails
        with pytest.raises(OSError, match="disk gone"):
            log.truncate_after(2)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file


def test_tensorboard_missing_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'scratchlm\[tensorboard\]'"):
        MetricsLog(tmp_path / "run", tensorboard=True)
    assert not (tmp_path / "run").exists()


def test_without_tensorboard_it_is_never_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # any import would fail
    with MetricsLog(tmp_path) as log:
        log.log(train_record(1))
        log.truncate_after(1)
    assert read_metrics(tmp_path) == [train_record(1)]


def test_tensorboard_gets_scalars_and_purges_on_truncate(tmp_path, monkeypatch):
    writers = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir, self.purge_step, self.calls, self.closed = log_dir, purge_step, [], False
            writers.append(self)

        def add_scalar(self, tag, value, global_step):
            self.calls.append((tag, value, global_step))

        def add_text(self, tag, text, step):
            self.calls.append((tag, text, step))

        def close(self):
            self.closed = True

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    with MetricsLog(tmp_path, tensorboard=True) as log:
        log.log(train_record(3, loss=2.5))
        log.log({"kind": "val", "step": 3, "val_loss": 2.7, "val_bpb": 1.1})
        log.log({"kind": "event", "step": 3, "message": "skipped"})
        log.truncate_after(2)
    first, second = writers
    assert first.log_dir == str(tmp_path / "tensorboard") and first.purge_step is None
    assert ("train/loss", 2.5, 3) in first.calls and ("val/val_bpb", 1.1, 3) in first.calls
    assert ("event", "skipped", 3) in first.calls
    assert not any(tag == "train/mfu" for tag, _, _ in first.calls)  # None is no scalar
    assert first.closed and second.closed and second.purge_step == 3


def test_progress_shows_readable_numbers(tmp_path):
    out = io.StringIO()
    with Progress(100, initial_step=4, file=out) as progress:
        progress.update(
            10, loss=3.14159265, lr=3e-4, grad_norm=0.87654, tokens_per_s=12345.6, mfu=0.41234
        )
        progress.write("step 10: skipped an update")
    text = out.getvalue()
    for expected in (
        "10/100",
        "loss 3.1416",
        "lr 3.00e-04",
        "gnorm 0.877",
        "12,346 tok/s",
        "mfu 41.2%",
        "ETA",
    ):
        assert expected in text, (expected, text)
    assert "\nstep 10: skipped an update\n" in text.replace("\r", "\n")


def test_progress_leaves_out_unknown_numbers(tmp_path):
    out = io.StringIO()
    with Progress(50, file=out) as progress:
        progress.update(1, loss=9.0, lr=1e-3, grad_norm=None, tokens_per_s=None)
    text = out.getvalue()
    assert "1/50" in text and "loss 9.0000" in text and "lr 1.00e-03" in text
    assert "mfu" not in text and "tok/s" not in text and "gnorm" not in text


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    with Progress(100, enabled=False, file=out) as progress:
        progress.update(5, loss=1.0, lr=1e-3, grad_norm=1.0, tokens_per_s=10.0, mfu=0.5)
        progress.write("hello")
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("name", "dtype", "expected"),
    [  # the vendors' dense datasheet figures
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
        ("NVIDIA H200", torch.float16, 989.4e12),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
        ("NVIDIA A10G", torch.bfloat16, 125e12),
        ("NVIDIA L4", torch.float16, 121e12),
        ("NVIDIA L40S", torch.float16, 362.1e12),
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165.2e12),
        ("Tesla V100-SXM2-16GB", torch.float16, 125e12),
        ("Tesla V100-SXM2-16GB", torch.bfloat16, None),  # Volta has no bf16
        ("Tesla T4", torch.float32, 8.1e12),
        ("NVIDIA A100-SXM4-80GB", torch.float64, None),
        ("Some Future GPU", torch.bfloat16, None),
    ],
)
def test_peak_flops_looks_up_the_device_name(monkeypatch, name, dtype, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops("cuda", dtype) == expected


def test_peak_flops_float32_uses_tf32_only_when_allowed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100 80GB PCIe")
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert peak_flops(torch.device("cuda", 0), torch.float32) == 19.5e12
        torch.set_float32_matmul_precision("high")  # matmuls may use TF32
        assert peak_flops(torch.device("cuda", 0), torch.float32) == 156e12
    finally:
        torch.set_float32_matmul_precision(saved)


def test_peak_flops_is_unknown_off_cuda(monkeypatch):
    def no_gpu(device=None):
        raise AssertionError("a CPU device must not ask for a GPU name")

    monkeypatch.setattr(torch.cuda, "get_device_name", no_gpu)
    assert peak_flops("cpu", torch.float32) is None
    assert peak_flops(torch.device("mps"), torch.float16) is None


def test_mfu():
    # 1000 tok/s at 6e9 FLOPs per token is 6e12 FLOP/s: 60% of a 1e13 FLOP/s device.
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
    assert mfu(1000.0, 6e9, None) is None
    assert mfu(None, 6e9, 1e13) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throughput_over_a_sliding_window():
    clock = FakeClock()
    tp = Throughput(window=2, clock=clock)
    assert tp.tokens_per_s is None
    clock.now += 1.0
    tp.step(100)  # 100 tokens in 1 s
    assert tp.tokens_per_s == pytest.approx(100.0)
    clock.now += 3.0
    tp.step(500)  # 600 tokens in 4 s
    assert tp.tokens_per_s == pytest.approx(150.0)
    clock.now += 1.0
    tp.step(400)  # the first step leaves the window: 900 tokens in 4 s
    assert tp.tokens_per_s == pytest.approx(225.0)


def test_throughput_leaves_out_paused_time():
    clock = FakeClock()
    tp = Throughput(window=10, clock=clock)
    clock.now += 2.0
    tp.step(200)
    with tp.paused():
        clock.now += 50.0  # evaluation
    clock.now += 1.0
    tp.pause()  # a pause in the middle of a step is not charged to it either
    clock.now += 7.0
    tp.resume()
    clock.now += 1.0
    tp.step(200)  # 400 tokens in 2 + 1 + 1 s of training
    assert tp.tokens_per_s == pytest.approx(100.0)


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="window"):
        Throughput(window=0)
    with pytest.raises(ConfigError, match="total steps"):
        Progress(0, file=io.StringIO())
