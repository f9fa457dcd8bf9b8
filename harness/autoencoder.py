"""A small VAE the project makes itself (`vae.source=train`): diffusers' `AutoencoderKL` of `vae.architecture`
(the CPU demo: `tiny`, 4x down, 4 latent channels, 0.23M parameters) trained once on the run's training images.

Not Stable Diffusion's recipe (an L1 + LPIPS + patch-GAN loss with a 1e-6 KL weight [LDM]): a stand-in for
tests and the offline demo, where no SD-VAE weights exist. Its loss is the pixel MSE of the reconstruction of
a posterior sample plus KL_WEIGHT x the KL to N(0, I) per pixel; Adam with a one-cycle LR, seeded, one CPU
thread (the weights do not depend on the machine's core count). After training, the per-channel mean and
std of the training images' posterior means go into its config (`latents_mean`, `latents_std`,
`scaling_factor` 1), so the model's latents have unit variance per channel, as 0.18215 gives the SD VAE's.

The result is a diffusers folder (config.json, weights) cached under `<eval.cache_dir or $DITLAB_CACHE>/vae/`,
named by a hash of the recipe, the architecture and the data: made once, by the first job that needs it (a
lock keeps a second one waiting instead of training it twice), then read by every run and cache of that key.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig

RECIPE = "autoencoderkl-mse-kl-v1"   # bump when the recipe changes (the numbers below are hashed too)
SEED = 0
STEPS = 400
BATCH = 64
LR = 3e-3
KL_WEIGHT = 1e-4                    # per pixel, against the mean squared error in [-1, 1]


def data_identity(data) -> dict:
    """The training images as a config names them (a content key's data part; harness/latents.py too)."""
    out = {"name": data.name, "resolution": data.resolution, "split": "train"}
    if data.name == "imagefolder":
        out.update(path=str(Path(str(data.path)).expanduser().resolve()), crop="ADM center_crop_arr")
    if data.name == "shapes":
        out["shapes_size"] = data.shapes_size
    return out


def recipe_key(cfg: TrainConfig) -> str:
    parts = {"recipe": RECIPE, "numbers": [SEED, STEPS, BATCH, LR, KL_WEIGHT], "architecture": cfg.vae.architecture,
             "data": data_identity(cfg.data)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def autoencoder_folder(cfg: TrainConfig) -> Path:
    from .metrics import run_cache_dir
    name = f"{cfg.data.name}-r{cfg.data.resolution}-{cfg.vae.architecture}-{recipe_key(cfg)}"
    return run_cache_dir(cfg) / "vae" / name


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def trained_autoencoder(cfg: TrainConfig, architecture: dict) -> Path:
    """The folder of the run's trained VAE (an AutoencoderKL of `architecture`, the config of `vae.architecture`),
    trained now unless another process made it already."""
    folder = autoencoder_folder(cfg)
    if (folder / "config.json").is_file():
        return folder
    with _locked(folder.parent / f".{folder.name}.lock"):
        if not (folder / "config.json").is_file():
            print(f"training the VAE {folder.name} ({STEPS} steps on the {cfg.data.name} training images; once)",
                  flush=True)
            work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
            started = time.time()
            try:
                train(cfg, architecture).save_pretrained(str(work))
                os.replace(work, folder)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"trained the VAE in {time.time() - started:.1f} s: {folder}", flush=True)
    return folder


def train(cfg: TrainConfig, architecture: dict):
    """The seeded training (see the module's docstring); returns the AutoencoderKL with its latent statistics."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    from .data import build_dataset

    images = build_dataset(cfg.data, architecture["in_channels"], split="train")   # grey: replicated to RGB
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = AutoencoderKL(**{**architecture, "sample_size": cfg.data.resolution})
            gen = torch.Generator().manual_seed(SEED)
            opt = torch.optim.Adam(model.parameters(), lr=LR)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS, pct_start=0.2)
            batch = min(BATCH, len(images))
            for _ in range(STEPS):
                index = torch.randint(0, len(images), (batch,), generator=gen)
                x, _ = images.get(index, torch.zeros(batch, dtype=torch.bool))
                posterior = model.encode(x).latent_dist
                z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
                loss = F.mse_loss(model.decode(z).sample, x) + KL_WEIGHT * posterior.kl().mean() / x[0].numel()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            model.eval()
            with torch.no_grad():
                x, _ = images.all_images(limit=1000)
                means = torch.cat([model.encode(part).latent_dist.mean for part in x.split(250)])
    finally:
        torch.set_num_threads(threads)
    model.register_to_config(scaling_factor=1.0, latents_mean=means.mean(dim=(0, 2, 3)).tolist(),
                             latents_std=means.std(dim=(0, 2, 3)).tolist())
    return model
