"""Pixel decoders that replace the linear unpatchify (`decoder`, without the pixel pathway) [DeCo; PixNerd].

Both decode each patch on its own, pixel by pixel, conditioned on its patch token:

    noisy patch pixels (p*p, C) + DCT basis of the pixel's place in the patch --linear--> (p*p, d)
    deco:  input linear, K adaLN MLP blocks modulated pixel-wise by Linear(s -> p*p*d), LayerNorm + linear
           [DeCo code, dit_c2i_DeCo.py `SimpleMLPAdaLN`]
    nerf:  K neural-field blocks, each an MLP whose two weight matrices are predicted from s and normalised
           column-wise, RMSNorm + linear [PixNerd code, pixnerd_c2i.py `NerfBlock`]
    with s = SiLU(s_N + t_emb) per patch, as both codes condition their decoders.

Both codes fix their own norms (LayerNorm with affine in DeCo's blocks, without it before DeCo's output; RMSNorm
with a weight in PixNerd's), so `norm`/`norm_affine` do not reach the decoders.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import modulate

DCT_FREQS = 8     # both codes: NerfEmbedder(max_freqs=8)


def dct_basis(p: int, freqs: int = DCT_FREQS) -> torch.Tensor:
    """(p*p, freqs^2): cos(pi x f_x) cos(pi y f_y) / (1 + f_x f_y) at each pixel of a patch, raster order, for
    f_x, f_y on `torch.linspace(0, freqs, freqs)` and x, y on `linspace(0, 1, p)` (the codes' NerfEmbedder);
    column index f_x * freqs + f_y. Computed in float32, as the codes do (float64 moves PixNerd's output by 1e-5)."""
    pos = torch.linspace(0, 1, p, dtype=torch.float32)
    f = torch.linspace(0, freqs, freqs, dtype=torch.float32)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")
    basis_x = torch.cos(cols.reshape(-1, 1, 1) * f[None, :, None] * math.pi)
    basis_y = torch.cos(rows.reshape(-1, 1, 1) * f[None, None, :] * math.pi)
    weight = 1.0 / (1.0 + f[:, None] * f[None, :])
    return (basis_x * basis_y * weight).reshape(p * p, freqs * freqs)


class PixelPositionEmbed(nn.Module):
    """Each pixel's noisy value and its DCT position inside the patch, one linear to width d [both codes]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.in_channels + DCT_FREQS ** 2, cfg.decoder_dim)
        self.register_buffer("basis", dct_basis(cfg.patch_size), persistent=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:    # (B, L, p*p, C) -> (B, L, p*p, d)
        basis = self.basis.to(patches.dtype).expand(*patches.shape[:2], *self.basis.shape)
        return self.proj(torch.cat([patches, basis], dim=-1))


class DecoBlock(nn.Module):
    """x + gate * MLP(modulate(LayerNorm(x))), the modulation SiLU -> Linear of each pixel's condition
    [DeCo code `ResBlock`]."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.adaLN = nn.Linear(d, 3 * d)

    def forward(self, x, cond):
        shift, scale, gate = self.adaLN(F.silu(cond)).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class DecoDecoder(nn.Module):
    """DeCo's light pixel decoder: the DiT models low frequencies, this decoder the high ones [DeCo]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.pixels = cfg.decoder_dim, cfg.patch_size ** 2
        self.embed = PixelPositionEmbed(cfg)
        self.cond = nn.Linear(cfg.hidden_size, self.pixels * d)       # a condition for every pixel of the patch
        self.input = nn.Linear(d, d)
        self.blocks = nn.ModuleList(DecoBlock(d) for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, cfg.out_channels)

    def zero_init(self) -> list[nn.Linear]:
        return [block.adaLN for block in self.blocks] + [self.linear]

    def forward(self, patches, s):             # (B, L, p*p, C), (B, L, D) -> (B, L, p*p, C_out)
        x = self.input(self.embed(patches))
        cond = self.cond(s).view(*s.shape[:2], self.pixels, -1)
        for block in self.blocks:
            x = block(x, cond)
        return self.linear(self.norm(x))


class NerfBlock(nn.Module):
    """x + W2(SiLU(W1 RMSNorm(x))) per patch, W1 (d x rd) and W2 (rd x d) predicted from s and normalised
    along their input dimension [PixNerd code `NerfBlock`]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.hidden = cfg.decoder_dim, cfg.decoder_dim * cfg.decoder_mlp_ratio
        self.weights = nn.Linear(cfg.hidden_size, 2 * d * self.hidden)
        self.norm = nn.RMSNorm(d, eps=1e-6)

    def forward(self, x, s):                   # (B, L, p*p, d), (B, L, D)
        B, L, P, d = x.shape
        w1, w2 = self.weights(s).chunk(2, dim=-1)
        w1 = F.normalize(w1.view(B * L, d, self.hidden), dim=-2)
        w2 = F.normalize(w2.view(B * L, self.hidden, d), dim=-2)
        h = torch.bmm(F.silu(torch.bmm(self.norm(x).view(B * L, P, d), w1)), w2)
        return x + h.view(B, L, P, d)


class NerfDecoder(nn.Module):
    """PixNerd's neural field: each patch is an implicit function of its pixels' positions whose weights the
    transformer predicts [PixNerd]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = PixelPositionEmbed(cfg)
        self.blocks = nn.ModuleList(NerfBlock(cfg) for _ in range(cfg.decoder_depth))
        self.norm = nn.RMSNorm(cfg.decoder_dim, eps=1e-6)
        self.linear = nn.Linear(cfg.decoder_dim, cfg.out_channels)

    def zero_init(self) -> list[nn.Linear]:
        return [self.linear]

    def forward(self, patches, s):
        x = self.embed(patches)
        for block in self.blocks:
            x = block(x, s)
        return self.linear(self.norm(x))


DECODERS = {"deco": DecoDecoder, "nerf": NerfDecoder}
