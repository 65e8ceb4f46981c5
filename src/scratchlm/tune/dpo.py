"""Preference tuning (DPO) as an objective of the one training loop.

The run's data are preference pairs (``tune.dpo_data``), each batch B pairs whose 2B
answers go through the model in one forward pass; the loss is ``tune.dpo_loss`` against
the reference log-probabilities computed once from the starting model
(``tune.reference``). Everything else (the optimizer, the schedule, checkpoints, exact
resume, the divergence guard) is the Trainer's, as for pretraining and SFT.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scratchlm.errors import ConfigError, DataError
from scratchlm.train.config import TrainConfig
from scratchlm.train.config_files import DPO_DEFAULTS, resolve_config
from scratchlm.train.objective import Metrics, RunData
from scratchlm.train.runtime import autocast as autocast_of
from scratchlm.train.sft_data import SAMPLED_HELDOUT
from scratchlm.tune.dpo_data import (
    PreferencePair,
    PreferenceRows,
    PreferenceSampler,
    batch_of,
    pair_rows,
    read_preferences,
    split_pairs,
)
from scratchlm.tune.dpo_loss import DPOLoss
from scratchlm.tune.reference import ReferenceCache

log = logging.getLogger(__name__)


class DPOObjective:
    """Preference tuning: batches x, y (2B, L) and ref (2B,) (``dpo_data.batch_of``);
    the loss and metrics of ``DPOLoss``, averaged over pairs."""

    def __init__(self, config: TrainConfig) -> None:
        if config.fsdp:
            raise ConfigError("dpo does not shard the model (--fsdp): train with DDP or alone")
        self.config = config
        self.cache = ReferenceCache(config.out)

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
        c, T = config, model.config.context_length
        pairs, malformed = read_preferences(c.conversations, skip_bad=c.skip_bad)
        if c.val_data:
            train = pairs
            val, malformed_val = read_preferences(c.val_data, skip_bad=c.skip_bad)
            malformed += malformed_val
        else:
            train, val = split_pairs(pairs, c.val_fraction)
        train_rows, too_long = pair_rows(train, tokenizer, T)
        val_rows, val_too_long = pair_rows(val, tokenizer, T)
        if too_long + val_too_long and rank == 0:
            log.warning(
                "left out %d preference pair(s) too long for the model's context of %d tokens",
                too_long + val_too_long,
                T,
            )
        if not len(train_rows.x) or not len(val_rows.x):
            raise DataError(
                f"no preference pair fits the model's context of {T} tokens "
                f"({len(train_rows.x)} for training, {len(val_rows.x)} held out): use shorter pairs"
            )
        (log.info if rank == 0 else log.debug)(
            "preference pairs: %d read, %d malformed, %d too long; %d for training, %d held out",
            len(pairs) + len(val) + malformed,
            malformed,
            too_long + val_too_long,
            len(train_rows.x),
            len(val_rows.x),
        )
        device = next(model.parameters()).device
        # The steps' precision, so that step 1 measures the model against itself exactly.
        self.cache.attach(
            model,
            {"train": train_rows, "val": val_rows},
            batch_size=c.batch_size,
            autocast=autocast_of(device, precision),
        )
        sampler = PreferenceSampler(
            train_rows, c.batch_size, seed=c.seed, rank=rank, world_size=world_size
        )
        val_tensors = (val_rows.x, val_rows.y, val_rows.lengths, val_rows.ref)
        prompts = c.sample_prompts or _heldout_questions(val, SAMPLED_HELDOUT)
        fingerprint = f"{train_rows.digest()}:{val_rows.digest()}"
        return RunData(sampler, val_tensors, None, prompts, fingerprint)

    def training_module(self, model: nn.Module) -> nn.Module:
        c = self.config
        return DPOLoss(model, beta=c.beta, loss_type=c.dpo_loss, sft_weight=c.sft_weight)

    def loss(self, module: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, Metrics]:
        return module(*batch)

    def count(self, batch: tuple[Tensor, ...]) -> Tensor:
        return torch.tensor(batch[0].shape[0] // 2, device=batch[0].device)  # pairs

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, data: RunData, *, batch_size: int, autocast: Any, loss_fn: Any
    ) -> dict[str, float]:
        """The mean loss over the held-out pairs (``val_loss``), their rewards, margins
        and preference accuracy (``val_accuracy``: the share whose chosen answer gets
        the higher reward)."""
        x, y, lengths, ref = data.val
        rows = PreferenceRows(x, y, lengths, ref)
        module = self.training_module(model)
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(x), batch_size):
                picked = torch.arange(start, min(start + batch_size, len(x)))
                batch = [t.to(device) for t in batch_of(rows, picked)]
                with autocast or contextlib.nullcontext():
                    loss, metrics = module(*batch)
                for name, value in {"loss": loss, **metrics}.items():
                    sums[name] = sums.get(name, 0.0) + float(value)
        finally:
            model.train(was_training)
        return {f"val_{name}": value / len(x) for name, value in sums.items()}

    def write_files(self, run_dir: Path) -> None:
        self.cache.write()


def _heldout_questions(pairs: list[PreferencePair], n: int) -> list[str]:
    """The last user message of the first ``n`` held-out pairs (no question twice)."""
    questions: list[str] = []
    for pair in pairs:
        question = pair.prompt[-1][1]
        if question not in questions:
            questions.append(question)
        if len(questions) == n:
            break
    return questions


def dpo_config(**settings: Any) -> TrainConfig:
    """The settings of a preference-tuning run: the defaults, DPO_DEFAULTS, ``settings``."""
    return resolve_config(flags=settings, defaults=DPO_DEFAULTS)
