"""Parameter and FLOP counts of a configuration, on the meta device: nothing is allocated.

FLOPs come from `torch.utils.flop_counter` over one forward of batch 1 (matmuls, convolutions and
attention; element-wise work is not counted, as in the papers). DiT and JiT report multiply-
accumulates ("Gflops" in their tables), PixelDiT reports FLOPs = 2 x MACs: we report both by name.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import ModelConfig
from .families import build_model


@dataclass
class Complexity:
    params: int                 # parameters used for sampling (what the papers report)
    repa_params: int            # the REPA projector, trained alongside and then dropped
    flops: int                  # one forward of one image at the configured resolution
    components: dict[str, int] = field(default_factory=dict)
    train_flops: int = 0        # the same forward in training mode: less where token routing drops tokens

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9


def component_params(model: torch.nn.Module) -> dict[str, int]:
    """Parameters grouped by module path with block indices dropped, e.g. `pixel_blocks.modulation`."""
    counts: dict[str, int] = defaultdict(int)
    for name, param in model.named_parameters():
        parts = [part for part in name.split(".")[:-1] if not part.isdigit()]
        counts[".".join(parts[:2]) or name] += param.numel()
    return dict(counts)


def count_flops(cfg: ModelConfig, batch: int = 1, training: bool = False) -> int:
    """Forward FLOPs of the sampling-time network (REPA projector excluded) on meta tensors; `training`: of the
    training forward (token routing [TREAD, SPRINT] runs fewer tokens through its route)."""
    model = build_model(cfg.replace(repa=False), device="meta").train(training)
    x = torch.empty(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device="meta")
    t = torch.empty(batch, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    hint = (x, x[:, :1]) if cfg.hint_fraction > 0 else (None, None)
    with FlopCounterMode(display=False) as counter:
        model(x, t, y, *hint)
    return counter.get_total_flops()


def measure(cfg: ModelConfig) -> Complexity:
    model = build_model(cfg, device="meta")
    components = component_params(model)
    repa = components.pop("repa_projector.net", 0)
    return Complexity(params=sum(components.values()), repa_params=repa, flops=count_flops(cfg),
                      components=components, train_flops=count_flops(cfg, training=True))


def with_resolution(cfg: ModelConfig, resolution: int) -> ModelConfig:
    """The same model at another image resolution (latent models divide by their VAE factor)."""
    return cfg.replace(input_size=resolution // cfg.latent_downsample)
