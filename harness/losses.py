"""The loss terms of one training step: labels dropped, x corrupted, the network, the objective's loss and
REPA's alignment term. The trainer calls this on every micro-batch; `harness.parity` calls it on the
official codes' inputs, so what is compared with the official losses is what trains.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .config import TrainConfig
from .objectives import Objective
from .repa import repa_loss


def training_losses(net: Callable, objective: Objective, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                    draws: dict[str, torch.Tensor], encoder: Optional[Callable] = None) -> dict[str, torch.Tensor]:
    """{"loss", "diffusion"[, "vlb"][, "repa"]}: batch means. `draws` holds the step's random draws of these
    samples (`drop` labels, `t`, `eps`, the hint `mask` when model.hint_fraction > 0); `encoder(x)` gives
    REPA's target tokens (None: no REPA term)."""
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
    if encoder is not None:
        terms["repa"] = repa_loss(out.repa.float(), encoder(x))
        terms["loss"] = terms["loss"] + cfg.repa.weight * terms["repa"]
    return terms
