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
  [seeds]     the code-vs-paper audits of the jitmask codebase this project started from (JiT-B/16 with pixel blocks).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

from toolkit.errors import ConfigError
from toolkit.fields import check_choices, choice

from .families import check_heads, family


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
    ffn: str = choice("swiglu", "gelu")   # swiglu (PixelDiT/JiT code, hidden int(2/3*ratio*D)) | gelu (DiT)
    ffn_bias: bool = False         # PixelDiT's SwiGLU has no biases; JiT's and DiT's MLPs do
    patch_embed: str = choice("linear", "bottleneck")   # linear [PixelDiT eq. s0 = W x_patch, DiT] |
                                                        # bottleneck [JiT; seeds 001 #4]
    bottleneck_dim: int = 128      # JiT: 128 for B/L, 256 for H
    norm: str = choice("rmsnorm", "layernorm")   # rmsnorm [PixelDiT Table 4 "+RoPE, RMSNorm"; JiT] |
                                                 # layernorm [DiT]
    norm_affine: bool = True       # learnable per-channel weight on the block, final and PiT norms: PixelDiT's and
                                   # JiT's RMSNorm have one [PixelDiT code modules.RMSNorm; JiT util/model_util.py];
                                   # DiT's and DiffiT's LayerNorm have none (elementwise_affine=False)
    qk_norm: bool = True           # RMSNorm on per-head q and k [PixelDiT code; JiT]
    qkv_bias: bool = False         # PixelDiT code: none; JiT and DiT: yes
    pos_embed: str = choice("rope", "abs_sincos", "both")   # rope [PixelDiT] | abs_sincos [DiT] | both [JiT]
    rope_theta: float = 10000.0
    rope_positions: str = choice("span16", "index")   # where RoPE places the g grid positions per axis:
                                   # span16: torch.linspace(0, 16, g), the grid squeezed into [0, 16] whatever its
                                   # size, in the patch blocks and the PiT attention [PixelDiT code
                                   # precompute_freqs_cis_2d] | index: 0, 1, ..., g-1 [JiT VisionRotaryEmbeddingFast]
    time_max_period: float = 10.0  # sinusoid max period: 10 [PixelDiT code, t in [0,1]] | 10000 [DiT, JiT]
    time_freq_dim: int = 256       # size of the sinusoidal timestep features [DiT]
    cond_silu: bool = True         # adaLN input SiLU(t_emb + y_emb) [PixelDiT c = SiLU(W_t t + W_y y + b); DiT]

    # ---- JiT extras [JiT; seeds 000 #10-#11] -------------------------------------------------
    in_context_tokens: int = 0     # class tokens prepended to the sequence (JiT: 32)
    in_context_start: int = 0      # inserted before this block index (JiT: 4 B, 8 L, 10 H)
    dropout: float = 0.0           # dropout after the attention projection and on the FFN hidden (SwiGLU: before
                                   # w3), only inside the band below; none on attention probabilities [JiT code]
    dropout_band: List[float] = field(default_factory=lambda: [0.25, 0.75])  # fraction of depth [start, end)
    hint_fraction: float = 0.0     # GT pixel hints: fraction of pixels revealed in training (seeds: 0.25)
    hint_loss_weight: float = 1.0  # loss weight on revealed pixels (seeds: 0.1)
    hint_path: str = choice("output", "blocks")   # output: hints modulate the per-pixel output layer (local);
                                                  # blocks: hints modulate every pixel block, as the seeds' code does
    prediction: str = choice("velocity", "image", "noise")   # what the network outputs: velocity [PixelDiT] |
                                                             # image [JiT] | noise [DiT]
    flow_time: str = choice("data_at_1", "data_at_0")   # the network's time input under rectified flow:
                                   # data_at_1: t = 1 is data, velocity x - eps [PixelDiT, JiT] | data_at_0: t = 0 is
                                   # data, x_t = (1-t) x + t eps, velocity eps - x [SiT, REPA loss.py]
    learn_sigma: bool = False      # DiT: also predict the variance (doubles the output channels)

    # ---- pixel-level pathway [PixelDiT 3.2, Figure 2] ----------------------------------------
    pixel_pathway: bool = True     # off: a plain DiT/16-style model with a patch final layer
    pixel_depth: int = 4           # M PiT blocks
    pixel_dim: int = 16            # D_pix
    pixel_mlp_ratio: float = 4.0   # GELU MLP at width D_pix
    gelu: str = choice("exact", "tanh")   # GELU of every GELU MLP: exact [PixelDiT code: the PiT MLP's nn.GELU()] |
                                          # tanh approximation [DiT, DiffiT, SiT: GELU(approximate="tanh")]
    adaln: str = choice("C", "A", "B")   # C: pixel-wise, Linear(D -> p^2 * 6 * D_pix) [PixelDiT];
                                         # A: one global vector for all pixels (mean of s_cond over patches);
                                         # B: patch-wise, repeated over the p^2 pixels [seeds' code]
    pixel_modulation: str = choice("pre_gated", "post")   # pre_gated: 6-way adaLN-Zero |
                                                          # post: 4-way post-modulation, no gates
    s_cond_timestep: bool = True   # s_cond = s_N + t_emb [PixelDiT 3.1]; off: s_cond = s_N [seeds 000 #2]
    pixel_attention: bool = True   # off: the "no pixel-pathway attention" row (279 GFLOPs)
    compaction: Optional[int] = None      # r pixels per attention token, r | p^2; None = p^2 (PTC [PixelDiT 3.2]);
                                          # 1 = attention over every pixel (Table 4's OOM row)
    pixel_attn_dim: Optional[int] = None  # width of the compacted tokens; None = D [PixelDiT]; seeds: D_pix
    pixel_heads: Optional[int] = None     # heads of pixel attention; None = num_heads

    # ---- REPA hook [REPA 3.2; PixelDiT 3.4] --------------------------------------------------
    repa: bool = False             # build the projector and return aligned features
    repa_block: int = 8            # patch tokens after this many blocks are aligned (both papers: 8)
    repa_projector: str = choice("mlp", "linear")   # mlp: 3 linears with SiLU [REPA, PixelDiT] | linear [seeds]
    repa_hidden: int = 2048        # projector width: 2048 [REPA]; D [PixelDiT]
    repa_dim: int = 768            # encoder feature width (DINOv2 ViT-B/14: 768)

    # ---- DiffiT [DiffiT 3.2, appendix H-I] -------------------------------------------------------
    architecture: str = choice("transformer", "unet")   # the model family (models/families.py): transformer: the
                                        # flat model above (DiT/JiT/PixelDiT/SiT/latent DiffiT) | unet: DiffiT's image-
                                        # space U-Net (uses the unet_* fields, not depth/hidden_size/num_heads/
                                        # patch_size or the pixel pathway)
    time_conditioning: str = choice("adaln", "tmsa")   # flat model's blocks: adaln: adaLN-Zero [DiT] | tmsa: DiffiT
                                        # blocks, the time token enters only through them [DiffiT 5.9: TMSA vs DiT]
    tmsa_time: str = choice("qkv", "none", "rel_bias", "mlp")   # where a DiffiT block takes the time token [DiffiT
                                        # Table 6]: qkv (TMSA, eq. 3-5) | none (plain self-attention) |
                                        # rel_bias (config F) | mlp (config G)
    rel_pos_bias: str = choice("none", "relative")   # relative: learned bias per head and offset [DiffiT eq. 6]
    window_size: Optional[int] = None   # DiffiT blocks attend in w x w windows; None or >= the map: whole map
                                        # [DiffiT 5.10: CIFAR-10 4, FFHQ-64 8; latent: the whole 16x16 grid]
    window_shift: bool = False          # shift alternate blocks' windows by w/2 [Swin]; not in DiffiT
    time_embed_dim: Optional[int] = None    # width of DiffiT's time token; None = hidden_size [DiffiT Table 3: 512]
    unet_channels: List[int] = field(default_factory=lambda: [128, 256, 256])   # width per level [Tables S.2-S.3]
    unet_blocks: List[int] = field(default_factory=lambda: [4, 4, 4])           # ResBlocks L_i per level [H.1]
    unet_head_dim: int = 64             # channels per attention head in the U-Net (not in the paper; EDM's 64)
    gn_groups: int = 32                 # GroupNorm groups of the ResBlocks and head

    # ---- starting weights --------------------------------------------------------------------
    init_from: Optional[str] = None     # a safetensors file of this config's weights (`python -m models.convert`
                                        # writes one from an official checkpoint); loaded strictly before training

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
        check_choices(self, "model.")
        if self.num_classes < 0:
            raise ConfigError("model.num_classes", self.num_classes, "must be >= 0 (0: unconditional)")
        positive = ["input_size", "in_channels", "patch_size", "latent_downsample", "depth",
                    "hidden_size", "num_heads", "time_freq_dim", "pixel_dim", "repa_dim", "repa_hidden",
                    "bottleneck_dim"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}", getattr(self, key), "must be positive")
        p = self.patch_size
        if self.input_size % p:
            raise ConfigError("model.input_size", self.input_size, f"resolution not divisible by "
                              f"patch_size={p}")
        check_heads("hidden_size", self.hidden_size, "num_heads", self.num_heads, self.uses_rope)
        if self.time_freq_dim % 2:
            raise ConfigError("model.time_freq_dim", self.time_freq_dim, "must be even")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout", self.dropout, "must be in [0, 1)")
        if len(self.dropout_band) != 2 or not 0.0 <= self.dropout_band[0] <= self.dropout_band[1] <= 1.0:
            raise ConfigError("model.dropout_band", list(self.dropout_band), "expected [start, end] "
                              "with 0 <= start <= end <= 1")
        if self.in_context_tokens < 0:
            raise ConfigError("model.in_context_tokens", self.in_context_tokens, "must be >= 0")
        if self.in_context_tokens and not 0 <= self.in_context_start < self.depth:
            raise ConfigError("model.in_context_start", self.in_context_start, f"insertion block beyond "
                              f"depth={self.depth}")
        if not 0.0 <= self.hint_fraction <= 1.0:
            raise ConfigError("model.hint_fraction", self.hint_fraction, "must be in [0, 1]")
        if self.time_embed_dim is not None and self.time_embed_dim <= 0:
            raise ConfigError("model.time_embed_dim", self.time_embed_dim, "must be positive")
        if self.tmsa_time == "rel_bias" and self.rel_pos_bias != "relative":
            raise ConfigError("model.tmsa_time", "rel_bias", "the time token shifts the relative position bias, "
                              "which needs model.rel_pos_bias=relative")
        family(self).validate(self)
        return self

    @property
    def uses_rope(self) -> bool:
        return self.pos_embed in ("rope", "both")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def inert_fields(self) -> dict[str, str]:
        """Switches that have no effect on this model, each with the setting that makes it so (e.g.
        `adaln` without a pixel pathway): what a config comparison should not list as a difference."""
        inert: dict[str, str] = {}
        for reason, names in family(self).inert(self):
            for name in names:
                inert.setdefault(name, reason)
        return inert

