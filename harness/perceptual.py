"""PixelGen's perceptual losses on the predicted clean image [PixelGen]: LPIPS and P-DINO, with noise gating.

PixelGen (Zehong-Ma/PixelGen, `flow_matching/training_repa_JiT_LPIPS_DINO_NoiseGating.py`) trains an
x-prediction flow model with, beside the flow-matching loss and REPA,

    lpips_weight * LPIPS(x_hat, x) + dino_weight * P-DINO(x_hat, x)          (PixelGen-XL: 0.1, 0.01)

on the network's clean-image estimate x_hat (here from any flow output: `FlowObjective.clean_image`):
  LPIPS   the `lpips` package's LPIPS (VGG16 trunk, its linear heads v0.1) on images in [-1, 1], per sample, at
          their own size (PixelGen's trainer can resize them to 16 / patch_size first, by a `patch_size` argument
          of its own that every released config leaves at 16: not reproduced);
  P-DINO  1 - cosine similarity of DINOv2's patch tokens after its last block and norm (ViT-B/14: block 11),
          on the images mapped to [0, 1], ImageNet-normalised and bicubic-resized to 14/16 of their size
          (224 px at 256) -- the encoder and input REPA uses; mean over tokens and samples.
Noise gating (`t_min`, PixelGen 0.3): only samples with t >= t_min (the less noisy ones; t = 1 is data) count.
LPIPS is their mean (0 when none passes). PixelGen's P-DINO multiplies the (B, N) cosines by the (B, 1, 1) gate,
which broadcasts over the batch: its value is 1 - the mean cosine over every sample once one sample passes, and
the constant 1 otherwise (`dino_gate=batch`, the default); `dino_gate=sample` averages over the passing samples.
Means are over the (micro-)batch, as PixelGen's are per GPU.

PixelGen additionally rebalances the perceptual terms against the flow loss from step 400k (every 50 steps, by
the ratio of their gradient norms at the last layer); that schedule is not implemented here.

Weights never come from the network at run time: the VGG16 trunk (`perceptual.vgg_weights`) from torchvision's
file in the local torch hub cache, a local file or random; the linear heads ship inside the `lpips` package;
DINOv2 (`perceptual.encoder_weights`) as REPA's encoder (`harness/repa.py`), and REPA's encoder itself, with its
target tokens, when both are the same network on the same grid (`shares_encoder`; PixelGen uses one DINOv2). Random
weights are drawn from seed 0 without touching the global random state.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from models.config import ModelConfig
from toolkit.errors import ConfigError

from .config import PerceptualConfig
from .repa import RepaEncoder

VGG16_FILE = "vgg16-397923af.pth"          # torchvision's ImageNet VGG16 (VGG16_Weights.IMAGENET1K_V1)
BASE_PATCH = 16                            # PixelGen: DINO and VGG see the image as 16-pixel patches
RANDOM_SEED = 0


def validate_perceptual(cfg: PerceptualConfig, model: ModelConfig, objective_kind: str) -> None:
    """Refuse an invalid setting in one line naming the key."""
    for key in ("lpips_weight", "dino_weight"):
        value = getattr(cfg, key)
        if not value >= 0:
            raise ConfigError(f"perceptual.{key}", value, "must be >= 0")
    if not 0 <= cfg.t_min < 1:
        raise ConfigError("perceptual.t_min", cfg.t_min, "must be in [0, 1) (t = 1 is data)")
    if not active(cfg):
        return
    key = "perceptual.lpips_weight" if cfg.lpips_weight > 0 else "perceptual.dino_weight"
    value = getattr(cfg, key.split(".")[1])
    if objective_kind != "flow":
        raise ConfigError(key, value, f"the perceptual losses read the flow's clean-image estimate: they need "
                                      f"objective.kind=flow (not {objective_kind})")
    if model.in_channels not in (1, 3) or model.latent_downsample != 1:
        raise ConfigError(key, value, "the perceptual losses compare RGB (or grey) pixels: they need a "
                                      "pixel-space model with model.in_channels 1 or 3")
    if cfg.dino_weight > 0 and model.image_size % BASE_PATCH:
        raise ConfigError("perceptual.dino_weight", cfg.dino_weight, f"P-DINO reads the image at 14/16 of its "
                          f"size (PixelGen): the image size ({model.image_size}) must be a multiple of 16")


def active(cfg: PerceptualConfig) -> bool:
    return cfg.lpips_weight > 0 or cfg.dino_weight > 0


def lpips_network(weights: str) -> torch.nn.Module:
    """The `lpips` package's LPIPS with the VGG16 trunk from `weights` (hub, random or a file) and its own
    linear heads, frozen, in eval mode (no dropout)."""
    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)  # torchvision
        torch.manual_seed(RANDOM_SEED)
        network = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)   # random trunk: nothing downloaded
    if weights != "random":
        network.net.load_state_dict(vgg_trunk_state(_vgg_file(weights), network.net))
    network.eval()
    network.requires_grad_(False)
    return network


def _vgg_file(weights: str) -> Path:
    if weights == "hub":
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
        if not path.is_file():
            raise ConfigError("perceptual.vgg_weights", "hub", f"no VGG16 weights in the local torch hub cache "
                              f"({path}) and no network here; give torchvision's {VGG16_FILE} as a file, or 'random'")
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError("perceptual.vgg_weights", weights, "file does not exist")
    return path


def vgg_trunk_state(path: Path, trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """torchvision's VGG16 state dict (`features.<i>.*`; the classifier is not used) as the keys of the lpips
    trunk, which keeps the same modules in five slices (`slice<k>.<i>.*`)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:                      # unreadable, or a pickle of other objects
        raise ConfigError("perceptual.vgg_weights", str(path), f"cannot read: {exc}".splitlines()[0]) from exc
    slice_of = {name.split(".")[1]: name.split(".")[0] for name, _ in trunk.named_modules() if name.count(".") == 1}
    ours = {}
    for key, value in state.items():
        found = re.fullmatch(r"features\.(\d+)\.(weight|bias)", key)
        if found and found[1] in slice_of:
            ours[f"{slice_of[found[1]]}.{found[1]}.{found[2]}"] = value
    expected = set(trunk.state_dict())
    if set(ours) != expected:
        missing = sorted(expected - set(ours))
        raise ConfigError("perceptual.vgg_weights", str(path), f"not a torchvision VGG16 state dict (missing "
                          f"features.{missing[0].split('.', 1)[1] if missing else '?'})")
    return ours


def shares_encoder(cfg) -> bool:
    """Whether P-DINO reads REPA's encoder (a `TrainConfig`): the same network, weights and token grid (patch 16,
    as PixelGen's one DINOv2 serves both and its REPA target is P-DINO's)."""
    return (cfg.perceptual.dino_weight > 0 and cfg.model.repa and cfg.repa.weight > 0
            and (cfg.repa.encoder, cfg.repa.encoder_weights) == (cfg.perceptual.encoder, cfg.perceptual.encoder_weights)
            and cfg.model.grid_size == cfg.model.image_size // BASE_PATCH)


def dino_encoder(cfg: PerceptualConfig, image_size: int, device=None) -> RepaEncoder:
    """P-DINO's frozen encoder: REPA's kind of encoder on a grid of image_size / 16 patches."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return RepaEncoder(cfg.encoder, cfg.encoder_weights, image_size // BASE_PATCH, device=device,
                           group="perceptual")


class PerceptualLoss(torch.nn.Module):
    """LPIPS and P-DINO of a predicted clean image against the image, noise-gated by t (module docstring).

        loss = PerceptualLoss(cfg.perceptual, cfg.model, device)
        terms = loss(x_hat, x, t)    # {"lpips", "pdino" (those weighted > 0), "perceptual": their weighted sum}
    """

    def __init__(self, cfg: PerceptualConfig, model: ModelConfig, device=None, lpips=None, dino=None):
        super().__init__()
        self.cfg = cfg
        self.lpips = lpips if lpips is not None or cfg.lpips_weight == 0 else lpips_network(cfg.vgg_weights)
        self.dino = dino if dino is not None or cfg.dino_weight == 0 else dino_encoder(cfg, model.image_size)
        self.requires_grad_(False)
        if device is not None:
            self.to(device)

    @property
    def random_weights(self) -> list[str]:
        """The networks with random weights (tests, demos): what a run is tagged with."""
        return ([] if self.lpips is None or self.cfg.vgg_weights != "random" else ["lpips_vgg16"]) + \
            ([] if self.dino is None or not self.dino.random_weights else ["pdino_encoder"])

    def train(self, mode: bool = True):
        return super().train(False)               # frozen: eval mode whatever the parent does

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                dino_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`dino_target`: the encoder's tokens of `x` when the caller has them (REPA's target, `shares_encoder`)."""
        cfg = self.cfg
        gate = (t.float() >= cfg.t_min) if cfg.t_min > 0 else None
        terms: dict[str, torch.Tensor] = {}
        total = 0
        if self.lpips is not None:
            terms["lpips"] = self.lpips_term(x_hat, x, gate)
            total = total + cfg.lpips_weight * terms["lpips"]
        if self.dino is not None:
            terms["pdino"] = self.dino_term(x_hat, x, gate, dino_target)
            total = total + cfg.dino_weight * terms["pdino"]
        terms["perceptual"] = total
        return terms

    def lpips_term(self, x_hat, x, gate) -> torch.Tensor:
        grey_as_rgb = (image.expand(-1, 3, -1, -1) for image in (x_hat, x))
        per_sample = self.lpips(*grey_as_rgb).flatten()
        return per_sample.mean() if gate is None else _gated_mean(per_sample, gate)

    def dino_term(self, x_hat, x, gate, target=None) -> torch.Tensor:
        if target is None:
            with torch.no_grad():
                target = self.dino.features(x)
        cosine = F.cosine_similarity(self.dino.features(x_hat), target, dim=-1)      # (B, tokens)
        if gate is None or self.cfg.dino_gate == "batch":
            # PixelGen's gate broadcasts over the batch: every sample counts once one passes; else the constant 1
            return 1 - cosine.mean() if gate is None or gate.any() else 1 - 0 * cosine.sum()
        return 1 - _gated_mean(cosine.mean(dim=1), gate) if gate.any() else 0 * cosine.sum()


def _gated_mean(values: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample values over the samples that pass the gate; 0 (with a gradient of 0) when none does."""
    gate = gate.to(values.dtype)
    count = gate.sum()
    return (values * gate).sum() / count.clamp(min=1)
