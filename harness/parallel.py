"""How the model is spread over the ranks (`train.parallel`) and whether its blocks keep their activations
(`train.activation_checkpointing`), and the model and optimizer state in one form whatever the strategy.

* ``ddp``: every rank holds the whole model; gradients are all-reduced (torch's DistributedDataParallel).
* ``fsdp``: torch's ``fully_shard`` (FSDP2) on every block and on the root: parameters, gradients and
  optimizer state are sharded over the ranks and gathered block by block for the forward and backward
  passes (PyTorch FSDP, Zhao et al. 2023) — for the largest presets and high resolutions, where a full
  replica with AdamW's state does not fit beside the activations.
* activation checkpointing: each block's activations are recomputed in the backward pass instead of kept
  (torch's composable ``checkpoint``, which leaves parameter names unchanged).

Checkpoints hold the full (unsharded) state under the same names in both strategies, gathered on rank 0
(torch.distributed.checkpoint's ``get_state_dict`` with ``full_state_dict``) and written by it as the one
atomic, checksummed file of `harness/checkpoint.py`. A run may therefore resume on another number of
nodes or switch between ddp and fsdp. The price is rank 0 holding the whole state in host memory once per
checkpoint (PixelDiT-XL: 797M parameters, with EMA and AdamW's two moments about 13 GB in float32) and a
serial write; sharded files (torch.distributed.checkpoint's `save`) would pay off only for models
several times larger than the largest preset.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)   # gathered on rank 0, in host memory


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: the members of its ModuleLists named `*blocks` (the patch and pixel
    blocks of the flat transformer, the blocks of each U-Net level)."""
    return [block for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1].endswith("blocks")
            for block in module]


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass (the random state is replayed: the same
    gradients as without)."""
    from torch.distributed._composable import checkpoint
    for block in blocks(model):
        checkpoint(block)


def shard(model: nn.Module) -> None:
    """FSDP2 over the default process group: one unit per block, the rest (embeddings, final layers) in the
    root's unit. Call before building the optimizer: its parameters become sharded DTensors."""
    from torch.distributed.fsdp import fully_shard
    for block in blocks(model):
        fully_shard(block)
    fully_shard(model)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor gathered whole (a collective: every rank calls it); other tensors as they are."""
    from torch.distributed.tensor import DTensor
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def model_state(model: nn.Module) -> dict:
    """The full parameters and buffers by name, on the CPU (a collective under fsdp: every rank calls it;
    under fsdp only rank 0 gets them)."""
    return get_model_state_dict(model, options=FULL)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name (not position), full, on the CPU; as `model_state`."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_model_state(model: nn.Module, state: dict) -> None:
    """Full state (every rank passes it) into a plain or sharded model."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """State written by `optimizer_state`; or, from checkpoints older than it, `optimizer.state_dict()`'s
    positional form (plain and DDP models only)."""
    if any(isinstance(key, int) for key in state.get("state", {})):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
