"""Data-parallel environment from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM/submitit
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT set by the launcher: the first
node of the allocation, see `harness/sweep/jobs.py`), and the few collectives the trainer needs to keep
its ranks in step: the same stopping step after a signal, the same checkpoint on resume, means over
ranks for what is logged.

Control messages (stop flags, the checkpoint choice, errors) go through a gloo group on the CPU, so on
GPUs they never wait for the CUDA stream (NCCL's default group would force a device sync every step).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from toolkit.errors import ConfigError, reason


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None              # the CPU (gloo) process group for control messages

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
    if env.world_size > 1:
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(env.local_rank)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    rank=env.rank, world_size=env.world_size)
        env.control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return env


def mean_over_ranks(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Each value averaged over the ranks, in one collective (every rank passes the same keys)."""
    if env.world_size == 1 or not values:
        return values
    keys = sorted(values)
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(stacked, group=env.control)
    return {k: float(v) / env.world_size for k, v in zip(keys, stacked.tolist())}


def max_over_ranks(value: float, env: DistEnv) -> float:
    if env.world_size == 1:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=env.control)
    return float(tensor.item())


def agreed_signal(signum: int | None, env: DistEnv) -> int | None:
    """The stop signal any rank has received (SIGTERM before SIGUSR2), the same on every rank: SLURM signals
    the tasks of a job one by one, and every rank must stop after the same step (or the first to stop
    would leave the others waiting in a collective)."""
    if env.world_size == 1:
        return signum
    return int(max_over_ranks(signum or 0, env)) or None


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier(group=env.control)


def from_main(fn: Callable[[], Any], env: DistEnv) -> Any:
    """`fn()` computed on rank 0 and handed to every rank; an error raised there is raised on every rank
    (so no rank waits in a collective for a rank that gave up): a ConfigError as itself, others as
    RuntimeError naming it."""
    if env.world_size == 1:
        return fn()
    message: list = [None]
    failure = None
    if env.is_main:
        try:
            message = [("value", fn())]
        except ConfigError as err:
            failure = err
            fields = {"reason": err.reason, "source": err.source, "suggestion": err.suggestion}
            message = [("config", (err.key, {**fields, **({"value": err.value} if err.has_value else {})}))]
        except Exception as err:
            failure = err
            message = [("error", reason(err))]
    dist.broadcast_object_list(message, src=0, group=env.control)
    if failure is not None:
        raise failure
    kind, payload = message[0]
    if kind == "config":
        key, fields = payload
        raise ConfigError(key, **fields)
    if kind == "error":
        raise RuntimeError(f"rank 0 failed: {payload}")
    return payload


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
