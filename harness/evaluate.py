"""Sampling for evaluation, shared by the training loop and the evaluation jobs (harness/sweep/evaluation.py):
a protocol's samples batch by batch, then a scorer (`eval.metric`) on them.

Batch b of a protocol (harness/protocol.py) holds images b*B .. b*B+B-1 (B = eval.batch_size); its noise comes
from a generator of its own, seeded by (seed, b), and its labels cycle over the classes by image index (or are
drawn from (seed, b)); an unconditional model (num_classes = 0) samples the null label. So a batch is the same
whoever samples it: one rank of the training loop out of any number, or a shard job; and the evaluation at the
end of training is the protocol's evaluation of the final checkpoint. Samples are scored as 8-bit images, as
written to a shard.
"""
from __future__ import annotations

import importlib

import torch
import torch.distributed as dist

from . import metric_registry
from .config import TrainConfig
from .distributed import DistEnv
from .protocol import EvalProtocol
from .sampling import sample
from .vae import image_channels, is_latent


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


def image_shape(cfg: TrainConfig) -> tuple[int, int, int]:
    """(C, H, W) of the run's images: the model's input in pixel space, the dataset's for a latent model."""
    if not is_latent(cfg):
        return cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size
    return image_channels(cfg), cfg.data.resolution, cfg.data.resolution


def protocol_batches(num: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(batch index, first image, images) of every sampling batch of `num` images."""
    return [(b, start, min(batch_size, num - start)) for b, start in enumerate(range(0, num, batch_size))]


def batch_labels(protocol: EvalProtocol, num_classes: int, seed: int, b: int, start: int, count: int) -> torch.Tensor:
    """The classes of batch b: i mod C by image index (balanced), or uniform from (seed, b) (random); the null
    label 0 for an unconditional model."""
    if num_classes == 0:
        return torch.zeros(count, dtype=torch.long)
    if protocol["eval.labels"] == "random":
        generator = torch.Generator().manual_seed((seed * 1_000_003 + b) * 2 + 1)
        return torch.randint(num_classes, (count,), generator=generator)
    return torch.arange(start, start + count) % num_classes


@torch.no_grad()
def sample_batch(model, objective, cfg: TrainConfig, protocol: EvalProtocol, seed: int, b: int, start: int,
                 count: int, device: torch.device, vae=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [-1, 1] quantised to 8 bits, on the CPU (count, C, H, W), a latent model's decoded by `vae`;
    labels) of batch b."""
    mc = cfg.model
    labels = batch_labels(protocol, mc.num_classes, seed, b, start, count)
    generator = torch.Generator(device).manual_seed(seed * 1_000_003 + b)
    bf16 = cfg.train.precision == "bf16" and device.type == "cuda"

    def net(x, t, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x, t, y).prediction.float()

    out = sample(net, objective, protocol.sampler, labels.to(device), (mc.in_channels, mc.input_size, mc.input_size),
                 generator, mc.num_classes)
    return to_uint8(to_images(out, mc, vae)).float().div(127.5).sub(1).cpu(), labels


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 [0, 255], as an image file (and an ADM batch) stores it."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def generate(model, objective, cfg: TrainConfig, protocol: EvalProtocol, step: int, env: DistEnv,
             device: torch.device, vae=None):
    """The protocol's samples of the model at `step` (a latent model's decoded by `vae`) and their labels (None when
    unconditional), on rank 0 (other ranks get None): rank r samples batches r, r + W, ... and rank 0 gathers them
    in order."""
    mc = cfg.model
    seed = protocol.seed_for(cfg.run.seed, step)
    batches = protocol_batches(protocol.num_samples, protocol.batch_size)
    mine = [sample_batch(model, objective, cfg, protocol, seed, *batch, device, vae)[0]
            for batch in batches[env.rank::env.world_size]]
    shape = image_shape(cfg)
    images = torch.cat(mine) if mine else torch.empty(0, *shape)
    if env.world_size > 1:
        sizes = [sum(count for _, _, count in batches[r::env.world_size]) for r in range(env.world_size)]
        padded = torch.zeros(max(sizes), *shape)
        padded[:len(images)] = images
        gathered = [torch.empty_like(padded) for _ in range(env.world_size)]
        dist.all_gather(gathered, padded.to(device) if device.type == "cuda" else padded)
        if not env.is_main:
            return None, None
        parts, taken = [], [0] * env.world_size
        for b, _, count in batches:                 # batch b was sampled by rank b mod W, in order
            rank = b % env.world_size
            parts.append(gathered[rank][taken[rank]:taken[rank] + count].cpu())
            taken[rank] += count
        images = torch.cat(parts)
    if not env.is_main:
        return None, None
    labels = torch.cat([batch_labels(protocol, mc.num_classes, seed, *batch) for batch in batches])
    return images, (labels if mc.num_classes else None)
