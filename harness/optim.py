"""AdamW with decay on matrices only, and the LR / clipping schedules as pure functions of the step.

Schedules depend only on the step, so a resumed run needs no scheduler state to continue exactly.
"""
from __future__ import annotations

import math

import torch

from .config import OptimConfig

NO_DECAY_NAMES = ("y_embedder.table.weight", "in_context_pos")   # embeddings, like norms and biases


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, base_lr: float, fused: bool) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(NO_DECAY_NAMES) else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=base_lr, betas=tuple(cfg.betas), fused=fused)


def base_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Absolute LR [PixelDiT], or blr * batch / 256 [JiT]."""
    return cfg.lr if cfg.lr is not None else cfg.blr * global_batch / 256


def lr_at(step: int, cfg: OptimConfig, lr0: float, steps_per_epoch: int, total_steps: int) -> float:
    epoch = step / steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return lr0 * (step + 1) / warmup_steps
    if cfg.schedule == "step":
        return lr0 if epoch < cfg.step_epoch else cfg.step_lr
    if cfg.schedule == "cosine":
        progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
        return cfg.min_lr + (lr0 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr0


def clip_at(step: int, cfg: OptimConfig, steps_per_epoch: int) -> float:
    """Max grad norm (0 = off); PixelDiT lowers it with the LR step-down."""
    if cfg.schedule == "step" and step / steps_per_epoch >= cfg.step_epoch:
        return cfg.grad_clip_after_step
    return cfg.grad_clip
