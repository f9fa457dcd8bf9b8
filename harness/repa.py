"""REPA: the frozen representation encoder and the alignment loss [REPA 3.2; PixelDiT 3.4].

PixelDiT aligns the features of patch block 8 (through an MLP projector that lives in the model)
with the patch tokens of a frozen DINOv2 ViT-B/14 computed on the clean image: the image is mapped
to [0, 1], ImageNet-normalised and bicubic-resized to 14 * H / 16 (224 px at 256 px), so that the
encoder's token grid equals the diffusion model's patch grid; loss = mean over tokens of
(1 - cosine similarity), weight 0.5 (`RepaConfig.weight`, applied by the caller).

Weights never come from the network at run time (`RepaConfig.encoder_weights`):
  "random"  random init (tests, demos; `random_weights` is True so the run can be tagged),
  "hub"     the local Hugging Face hub cache only (HF_HUB_OFFLINE for the call: fails at once),
  a path    a local .safetensors / .pth / .bin state dict, loaded through timm so that its
            checkpoint filter (position-embedding resampling to the grid) applies.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError

ENCODER_PATCH = 14   # DINOv2's patch size: the encoder input is 14 * grid_size pixels


@contextlib.contextmanager
def _hub_offline():
    """HF_HUB_OFFLINE=1 for the duration of the block, restored after.

    huggingface_hub reads the variable once at import into `constants.HF_HUB_OFFLINE`, so the
    imported constant is switched as well as the environment.
    """
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = None
    try:
        from huggingface_hub import constants
    except ImportError:   # timm then has no hub access at all: fails at once anyway
        pass
    old_const = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_const


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:limit]


class RepaEncoder(torch.nn.Module):
    """Frozen timm encoder returning patch tokens on the diffusion model's patch grid."""

    def __init__(self, name: str, weights: str, grid_size: int, device=None, group: str = "repa",
                 arch: dict | None = None):
        """`group`: the config group whose `encoder` and `encoder_weights` keys a refusal names (repa,
        perceptual: PixelGen's P-DINO reads the same kind of encoder); `arch`: timm architecture overrides
        (the tests' narrowed DINOv2)."""
        super().__init__()
        import timm
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        if not isinstance(grid_size, int) or grid_size < 1:
            raise ConfigError("model.grid_size", grid_size, "must be a positive int (image size / patch size)")
        if not timm.is_model(name):
            raise ConfigError(f"{group}.encoder", name, "unknown timm model")
        self.group = group
        self.name = name
        self.weights = weights
        self.grid_size = grid_size
        self.random_weights = weights == "random"

        if weights == "random":
            kwargs = dict(pretrained=False)
        elif weights == "hub":
            kwargs = dict(pretrained=True)
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ConfigError(f"{group}.encoder_weights", weights, "file does not exist")
            kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        kwargs.update(arch or {})

        model = self._create(timm, name, weights, ENCODER_PATCH * grid_size, kwargs, group)
        patch = self._patch_size(model)
        if patch is not None and patch != ENCODER_PATCH:
            # an encoder with another patch size (e.g. a /16 ViT): same grid, its own input size
            model = self._create(timm, name, weights, patch * grid_size, kwargs, group)
        self.model = model
        self.image_size = (patch or ENCODER_PATCH) * grid_size
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.dim = int(getattr(model, "embed_dim", None) or model.num_features)

        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)
        if device is not None:
            self.to(device)

    @staticmethod
    def _patch_size(model) -> int | None:
        pe = getattr(model, "patch_embed", None)
        size = getattr(pe, "patch_size", None)
        if size is None:
            return None
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        return int(size[0]) if size[0] == size[1] else None

    @staticmethod
    def _create(timm, name: str, weights: str, img_size: int, kwargs: dict, group: str):
        def build():
            return timm.create_model(name, num_classes=0, img_size=img_size, **kwargs)

        try:
            if weights == "hub":
                with _hub_offline():
                    return build()
            return build()
        except ConfigError:
            raise
        except Exception as exc:  # timm: RuntimeError; hub: LocalEntryNotFoundError / OSError; file: unreadable
            if isinstance(exc, RuntimeError) and ("Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc)):
                raise ConfigError(f"{group}.encoder", name, "unknown timm model") from exc
            if weights == "hub":
                raise ConfigError(f"{group}.encoder_weights", "hub", f"no cached weights for {name} and the hub is "
                                  "unreachable; give a local file or 'random'") from exc
            if weights == "random":
                raise
            raise ConfigError(f"{group}.encoder_weights", weights, f"cannot load into {name}: "
                              f"{_first_line(exc)}") from exc

    def train(self, mode: bool = True):
        # frozen: stays in eval mode whatever its parent does
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] (grey (B, 1, H, W): replicated to RGB) -> (B, grid_size**2, dim)
        patch tokens after the final norm, without gradient (REPA's target)."""
        return self.features(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """As `forward`, differentiable in the images (PixelGen's P-DINO on the predicted image)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"RepaEncoder expects (B, 3, H, W) images, got {tuple(images.shape)}")
        x = images.to(self.mean.device, torch.float32).expand(-1, 3, -1, -1)
        x = ((x + 1) / 2 - self.mean) / self.std
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        feats = self.model.forward_features(x)
        if feats.ndim == 4:   # convolutional encoder: (B, C, h, w) -> tokens
            feats = feats.flatten(2).transpose(1, 2)
        else:
            feats = feats[:, self.num_prefix_tokens:]
        if feats.shape[1] != self.grid_size ** 2:
            raise RuntimeError(f"{self.group}.encoder={self.name}: {feats.shape[1]} tokens, expected "
                               f"{self.grid_size ** 2} (grid {self.grid_size})")
        return feats


def repa_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over batch and tokens of (1 - cosine similarity) along the channel (last) dim.

    projected: the projector's output (B, N, C); target: the frozen encoder's tokens (B, N, C),
    detached here so that only `projected` receives gradient. Range [0, 2].
    """
    if projected.shape != target.shape:
        raise ValueError(f"repa_loss: projected {tuple(projected.shape)} vs target {tuple(target.shape)}")
    cos = F.cosine_similarity(projected.float(), target.detach().float(), dim=-1)
    return (1.0 - cos).mean()
