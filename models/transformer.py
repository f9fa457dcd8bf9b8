"""The diffusion transformer of the zoo: DiT, JiT, PixelDiT and the latent DiffiT are settings of one model.

    image (B,C,H,W) --patchify--> patch tokens --N patch blocks (adaLN-Zero)--> s_N
                        time_conditioning=tmsa: N DiffiT blocks instead, t only through TMSA  [DiffiT]
        pixel pathway off:  s_N --final layer (adaLN + linear)--> per-patch output          [DiT, JiT]
                            or a pixel decoder conditioned on SiLU(s_N + t_emb)          [DeCo, PixNerd]
        pixel pathway on:   pixel tokens --M PiT blocks conditioned on s_cond--> per-pixel output
                            s_cond = SiLU(s_N + t_emb)                                      [PixelDiT 3.1]

In training a part of the patch tokens may skip a route of blocks (models/routing.py) [TREAD, SPRINT]; the
odd patch blocks may carry ProMoE's mixture-of-experts FFN (models/moe.py), whose routing loss the model returns.

Every switch is a field of `ModelConfig`; the docstrings below cite where each comes from.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .decoders import DECODERS
from .diffit import DiffiTBlock, base_init
from .families import build_model  # noqa: F401  (the zoo's entry point, importable from here as before)
from .layers import (
    Attention,
    GeluMLP,
    LabelEmbedder,
    ModelOutput,
    SwiGLU,
    TimestepEmbedder,
    make_norm,
    modulate,
    patchify,
    rope_2d,
    sincos_2d,
    unpatchify,
)
from .moe import ProMoEFeedForward
from .routing import TokenRouting

# ---- patch-level pathway ----------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """Flattened p x p patch to width D: one linear [PixelDiT, DiT] or a bottleneck [JiT]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        patch_dim = cfg.patch_size ** 2 * cfg.in_channels
        if cfg.patch_embed == "bottleneck":   # JiT: p x p conv to 128 (no bias), then 1x1 conv to D
            self.proj = nn.Sequential(nn.Linear(patch_dim, cfg.bottleneck_dim, bias=False),
                                      nn.Linear(cfg.bottleneck_dim, cfg.hidden_size))
        else:
            self.proj = nn.Linear(patch_dim, cfg.hidden_size)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:   # (B, L, p*p, C) -> (B, L, D)
        return self.proj(patches.flatten(2))


class PatchBlock(nn.Module):
    """Transformer block with 6-way adaLN-Zero from the global condition c [DiT 3.2].

    Norm (LayerNorm [DiT] or RMSNorm [PixelDiT, JiT]), q/k-norm, qkv bias and the FFN kind are switches.
    """

    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__()
        D = cfg.hidden_size
        self.norm1, self.norm2 = make_norm(cfg.norm, D, cfg.norm_affine), make_norm(cfg.norm, D, cfg.norm_affine)
        self.attn = Attention(D, cfg.num_heads, cfg.qkv_bias, cfg.qk_norm, dropout)
        if cfg.ffn == "swiglu":
            self.ffn = SwiGLU(D, cfg.ffn_hidden, cfg.ffn_bias, dropout)
        else:
            self.ffn = GeluMLP(D, cfg.ffn_hidden, cfg.gelu, cfg.ffn_bias, dropout)
        self.adaLN = nn.Linear(D, 6 * D)

    def forward(self, x, c, rope=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        return x + gate2 * self.ffn(modulate(self.norm2(x), shift2, scale2))


class MoEPatchBlock(PatchBlock):
    """A patch block whose FFN is ProMoE's mixture of experts [ProMoE]: it takes the labels (the null label's
    tokens have their own expert) and returns its routing contrastive loss beside the tokens."""

    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__(cfg, dropout)
        self.ffn = ProMoEFeedForward(cfg, dropout)

    def forward(self, x, c, rope=None, labels=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        h, loss = self.ffn(modulate(self.norm2(x), shift2, scale2), labels)
        return x + gate2 * h, loss


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + norm + linear to p*p*C_out per patch [DiT, JiT]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_affine)
        self.adaLN = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)
        self.linear = nn.Linear(cfg.hidden_size, cfg.patch_size ** 2 * cfg.out_channels)

    def forward(self, x, c):
        shift, scale = self.adaLN(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class PlainFinalLayer(nn.Module):
    """Norm, SiLU, linear to p*p*C_out per patch: the latent DiffiT's unmodulated final layer [DiffiT code]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_affine)
        self.linear = nn.Linear(cfg.hidden_size, cfg.patch_size ** 2 * cfg.out_channels)

    def forward(self, x, c):
        return self.linear(F.silu(self.norm(x)))


class GridBlock(nn.Module):
    """A DiffiT block inside the flat model: (B, L, D) tokens are viewed on their g x g grid."""

    def __init__(self, cfg: ModelConfig, index: int, dropout: float):
        super().__init__()
        self.grid = cfg.grid_size
        self.block = DiffiTBlock(cfg, cfg.hidden_size, cfg.num_heads, cfg.hidden_size, cfg.grid_size,
                                 shifted=cfg.window_shift and index % 2 == 1, dropout=dropout)

    def forward(self, x, c, rope=None):
        B, L, D = x.shape
        return self.block(x.view(B, self.grid, self.grid, D), c, rope).view(B, L, D)


class RepaProjector(nn.Module):
    """Maps patch tokens to the encoder width: MLP D->h->h->enc with SiLU [REPA], or one linear [seeds]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, h = cfg.hidden_size, cfg.repa_hidden
        if cfg.repa_projector == "mlp":
            self.net = nn.Sequential(nn.Linear(D, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, cfg.repa_dim))
        else:
            self.net = nn.Linear(D, cfg.repa_dim)

    def forward(self, x):
        return self.net(x)


# ---- pixel-level pathway [PixelDiT 3.2] -------------------------------------------------------

class PixelEmbed(nn.Module):
    """Linear(C -> D_pix) per pixel plus a fixed full-resolution 2D sin-cos position [PixelDiT 3.2]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Linear(cfg.in_channels, cfg.pixel_dim)
        H = cfg.input_size
        pos = sincos_2d(cfg.pixel_dim, H, H).reshape(1, H, H, cfg.pixel_dim).permute(0, 3, 1, 2)
        self.register_buffer("pos", patchify(pos, p), persistent=False)    # (1, L, p*p, D_pix)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:   # (B, L, p*p, C) -> (B, L, p*p, D_pix)
        return self.proj(pixels) + self.pos


class PixelModulation(nn.Module):
    """The AdaLN variants of PixelDiT Figure 2, producing (B, L|1, p*p|1, n, D_pix) modulations.

    A: one global vector per image (the mean of s_cond over patches), the same for every pixel;
    B: patch-wise: Linear(D -> n*D_pix) per semantic token, repeated over the p*p pixels;
    C: pixel-wise: Linear(D -> p*p*n*D_pix) per semantic token, distinct for every pixel.
    Zero-initialised (adaLN-Zero), so gates start at 0 and every PiT block is an identity.
    """

    def __init__(self, cfg: ModelConfig, n: int):
        super().__init__()
        self.variant, self.n, self.pixel_dim = cfg.adaln, n, cfg.pixel_dim
        self.pixels = cfg.patch_size ** 2 if cfg.adaln == "C" else 1
        self.proj = nn.Linear(cfg.hidden_size, self.pixels * n * cfg.pixel_dim)

    def forward(self, s_cond: torch.Tensor) -> torch.Tensor:   # (B, L, D)
        if self.variant == "A":
            s_cond = s_cond.mean(dim=1, keepdim=True)
        B, L, _ = s_cond.shape
        return self.proj(s_cond).view(B, L, self.pixels, self.n, self.pixel_dim)


class TokenCompaction(nn.Module):
    """Pixel token compaction: r pixels -> one attention token and back [PixelDiT 3.2, PTC].

    The r pixels of a token are an r_h x r_w sub-patch (r_w = gcd(r, p)); r = p*p compacts a whole
    patch (the paper's PTC, L tokens of width D), r = 1 attends over every pixel (H*W tokens).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        p, r = cfg.patch_size, cfg.compaction_rate
        self.p, self.g = p, cfg.grid_size
        self.r_w = math.gcd(r, p)
        self.r_h = r // self.r_w
        self.compress = nn.Linear(r * cfg.pixel_dim, cfg.attn_dim)
        self.expand = nn.Linear(cfg.attn_dim, r * cfg.pixel_dim)

    @property
    def token_grid(self) -> tuple[int, int]:
        return self.g * self.p // self.r_h, self.g * self.p // self.r_w

    def compact(self, x: torch.Tensor) -> torch.Tensor:     # (B, L, p*p, Dp) -> (B, H*W/r, A)
        B, Dp = x.shape[0], x.shape[-1]
        g, p, rh, rw = self.g, self.p, self.r_h, self.r_w
        x = x.view(B, g, g, p // rh, rh, p // rw, rw, Dp).permute(0, 1, 3, 2, 5, 4, 6, 7)
        return self.compress(x.reshape(B, g * (p // rh) * g * (p // rw), rh * rw * Dp))

    def uncompact(self, x: torch.Tensor) -> torch.Tensor:   # (B, H*W/r, A) -> (B, L, p*p, Dp)
        B = x.shape[0]
        g, p, rh, rw = self.g, self.p, self.r_h, self.r_w
        x = self.expand(x)
        Dp = x.shape[-1] // (rh * rw)
        x = x.view(B, g, p // rh, g, p // rw, rh, rw, Dp).permute(0, 1, 3, 2, 5, 4, 6, 7)
        return x.reshape(B, g * g, p * p, Dp)


class PixelBlock(nn.Module):
    """PiT block: pixel-wise AdaLN, compacted attention, per-pixel GELU MLP [PixelDiT 3.2].

    `pixel_modulation='post'` replaces the 6-way gated pre-modulation by the 4-way post-modulation
    (scale/shift on the sub-layer outputs, no gates, chunks in the official order scale, shift, scale,
    shift) that the official code added against loss spikes.
    With `pixel_attention` off the 6-way projection is kept, as in the paper's 279-GFLOP row.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.post = cfg.pixel_modulation == "post"
        self.has_attention = cfg.pixel_attention
        Dp = cfg.pixel_dim
        self.modulation = PixelModulation(cfg, 4 if self.post else 6)
        self.norm1, self.norm2 = make_norm(cfg.norm, Dp, cfg.norm_affine), make_norm(cfg.norm, Dp, cfg.norm_affine)
        if self.has_attention:
            self.compaction = TokenCompaction(cfg)
            self.attn = Attention(cfg.attn_dim, cfg.attn_heads, cfg.qkv_bias, cfg.qk_norm)
            if cfg.uses_rope:
                cos, sin = rope_2d(cfg.attn_dim // cfg.attn_heads, *self.compaction.token_grid, cfg.rope_theta,
                                   placement=cfg.rope_positions)
                self.register_buffer("rope_cos", cos, persistent=False)
                self.register_buffer("rope_sin", sin, persistent=False)
        self.mlp = GeluMLP(Dp, int(cfg.pixel_mlp_ratio * Dp), cfg.gelu)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        rope = (self.rope_cos, self.rope_sin) if hasattr(self, "rope_cos") else None
        return self.compaction.uncompact(self.attn(self.compaction.compact(x), rope))

    def forward(self, x, s_cond, hint_mod=None):
        mod = self.modulation(s_cond)
        if hint_mod is not None:
            mod = mod + hint_mod
        if self.post:
            scale1, shift1, scale2, shift2 = mod.unbind(dim=3)
            if self.has_attention:
                x = x + modulate(self.attention(self.norm1(x)), shift1, scale1)
            return x + modulate(self.mlp(self.norm2(x)), shift2, scale2)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(dim=3)
        if self.has_attention:
            x = x + gate1 * self.attention(modulate(self.norm1(x), shift1, scale1))
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class HintEmbed(nn.Module):
    """GT pixel hints [seeds 000 #11]: revealed pixel values -> a per-pixel modulation, zero elsewhere.

    The embedding is multiplied by the reveal mask, so an unrevealed pixel receives exactly nothing.
    """

    def __init__(self, cfg: ModelConfig, n: int):
        super().__init__()
        self.n, self.pixel_dim, self.p = n, cfg.pixel_dim, cfg.patch_size
        self.proj = nn.Linear(cfg.in_channels, n * cfg.pixel_dim)

    def forward(self, hint: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        values, mask = patchify(hint, self.p), patchify(mask.to(hint.dtype), self.p)   # (B, L, p*p, C|1)
        B, L, P, _ = values.shape
        return (mask * self.proj(values)).view(B, L, P, self.n, self.pixel_dim)


class PixelOutput(nn.Module):
    """Norm + Linear(D_pix -> C_out) per pixel, zero-initialised [PixelDiT 3.2]; hints may modulate it."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.pixel_dim, cfg.norm_affine)
        self.linear = nn.Linear(cfg.pixel_dim, cfg.out_channels)

    def forward(self, x, hint_mod=None):
        x = self.norm(x)
        if hint_mod is not None:
            x = modulate(x, *hint_mod.unbind(dim=3))
        return self.linear(x)


# ---- the model --------------------------------------------------------------------------------

class DiffusionTransformer(nn.Module):
    """Patch pathway (DiT/JiT) with an optional pixel pathway (PixelDiT)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        D, g = cfg.hidden_size, cfg.grid_size
        self.patch_embed = PatchEmbed(cfg)
        self.t_embedder = TimestepEmbedder(D, cfg.time_freq_dim, cfg.time_max_period)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D)
        if cfg.pos_embed in ("abs_sincos", "both"):
            self.register_buffer("pos_embed", sincos_2d(D, g, g)[None], persistent=False)
        n_ctx = cfg.in_context_tokens
        if cfg.uses_rope:
            cos, sin = rope_2d(D // cfg.num_heads, g, g, cfg.rope_theta, prefix=n_ctx, placement=cfg.rope_positions)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if n_ctx:
            self.in_context_pos = nn.Parameter(torch.zeros(1, n_ctx, D))
        band, self.moe_blocks = cfg.dropout_blocks(), cfg.moe_blocks()
        self.tmsa = cfg.time_conditioning == "tmsa"
        self.blocks = nn.ModuleList(
            GridBlock(cfg, i, cfg.dropout if i in band else 0.0) if self.tmsa
            else (MoEPatchBlock if i in self.moe_blocks else PatchBlock)(cfg, cfg.dropout if i in band else 0.0)
            for i in range(cfg.depth))
        if cfg.repa:
            self.repa_projector = RepaProjector(cfg)
        if cfg.token_routing != "none":
            self.routing = TokenRouting(cfg)
        if cfg.pixel_pathway:
            n_mod = 4 if cfg.pixel_modulation == "post" else 6
            self.pixel_embed = PixelEmbed(cfg)
            self.pixel_blocks = nn.ModuleList(PixelBlock(cfg) for _ in range(cfg.pixel_depth))
            self.pixel_out = PixelOutput(cfg)
            if cfg.hint_fraction > 0:
                self.hint_embed = HintEmbed(cfg, n_mod if cfg.hint_path == "blocks" else 2)
        elif cfg.decoder != "linear":
            self.decoder = DECODERS[cfg.decoder](cfg)
        else:
            self.final_layer = PlainFinalLayer(cfg) if self.tmsa else FinalLayer(cfg)
        self.initialize_weights()

    def initialize_weights(self):
        """DiT's init (`base_init`), then zero adaLN and zero output layers [DiT]."""
        base_init(self)
        if hasattr(self, "in_context_pos"):
            nn.init.normal_(self.in_context_pos, std=0.02)
        zero = [] if self.tmsa else [block.adaLN for block in self.blocks]
        if self.cfg.pixel_pathway:
            zero += [block.modulation.proj for block in self.pixel_blocks] + [self.pixel_out.linear]
            if hasattr(self, "hint_embed"):
                zero.append(self.hint_embed.proj)
        elif hasattr(self, "decoder"):
            zero += self.decoder.zero_init()
        elif self.tmsa:
            zero.append(self.final_layer.linear)
        else:
            zero += [self.final_layer.adaLN, self.final_layer.linear]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _rope(self, prefix: int, visible: Optional[torch.Tensor] = None):
        """RoPE tables of the sequence: `prefix` in-context tokens (identity rotation), then the grid tokens, all
        of them or, on a token route, the `visible` ones of each sample ((B, 1, S, hd) tables)."""
        if not self.cfg.uses_rope:
            return None
        start = self.cfg.in_context_tokens - prefix
        if visible is None:
            return self.rope_cos[start:], self.rope_sin[start:]
        grid = visible + self.cfg.in_context_tokens
        return tuple(torch.cat([table[start:start + prefix].expand(len(grid), -1, -1), table[grid]], dim=1)[:, None]
                     for table in (self.rope_cos, self.rope_sin))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                hint: Optional[torch.Tensor] = None, hint_mask: Optional[torch.Tensor] = None) -> ModelOutput:
        """x: (B, C, H, W); t: (B,) timesteps in the objective's convention; y: (B,) labels, where
        `num_classes` is the dropped label; hint/hint_mask: (B, C, H, W) values and (B, 1, H, W) mask."""
        cfg = self.cfg
        patches = patchify(x, cfg.patch_size)                       # (B, L, p*p, C)
        tokens, t_emb, c, repa, routing_loss = self.patch_pathway(patches, t, y)
        if cfg.pixel_pathway:
            hint_mod = self.hint_embed(hint, hint_mask) if hint is not None and hasattr(self, "hint_embed") else None
            out = self.pixel_pathway(patches, tokens, t_emb, hint_mod)
        elif hasattr(self, "decoder"):                             # DeCo, PixNerd: s = SiLU(s_N + t)
            out = self.decoder(patches, F.silu(tokens + t_emb[:, None]))
        else:
            out = self.final_layer(tokens, c).view(*patches.shape[:2], -1, cfg.out_channels)
        return ModelOutput(unpatchify(out, cfg.patch_size, cfg.grid_size), repa, routing_loss)

    def patch_pathway(self, patches, t, y):
        """N adaLN-Zero blocks on patch tokens; returns s_N, t_emb, the adaLN input c, REPA features and the
        MoE blocks' summed routing loss (None without them)."""
        cfg = self.cfg
        tokens = self.patch_embed(patches)
        if hasattr(self, "pos_embed"):
            tokens = tokens + self.pos_embed
        t_emb, y_emb = self.t_embedder(t), self.y_embedder(y)
        c = F.silu(t_emb + y_emb) if cfg.cond_silu else t_emb + y_emb     # adaLN input, or DiffiT's time token

        n_ctx, prefix, repa, route, routing_losses = cfg.in_context_tokens, 0, None, None, []
        rope = self._rope(prefix)
        for i, block in enumerate(self.blocks):
            if n_ctx and i == cfg.in_context_start:                # JiT: class tokens join the sequence
                tokens = torch.cat([y_emb[:, None] + self.in_context_pos, tokens], dim=1)
                prefix = n_ctx
                rope = self._rope(prefix, None if route is None else route.visible)
            if hasattr(self, "routing") and i == cfg.routing_start:   # TREAD, SPRINT: part of the grid skips
                grid, route = self.routing.start(tokens[:, prefix:])
                tokens = torch.cat([tokens[:, :prefix], grid], dim=1)
                rope = self._rope(prefix, route.visible)
            if i in self.moe_blocks:
                tokens, loss = block(tokens, c, rope, y)
                routing_losses.append(loss)
            else:
                tokens = block(tokens, c, rope)
            if route is not None and i == cfg.routing_end:
                tokens = torch.cat([tokens[:, :prefix], self.routing.end(tokens[:, prefix:], route)], dim=1)
                route, rope = None, self._rope(prefix)
            if cfg.repa and i + 1 == cfg.repa_block:
                repa = self.repa_projector(tokens[:, prefix:])
        routing_loss = torch.stack(routing_losses).sum() if routing_losses else None
        return tokens[:, prefix:], t_emb, c, repa, routing_loss

    def pixel_pathway(self, patches, tokens, t_emb, hint_mod=None):
        """M PiT blocks on pixel tokens conditioned on s_cond; t reaches them only through s_cond."""
        cfg = self.cfg
        s_cond = tokens + t_emb[:, None] if cfg.s_cond_timestep else tokens
        if cfg.cond_silu:
            s_cond = F.silu(s_cond)
        block_hint = hint_mod if cfg.hint_path == "blocks" else None
        pixels = self.pixel_embed(patches)
        for block in self.pixel_blocks:
            pixels = block(pixels, s_cond, block_hint)
        return self.pixel_out(pixels, hint_mod if cfg.hint_path == "output" else None)

