"""The loss terms of one training step: labels dropped, x corrupted, the network, the objective's loss,
REPA's alignment term and PixelGen's perceptual terms. The trainer calls this on every micro-batch;
`harness.parity` calls it on the official codes' inputs, so what is compared with the official losses is what
trains.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .config import TrainConfig
from .objectives import Objective
from .repa import repa_loss


def training_losses(net: Callable, objective: Objective, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                    draws: dict[str, torch.Tensor], encoder: Optional[Callable] = None,
                    perceptual: Optional[Callable] = None) -> dict[str, torch.Tensor]:
    """{"loss", "diffusion"[, "vlb"][, "repa"][, "perceptual", ...]}: batch means. `draws` holds the step's random
    draws of these samples (`drop` labels, `t`, `eps`, the hint `mask` when model.hint_fraction > 0); `encoder(x)`
    gives REPA's target tokens (None: no REPA term); `perceptual` is PixelGen's LPIPS and P-DINO
    (`harness.perceptual.PerceptualLoss`; None: no perceptual terms)."""
    drop = draws["drop"]
    if cfg.model.num_classes == 0:            # unconditional: the null label (index 0) for every sample
        drop = torch.ones_like(drop)
    y = torch.where(drop, torch.full_like(y, cfg.model.num_classes), y)
    t, eps = draws["t"], draws["eps"]
    x_t = objective.corrupt(x, eps, t)
    hint = mask = weight = None
    if cfg.model.hint_fraction > 0:          # GT pixel hints: reveal clean pixels, down-weight their loss
        mask = draws["mask"]
        hint = x
        weight = torch.where(mask, cfg.model.hint_loss_weight, 1.0)
    bf16 = cfg.train.precision == "bf16"
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net(x_t, objective.network_time(t), y, hint, mask)
    terms = objective.loss(out.prediction.float(), x, eps, x_t, t, weight)
    target = None
    if encoder is not None:
        target = encoder(x)
        terms["repa"] = repa_loss(out.repa.float(), target)
        terms["loss"] = terms["loss"] + cfg.repa.weight * terms["repa"]
    if perceptual is not None:               # on the clean-image estimate, in the model's precision [PixelGen]
        shared = target if perceptual.dino is encoder else None     # REPA's tokens of x, when the same encoder
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            parts = perceptual(objective.clean_image(out.prediction, x_t, t), x, t, shared)
        terms.update({key: value.float() for key, value in parts.items()})
        terms["loss"] = terms["loss"] + terms["perceptual"]
    return terms
