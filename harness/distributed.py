"""Data-parallel environment from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM/submitit
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT set by the launcher)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    env = os.environ
    if "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "MASTER_ADDR" in env:
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistEnv()


def init(device: torch.device) -> DistEnv:
    """Join the process group when there is more than one rank (NCCL on GPU, gloo on CPU)."""
    env = detect()
    if env.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=env.rank, world_size=env.world_size)
    return env


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world_size > 1:
        dist.all_reduce(value)
        value /= env.world_size
    return value


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
