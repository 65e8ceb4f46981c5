"""Fully sharded data parallelism (FSDP) for models that do not fit on one device.

Each process keeps 1/N of every parameter, gradient and optimizer state; a block's full
weights are gathered just before it runs and freed after. Sharding is per Transformer
block (the unit that is gathered at once), then the rest of the model (embeddings,
final norm, output projection) as one more unit. Built on torch's ``fully_shard``.

Launch, one node with 8 GPUs:
    torchrun --nproc_per_node=8 -m scratchlm train --fsdp --data DATA --out RUN
Several nodes (run on each node; NODE_RANK 0..N-1, MASTER the address of node 0):
    torchrun --nnodes=N --node_rank=NODE_RANK --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=MASTER:29500 -m scratchlm train --fsdp ...
"""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.errors import ConfigError


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
