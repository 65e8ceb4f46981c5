"""Device, number format and signal handling of a run."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from scratchlm.errors import ConfigError
from scratchlm.train.runtime import (
    Distributed,
    SignalFlag,
    autocast,
    init_distributed,
    pick_device,
    pick_precision,
)


def test_auto_device_is_the_best_this_machine_has():
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


def test_a_device_this_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        pick_device("cuda")


def test_an_unknown_device_is_refused():
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        pick_device("gpu0")


def test_precision_choices_on_a_cpu():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == "fp32"
    assert pick_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16"):
        pick_precision("fp16", cpu)


def test_bf16_autocast_runs_matrix_products_in_bf16():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ a).dtype == torch.float32


def test_without_torchrun_there_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist, device = init_distributed("cpu")
    assert dist == Distributed() and dist.is_main and not dist.enabled
    assert device == torch.device("cpu")
    value = torch.tensor([3.0])
    assert dist.sum(value) is value and dist.any(True, device) is True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_sets_the_flag_instead_of_stopping(sig):
    before = signal.getsignal(sig)
    with SignalFlag() as flag:
        assert flag.name is None
        os.kill(os.getpid(), sig)
        assert flag.name == sig.name
    assert signal.getsignal(sig) is before  # the old handler is back
