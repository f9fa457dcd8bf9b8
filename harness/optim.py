"""AdamW with decay on matrices only, or Muon on the blocks' matrices with AdamW on the rest [PRX], and the LR /
clipping schedules as pure functions of the step.

Schedules depend only on the step, so a resumed run needs no scheduler state to continue exactly.
"""
from __future__ import annotations

import math

import torch

from toolkit.errors import ConfigError

from .config import OptimConfig

NO_DECAY_NAMES = ("y_embedder.table.weight", "in_context_pos")   # embeddings, like norms and biases


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, base_lr: float,
                    fused: bool) -> torch.optim.Optimizer:
    """`optim.optimizer=adamw`: AdamW, weight decay on the matrices. `muon`: torch.optim.Muon on the matrices of
    the blocks' linear layers (2-D `.weight`s whose name holds "blocks": PRX's `create_muon_optimizer` rule,
    configs/yamls/optimizer/muon.yaml), AdamW as above on every other parameter."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    muon = [param for name, param in named if cfg.optimizer == "muon" and is_muon_matrix(name, param)]
    rest = [(name, param) for name, param in named if id(param) not in {id(m) for m in muon}]
    decay = [param for name, param in rest if param.ndim >= 2 and not name.endswith(NO_DECAY_NAMES)]
    no_decay = [param for name, param in rest if param.ndim < 2 or name.endswith(NO_DECAY_NAMES)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=base_lr, betas=tuple(cfg.betas), fused=fused)
    if cfg.optimizer == "adamw":
        return adamw
    if not muon:
        raise ConfigError("optim.optimizer", "muon", "the model has no block matrices for Muon to optimise")
    return MuonWithAdamW(torch.optim.Muon(muon, lr=base_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                                          nesterov=cfg.muon_nesterov, ns_steps=cfg.muon_ns_steps,
                                          adjust_lr_fn=cfg.muon_lr_adjust), adamw)


def is_muon_matrix(name: str, param: torch.nn.Parameter) -> bool:
    """A matrix of a block's linear layer (PRX: `param.ndim == 2 and "blocks" in name`; tables such as DiffiT's
    relative position bias are not weights of a linear layer and stay with AdamW)."""
    return param.ndim == 2 and "blocks" in name and name.endswith(".weight")


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over torch.optim.Muon's and AdamW's parameter groups (Muon's first), so the trainer sets
    one LR on every group, steps, zeroes and checkpoints it as one (torch.distributed.checkpoint's optimizer
    state dict included). The two share this object's groups and state; each steps its own parameters."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        super().__init__([*muon.param_groups, *adamw.param_groups], {})
        self._share()

    def _share(self) -> None:
        """Point both optimizers at this one's groups (the same dicts) and state (keyed by disjoint params)."""
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)       # new group dicts and a new state: shared again
        self._share()


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
