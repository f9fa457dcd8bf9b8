"""DiffiT: time-dependent self-attention, window attention and the image-space U-Net.

    time token x_t = MLP(sinusoid(t)) + label embedding                              [DiffiT 3.2; latent code]
    TMSA:          q, k, v = x_s W_s + x_t W_t;  softmax(q k^T / sqrt(d) + B) v     [DiffiT eq. 3-6]
    DiffiT block:  x = x + TMSA(LN(x), x_t);  x = x + MLP(LN(x))                    [DiffiT eq. 7-8]
    ResBlock:      x = DiffiT-Block(Conv3x3(Swish(GN(x))), x_t) + x                 [DiffiT eq. 9-10]
    U-Net:         tokenizer conv -> ResBlocks x L_i per level, conv down-sampling -> mirrored decoder
                   with skip connections at every resolution -> GN, Swish, conv head  [DiffiT Fig. 4, Tables S.2-S.3]

The latent DiffiT is the flat `DiffusionTransformer` with `time_conditioning='tmsa'`: DiT's layout with
these blocks in place of adaLN-Zero blocks (models/transformer.py). Attention runs on w x w windows
(`window_size`; the whole map when the window covers it) [DiffiT 3.2 "Local attention", 5.10], optionally
shifted by w/2 on alternate blocks as in Swin (not used by DiffiT; a switch for ablations).

Sources: Hatamizadeh et al., "DiffiT: Diffusion Vision Transformers for Image Generation", arXiv 2312.02139
(sections 3.2 and 5, appendix H-I), and the official latent-model code (NVlabs/DiffiT, diffit/diffit.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import GeluMLP, LabelEmbedder, ModelOutput, SwiGLU, TimestepEmbedder, apply_rope, make_norm

# ---- windows ----------------------------------------------------------------------------------

def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, ...) -> (B, H/w * W/w, w*w, ...): non-overlapping w x w windows, raster order."""
    B, H, W = x.shape[:3]
    rest = x.shape[3:]
    x = x.reshape(B, H // w, w, W // w, w, *rest).transpose(2, 3)
    return x.reshape(B, (H // w) * (W // w), w * w, *rest)


def window_merge(x: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B, nW, w*w, ...) -> (B, H, W, ...)."""
    B, rest = x.shape[0], x.shape[3:]
    x = x.reshape(B, H // w, W // w, w, w, *rest).transpose(2, 3)
    return x.reshape(B, H, W, *rest)


def relative_position_index(w: int) -> torch.Tensor:
    """(w*w, w*w) index into a (2w-1)^2 table of the relative offset between two window positions [Swin]."""
    rows, cols = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])            # (2, w*w)
    offset = coords[:, :, None] - coords[:, None, :] + (w - 1)        # (2, N, N), each in [0, 2w-2]
    return offset[0] * (2 * w - 1) + offset[1]


def shifted_window_mask(H: int, W: int, w: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask for windows of a map rolled by -shift: tokens that were not neighbours
    before the roll (they wrapped around the border) do not attend to each other [Swin 3.2]."""
    def band(n: int) -> torch.Tensor:                                   # 0 | 1 | 2 along one axis
        i = torch.arange(n)
        return (i >= n - w).long() + (i >= n - shift).long()
    region = band(H)[:, None] * 3 + band(W)[None, :]                    # (H, W)
    region = window_partition(region[None], w)[0]                       # (nW, w*w)
    mask = torch.zeros(region.shape[0], w * w, w * w)
    return mask.masked_fill(region[:, :, None] != region[:, None, :], float("-inf"))


# ---- time-dependent self-attention ------------------------------------------------------------

class TMSA(nn.Module):
    """Time-dependent multi-head self-attention over w x w windows [DiffiT eq. 3-6].

    `time` chooses where the time token enters (DiffiT Table 6): qkv (TMSA: q, k, v each get a linear
    function of x_t), rel_bias (config F: x_t only shifts the relative position bias), none (plain
    self-attention; the parameters elsewhere are unchanged) or mlp (config G, handled by the block).
    `rel_bias` adds a learned bias per head and relative offset (B in eq. 6), a (2w-1)^2 table.
    """

    def __init__(self, dim: int, heads: int, time_dim: int, size: int, window: int, shift: int, time: str,
                 rel_bias: bool, qkv_bias: bool, qk_norm: bool, dropout: float = 0.0):
        super().__init__()
        self.heads, self.head_dim, self.window, self.shift = heads, dim // heads, window, shift
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if time == "qkv":
            self.qkv_time = nn.Linear(time_dim, 3 * dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        table = (2 * window - 1) ** 2
        if rel_bias:
            self.rel_bias = nn.Parameter(torch.zeros(table, heads))
            self.register_buffer("rel_index", relative_position_index(window), persistent=False)
        if time == "rel_bias":
            self.rel_bias_time = nn.Linear(time_dim, table * heads)
        if shift:
            self.register_buffer("shift_mask", shifted_window_mask(size, size, window, shift), persistent=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)     # after the projection, none on the probabilities [JiT code]

    def bias(self, time: torch.Tensor) -> Optional[torch.Tensor]:
        """The additive attention bias, (1 | B, heads, N, N), or None."""
        if not hasattr(self, "rel_bias"):
            return None
        table = self.rel_bias[None]                                            # (1, T, heads)
        if hasattr(self, "rel_bias_time"):
            table = table + self.rel_bias_time(time).view(time.shape[0], -1, self.heads)
        return table[:, self.rel_index].permute(0, 3, 1, 2)                    # (1|B, heads, N, N)

    def forward(self, x: torch.Tensor, time: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, H, W, C) tokens on their grid; time: (B, time_dim); rope: tables over the H*W grid."""
        B, H, W, C = x.shape
        w, s = self.window, self.shift
        qkv = self.qkv(x)
        if hasattr(self, "qkv_time"):
            qkv = qkv + self.qkv_time(time)[:, None, None]
        q, k, v = qkv.view(B, H, W, 3, self.heads, self.head_dim).unbind(dim=3)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:                      # rotate on the full grid, before windowing
            q, k = (apply_rope(z.view(B, H * W, self.heads, -1).transpose(1, 2), *rope)
                    .transpose(1, 2).view(B, H, W, self.heads, -1) for z in (q, k))
        if s:
            q, k, v = (torch.roll(z, (-s, -s), dims=(1, 2)) for z in (q, k, v))
        q, k, v = (window_partition(z, w).permute(0, 1, 3, 2, 4) for z in (q, k, v))   # (B, nW, heads, N, hd)
        nW, N = q.shape[1], q.shape[3]
        mask = self.bias(time)
        if mask is not None:
            mask = mask[:, None].to(q.dtype)                                   # (1|B, 1, heads, N, N)
        if s:
            shift_mask = self.shift_mask[None, :, None].to(q.dtype)            # (1, nW, 1, N, N)
            mask = shift_mask if mask is None else mask + shift_mask
        if mask is not None:     # SDPA's kernels take 4-D inputs: windows join the batch, the mask follows
            mask = mask[0] if mask.shape[:2] == (1, 1) else mask.expand(B, nW, -1, N, N).flatten(0, 1)
        out = F.scaled_dot_product_attention(*(z.flatten(0, 1) for z in (q, k, v)), attn_mask=mask)
        out = window_merge(out.view(B, nW, -1, N, self.head_dim).permute(0, 1, 3, 2, 4), w, H, W)
        if s:
            out = torch.roll(out, (s, s), dims=(1, 2))
        return self.proj_drop(self.proj(out.reshape(B, H, W, C)))


def base_init(model: nn.Module) -> None:
    """DiT's init, which DiffiT's code keeps: Xavier linears with zero biases, N(0, 0.02) label table and
    time-MLP weights; DiffiT's relative position bias tables N(0, 0.02), truncated. Output layers and
    modulations are zeroed by each model on top of this."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, TMSA) and hasattr(module, "rel_bias"):
            nn.init.trunc_normal_(module.rel_bias, std=0.02)
    nn.init.normal_(model.y_embedder.table.weight, std=0.02)
    for layer in (model.t_embedder.mlp[0], model.t_embedder.mlp[2]):
        nn.init.normal_(layer.weight, std=0.02)


def effective_window(cfg: ModelConfig, size: int) -> int:
    """Window side on a size x size map: `window_size`, or the whole map when it covers it (or is None)."""
    return size if cfg.window_size is None else min(cfg.window_size, size)


class DiffiTBlock(nn.Module):
    """DiffiT transformer block [DiffiT eq. 7-8] on (B, H, W, C) tokens, conditioned on the time token only.

    With `tmsa_time='mlp'` (DiffiT Table 6, config G) the time token is projected and added to the MLP input.
    Norm and MLP kinds follow `cfg.norm` / `cfg.ffn` (the latent DiffiT: LayerNorm without affine, GELU-tanh).
    """

    def __init__(self, cfg: ModelConfig, dim: int, heads: int, time_dim: int, size: int, shifted: bool,
                 dropout: float = 0.0):
        super().__init__()
        window = effective_window(cfg, size)
        shift = window // 2 if shifted and window < size else 0      # Swin: no shift when one window covers the map
        self.norm1, self.norm2 = make_norm(cfg.norm, dim, cfg.norm_affine), make_norm(cfg.norm, dim, cfg.norm_affine)
        self.attn = TMSA(dim, heads, time_dim, size, window, shift, cfg.tmsa_time, cfg.rel_pos_bias == "relative",
                         cfg.qkv_bias, cfg.qk_norm, dropout)
        hidden = int(cfg.mlp_ratio * dim)
        if cfg.ffn == "swiglu":
            self.ffn = SwiGLU(dim, int(2 * hidden / 3), cfg.ffn_bias, dropout)
        else:
            self.ffn = GeluMLP(dim, hidden, cfg.gelu, cfg.ffn_bias, dropout)
        if cfg.tmsa_time == "mlp":
            self.mlp_time = nn.Linear(time_dim, dim)

    def forward(self, x: torch.Tensor, time: torch.Tensor, rope=None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), time, rope)
        h = self.norm2(x)
        if hasattr(self, "mlp_time"):
            h = h + self.mlp_time(time)[:, None, None]
        return x + self.ffn(h)


# ---- the image-space U-Net [DiffiT Fig. 4, appendix H.1, I.1] ---------------------------------

class DiffiTResBlock(nn.Module):
    """x_hat = Conv3x3(Swish(GN(x))); out = DiffiT-Block(x_hat, x_t) + x [DiffiT eq. 9-10].

    Where the width changes (the first block of a level, and after a skip concatenation) the residual
    path is a 1x1 convolution, as in ADM's ResBlocks; the paper does not say how the widths are matched.
    """

    def __init__(self, cfg: ModelConfig, in_ch: int, out_ch: int, size: int, shifted: bool):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.gn_groups, in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.block = DiffiTBlock(cfg, out_ch, out_ch // cfg.unet_head_dim, cfg.time_dim, size, shifted)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:   # (B, C, H, W)
        h = self.conv(F.silu(self.norm(x)))
        h = self.block(h.permute(0, 2, 3, 1), time).permute(0, 3, 1, 2)
        return h + self.skip(x)


class Downsample(nn.Module):
    """Strided 3x3 convolution, width kept [DiffiT Table S.2: 'Downsampler']."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 convolution, width kept [DiffiT Table S.3: 'Upsampler']."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The ResBlocks of one resolution level (encoder or decoder side); alternate blocks may be shifted."""

    def __init__(self, cfg: ModelConfig, in_ch: int, out_ch: int, size: int, blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            DiffiTResBlock(cfg, in_ch if i == 0 else out_ch, out_ch, size, shifted=cfg.window_shift and i % 2 == 1)
            for i in range(blocks))

    def forward(self, x, time):
        for block in self.blocks:
            x = block(x, time)
        return x


class DiffiTUNet(nn.Module):
    """Image-space DiffiT: a symmetric U-shaped encoder-decoder of DiffiT ResBlocks [DiffiT Fig. 4].

    Encoder: tokenizer conv -> level 0 (L_1 blocks at full resolution) -> down -> level 1 ... -> level n-1
    (the bottleneck, L_n blocks). Decoder, levels n-2..0: up-sample, concatenate the encoder output of
    the same resolution (the skip connection), L_i blocks. Head: GN, Swish, 3x3 conv to the output
    channels (zero-initialised). Widths per level are `unet_channels`, blocks per level `unet_blocks`.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        chs, blocks, sizes = cfg.unet_channels, cfg.unet_blocks, cfg.unet_sizes
        self.t_embedder = TimestepEmbedder(cfg.time_dim, cfg.time_freq_dim, cfg.time_max_period)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.time_dim)
        self.tokenizer = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.encoder = nn.ModuleList(Level(cfg, chs[max(i - 1, 0)], chs[i], sizes[i], blocks[i])
                                     for i in range(len(chs)))
        self.downsample = nn.ModuleList(Downsample(chs[i]) for i in range(len(chs) - 1))
        self.upsample = nn.ModuleList(Upsample(chs[i + 1]) for i in range(len(chs) - 1))
        self.decoder = nn.ModuleList(Level(cfg, chs[i + 1] + chs[i], chs[i], sizes[i], blocks[i])
                                     for i in range(len(chs) - 1))
        self.head = nn.Sequential(nn.GroupNorm(cfg.gn_groups, chs[0]), nn.SiLU(),
                                  nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1))
        self.initialize_weights()

    def initialize_weights(self):
        """The zoo's common init (`base_init`) and a zero head."""
        base_init(self)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def time_token(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_t: the time embedding plus the label embedding [DiffiT latent code]; `num_classes` = dropped."""
        c = self.t_embedder(t) + self.y_embedder(y)
        return F.silu(c) if self.cfg.cond_silu else c

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, hint=None, hint_mask=None):
        time = self.time_token(t, y)
        h = self.tokenizer(x)
        skips = []
        for i, level in enumerate(self.encoder):
            if i:
                h = self.downsample[i - 1](h)
            h = level(h, time)
            skips.append(h)
        for i in reversed(range(len(self.decoder))):
            h = self.upsample[i](h)
            h = self.decoder[i](torch.cat([h, skips[i]], dim=1), time)
        return ModelOutput(self.head(h))
