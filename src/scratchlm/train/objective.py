"""What a run minimises: an objective turns the run's data into batches, a batch into
a summed loss (and metrics), and the validation data into an evaluation.

The Trainer is one loop for every phase; what differs between phases lives behind this
small interface. ``LanguageModelObjective`` is next-token prediction (pretraining and
instruction tuning: ``model.loss`` on windows or packed conversations). Objectives of
the layers above training (preference tuning, ``scratchlm.tune``) implement the same
methods and are handed to the Trainer.

The loss of a step is the sum over its micro-batches divided by the step's ``count``
(target tokens for next-token prediction, pairs for preferences), so a micro-batch
weighs what its items weigh, however the step is cut into micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from scratchlm.model.loss import IGNORE_INDEX
from scratchlm.train.assembly import run_fingerprints
from scratchlm.train.config import TrainConfig
from scratchlm.train.evaluate import evaluate
from scratchlm.train.runtime import LossModule
from scratchlm.train.sources import training_data

Metrics = dict[str, Tensor]  # name -> 0-dim tensor, summed over a batch's items


@dataclass
class RunData:
    """What a run trains and validates on: ``sampler`` (``next(device)`` -> a batch, a
    tuple of tensors; ``state_dict``/``load_state_dict``), the validation tensors ``val``
    (the objective's own layout), the validation text's bytes per token (None when not
    meaningful), the prompts sampled at each evaluation, and ``fingerprint``: a digest of
    the data the steps depend on, which a resume compares."""

    sampler: Any
    val: tuple[Tensor, ...]
    bytes_per_token: float | None
    prompts: list[str]
    fingerprint: str


class Objective(Protocol):
    """The phase-specific part of a run (see the module docstring)."""

    def load_data(
        self,
        config: TrainConfig,
        tokenizer: Any,
        model: nn.Module,
        *,
        rank: int,
        world_size: int,
        precision: str,
    ) -> RunData:
        """The run's data; ``model`` is the starting model (before any resume), for an
        objective that needs it (a reference model), and ``precision`` the one the
        Trainer resolved for the steps ("fp32", "bf16" or "fp16")."""
        ...

    def training_module(self, model: nn.Module) -> nn.Module:
        """The module the steps call (wrapped for DDP/FSDP/compile; its ``model`` is the
        TransformerLM, which FSDP shards block by block)."""
        ...

    def loss(self, module: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, Metrics]:
        """The batch's loss summed over its items, and metrics summed over its items,
        through ``module`` (the wrapped training module)."""
        ...

    def count(self, batch: tuple[Tensor, ...]) -> Tensor:
        """The number of items (0-dim tensor) the batch's summed loss adds up."""
        ...

    def evaluate(
        self, model: nn.Module, data: RunData, *, batch_size: int, autocast: Any, loss_fn: Any
    ) -> dict[str, float]:
        """Validation metrics, ``val_loss`` among them (the ``best`` checkpoint's)."""
        ...

    def write_files(self, run_dir: Path) -> None:
        """Write what the objective keeps in the run directory (called once the run
        holds it)."""
        ...


class LanguageModelObjective:
    """Next-token prediction: pretraining on token windows, instruction tuning on packed
    conversations (the loss on the answers only). Batches: x, y (, segment_ids)."""

    def load_data(
        self,
        config: TrainConfig,
        tokenizer: Any,
        model: nn.Module,
        *,
        rank: int,
        world_size: int,
        precision: str,
    ) -> RunData:
        T = model.config.context_length
        sampler, val_x, val_y, bytes_per_token, prompts = training_data(
            config, tokenizer, T, rank=rank, world_size=world_size
        )
        data = run_fingerprints(config, tokenizer, sampler, (val_x, val_y))["data"]
        return RunData(sampler, (val_x, val_y), bytes_per_token, prompts, data)

    def training_module(self, model: nn.Module) -> nn.Module:
        return LossModule(model)

    def loss(self, module: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, Metrics]:
        return module(*batch, reduction="sum"), {}

    def count(self, batch: tuple[Tensor, ...]) -> Tensor:
        return (batch[1] != IGNORE_INDEX).sum()

    def evaluate(
        self, model: nn.Module, data: RunData, *, batch_size: int, autocast: Any, loss_fn: Any
    ) -> dict[str, float]:
        val_x, val_y = data.val
        return evaluate(
            model,
            val_x,
            val_y,
            batch_size=batch_size,
            bytes_per_token=data.bytes_per_token,
            autocast=autocast,
            loss_fn=loss_fn,
        )

    def write_files(self, run_dir: Path) -> None:
        pass
