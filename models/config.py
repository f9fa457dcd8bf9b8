"""One typed configuration for every model in the zoo.

Every design switch of PixelDiT and of the codebases it is compared with (JiT, DiT, REPA, and the
seeds' own `jitmask` code) is one field here. The defaults are PixelDiT-XL as the paper and its
official code describe it; presets (`models.presets`) are overrides of these defaults.

Sources cited in the field comments:
  [PixelDiT]  Yu et al., "PixelDiT: Pixel Diffusion Transformers", arXiv 2511.20645 (sections 3.1-3.4,
              Figure 2, Table 4 ablations, Table 6 sizes) and its official code.
  [JiT]       Li & He, "Back to Basics: Let Denoising Generative Models Denoise" and its code.
  [DiT]       Peebles & Xie, "Scalable Diffusion Models with Transformers" (section 3.2, Table 1).
  [REPA]      Yu et al., "Representation Alignment for Generation" (section 3.2).
  [DiffiT]    Hatamizadeh et al., "DiffiT: Diffusion Vision Transformers for Image Generation", arXiv
              2312.02139 (section 3.2, ablations 5.x, appendix H-I) and its official latent-model code.
  [seeds]     ../shared/seeds/000 and 001: the code-vs-paper audits of the jitmask codebase.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional


class ConfigError(ValueError):
    """A configuration that cannot be built; the message names the offending key."""


CHOICES = {
    "ffn": ("swiglu", "gelu"),
    "patch_embed": ("linear", "bottleneck"),
    "norm": ("layernorm", "rmsnorm"),
    "pos_embed": ("abs_sincos", "rope", "both"),
    "prediction": ("image", "velocity", "noise"),
    "hint_path": ("output", "blocks"),
    "adaln": ("A", "B", "C"),
    "pixel_modulation": ("pre_gated", "post"),
    "repa_projector": ("mlp", "linear"),
    "architecture": ("transformer", "unet"),
    "time_conditioning": ("adaln", "tmsa"),
    "tmsa_time": ("qkv", "none", "rel_bias", "mlp"),
    "rel_pos_bias": ("none", "relative"),
}


@dataclass
class ModelConfig:
    # ---- input -------------------------------------------------------------------------------
    input_size: int = 256          # H = W of the network input: pixels, or latent cells (DiT: 32)
    in_channels: int = 3           # 3 for pixels, 4 for SD-VAE latents [DiT]
    num_classes: int = 1000        # class-conditional; one extra "null" row is the CFG label;
                                   # 0: unconditional (every sample gets the null label) [DiffiT image space]
    patch_size: int = 16           # p; PixelDiT/JiT use 16 at 256 px, DiT uses 2 on latents
    latent_downsample: int = 1     # image pixels per input cell: 1 in pixel space, 8 on SD-VAE latents [DiT]

    # ---- patch-level pathway [PixelDiT 3.1; DiT 3.2] ----------------------------------------
    depth: int = 26                # N patch blocks
    hidden_size: int = 1152        # D
    num_heads: int = 16
    mlp_ratio: float = 4.0
    ffn: str = "swiglu"            # swiglu (PixelDiT/JiT code, hidden int(2/3*ratio*D)) | gelu (DiT, GELU-tanh)
    ffn_bias: bool = False         # PixelDiT's SwiGLU has no biases; JiT's and DiT's MLPs do
    patch_embed: str = "linear"    # linear [PixelDiT eq. s0 = W x_patch, DiT] | bottleneck [JiT; seeds 001 #4]
    bottleneck_dim: int = 128      # JiT: 128 for B/L, 256 for H
    norm: str = "rmsnorm"          # rmsnorm [PixelDiT Table 4 "+RoPE, RMSNorm"; JiT] | layernorm (DiT, no affine)
    qk_norm: bool = True           # RMSNorm on per-head q and k [PixelDiT code; JiT]
    qkv_bias: bool = False         # PixelDiT code: none; JiT and DiT: yes
    pos_embed: str = "rope"        # rope [PixelDiT] | abs_sincos [DiT] | both [JiT]
    rope_theta: float = 10000.0
    time_max_period: float = 10.0  # sinusoid max period: 10 [PixelDiT code, t in [0,1]] | 10000 [DiT, JiT]
    time_freq_dim: int = 256       # size of the sinusoidal timestep features [DiT]
    cond_silu: bool = True         # adaLN input SiLU(t_emb + y_emb) [PixelDiT c = SiLU(W_t t + W_y y + b); DiT]

    # ---- JiT extras [JiT; seeds 000 #10-#11] -------------------------------------------------
    in_context_tokens: int = 0     # class tokens prepended to the sequence (JiT: 32)
    in_context_start: int = 0      # inserted before this block index (JiT: 4 B, 8 L, 10 H)
    dropout: float = 0.0           # attention/FFN output dropout, only inside the band below [JiT]
    dropout_band: List[float] = field(default_factory=lambda: [0.25, 0.75])  # fraction of depth [start, end)
    hint_fraction: float = 0.0     # GT pixel hints: fraction of pixels revealed in training (seeds: 0.25)
    hint_loss_weight: float = 1.0  # loss weight on revealed pixels (seeds: 0.1)
    hint_path: str = "output"      # output: hints modulate the per-pixel output layer (local);
                                   # blocks: hints modulate every pixel block, as the seeds' code does
    prediction: str = "velocity"   # what the network outputs: image [JiT] | velocity [PixelDiT] | noise [DiT]
    learn_sigma: bool = False      # DiT: also predict the variance (doubles the output channels)

    # ---- pixel-level pathway [PixelDiT 3.2, Figure 2] ----------------------------------------
    pixel_pathway: bool = True     # off: a plain DiT/16-style model with a patch final layer
    pixel_depth: int = 4           # M PiT blocks
    pixel_dim: int = 16            # D_pix
    pixel_mlp_ratio: float = 4.0   # GELU MLP at width D_pix
    adaln: str = "C"               # A: one global vector for all pixels (mean of s_cond over patches);
                                   # B: patch-wise, repeated over the p^2 pixels [seeds' code];
                                   # C: pixel-wise, Linear(D -> p^2 * 6 * D_pix) [PixelDiT]
    pixel_modulation: str = "pre_gated"  # pre_gated: 6-way adaLN-Zero | post: 4-way post-modulation, no gates
    s_cond_timestep: bool = True   # s_cond = s_N + t_emb [PixelDiT 3.1]; off: s_cond = s_N [seeds 000 #2]
    pixel_attention: bool = True   # off: the "no pixel-pathway attention" row (279 GFLOPs)
    compaction: Optional[int] = None      # r pixels per attention token, r | p^2; None = p^2 (PTC [PixelDiT 3.2]);
                                          # 1 = attention over every pixel (Table 4's OOM row)
    pixel_attn_dim: Optional[int] = None  # width of the compacted tokens; None = D [PixelDiT]; seeds: D_pix
    pixel_heads: Optional[int] = None     # heads of pixel attention; None = num_heads

    # ---- REPA hook [REPA 3.2; PixelDiT 3.4] --------------------------------------------------
    repa: bool = False             # build the projector and return aligned features
    repa_block: int = 8            # patch tokens after this many blocks are aligned (both papers: 8)
    repa_projector: str = "mlp"    # mlp: 3 linears with SiLU [REPA, PixelDiT] | linear [seeds' code]
    repa_hidden: int = 2048        # projector width: 2048 [REPA]; D [PixelDiT]
    repa_dim: int = 768            # encoder feature width (DINOv2 ViT-B/14: 768)

    # ---- DiffiT [DiffiT 3.2, appendix H-I] -------------------------------------------------------
    architecture: str = "transformer"   # transformer: the flat model above (DiT/JiT/PixelDiT/latent DiffiT) |
                                        # unet: DiffiT's image-space U-Net (uses the unet_* fields, not
                                        # depth/hidden_size/num_heads/patch_size or the pixel pathway)
    time_conditioning: str = "adaln"    # flat model's blocks: adaln: adaLN-Zero [DiT] | tmsa: DiffiT blocks,
                                        # the time token enters only through them [DiffiT 5.9: TMSA vs DiT modulation]
    tmsa_time: str = "qkv"              # where a DiffiT block takes the time token [DiffiT Table 6]: qkv (TMSA,
                                        # eq. 3-5) | none (plain self-attention) | rel_bias (config F) | mlp (config G)
    rel_pos_bias: str = "none"          # relative: learned bias per head and offset, B in [DiffiT eq. 6] | none
    window_size: Optional[int] = None   # DiffiT blocks attend in w x w windows; None or >= the map: whole map
                                        # [DiffiT 5.10: CIFAR-10 4, FFHQ-64 8; latent: the whole 16x16 grid]
    window_shift: bool = False          # shift alternate blocks' windows by w/2 [Swin]; not in DiffiT
    time_embed_dim: Optional[int] = None    # width of DiffiT's time token; None = hidden_size [DiffiT Table 3: 512]
    unet_channels: List[int] = field(default_factory=lambda: [128, 256, 256])   # width per level [Tables S.2-S.3]
    unet_blocks: List[int] = field(default_factory=lambda: [4, 4, 4])           # ResBlocks L_i per level [H.1]
    unet_head_dim: int = 64             # channels per attention head in the U-Net (not in the paper; EDM's 64)
    gn_groups: int = 32                 # GroupNorm groups of the ResBlocks and head

    # ---- derived values ----------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.input_size * self.latent_downsample

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def compaction_rate(self) -> int:
        return self.patch_size ** 2 if self.compaction is None else self.compaction

    @property
    def attn_dim(self) -> int:
        return self.hidden_size if self.pixel_attn_dim is None else self.pixel_attn_dim

    @property
    def attn_heads(self) -> int:
        return self.num_heads if self.pixel_heads is None else self.pixel_heads

    @property
    def ffn_hidden(self) -> int:
        hidden = int(self.mlp_ratio * self.hidden_size)
        return int(2 * hidden / 3) if self.ffn == "swiglu" else hidden

    @property
    def time_dim(self) -> int:
        return self.hidden_size if self.time_embed_dim is None else self.time_embed_dim

    @property
    def unet_sizes(self) -> list[int]:
        """Feature-map side of each U-Net level: the input halved between levels."""
        return [self.input_size // 2 ** i for i in range(len(self.unet_channels))]

    def dropout_blocks(self) -> range:
        """Indices of the blocks inside the dropout band (JiT: the middle half)."""
        start, end = self.dropout_band
        return range(int(round(start * self.depth)), int(round(end * self.depth)))

    def validate(self) -> "ModelConfig":
        """Refuse invalid combinations with one message naming the field; returns self."""
        for key, choices in CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                raise ConfigError(f"model.{key}={value!r}: unknown value, expected one of {list(choices)}")
        if self.num_classes < 0:
            raise ConfigError(f"model.num_classes={self.num_classes}: must be >= 0 (0: unconditional)")
        positive = ["input_size", "in_channels", "patch_size", "latent_downsample", "depth",
                    "hidden_size", "num_heads", "time_freq_dim", "pixel_dim", "repa_dim", "repa_hidden",
                    "bottleneck_dim"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)}: must be positive")
        p = self.patch_size
        if self.input_size % p:
            raise ConfigError(f"model.input_size={self.input_size}: resolution not divisible by "
                              f"patch_size={p}")
        _check_heads("hidden_size", self.hidden_size, "num_heads", self.num_heads, self.uses_rope)
        if self.time_freq_dim % 2:
            raise ConfigError(f"model.time_freq_dim={self.time_freq_dim}: must be even")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout}: must be in [0, 1)")
        if len(self.dropout_band) != 2 or not 0.0 <= self.dropout_band[0] <= self.dropout_band[1] <= 1.0:
            raise ConfigError(f"model.dropout_band={list(self.dropout_band)}: expected [start, end] "
                              f"with 0 <= start <= end <= 1")
        if self.in_context_tokens < 0:
            raise ConfigError(f"model.in_context_tokens={self.in_context_tokens}: must be >= 0")
        if self.in_context_tokens and not 0 <= self.in_context_start < self.depth:
            raise ConfigError(f"model.in_context_start={self.in_context_start}: insertion block beyond "
                              f"depth={self.depth}")
        if not 0.0 <= self.hint_fraction <= 1.0:
            raise ConfigError(f"model.hint_fraction={self.hint_fraction}: must be in [0, 1]")
        if self.hint_fraction > 0 and not self.pixel_pathway:
            raise ConfigError("model.hint_fraction: GT pixel hints need the pixel pathway "
                              "(model.pixel_pathway=true)")
        if self.architecture == "unet":
            self._validate_unet()
        elif self.time_conditioning == "tmsa":
            if self.in_context_tokens:
                raise ConfigError("model.in_context_tokens: in-context tokens have no place on the grid of "
                                  "DiffiT's windows (model.time_conditioning=tmsa needs 0)")
            self._check_window(self.grid_size, "the patch grid")
        if self.time_embed_dim is not None and self.time_embed_dim <= 0:
            raise ConfigError(f"model.time_embed_dim={self.time_embed_dim}: must be positive")
        if self.architecture == "transformer" and self.time_embed_dim not in (None, self.hidden_size):
            raise ConfigError(f"model.time_embed_dim={self.time_embed_dim}: the flat model's time token has "
                              f"the width of its tokens, model.hidden_size={self.hidden_size}")
        if self.tmsa_time == "rel_bias" and self.rel_pos_bias != "relative":
            raise ConfigError("model.tmsa_time=rel_bias: the time token shifts the relative position bias, "
                              "which needs model.rel_pos_bias=relative")
        if self.repa and not 1 <= self.repa_block <= self.depth:
            raise ConfigError(f"model.repa_block={self.repa_block}: REPA block beyond depth={self.depth} "
                              f"(valid: 1..{self.depth})")
        if self.pixel_pathway:
            if self.pixel_depth <= 0:
                raise ConfigError(f"model.pixel_depth={self.pixel_depth}: must be positive")
            r = self.compaction_rate
            if r <= 0 or (p * p) % r:
                raise ConfigError(f"model.compaction={self.compaction}: the compaction rate must divide "
                                  f"patch_size^2={p * p}")
            if self.pixel_attention:
                _check_heads("pixel_attn_dim", self.attn_dim, "pixel_heads", self.attn_heads,
                             self.uses_rope)
        return self

    def _validate_unet(self) -> None:
        for key in ("pixel_pathway", "repa"):
            if getattr(self, key):
                raise ConfigError(f"model.{key}=true: not available with model.architecture=unet")
        if self.hint_fraction > 0:
            raise ConfigError("model.hint_fraction: GT pixel hints need model.architecture=transformer")
        chs, blocks = list(self.unet_channels), list(self.unet_blocks)
        if not chs or len(blocks) != len(chs):
            raise ConfigError(f"model.unet_blocks={blocks}: one entry per level of model.unet_channels={chs}")
        if min(blocks) < 1:
            raise ConfigError(f"model.unet_blocks={blocks}: every level needs at least one ResBlock")
        if self.input_size % 2 ** (len(chs) - 1):
            raise ConfigError(f"model.input_size={self.input_size}: not divisible by 2^{len(chs) - 1} for "
                              f"{len(chs)} U-Net levels")
        for ch in chs:
            if ch <= 0 or ch % self.unet_head_dim:
                raise ConfigError(f"model.unet_channels={chs}: every width must be a positive multiple of "
                                  f"model.unet_head_dim={self.unet_head_dim}")
            if self.gn_groups <= 0 or ch % self.gn_groups:
                raise ConfigError(f"model.gn_groups={self.gn_groups}: must divide every width of "
                                  f"model.unet_channels={chs}")
        for size in self.unet_sizes:
            self._check_window(size, f"a {size}x{size} U-Net level")

    def _check_window(self, size: int, where: str) -> None:
        if self.window_size is None:
            return
        if self.window_size <= 0:
            raise ConfigError(f"model.window_size={self.window_size}: must be positive (or null: the whole map)")
        if size % min(self.window_size, size):
            raise ConfigError(f"model.window_size={self.window_size}: does not tile {where}")

    @property
    def uses_rope(self) -> bool:
        return self.pos_embed in ("rope", "both")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _check_heads(dim_key: str, dim: int, heads_key: str, heads: int, rope: bool) -> None:
    if heads <= 0 or dim % heads:
        raise ConfigError(f"model.{heads_key}={heads}: must divide model.{dim_key}={dim}")
    if rope and (dim // heads) % 4:
        raise ConfigError(f"model.{heads_key}={heads}: 2D RoPE needs a head width divisible by 4, "
                          f"got {dim_key}/{heads_key}={dim // heads}")
