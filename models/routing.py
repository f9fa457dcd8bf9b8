"""Token routing through the patch blocks, a training-speed switch [TREAD; SPRINT; their code in Photoroom/PRX
prx/algorithm/tread.py and sprint.py].

In training, before block `routing_start` a random `routing_fraction` of the patch tokens (round(N * fraction),
at least 1, at most N - 1; per sample: the smallest of N uniform draws) leaves the sequence; blocks
`routing_start` .. `routing_end` run on the others (RoPE gathered with them); after block `routing_end`:

    tread:   the routed tokens come back unchanged, as they were before `routing_start`: the model is the same
             function at inference, where nothing is routed (PRX `train_only`)
    sprint:  fused = Linear([dense || deep]) of the tokens before the route (dense, all N) and the route's
             output (deep, a learned [MASK] token where routed); at inference nothing is routed but the fusion
             stays, so SPRINT adds 2D x D + 2D parameters

In-context class tokens (JiT) are never routed; the visible tokens keep their order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import ModelConfig


def routed_split(batch: int, tokens: int, fraction: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(routed, visible) token indices, (B, k) and (B, N - k), each row ascending: the k = round(N * fraction)
    (clamped to [1, N - 1]) tokens with the smallest of N uniform draws are routed [PRX `_sample_indices`]."""
    k = min(max(int(round(tokens * fraction)), 1), tokens - 1)
    order = torch.rand(batch, tokens, device=device).argsort(dim=1)
    return order[:, :k].sort(dim=1).values, order[:, k:].sort(dim=1).values


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), index (B, M) -> (B, M, D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


@dataclass
class Route:
    """What crosses the route: the grid tokens before it (dense) and the visible indices (None: all)."""
    dense: torch.Tensor
    visible: Optional[torch.Tensor]


class TokenRouting(nn.Module):
    """Starts and ends the route; SPRINT's fusion layer and [MASK] token live here."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind, self.fraction = cfg.token_routing, cfg.routing_fraction
        if self.kind == "sprint":
            D = cfg.hidden_size
            self.fuse = nn.Linear(2 * D, D)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, D))

    def start(self, grid: torch.Tensor) -> tuple[torch.Tensor, Route]:
        """grid tokens (B, N, D) -> (the tokens that take the route, the route)."""
        if not self.training:
            return grid, Route(grid, None)
        _, visible = routed_split(grid.shape[0], grid.shape[1], self.fraction, grid.device)
        return gather_tokens(grid, visible), Route(grid, visible)

    def end(self, deep: torch.Tensor, route: Route) -> torch.Tensor:
        """The route's output (B, N_visible, D) -> all N grid tokens."""
        if self.kind == "tread":
            if route.visible is None:
                return deep
            index = route.visible[..., None].expand(-1, -1, deep.shape[-1])
            return route.dense.scatter(1, index, deep)
        if route.visible is not None:
            index = route.visible[..., None].expand(-1, -1, deep.shape[-1])
            deep = self.mask_token.to(deep.dtype).expand_as(route.dense).scatter(1, index, deep)
        return self.fuse(torch.cat([route.dense, deep], dim=-1))
