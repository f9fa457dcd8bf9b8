"""Evaluation during training: sample with the evaluated EMA, then score with the scorer of `eval.metric`.

Samples are split over data-parallel ranks and gathered on rank 0; labels cycle over the classes so
every class is equally represented (an unconditional model, num_classes = 0, samples the null label).
"""
from __future__ import annotations

import importlib

import torch
import torch.distributed as dist

from . import metric_registry
from .config import TrainConfig
from .distributed import DistEnv
from .sampling import sample


def build_metric(cfg: TrainConfig, dataset, device: torch.device):
    """The scorer `eval.metric` names (harness/metric_registry.py SCORERS: its class's `from_config`), None for
    `none`; it resolves weights and reference data before any run is created."""
    if cfg.eval.metric == "none":
        return None
    module, _, name = metric_registry.scorer(cfg.eval.metric).builds.partition(":")
    return getattr(importlib.import_module(module), name).from_config(cfg, dataset, device)


def to_images(out: torch.Tensor, model_cfg, vae=None) -> torch.Tensor:
    """A sampler's output as images in [-1, 1]: its data channels (a learned variance dropped), decoded by the VAE
    of a latent model (harness/vae.py), clamped."""
    out = out[:, :model_cfg.in_channels]
    return vae.decode(out) if vae is not None else out.clamp(-1, 1)


@torch.no_grad()
def generate(model, objective, cfg: TrainConfig, num: int, seed: int, env: DistEnv, device: torch.device, vae=None):
    """`num` class-balanced samples in [-1, 1] (a latent model's decoded by `vae`) and their labels (None when
    unconditional), gathered on rank 0 (other ranks get None)."""
    model_cfg = cfg.model
    per_rank = -(-num // env.world_size)
    labels = rank_labels(env.rank, per_rank, model_cfg.num_classes)
    generator = torch.Generator(device).manual_seed(seed * 1_000_003 + env.rank)
    bf16 = cfg.train.precision == "bf16" and device.type == "cuda"

    def net(x, t, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x, t, y).prediction.float()

    chunks = []
    for start in range(0, per_rank, cfg.eval.batch_size):
        batch_labels = labels[start:start + cfg.eval.batch_size].to(device)
        shape = (model_cfg.in_channels, model_cfg.input_size, model_cfg.input_size)
        out = sample(net, objective, cfg.eval.sampler, batch_labels, shape, generator, model_cfg.num_classes)
        chunks.append(to_images(out, model_cfg, vae).cpu())
    images = torch.cat(chunks)
    if env.world_size > 1:
        gathered = [torch.empty_like(images) for _ in range(env.world_size)]
        dist.all_gather(gathered, images.to(device) if device.type == "cuda" else images)
        images = torch.cat([g.cpu() for g in gathered])
        labels = torch.cat([rank_labels(r, per_rank, model_cfg.num_classes) for r in range(env.world_size)])
    if not env.is_main:
        return None, None
    return images[:num], (labels[:num] if model_cfg.num_classes else None)


def rank_labels(rank: int, per_rank: int, num_classes: int) -> torch.Tensor:
    """The labels one rank samples: cycling over the classes, or the null label (0) when unconditional."""
    if num_classes == 0:
        return torch.zeros(per_rank, dtype=torch.long)
    return (torch.arange(per_rank) + rank * per_rank) % num_classes
