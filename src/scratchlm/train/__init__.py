"""Training: losses, optimizers, schedules, metrics and the loop (``Trainer``)."""

from scratchlm.model.loss import bits_per_byte, cross_entropy, linear_cross_entropy
from scratchlm.train.config import TrainConfig
from scratchlm.train.metrics import MetricsLog, read_metrics
from scratchlm.train.muon import Muon, newton_schulz
from scratchlm.train.optim import SGD, AdamW, build_optimizer, clip_grad_norm, param_groups
from scratchlm.train.plot import plot_run
from scratchlm.train.progress import Progress, Throughput, mfu, peak_flops
from scratchlm.train.schedule import get_lr_cosine_schedule, lr_schedule, wsd_schedule
from scratchlm.train.state import TrainResult, TrainState
from scratchlm.train.trainer import Trainer, TrainingDiverged

__all__ = [
    "SGD",
    "AdamW",
    "MetricsLog",
    "Muon",
    "Progress",
    "Throughput",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Trainer",
    "TrainingDiverged",
    "bits_per_byte",
    "build_optimizer",
    "clip_grad_norm",
    "cross_entropy",
    "get_lr_cosine_schedule",
    "linear_cross_entropy",
    "lr_schedule",
    "mfu",
    "newton_schulz",
    "param_groups",
    "peak_flops",
    "plot_run",
    "read_metrics",
    "wsd_schedule",
]
