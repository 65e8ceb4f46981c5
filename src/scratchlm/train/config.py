"""``TrainConfig``: every setting of a training run in one dataclass.

A run's settings come from three layers, later ones winning: the dataclass defaults, a
TOML or JSON file (``--config run.toml``), and command-line flags. The resolved config is
saved as ``train_config.json`` in the run directory, which is also how ``--resume`` and a
rerun of the same command find it again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.atomic import atomic_write_text, naming_write_errors
from scratchlm.config import PRESETS, ModelConfig, _known_fields, flag_info, preset, setting
from scratchlm.errors import ConfigError
from scratchlm.model.lora_config import parse_lora_spec
from scratchlm.train.budget import parse_duration

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("auto", "cosine", "linear", "constant", "wsd")
OPTIMIZERS = ("auto", "adamw", "sgd", "muon")
PHASES = ("pretrain", "sft", "dpo")
LM_PHASES = ("pretrain", "sft")  # next-token prediction; dpo: preference pairs (scratchlm.tune)
DPO_LOSSES = ("sigmoid", "ipo")

DEFAULT_PROMPTS = ("The", "Water", "In the")


@dataclass
class TrainConfig:
    """Settings of a training run; see ``scratchlm train --help`` for each one.

    ``steps`` counts optimizer updates; each update sees ``batch_size * grad_accum``
    windows of ``context_length`` tokens per process. ``tokens``, when set, replaces
    ``steps`` with the number of updates that covers that many tokens. ``warmup_steps``,
    ``eval_every`` and ``checkpoint_every`` of None derive from ``steps``.
    """

    data: str = setting("", "prepared data directory (train.bin, val.bin, meta.json)")
    out: str = setting("runs/train", "run directory")
    tokenizer: str = setting("", "tokenizer directory (default: DATA_DIR/tokenizer.json)")
    preset: str = setting("mini", "model preset: " + ", ".join(PRESETS))
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    init_from: str = setting("", "start from this checkpoint's weights instead of random ones")
    phase: str = "pretrain"
    conversations: list[str] = field(
        default_factory=list,
        metadata=flag_info(
            "conversation files (or builtin:chat)", flag="--data", nargs="+", metavar="FILE"
        ),
    )
    val_fraction: float = setting(0.1, "share of the conversations held out for validation")
    skip_bad: bool = setting(False, "skip malformed records, with a count")
    lora: str = setting(
        "",
        "train LoRA adapters only, the model frozen: r=8,alpha=16,targets=q_proj,v_proj "
        "(also dropout=0 and base=float; base: float, bf16 or int8 storage of the frozen "
        "weights; targets: layer names or all-linear; docs/lora.md)",
        metavar="SPEC",
    )
    val_data: list[str] = field(
        default_factory=list,
        metadata=flag_info(
            "held-out preference files (default: a --val-fraction share of --data)",
            nargs="+",
            metavar="FILE",
        ),
    )
    beta: float = setting(0.1, "DPO's beta: how far the tuned model may move from the reference")
    dpo_loss: str = setting("sigmoid", "sigmoid (DPO) or ipo", flag="--loss")
    sft_weight: float = setting(
        0.0,
        "DPO: weight of an SFT loss on the chosen answers beside the DPO loss, which keeps "
        "them likely (TRL's rpo_alpha; 0 = off)",
    )

    steps: int = setting(1000, "optimizer updates")
    tokens: int = setting(0, "train on this many tokens instead of --steps (0 = use --steps)")
    batch_size: int = setting(8, "windows per micro-batch per process")
    grad_accum: int = setting(2, "micro-batches per update")
    context_length: int = setting(0, "tokens per window (0 = the preset's)")

    optimizer: str = setting(
        "auto",
        "auto (muon; adamw with --fsdp), muon (Muon for the hidden matrices at --muon-lr, "
        "AdamW at --lr for the rest), adamw or sgd",
    )
    lr: float = setting(1e-3, "peak learning rate (with muon: of the AdamW parameters)")
    muon_lr: float = setting(0.02, "peak learning rate of the matrices Muon steps (with muon only)")
    min_lr: float | None = setting(None, "final learning rate (default: lr / 10)")
    schedule: str = setting(
        "auto",
        "auto (cosine; wsd with --time-budget), or cosine, linear or constant after a linear "
        "warmup, or wsd (warmup-stable-decay, with --time-budget)",
    )
    warmup_steps: int | None = setting(
        None, "warmup updates (default: a tenth of the run, at most 100)"
    )
    time_budget: str = setting(
        "",
        "train for this wall-clock time (90s, 15m, 1h) instead of --steps, with --schedule "
        "wsd; the final evaluation and checkpoint land inside it",
    )
    warmup_fraction: float = setting(0.05, "with --time-budget: share of it spent warming up")
    decay_start: float = setting(
        0.8, "with --time-budget: share of it after which the lr decays to --min-lr"
    )
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = setting(0.1, "decoupled weight decay of matrices")
    grad_clip: float = setting(1.0, "clip the gradient's global norm to this (0 = off)")
    fused: bool | None = None  # torch's fused AdamW where it exists (None: auto)

    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: str = setting(
        "auto", "auto (bf16 on GPUs and on CPUs with hardware bf16, else fp32), fp32, bf16, fp16"
    )
    compile: bool = setting(False, "torch.compile the training model")
    checkpoint_activations: bool = setting(
        False,
        "keep only each block's input and recompute the block in the backward pass: the "
        "same updates with less memory, for about a third more compute",
    )
    fsdp: bool = setting(False, "shard the model across processes")
    seed: int = setting(1337, "seed of initialisation and data order")

    eval_every: int | None = setting(
        None, "updates between evaluations (default: a tenth of the run)"
    )
    eval_windows: int = setting(
        32, "validation windows per evaluation (sft: held-out conversations, evenly spaced)"
    )
    sample_prompts: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        metadata=flag_info(
            "a prompt to sample from at each evaluation (repeatable; sft without one: "
            "the first questions of a few held-out conversations)",
            flag="--sample-prompt",
            metavar="TEXT",
        ),
    )
    sample_tokens: int = setting(32, "tokens per sample at each evaluation (0 = none)")
    checkpoint_every: int | None = setting(
        None,
        "updates between checkpoints (default: a fifth of the run); an evaluation with a "
        "new best validation loss also saves one",
    )
    keep_last: int = setting(3, "checkpoints kept besides the best")
    log_every: int = setting(10, "updates between metric records")
    progress: bool = setting(True, "no progress bars", flag="--quiet")
    tensorboard: bool = setting(False, "also log to TensorBoard")

    # Divergence handling: a step whose loss is not finite, or whose gradient norm is
    # more than spike_factor times its running average, is skipped; max_skips skips in
    # a row roll back to the last checkpoint with the learning rate times rollback_lr;
    # after max_rollbacks rollbacks the run stops.
    spike_factor: float = 10.0
    max_skips: int = 3
    max_rollbacks: int = 3
    rollback_lr: float = 0.5

    resume: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON and TOML give lists
        if self.lora:  # one spelling per adapter shape, so a resume compares like with like
            if not isinstance(self.lora, str):
                raise ConfigError(f'lora must be a spec such as "r=8,alpha=16", got {self.lora!r}')
            self.lora = parse_lora_spec(self.lora).spec()
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value."""
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name, allowed in (
            ("precision", PRECISIONS),
            ("schedule", SCHEDULES),
            ("optimizer", OPTIMIZERS),
            ("phase", PHASES),
            ("dpo_loss", DPO_LOSSES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        for name in ("steps", "batch_size", "grad_accum", "eval_windows", "keep_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("tokens", "context_length", "sample_tokens", "max_skips", "max_rollbacks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.log_every < 1:
            raise ConfigError(f"log_every must be >= 1, got {self.log_every}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.muon_lr) and self.muon_lr > 0):
            raise ConfigError(f"muon_lr must be a positive number, got {self.muon_lr}")
        if self.optimizer == "muon" and self.fsdp:
            raise ConfigError(
                "--optimizer muon does not work with --fsdp (Muon orthogonalises whole "
                "matrices; a shard holds a slice): train with DDP (no --fsdp) or adamw"
            )
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0 or self.eps < 0:
            raise ConfigError("weight_decay and eps must be >= 0")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.spike_factor <= 1 or not 0 < self.rollback_lr <= 1:
            raise ConfigError(
                f"spike_factor must be > 1 and rollback_lr in (0, 1], got "
                f"{self.spike_factor} and {self.rollback_lr}"
            )
        self._validate_budget()
        if self.phase != "pretrain" and not self.init_from:
            raise ConfigError(f"{self.phase} starts from a trained model: pass --from")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"beta must be a positive number, got {self.beta}")
        if not (math.isfinite(self.sft_weight) and self.sft_weight >= 0):
            raise ConfigError(f"sft_weight must be a number >= 0 (0 = off), got {self.sft_weight}")
        if self.lora and not self.init_from:
            raise ConfigError("LoRA adapts a trained model: pass --from CHECKPOINT with --lora")
        if self.lora and self.fsdp:
            raise ConfigError("--lora does not work with --fsdp: train the adapters with DDP")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not isinstance(self.model, dict):
            raise ConfigError(f"model must be a table of ModelConfig fields, got {self.model!r}")
        fields = ", ".join(f.name for f in dataclasses.fields(ModelConfig))
        _known_fields(ModelConfig, self.model, "model field", f" (the fields: {fields})")

    def _validate_budget(self) -> None:
        if not isinstance(self.time_budget, str):
            raise ConfigError(
                f'time_budget must be a duration such as "15m", got {self.time_budget!r}'
            )
        if not 0 <= self.warmup_fraction <= self.decay_start <= 1:
            raise ConfigError(
                "need 0 <= warmup_fraction <= decay_start <= 1, got "
                f"warmup_fraction={self.warmup_fraction}, decay_start={self.decay_start}"
            )
        if self.time_budget:
            parse_duration(self.time_budget)
            if self.schedule not in ("auto", "wsd"):
                raise ConfigError(
                    f"--time-budget sizes a warmup-stable-decay schedule in time: pass "
                    f"--schedule wsd (not {self.schedule})"
                )
            if self.tokens:
                raise ConfigError("--time-budget and --tokens both size the run: pick one")
        elif self.schedule == "wsd":
            raise ConfigError("--schedule wsd is a function of wall-clock time: pass --time-budget")

    # Derived values, computed in one place.
    def resolved_schedule(self) -> str:
        """The schedule ``auto`` stands for: warmup-stable-decay in time for a run with a
        time budget (its step count is unknown), cosine in steps otherwise."""
        if self.schedule != "auto":
            return self.schedule
        return "wsd" if self.time_budget else "cosine"

    def resolved_optimizer(self) -> str:
        """The optimizer ``auto`` stands for: Muon, except with FSDP, where a process
        holds a slice of each matrix that Muon would orthogonalise whole: AdamW. The
        trainer saves the resolved name, so a resumed run keeps its optimizer."""
        if self.optimizer != "auto":
            return self.optimizer
        return "adamw" if self.fsdp else "muon"

    def optimizer_note(self) -> str | None:
        """One line for a run whose ``auto`` optimizer is not the usual Muon; else None."""
        if self.optimizer != "auto" or self.resolved_optimizer() == "muon":
            return None
        return (
            f"optimizer auto is {self.resolved_optimizer()} here: muon does not work with "
            "--fsdp (each process holds a slice of every matrix)"
        )

    def budget_seconds(self) -> float | None:
        """The time budget in seconds, or None for a run sized in steps."""
        return parse_duration(self.time_budget) if self.time_budget else None

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model's architecture: the preset, the ``model`` overrides, the context
        length, and the tokenizer's vocabulary size (which a ``model`` override may not
        contradict: it would be ignored)."""
        overrides = dict(self.model)
        given = overrides.get("vocab_size", vocab_size)
        if given != vocab_size:
            raise ConfigError(
                f"model vocab_size={given!r} contradicts the tokenizer, which has "
                f"{vocab_size} ids: the vocabulary size comes from the tokenizer; leave it out"
            )
        overrides["vocab_size"] = vocab_size
        if self.context_length:
            overrides["context_length"] = self.context_length
        return preset(self.preset, **overrides)

    def total_steps(self, tokens_per_step: int) -> int | None:
        """Optimizer updates of the run: ``steps``, or enough to cover ``tokens``; None
        for a run sized in time, whose step count is unknown (``steps`` keeps its default
        there, a number nothing may size or warn about)."""
        if self.time_budget:
            return None
        if self.tokens:
            return max(1, math.ceil(self.tokens / tokens_per_step))
        return self.steps

    def resolved_min_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def resolved_warmup(self, total: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(100, total // 10)

    def resolved_eval_every(self, total: int) -> int:
        """Steps between evaluations (0 = only at the end)."""
        if self.eval_every is not None:
            return self.eval_every
        return max(1, total // 10)

    def resolved_checkpoint_every(self, total: int) -> int:
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, total // 5)

    # Round trip.
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        what = "training setting"
        hint = " (see `scratchlm train --help` for the names)"
        try:
            return cls(**_known_fields(cls, data, what, hint))
        except TypeError as e:
            raise ConfigError(f"bad training settings: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        with naming_write_errors(path.name, path.parent):
            atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})
