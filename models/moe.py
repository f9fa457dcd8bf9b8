"""ProMoE's mixture-of-experts FFN for the patch blocks, and its routing contrastive loss [ProMoE; its code in
gcy-hub/PixelDiT-ProMoE pixdit_core/promoe.py `ProMoEFeedForward`, on the odd patch blocks of `PixDiTProMoE`].

    tokens of a conditional sample --cosine to E learned prototypes, top-1--> routed expert e, output * cos
    tokens of the null (CFG) label  -----------------------------------------> the unconditional expert
    every token                      -----------------------------------------> the shared expert (added)

Top-1 with the raw cosine as the weight (no softmax) and no capacity limit: no token is dropped. The routing
contrastive loss (RCL) pulls each active prototype towards the mean of its tokens and away from the other
active experts' means: cross-entropy over cos(prototype_i, centroid_j) / temperature, target i, over the
experts that received tokens (none or one active expert: 0).

The experts are one stacked weight (routed experts, then the unconditional one) run as one grouped matmul over
the tokens sorted by expert (`torch.nn.functional.grouped_mm`); no loop over experts or tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import SwiGLU


def expert_matmul(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """x (N, K) sorted by expert, `counts` tokens per expert, weight (E, M, K) -> (N, M): each token times its
    expert's weight. One grouped matmul where torch has the kernel (CPU in any dtype, CUDA in bf16/fp16, which
    autocast gives; rows of 16-byte multiples); otherwise one matmul per expert. On the meta device (FLOP
    counting) one expert's matmul for every token: what the routed layer costs."""
    if x.device.type == "meta":
        return x @ weight[0].T
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        x = x.to(torch.get_autocast_dtype("cuda"))
    aligned = all(width * x.element_size() % 16 == 0 for width in weight.shape[1:])
    if not aligned or (x.is_cuda and x.dtype not in (torch.bfloat16, torch.float16)):
        return torch.cat([part @ w.T.to(x.dtype) for part, w in zip(x.split(counts.tolist()), weight)])
    offsets = counts.cumsum(0).to(torch.int32)
    return F.grouped_mm(x, weight.to(x.dtype).transpose(1, 2), offs=offsets)


class ExpertBank(nn.Module):
    """E SwiGLU experts as stacked weights: w12 (E, 2H, D) = [W1; W2] and w3 (E, D, H), the layout of `SwiGLU`."""

    def __init__(self, experts: int, dim: int, hidden: int, bias: bool, dropout: float):
        super().__init__()
        self.w12 = nn.Parameter(torch.empty(experts, 2 * hidden, dim))
        self.w3 = nn.Parameter(torch.empty(experts, dim, hidden))
        self.b12 = nn.Parameter(torch.zeros(experts, 2 * hidden)) if bias else None
        self.b3 = nn.Parameter(torch.zeros(experts, dim)) if bias else None
        self.drop = nn.Dropout(dropout)
        for w in (self.w12, self.w3):           # each expert as DiT's init sets an nn.Linear: Xavier uniform
            bound = (6 / (w.shape[1] + w.shape[2])) ** 0.5
            nn.init.uniform_(w, -bound, bound)

    def forward(self, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """x (N, D), expert (N,) index of each token's expert -> (N, D)."""
        order = torch.argsort(expert, stable=True)
        sorted_expert = expert[order]
        counts = torch.zeros(self.w12.shape[0], dtype=torch.long, device=x.device).scatter_add_(
            0, expert, torch.ones_like(expert))
        h = expert_matmul(x[order], self.w12, counts)
        if self.b12 is not None:
            h = h + self.b12[sorted_expert]
        gate, value = h.chunk(2, dim=-1)
        out = expert_matmul(self.drop(F.silu(gate) * value), self.w3, counts)
        if self.b3 is not None:
            out = out + self.b3[sorted_expert]
        return torch.empty_like(out).index_copy_(0, order, out)


def routing_contrastive_loss(prototypes: torch.Tensor, tokens: torch.Tensor, expert: torch.Tensor,
                             conditional: torch.Tensor, temperature: float) -> torch.Tensor:
    """ProMoE's RCL over the conditional tokens: prototypes (E, D), tokens (N, D), expert (N,) top-1 index,
    conditional (N,) mask. Without data-dependent shapes: inactive experts are masked out of the logits."""
    E = prototypes.shape[0]
    weight = conditional.to(tokens.dtype)
    index = torch.where(conditional, expert, 0)
    sums = torch.zeros(E, tokens.shape[-1], dtype=tokens.dtype, device=tokens.device).index_add_(
        0, index, tokens * weight[:, None])
    counts = torch.zeros(E, dtype=tokens.dtype, device=tokens.device).index_add_(0, index, weight)
    active = counts > 0
    centroids = sums / counts.clamp(min=1)[:, None]
    logits = F.normalize(prototypes, dim=-1) @ F.normalize(centroids, dim=-1).T / temperature
    logits = logits.masked_fill(~active[None, :], torch.finfo(logits.dtype).min)
    per_expert = F.cross_entropy(logits, torch.arange(E, device=logits.device), reduction="none")
    n_active = active.sum()
    loss = torch.where(active, per_expert, 0.0).sum() / n_active.clamp(min=1)
    return torch.where(n_active >= 2, loss, 0.0)


class ProMoEFeedForward(nn.Module):
    """The FFN of an MoE patch block: (x, labels) -> (output, routing contrastive loss)."""

    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__()
        D, E = cfg.hidden_size, cfg.moe_experts
        hidden = int(2 * cfg.moe_hidden / 3)                  # SwiGLU's 2/3, as PixelDiT's FeedForward
        self.null_label, self.temperature = cfg.num_classes, cfg.moe_temperature
        self.prototypes = nn.Parameter(torch.empty(E, D).normal_(std=0.02))
        self.experts = ExpertBank(E + 1, D, hidden, cfg.ffn_bias, dropout)   # E routed, then the unconditional
        self.shared = SwiGLU(D, hidden, cfg.ffn_bias, dropout)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, D = x.shape
        tokens = x.reshape(B * S, D)
        conditional = (labels != self.null_label).repeat_interleave(S)
        cosine = F.normalize(tokens, dim=-1) @ F.normalize(self.prototypes, dim=-1).T
        weight, expert = cosine.max(dim=-1)
        routed = torch.where(conditional, expert, self.prototypes.shape[0])     # null label: the last expert
        weight = torch.where(conditional, weight, 1.0)
        out = self.experts(tokens, routed) * weight[:, None].to(tokens.dtype)
        loss = routing_contrastive_loss(self.prototypes, tokens, expert, conditional, self.temperature)
        return out.view(B, S, D) + self.shared(x), loss
