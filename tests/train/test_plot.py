"""Loss-curve PNGs from a metrics log, and the ``scratchlm plot`` command."""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

import pytest

from scratchlm.cli import main
from scratchlm.errors import ConfigError, DataError
from scratchlm.train.metrics import MetricsLog
from scratchlm.train.plot import ema, plot_run, smoothing_beta

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOSS_PNGS = ["loss_vs_steps.png", "loss_vs_time.png", "loss_vs_tokens.png"]


def write_run(run_dir, steps: int = 200, val_every: int | None = None) -> None:
    """A metrics log of a run whose loss falls from about 10 towards 3, with noise."""
    with MetricsLog(run_dir) as log:
        for step in range(1, steps + 1):
            loss = 3 + 7 * math.exp(-step / 40) + 0.2 * math.sin(step * 1.7)
            log.log(
                {
                    "kind": "train",
                    "step": step,
                    "tokens": step * 4096,
                    "time": step * 2.5,
                    "loss": loss,
                    "lr": 3e-4,
                    "grad_norm": 1.0,
                    "tokens_per_s": 1638.4,
                    "mfu": None,
                }
            )
            if val_every and step % val_every == 0:
                log.log(
                    {
                        "kind": "val",
                        "step": step,
                        "tokens": step * 4096,
                        "time": step * 2.5,
                        "val_loss": loss + 0.1,
                        "val_ppl": math.exp(loss + 0.1),
                        "val_bpb": (loss + 0.1) / math.log(2) / 4,
                    }
                )
        log.log({"kind": "sample", "step": steps, "prompt": "Once", "text": " upon a time"})


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200, (width, height)
    assert len(data) > 10_000, (path, len(data))  # axes, curves and text, not a blank image


def test_plot_run_train_only(tmp_path):
    write_run(tmp_path)
    written = plot_run(tmp_path)
    assert sorted(p.name for p in written) == LOSS_PNGS  # no validation: no val_bpb.png
    assert all(p.parent == tmp_path for p in written)
    for path in written:
        assert_png(path)


def test_plot_run_with_validation_into_another_folder(tmp_path):
    run, out = tmp_path / "run", tmp_path / "plots" / "here"
    write_run(run, steps=60, val_every=10)
    written = plot_run(run / "metrics.jsonl", out)
    assert sorted(p.name for p in written) == sorted([*LOSS_PNGS, "val_bpb.png"])
    assert all(p.parent == out for p in written)
    for path in written:
        assert_png(path)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_nothing_to_plot_yet(tmp_path):
    with pytest.raises(DataError, match="nothing to plot yet"):
        plot_run(tmp_path)  # no metrics file
    with MetricsLog(tmp_path) as log:
        pass
    with pytest.raises(DataError, match="nothing to plot yet"):
        plot_run(tmp_path)  # an empty one
    with MetricsLog(tmp_path) as log:
        log.log({"kind": "event", "step": 1, "message": "resumed"})
    with pytest.raises(DataError, match="nothing to plot yet"):
        plot_run(tmp_path)  # records, but no losses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_missing_matplotlib_is_a_config_error(tmp_path, monkeypatch):
    write_run(tmp_path, steps=5)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'scratchlm\[plot\]'"):
        plot_run(tmp_path)


def test_ema():
    # beta 0.5 on [1, 3]: avg 0.5 then 0.25 + 1.5 = 1.75; bias 0.5 then 0.75.
    assert ema([1.0, 3.0], 0.5) == pytest.approx([1.0, 1.75 / 0.75])
    assert ema([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])  # no pull towards 0
    assert ema([1.0, 5.0], 0.0) == [1.0, 5.0]
    smoothed = ema([float("nan"), 2.0, float("nan"), 2.0], 0.8)
    assert math.isnan(smoothed[0]) and smoothed[1:] == pytest.approx([2.0, 2.0, 2.0])


def test_smoothing_beta_grows_with_the_number_of_points():
    assert smoothing_beta(10) is None
    betas = [smoothing_beta(n) for n in (100, 1000, 10_000)]
    assert all(0 < b < 1 for b in betas) and betas == sorted(betas)


def test_cli_plot_prints_the_written_paths(tmp_path, capsys):
    write_run(tmp_path / "run", steps=30, val_every=10)
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "png")]) == 0
    printed = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(p.name for p in printed) == sorted([*LOSS_PNGS, "val_bpb.png"])
    for path in printed:
        assert path.parent.samefile(tmp_path / "png")
        assert_png(path)


def test_cli_plot_of_an_empty_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to plot yet" in err


def test_cli_plot_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--help"])
    assert exit_info.value.code == 0
    assert "examples:\n  scratchlm plot runs/" in capsys.readouterr().out
