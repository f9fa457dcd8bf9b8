"""Evaluation during training: sample with the evaluated EMA, then score with FID or the offline metric.

Samples are split over data-parallel ranks and gathered on rank 0; labels cycle over the classes so
every class is equally represented (an unconditional model, num_classes = 0, samples the null label).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from .config import TrainConfig
from .data import build_dataset
from .distributed import DistEnv
from .metrics import InceptionFID, OfflineMetric, default_cache_dir
from .sampling import sample

OFFLINE_ACCURACY_IMAGES = 5000     # training images the offline classifier's accuracy is measured on


def cache_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.eval.cache_dir).expanduser() if cfg.eval.cache_dir else default_cache_dir()


def build_metric(cfg: TrainConfig, dataset, device: torch.device):
    """The scorer for `eval.metric`; resolves weights and reference data before any run is created. Both
    fit to the dataset's held-out split (imagefolder has none: FID takes the training folder, as ADM)."""
    key = f"{cfg.data.name}-{cfg.data.resolution}-c{dataset.channels}-held_out"
    if cfg.eval.metric == "offline":
        held_out = build_dataset(cfg.data, dataset.channels, split="held_out").all_images()
        unseen = dataset.all_images(limit=OFFLINE_ACCURACY_IMAGES)
        return OfflineMetric(key, held_out, unseen, dataset.num_classes, cache_dir(cfg), device, hflip=cfg.data.hflip)
    if cfg.eval.metric == "fid":
        if cfg.data.name == "imagefolder":
            return InceptionFID(cfg.eval.inception, f"imagefolder-{cfg.data.resolution}",
                                reference_folder=cfg.data.path, cache_dir=cache_dir(cfg), device=device)
        real, _ = build_dataset(cfg.data, dataset.channels, split="held_out").all_images(limit=cfg.eval.num_samples)
        return InceptionFID(cfg.eval.inception, key, reference_images=real, cache_dir=cache_dir(cfg), device=device)
    return None


@torch.no_grad()
def generate(model, objective, cfg: TrainConfig, num: int, seed: int, env: DistEnv, device: torch.device):
    """`num` class-balanced samples in [-1, 1] and their labels (None when unconditional), gathered on
    rank 0 (other ranks get None)."""
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
        chunks.append(out[:, :model_cfg.in_channels].clamp(-1, 1).cpu())
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
