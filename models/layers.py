"""Building blocks shared by the patch-level and pixel-level pathways.

Small modules, one concept each: embeddings of time and class, fixed 2D position encodings
(absolute sin-cos and rotary), attention through torch SDPA, the two feed-forward kinds, norms,
and the adaLN modulation itself.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn


class ModelOutput(NamedTuple):
    """What every model of the zoo returns."""
    prediction: torch.Tensor               # (B, out_channels, H, W); its meaning is `cfg.prediction`
    repa: Optional[torch.Tensor] = None    # (B, L, repa_dim) projected patch tokens, when REPA is on
    routing_loss: Optional[torch.Tensor] = None   # the MoE blocks' summed routing loss, when ProMoE's FFN is on


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: scale and shift a normalised tensor [DiT 3.2]."""
    return x * (1 + scale) + shift


def make_norm(kind: str, dim: int, affine: bool) -> nn.Module:
    """The norm of a block, a final layer or a PiT block, eps 1e-6: PixelDiT's and JiT's RMSNorm carry a
    learnable weight; DiT's and DiffiT's LayerNorm none (its adaLN supplies scale and shift) [official codes]."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=affine, eps=1e-6)
    return nn.RMSNorm(dim, elementwise_affine=affine, eps=1e-6)


# ---- time and class ---------------------------------------------------------------------------

def timestep_features(t: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """Sinusoidal features [cos | sin] of a batch of (possibly fractional) timesteps [DiT].

    PixelDiT's code feeds t in [0, 1] with max_period 10; DiT feeds integer t with 10000.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features followed by a 2-layer SiLU MLP [DiT]."""

    def __init__(self, hidden_size: int, freq_dim: int, max_period: float):
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_features(t, self.freq_dim, self.max_period)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table with one extra row, index `num_classes`, for the dropped label (CFG).

    Label dropout itself is a training decision and is applied by the caller.
    """

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)


# ---- positions --------------------------------------------------------------------------------

def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding of shape (height*width, dim), raster order:
    [sin | cos of the column, sin | cos of the row]. The column comes first, as in the MAE code that DiT,
    JiT, PixelDiT, SiT and DiffiT share (`np.meshgrid(grid_w, grid_h)` makes `grid[0]` the column)."""
    assert dim % 4 == 0, "2D sin-cos embedding needs a width divisible by 4"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")
    out = [f(axis.reshape(-1, 1) * omega) for axis in (cols, rows) for f in (torch.sin, torch.cos)]
    return torch.cat(out, dim=1).float()


def rope_positions(n: int, placement: str) -> torch.Tensor:
    """Positions of n grid cells along one axis: `index` 0..n-1 [JiT]; `span16` n points spread over
    [0, 16] whatever n is, `torch.linspace(0, 16, n)` [PixelDiT code]."""
    if placement == "span16":
        return torch.linspace(0, 16, n, dtype=torch.float64)
    return torch.arange(n, dtype=torch.float64)


def rope_2d(head_dim: int, height: int, width: int, theta: float, prefix: int = 0, placement: str = "index"):
    """cos and sin tables, each (prefix + height*width, head_dim), for 2D rotary embedding.

    Dimension pairs (k, k + head_dim/2) rotate together; the first half of the pairs by the row
    position, the second half by the column position, at frequencies theta^(-4k/head_dim) (the official
    codes pair adjacent channels instead, in their own orders: `models.convert` permutes q and k to
    match). `prefix` tokens (in-context class tokens) get the identity rotation, as they have no
    position on the grid. `placement` chooses the positions (`rope_positions`).
    """
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(rope_positions(height, placement), rope_positions(width, placement), indexing="ij")
    angles = torch.cat([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], dim=1)  # (HW, hd/2)
    angles = torch.cat([torch.zeros(prefix, head_dim // 2, dtype=torch.float64), angles])
    angles = torch.cat([angles, angles], dim=1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, S, hd) by tables of shape (S, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)


# ---- attention and feed-forward ---------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention through torch SDPA, with optional q/k RMSNorm and 2D RoPE; `dropout`
    after the output projection (none on the attention probabilities) [JiT code]."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, qk_norm: bool, dropout: float = 0.0):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, S, D)))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward [PixelDiT code, JiT]: W3(drop(SiLU(W1 x) * W2 x)), dropout on the hidden [JiT code]."""

    def __init__(self, dim: int, hidden: int, bias: bool, dropout: float = 0.0):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(gate) * value))


class GeluMLP(nn.Module):
    """Two-layer GELU MLP, dropout on the hidden; `gelu` exact [PixelDiT's PiT MLP] or tanh [DiT, DiffiT, SiT]."""

    def __init__(self, dim: int, hidden: int, gelu: str, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.approximate = "tanh" if gelu == "tanh" else "none"
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x), approximate=self.approximate)))


# ---- image <-> tokens -------------------------------------------------------------------------

def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p, C): patches in raster order, pixels in raster order inside."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p, C)


def unpatchify(x: torch.Tensor, p: int, grid: int) -> torch.Tensor:
    """Inverse of `patchify` for a square grid: (B, L, p*p, C) -> (B, C, H, W)."""
    B, _, _, C = x.shape
    x = x.reshape(B, grid, grid, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, grid * p, grid * p)
