"""Training on several processes: DDP by default, fully sharded data parallelism
(FSDP) for models that do not fit on one device.

Each process keeps 1/N of every parameter, gradient and optimizer state; a block's full
weights are gathered just before it runs and freed after. Sharding is per Transformer
block (the unit that is gathered at once), then the rest of the model (embeddings,
final norm, output projection) as one more unit. Built on torch's ``fully_shard``.

Launch, one node with 8 GPUs:
    torchrun --nproc_per_node=8 -m scratchlm train --fsdp --data DATA --out RUN
Several nodes (run on each node; NODE_RANK 0..N-1, MASTER the address of node 0):
    torchrun --nnodes=N --node_rank=NODE_RANK --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=MASTER:29500 -m scratchlm train --fsdp ...

torch's FSDP and distributed-checkpoint modules are imported inside the functions that
use them: a slow import that only --fsdp runs need.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from scratchlm.errors import ConfigError
from scratchlm.train.runtime import Distributed


def wrap_for_training(
    module: nn.Module, dist: Distributed, device: torch.device, *, fsdp: bool, compile: bool
) -> nn.Module:
    """The module the training steps call: sharded (FSDP) when asked, else data-parallel
    (DDP) across the processes of a torchrun launch; compiled when asked."""
    if fsdp:
        module = shard_model(module, device)
    elif dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=ids)
    if compile:
        module = torch.compile(module)
    return module


def shard_model(module: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``module`` (a LossModule around a TransformerLM) in place across the
    processes of the default process group; returns it."""
    if not torch.distributed.is_initialized():
        raise ConfigError(
            "--fsdp shards the model across processes: launch with torchrun, e.g. "
            "torchrun --nproc_per_node=2 -m scratchlm train --fsdp ..."
        )
    from torch.distributed.fsdp import fully_shard

    for block in module.model.layers:
        fully_shard(block)
    fully_shard(module)
    return module


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of a sharded model, on the CPU: every process
    must call this (it gathers); each gets the full tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def _names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter, in the optimizer's order (its state-dict indices)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_to_cpu(
    model: nn.Module, optimizer: torch.optim.Optimizer, make_optimizer: Any
) -> tuple[nn.Module | None, torch.optim.Optimizer | None]:
    """An unsharded CPU copy of a sharded model and its optimizer, which the checkpoint
    code saves as usual. Every process must call this (it gathers the shards); the copy
    is made on rank 0 alone, the others get (None, None)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    state = get_optimizer_state_dict(model, optimizer, options=options)
    if torch.distributed.get_rank() != 0:  # cpu_offload gathers to rank 0 only
        return None, None
    copy = type(model)(model.config)
    copy.load_state_dict(weights)
    copy_optimizer = make_optimizer(copy)
    index = {name: i for i, name in enumerate(_names(copy, copy_optimizer))}
    copy_optimizer.load_state_dict(
        {
            "state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [
                {**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]
            ],
        }
    )
    return copy, copy_optimizer


def scatter_from_cpu(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    copy: nn.Module,
    copy_optimizer: torch.optim.Optimizer,
) -> None:
    """Load an unsharded CPU copy (read from a checkpoint) into a sharded model and its
    optimizer; every process calls this with the same copy."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, copy.state_dict(), options=options)
    names = _names(copy, copy_optimizer)
    saved = copy_optimizer.state_dict()
    state = {
        "state": {names[i]: v for i, v in saved["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, state, options=options)
