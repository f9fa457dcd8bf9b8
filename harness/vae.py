"""The autoencoder of latent models: diffusers' `AutoencoderKL`, where its weights come from, and its latent scaling.

DiT, SiT/REPA and the latent DiffiT train on the latents of the Stable Diffusion VAE (`stabilityai/sd-vae-ft-ema`,
`-mse`; `AutoencoderKL` is that network and reads those weights): the encoder's posterior N(mean, std^2) of an
image in [-1, 1] is sampled and scaled by 0.18215 [DiT train.py: `vae.encode(x).latent_dist.sample().mul_(0.18215)`;
REPA train.py `sample_posterior`: mean + std * noise, times `latents_scale`], and samples are decoded after
dividing by it [DiT sample.py: `vae.decode(samples / 0.18215).sample`]. Here the posterior's mean and std come from
the latent cache (harness/latents.py: no VAE runs in the training loop) and

    model latent = (z - latents_mean) / latents_std * scaling_factor        (per channel; SD VAE: mean 0, std 1)

with each value from `vae.*` or, when that is None, from the VAE's own config (diffusers' `scaling_factor`,
`latents_mean`, `latents_std`).

Weights never come from the network (`vae.source`): a hub repo id is read from the local hub cache only
(`try_to_load_from_cache`, then the cached snapshot folder, `local_files_only`), a local folder in diffusers'
layout, a local weights file of `vae.architecture`, `random` (seeded; tests), or `train` (harness/autoencoder.py).
A missing source is refused in one line naming `vae.source` before anything runs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import ConfigError
from toolkit.files import sha256

if TYPE_CHECKING:
    import torch

    from .config import TrainConfig

# The SD VAE's network (the config.json of stabilityai/sd-vae-ft-ema and -mse), and the same blocks at toy width.
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215)
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
                act_fn="silu", latent_channels=4, norm_num_groups=8, sample_size=16, mid_block_add_attention=False)
ARCHITECTURES = {"sd": SD_VAE, "tiny": TINY_VAE}
CACHE_FORMAT, CACHE_VERSION = "ditlab-latents", 1    # the latent cache's format (harness/latents.py): in its key
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
IMAGE_CHANNELS = 3          # the VAEs see RGB; a grey dataset's grey is replicated in, and the decoded RGB averaged
                            # back to grey, so a latent run's images have the dataset's channels (a pixel run's too)
RANDOM_SEED = 0


def is_latent(cfg: TrainConfig) -> bool:
    """Whether the run's model works on VAE latents."""
    return cfg.model.latent_downsample != 1


def image_channels(cfg: TrainConfig) -> int:
    """The channels of the run's images: the model's in pixel space; for a latent model the dataset's own (grey: 1,
    which the RGB VAE sees replicated)."""
    from .data import GREY_DATASETS
    if not is_latent(cfg):
        return cfg.model.in_channels
    return 1 if cfg.data.name in GREY_DATASETS else IMAGE_CHANNELS


def source_kind(source: str) -> str:
    """random | train | file | folder | hub (anything else: a repo id looked up in the local hub cache)."""
    if source in ("random", "train"):
        return source
    path = Path(source).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        return "folder"
    return "hub"


def _hub_files(repo_id: str) -> tuple[Path, Path] | None:
    """(config.json, weights file) of a repo in the local hub cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache
    try:
        config = try_to_load_from_cache(repo_id, CONFIG_FILE)
    except ValueError:                           # not a valid repo id
        return None
    if not isinstance(config, str):
        return None
    for name in WEIGHT_FILES:
        weights = try_to_load_from_cache(repo_id, name)
        if isinstance(weights, str):
            return Path(config), Path(weights)
    return None


def _folder_files(folder: Path) -> tuple[Path, Path] | None:
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    return (folder / CONFIG_FILE, weights) if weights is not None and (folder / CONFIG_FILE).is_file() else None


def local_files(cfg: TrainConfig) -> tuple[Path, Path | None] | None:
    """(config.json or None, weights file) of a folder, a hub repo or a file source; None for random and train.
    A source that is not here is refused in one line naming `vae.source`."""
    source, kind = cfg.vae.source, source_kind(cfg.vae.source)
    if kind in ("random", "train"):
        return None
    if kind == "file":
        return None, Path(source).expanduser()
    files = _folder_files(Path(source).expanduser()) if kind == "folder" else _hub_files(source)
    if files is None:
        if kind == "folder":
            raise ConfigError("vae.source", source, f"the folder has no {CONFIG_FILE} with {' or '.join(WEIGHT_FILES)} "
                              f"(diffusers' layout: AutoencoderKL.save_pretrained)")
        raise ConfigError("vae.source", source, f"not a local file or folder, and not in the local hub cache (the hub "
                          f"is never reached from here): fetch it where the hub answers (`hf download {source}`) and "
                          f"copy the hub cache here, or give a local folder or weights file")
    return files


def vae_config(cfg: TrainConfig) -> dict:
    """The AutoencoderKL config of the run's VAE, read without loading weights (a folder's or the hub cache's
    config.json; the architecture's for a file, random and train)."""
    files = local_files(cfg)
    if files is not None and files[0] is not None:
        return json.loads(files[0].read_text())
    return dict(ARCHITECTURES[cfg.vae.architecture])


def downsample_factor(config: dict) -> int:
    return 2 ** (len(config.get("block_out_channels", (64,))) - 1)


def validate_vae(cfg: TrainConfig, check_paths: bool = True) -> None:
    """The VAE fits the model: its latent channels and down-sampling are the model's, the scaling has one value per
    channel; with `check_paths`, its weights are here (a one-line refusal naming `vae.source` otherwise)."""
    from toolkit.fields import check_choices
    check_choices(cfg.vae, "vae.")
    model = cfg.model
    config = vae_config(cfg) if check_paths or source_kind(cfg.vae.source) != "hub" else None
    if config is not None:
        channels, factor = config.get("latent_channels", 4), downsample_factor(config)
        if model.in_channels != channels:
            raise ConfigError("model.in_channels", model.in_channels, f"the VAE ({cfg.vae.source}) gives "
                              f"{channels}-channel latents")
        if model.latent_downsample != factor:
            raise ConfigError("model.latent_downsample", model.latent_downsample, f"the VAE ({cfg.vae.source}) "
                              f"down-samples {factor}x")
        if config.get("in_channels", IMAGE_CHANNELS) != IMAGE_CHANNELS:
            raise ConfigError("vae.source", cfg.vae.source, f"encodes {config['in_channels']}-channel images; "
                              f"expected RGB")
    for key in ("latents_mean", "latents_std"):
        values = getattr(cfg.vae, key)
        if values is not None and len(values) != model.in_channels:
            raise ConfigError(f"vae.{key}", list(values), f"expected one value per latent channel "
                              f"(model.in_channels={model.in_channels})")
    if cfg.vae.latents_std is not None and not all(v > 0 for v in cfg.vae.latents_std):
        raise ConfigError("vae.latents_std", list(cfg.vae.latents_std), "must be positive")
    if cfg.vae.scaling_factor is not None and not cfg.vae.scaling_factor > 0:
        raise ConfigError("vae.scaling_factor", cfg.vae.scaling_factor, "must be positive")


def vae_identity(cfg: TrainConfig) -> str:
    """What the VAE is, by content where it can be read: the sha256 of its config and weights files (a file, a
    folder, the hub cache), the architecture of random weights, the recipe and data of a trained one. A source that
    is not here (a dry run away from the cluster) is named as written."""
    source, kind = cfg.vae.source, source_kind(cfg.vae.source)
    if kind == "random":
        return f"random:{cfg.vae.architecture}:seed{RANDOM_SEED}"
    if kind == "train":
        from .autoencoder import recipe_key
        return f"train:{recipe_key(cfg)}"
    try:
        config, weights = local_files(cfg)
    except ConfigError:
        return f"{kind}:{source}"
    parts = ([f"config:{sha256(config)}"] if config is not None else [f"architecture:{cfg.vae.architecture}"])
    return f"sha256:{sha256(weights)}:" + ":".join(parts)


def latent_key_parts(cfg: TrainConfig) -> dict:
    """What the latent cache of a run holds: its data as configured, its flips, this VAE, the cache's format."""
    from .autoencoder import data_identity
    return {"format": f"{CACHE_FORMAT}-v{CACHE_VERSION}", "data": data_identity(cfg.data),
            "flips": bool(cfg.data.hflip), "vae": vae_identity(cfg)}


def latent_key(cfg: TrainConfig) -> str:
    """The content key of the latent cache a latent run reads (harness/latents.py); it enters the run's signature."""
    return hashlib.sha256(json.dumps(latent_key_parts(cfg), sort_keys=True).encode()).hexdigest()[:16]


class LatentVAE:
    """The frozen VAE of a latent run: encode images to their posterior, scale latents, decode samples."""

    def __init__(self, autoencoder, cfg: TrainConfig):
        import torch
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        own = autoencoder.config
        channels = own.latent_channels
        scale = cfg.vae.scaling_factor if cfg.vae.scaling_factor is not None else own.scaling_factor
        mean = cfg.vae.latents_mean if cfg.vae.latents_mean is not None else own.get("latents_mean")
        std = cfg.vae.latents_std if cfg.vae.latents_std is not None else own.get("latents_std")
        self.scaling_factor = float(scale)
        self.shift = torch.tensor(mean if mean is not None else [0.0] * channels).view(1, -1, 1, 1)
        self.std = torch.tensor(std if std is not None else [1.0] * channels).view(1, -1, 1, 1)
        self.channels = channels
        self.image_channels = image_channels(cfg)

    @property
    def device(self):
        return next(self.autoencoder.parameters()).device

    def to(self, device) -> "LatentVAE":
        self.autoencoder.to(device)
        return self

    def weights_digest(self) -> str:
        """sha256 of the weights (names, shapes and bytes): what encoded a cache must decode its samples."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.autoencoder.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2C, h, w): the posterior's mean and std of images (N, 3 or 1, H, W) in [-1, 1], unscaled, float32
        [REPA preprocessing/encoders.py: `torch.cat([d.mean, d.std], dim=1)`]; grey is replicated to RGB."""
        import torch
        with torch.no_grad():
            images = images.to(self.device, torch.float32).expand(-1, IMAGE_CHANNELS, -1, -1)
            posterior = self.autoencoder.encode(images).latent_dist
            return torch.cat([posterior.mean, posterior.std], dim=1).float()

    def sample(self, moments: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The model's latent of a posterior sample z = mean + std * noise [REPA train.py `sample_posterior`]."""
        mean, std = moments.chunk(2, dim=1)
        return self.to_model(mean + std * noise)

    def to_model(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift.to(z)) / self.std.to(z) * self.scaling_factor

    def from_model(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.scaling_factor * self.std.to(latents) + self.shift.to(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] of model latents (N, C, h, w) [DiT sample.py: `vae.decode(samples /
        0.18215).sample`], float32, clamped as every sample is; (N, 1, H, W), the mean of the RGB, for a grey
        dataset."""
        import torch
        with torch.no_grad():
            z = self.from_model(latents.to(self.device, torch.float32))
            images = self.autoencoder.decode(z).sample.float().clamp(-1, 1)
            return images.mean(dim=1, keepdim=True) if self.image_channels == 1 else images


def build_autoencoder(cfg: TrainConfig):
    """The run's AutoencoderKL with its weights (see the module's docstring); a refusal names `vae.source`."""
    import torch
    from diffusers import AutoencoderKL
    source, kind = cfg.vae.source, source_kind(cfg.vae.source)
    if kind == "train":
        from .autoencoder import trained_autoencoder
        folder = trained_autoencoder(cfg, ARCHITECTURES[cfg.vae.architecture])
        return AutoencoderKL.from_pretrained(str(folder), low_cpu_mem_usage=False)
    if kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return AutoencoderKL(**ARCHITECTURES[cfg.vae.architecture])
    config, weights = local_files(cfg)
    if kind in ("folder", "hub"):               # the folder, or the hub cache's snapshot folder: read in place
        return AutoencoderKL.from_pretrained(str(config.parent), local_files_only=True, low_cpu_mem_usage=False)
    model = AutoencoderKL(**ARCHITECTURES[cfg.vae.architecture])
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:                      # unreadable or not a state dict
        raise ConfigError("vae.source", source, f"cannot read its weights: {str(err).splitlines()[0][:200]}") from None
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state or state[key].shape != value.shape:
            found = "missing" if key not in state else f"shape {tuple(state[key].shape)}"
            raise ConfigError("vae.source", source, f"{key}: {found}, vae.architecture={cfg.vae.architecture} "
                              f"expects {tuple(value.shape)} (a diffusers AutoencoderKL state dict)")
    extra = next((key for key in state if key not in expected), None)
    if extra:
        raise ConfigError("vae.source", source, f"{extra} has no place in vae.architecture={cfg.vae.architecture}")
    model.load_state_dict(state, strict=True)
    return model


def load_vae(cfg: TrainConfig, device=None) -> LatentVAE:
    """The run's VAE, frozen, on `device` (its checks first: validate_vae)."""
    validate_vae(cfg)
    vae = LatentVAE(build_autoencoder(cfg), cfg)
    return vae.to(device) if device is not None else vae
