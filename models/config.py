"""One typed configuration for every model in the zoo.

Every design switch of PixelDiT and of the codebases it is compared with (JiT, DiT, REPA, DiffiT, and the
seeds' own `jitmask` code) is one field here. The defaults are PixelDiT-XL as the paper and its
official code describe it; presets (`models.presets`) are overrides of these defaults.

Each field declares itself once (`toolkit.fields`): its comment documents its values; `cite=` says where each
paper (key of `models.papers.PAPERS`) or its official code sets it; `family=` names the architectures where it
acts (default: both); `inert_when=` the settings under which it has no effect. `inert_fields()`, the audit's
citations (`python -m harness.audit`), `python -m harness.train --help` and the switch table of docs/models.md
(`python -m models.inspect --switch-table`) are derived from them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

from toolkit.errors import ConfigError
from toolkit.fields import check_choices, choice, inert_fields, switch

from .families import check_heads, family

NO_PIXELS = "pixel_pathway=false"                                     # the pixel pathway's switches do nothing
ADALN_BLOCKS = "architecture=transformer, time_conditioning=adaln"   # the DiffiT blocks' switches do nothing
PIXELS = "pixel_pathway=true"                                         # the pixel pathway decodes, not `decoder`


@dataclass
class ModelConfig:
    FAMILY_FIELD = "architecture"  # the field whose values `family=` names (a class attribute, not a field)

    # ---- input -------------------------------------------------------------------------------
    input_size: int = 256          # H = W of the network input: pixels, or latent cells (DiT: 32)
    in_channels: int = switch(3, cite={"DiT": "SD-VAE latents: 4 channels"})
                                   # 3 for pixels, 4 for SD-VAE latents
    num_classes: int = switch(1000, cite={"DiffiT": "I.1: image-space experiments are unconditional"})
                                   # class-conditional; one extra "null" row is the CFG label;
                                   # 0: unconditional (every sample gets the null label; DiffiT's image space)
    patch_size: int = switch(16, family="transformer")
                                   # p; PixelDiT/JiT use 16 at 256 px, DiT uses 2 on latents
    latent_downsample: int = switch(1, cite={"DiT": "SD-VAE latents: 8 image pixels per cell"})
                                   # image pixels per input cell: 1 in pixel space, 8 on SD-VAE latents

    # ---- patch-level pathway [PixelDiT 3.1; DiT 3.2] ----------------------------------------
    depth: int = switch(26, family="transformer",
                        cite={"PixelDiT": "Table 6: N = 26 patch blocks for XL (seeds 001 #2)"})   # N patch blocks
    hidden_size: int = switch(1152, inert_when="architecture=unet, time_embed_dim!=null",
                              cite={"PixelDiT": "Table 6: D = 1152 for XL"})
                                   # D; the U-Net's time token width when time_embed_dim is null
    num_heads: int = switch(16, family="transformer", cite={"PixelDiT": "Table 6: 16 heads for XL"})
                                   # attention heads of the patch blocks
    mlp_ratio: float = 4.0         # FFN width / D (SwiGLU takes 2/3 of it)
    ffn: str = choice("swiglu", "gelu", cite={
        "PixelDiT": "official code: SwiGLU (the text describes DiT's blocks; seeds 001 #3)",
        "JiT": "code: SwiGLU", "DiT": "code (models.py): GELU MLP"})
                                   # swiglu (PixelDiT/JiT code, hidden int(2/3*ratio*D)) | gelu (DiT)
    ffn_bias: bool = switch(False, cite={"PixelDiT": "official code: SwiGLU without biases",
                                         "JiT": "code: SwiGLU with biases", "DiT": "code (models.py): MLP with biases"})
                                   # PixelDiT's SwiGLU has no biases; JiT's and DiT's MLPs do
    patch_embed: str = choice("linear", "bottleneck", family="transformer", cite={
        "PixelDiT": "sec. 3.1: s_0 = W_patch x_patch, one linear (seeds 001 #4)", "DiT": "a linear patch embedding",
        "JiT": "code: a bottleneck patch embedding", "seeds": "001 #4: JiT's bottleneck in the seeds' code"})
                                   # linear: one linear from the flattened patch to D (PixelDiT, DiT) |
                                   # bottleneck: through bottleneck_dim first (JiT; the seeds' code)
    bottleneck_dim: int = switch(128, family="transformer", inert_when="patch_embed=linear",
                                 cite={"JiT": "code: 128 for B and L, 256 for H"})
                                   # width of the bottleneck patch embedding; JiT: 128 for B/L, 256 for H
    norm: str = choice("rmsnorm", "layernorm", cite={
        "PixelDiT": "Table 4 '+RMSNorm'", "JiT": "code: RMSNorm", "DiT": "code (models.py): LayerNorm"})
                                   # rmsnorm (PixelDiT's Table 4 row "+RoPE, RMSNorm"; JiT) | layernorm (DiT)
    norm_affine: bool = switch(True, cite={
        "PixelDiT": "official code: RMSNorm with a learnable weight (modules.RMSNorm)",
        "JiT": "code (util/model_util.py RMSNorm): a learnable weight",
        "DiT": "code (models.py): LayerNorm without affine",
        "DiffiT": "official code (diffit/diffit.py): LayerNorm without affine"})
                                   # learnable per-channel weight on the block, final and PiT norms: PixelDiT's and
                                   # JiT's RMSNorm have one; DiT's and DiffiT's LayerNorm have none
                                   # (elementwise_affine=False)
    qk_norm: bool = switch(True, cite={"PixelDiT": "official code: RMSNorm q/k-norm", "JiT": "code: RMSNorm q/k-norm"})
                                   # RMSNorm on per-head q and k (PixelDiT code, JiT)
    qkv_bias: bool = switch(False, cite={"PixelDiT": "official code: no qkv bias", "JiT": "code: qkv bias",
                                         "DiT": "code (models.py): qkv bias"})
                                   # bias on the q, k, v projection: none in PixelDiT's code; JiT and DiT: yes
    pos_embed: str = choice("rope", "abs_sincos", "both", family="transformer", cite={
        "PixelDiT": "Table 4 '+RoPE'; official code: RoPE only on patch tokens",
        "DiT": "code (models.py): fixed 2D sin-cos table, column first (MAE)",
        "JiT": "code: the sin-cos table and RoPE"})
                                   # rope (PixelDiT) | abs_sincos (DiT; the sin-cos table is column first, as the
                                   # MAE code of every family) | both (JiT)
    rope_theta: float = switch(10000.0, family="transformer", inert_when="pos_embed=abs_sincos")
                                   # RoPE base frequency
    rope_positions: str = choice("span16", "index", family="transformer", inert_when="pos_embed=abs_sincos", cite={
        "PixelDiT": "official code: RoPE positions linspace(0, 16, grid) in the patch blocks and the PiT attention "
                    "(modules.precompute_freqs_cis_2d)",
        "JiT": "code (util/model_util.py VisionRotaryEmbeddingFast): integer positions"})
                                   # where RoPE places the g grid positions per axis:
                                   # span16: torch.linspace(0, 16, g), the grid squeezed into [0, 16] whatever its
                                   # size, in the patch blocks and the PiT attention (PixelDiT) | index: 0, 1, ...,
                                   # g-1 (JiT)
    time_max_period: float = switch(10.0, cite={
        "PixelDiT": "official code: t in [0, 1], sinusoid max period 10", "DiT": "code: max period 10000",
        "JiT": "code: max period 10000"})
                                   # sinusoid max period: 10 (PixelDiT code, t in [0,1]) | 10000 (DiT, JiT)
    time_freq_dim: int = switch(256, cite={"DiT": "code: 256 sinusoidal timestep features"})
                                   # size of the sinusoidal timestep features
    cond_silu: bool = switch(True, cite={"PixelDiT": "c = SiLU(W_t t + W_y y + b)",
                                         "DiT": "code: adaLN input SiLU(t_emb + y_emb)"})
                                   # adaLN input SiLU(t_emb + y_emb); off: t_emb + y_emb (DiffiT's time token)

    # ---- JiT extras [JiT; seeds 000 #10-#11] -------------------------------------------------
    in_context_tokens: int = switch(0, family="transformer", cite={
        "PixelDiT": ": no in-context class tokens, a JiT technique (seeds 000 #10)",
        "JiT": "code: 32 in-context class tokens"})
                                   # class tokens prepended to the sequence (JiT: 32)
    in_context_start: int = switch(0, family="transformer", inert_when="in_context_tokens=0", cite={
        "PixelDiT": ": no in-context class tokens (seeds 000 #10)",
        "JiT": "code: inserted before block 4 (B), 8 (L), 10 (H)"})
                                   # inserted before this block index (JiT: 4 B, 8 L, 10 H)
    dropout: float = switch(0.0, family="transformer", cite={
        "PixelDiT": "official code: no dropout",
        "JiT": "code: dropout after the attention projection and on the SwiGLU hidden, in the middle half of the "
               "blocks (0 for B and L, 0.2 for H)"})
                                   # dropout after the attention projection and on the FFN hidden (SwiGLU: before
                                   # w3), only inside the band below; none on attention probabilities (JiT code)
    dropout_band: List[float] = switch(factory=lambda: [0.25, 0.75], family="transformer", inert_when="dropout=0")
                                   # fraction of depth [start, end)
    hint_fraction: float = switch(0.0, family="transformer", inert_when=NO_PIXELS, cite={
        "PixelDiT": ": no GT pixel hints (seeds 000 #11)", "seeds": "000 #11: GT pixel hints in the seeds' code"})
                                   # GT pixel hints: fraction of pixels revealed in training (seeds: 0.25)
    hint_loss_weight: float = switch(1.0, family="transformer", inert_when=(NO_PIXELS, "hint_fraction=0"), cite={
        "PixelDiT": ": no GT pixel hints (seeds 000 #11)", "seeds": "000 #11: GT pixel hints in the seeds' code"})
                                   # loss weight on revealed pixels (seeds: 0.1)
    hint_path: str = choice("output", "blocks", family="transformer", inert_when=(NO_PIXELS, "hint_fraction=0"),
                            cite={"PixelDiT": ": no GT pixel hints (seeds 000 #11)",
                                  "seeds": "000 #11: GT pixel hints in the seeds' code"})
                                   # output: hints modulate the per-pixel output layer (local);
                                   # blocks: hints modulate every pixel block, as the seeds' code does
    prediction: str = choice("velocity", "image", "noise", cite={
        "PixelDiT": "sec. 3.4: f_theta predicts v_t directly (seeds 000 #7)",
        "JiT": ": the network predicts the clean image", "DiT": "code: noise prediction"})
                                   # what the network outputs: velocity (PixelDiT) | image (JiT) | noise (DiT)
    flow_time: str = choice("data_at_1", "data_at_0", cite={
        "PixelDiT": "official code: t = 1 is data, x_t = t x + (1 - t) eps, v = x - eps", "JiT": "code: t = 1 is data",
        "SiT": "t = 0 is data", "REPA": "code (loss.py): SiT's time, velocity eps - x"})
                                   # the network's time input under rectified flow:
                                   # data_at_1: t = 1 is data, velocity x - eps (PixelDiT, JiT) | data_at_0: t = 0 is
                                   # data, x_t = (1-t) x + t eps, velocity eps - x (SiT, REPA)
    learn_sigma: bool = switch(False, cite={"DiT": "code: learned sigma"})
                                   # DiT: also predict the variance (doubles the output channels)

    # ---- pixel-level pathway [PixelDiT 3.2, Figure 2] ----------------------------------------
    pixel_pathway: bool = switch(True, family="transformer")
                                   # off: the patch tokens are decoded by `decoder` (DiT's patch final layer by
                                   # default: a plain DiT/16-style model)
    pixel_depth: int = switch(4, family="transformer", inert_when=NO_PIXELS,
                              cite={"PixelDiT": "Table 6: M = 4 pixel blocks for XL (seeds 001 #2)"})
                                   # M PiT blocks
    pixel_dim: int = switch(16, family="transformer", inert_when=NO_PIXELS, cite={"PixelDiT": "Table 6: D_pix = 16"})
                                   # D_pix
    pixel_mlp_ratio: float = switch(4.0, family="transformer", inert_when=NO_PIXELS)
                                   # GELU MLP at width D_pix
    gelu: str = choice("exact", "tanh", inert_when=f"ffn=swiglu, {NO_PIXELS}", cite={
        "PixelDiT": "official code: exact GELU in the PiT MLP (modules.MLP, nn.GELU())",
        "DiT": "code (models.py): GELU with the tanh approximation",
        "DiffiT": "official code (diffit/diffit.py): GELU with the tanh approximation",
        "SiT": 'code: GELU(approximate="tanh")'})
                                   # GELU of every GELU MLP: exact (PixelDiT code: the PiT MLP's nn.GELU()) |
                                   # tanh approximation (DiT, DiffiT, SiT: GELU(approximate="tanh"))
    adaln: str = choice("C", "A", "B", family="transformer", inert_when=NO_PIXELS, cite={
        "PixelDiT": "sec. 3.2, Fig. 2(C): pixel-wise AdaLN (seeds 000 #1)",
        "seeds": "000 #1: patch-wise AdaLN (B) in the seeds' code"})
                                   # C: pixel-wise, Linear(D -> p^2 * 6 * D_pix) (PixelDiT);
                                   # A: one global vector for all pixels (mean of s_cond over patches);
                                   # B: patch-wise, repeated over the p^2 pixels (the seeds' code)
    pixel_modulation: str = choice("pre_gated", "post", family="transformer", inert_when=NO_PIXELS)
                                   # pre_gated: 6-way adaLN-Zero | post: 4-way post-modulation, no gates
    s_cond_timestep: bool = switch(True, family="transformer", inert_when=NO_PIXELS, cite={
        "PixelDiT": "sec. 3.1: s_cond := s_N + t (seeds 000 #2)", "seeds": "000 #2: s_cond = s_N in the seeds' code"})
                                   # s_cond = s_N + t_emb (PixelDiT); off: s_cond = s_N (the seeds' code)
    pixel_attention: bool = switch(True, family="transformer", inert_when=NO_PIXELS)
                                   # off: the "no pixel-pathway attention" row (279 GFLOPs)
    compaction: Optional[int] = switch(None, family="transformer", inert_when=(NO_PIXELS, "pixel_attention=false"),
                                       cite={"PixelDiT": "sec. 3.2: PTC compacts all p^2 pixels of a patch "
                                                         "(seeds 000 #3)"})
                                   # r pixels per attention token, r | p^2; None = p^2 (PixelDiT's PTC);
                                   # 1 = attention over every pixel (Table 4's OOM row)
    pixel_attn_dim: Optional[int] = switch(None, family="transformer", inert_when=(NO_PIXELS, "pixel_attention=false"),
                                           cite={"PixelDiT": "sec. 3.2: attention over L tokens at width D "
                                                             "(seeds 000 #3)",
                                                 "seeds": "000 #3: tokens of width D_pix in the seeds' code"})
                                   # width of the compacted tokens; None = D (PixelDiT); the seeds: D_pix
    pixel_heads: Optional[int] = switch(None, family="transformer", inert_when=(NO_PIXELS, "pixel_attention=false"),
                                        cite={"PixelDiT": "official code: pixel attention with the patch heads"})
                                   # heads of pixel attention; None = num_heads

    # ---- REPA hook [REPA 3.2; PixelDiT 3.4] --------------------------------------------------
    repa: bool = switch(False, family="transformer", cite={
        "PixelDiT": "sec. 3.4: REPA with a frozen DINOv2 (seeds 000 #4)",
        "REPA": "sec. 3.2: patch tokens aligned with a frozen encoder's features"})
                                   # build the projector and return aligned features
    repa_block: int = switch(8, family="transformer", inert_when="repa=false", cite={
        "PixelDiT": "sec. 3.4: aligned at the 8th patch block (seeds 000 #4)", "REPA": "aligned at block 8"})
                                   # patch tokens after this many blocks are aligned (both papers: 8)
    repa_projector: str = choice("mlp", "linear", family="transformer", inert_when="repa=false", cite={
        "PixelDiT": "official code: MLP D -> D -> D -> 768 with SiLU", "REPA": "3 linears with SiLU"})
                                   # mlp: 3 linears with SiLU (REPA, PixelDiT) | linear (the seeds' code)
    repa_hidden: int = switch(2048, family="transformer", inert_when="repa=false", cite={
        "PixelDiT": "official code: projector width D", "REPA": "projector width 2048"})
                                   # projector width: 2048 (REPA); D (PixelDiT)
    repa_dim: int = switch(768, family="transformer", inert_when="repa=false")
                                   # encoder feature width (DINOv2 ViT-B/14: 768)

    # ---- pixel decoders, token routing, mixture of experts [DeCo; PixNerd; TREAD, SPRINT; ProMoE] -------
    decoder: str = choice("linear", "deco", "nerf", family="transformer", inert_when=PIXELS, cite={
        "DiT": "code (models.py): adaLN, linear to p*p*C, unpatchify",
        "DeCo": "code (dit_c2i_DeCo.py): a light pixel decoder conditioned on the DiT's output",
        "PixNerd": "code (pixnerd_c2i.py): a per-patch neural field whose weights the DiT predicts"})
                                   # how patch tokens become pixels without the pixel pathway: linear: DiT's final
                                   # layer (adaLN, linear to p*p*C_out, unpatchify) | deco: DeCo's pixel decoder
                                   # (pixel value + DCT position in the patch, adaLN MLP blocks modulated pixel-wise
                                   # by SiLU(s_N + t)) | nerf: PixNerd's neural field (MLP blocks whose weights are
                                   # predicted per patch from SiLU(s_N + t))
    decoder_dim: int = switch(32, family="transformer", inert_when=(PIXELS, "decoder=linear"), cite={
        "DeCo": "code (DeCo_XL.yaml): hidden_size_x 32", "PixNerd": "code (pix256std1_repa_pixnerd_xl.yaml): "
                                                                   "hidden_size_x 64"})
                                   # width of the decoder's per-pixel features (DeCo: 32, PixNerd: 64)
    decoder_depth: int = switch(3, family="transformer", inert_when=(PIXELS, "decoder=linear"), cite={
        "DeCo": "code (DeCo_XL.yaml): num_blocks 31 - num_cond_blocks 28 = 3 decoder blocks",
        "PixNerd": "code (pix256std1_repa_pixnerd_xl.yaml): 30 - 26 = 4 neural-field blocks"})
                                   # decoder blocks (DeCo: 3, PixNerd: 4)
    decoder_mlp_ratio: int = switch(2, family="transformer", inert_when=(PIXELS, "decoder=linear", "decoder=deco"),
                                    cite={"PixNerd": "code: nerf_mlpratio 2"})
                                   # hidden width / decoder_dim of PixNerd's neural-field MLPs
    token_routing: str = choice("none", "tread", "sprint", family="transformer", cite={
        "TREAD": ": a random part of the tokens skips a route of blocks in training; nothing at inference",
        "SPRINT": ": the dense tokens fused with the sparse route's output, Linear([dense, deep])",
        "PRX": "code (prx/algorithm/tread.py, sprint.py)"})
                                   # in training, routing_fraction of the patch tokens skip blocks routing_start ..
                                   # routing_end: tread: they come back unchanged (the same model at inference) |
                                   # sprint: dense and routed streams fused by a linear, a [MASK] token where routed
                                   # (the fusion also runs at inference) | none
    routing_fraction: float = switch(0.5, family="transformer", inert_when="token_routing=none", cite={
        "PRX": "configs (JIT-benchmark/TREAD.yaml): routing_probability 0.5; SPRINT.yaml: 0.75",
        "SPRINT": ": up to 75% of the tokens dropped"})
                                   # fraction of the patch tokens routed past the blocks (TREAD 0.5, SPRINT 0.75)
    routing_start: int = switch(2, family="transformer", inert_when="token_routing=none",
                                cite={"PRX": "configs (TREAD.yaml, SPRINT.yaml): route_start 2"})
                                   # the first block the routed tokens skip (block index from 0)
    routing_end: int = switch(12, family="transformer", inert_when="token_routing=none",
                              cite={"PRX": "configs (TREAD.yaml, SPRINT.yaml): route_end 12, of 16 blocks"})
                                   # the last block they skip; they rejoin after it
    moe_experts: int = switch(0, family="transformer", cite={
        "ProMoE": "code (pix256_promoe_*.yaml): 12 routed experts on the odd patch blocks"})
                                   # routed experts of ProMoE's FFN on the odd patch blocks (1, 3, ...); 0: dense.
                                   # Top-1 by cosine to learned prototypes (output times that cosine), the null
                                   # label's tokens to an unconditional expert, a shared expert for every token; no
                                   # capacity limit. Adds the routing contrastive loss (logged as moe_routing)
    moe_expert_hidden: Optional[int] = switch(None, family="transformer", inert_when="moe_experts=0", cite={
        "ProMoE": "code: expert_intermediate_size 2D (a routed and the shared expert cost one dense FFN)"})
                                   # each expert's FFN width before SwiGLU's 2/3 (as mlp_ratio * D); None = 2 D
    moe_temperature: float = switch(0.07, family="transformer", inert_when="moe_experts=0",
                                    cite={"ProMoE": "code: rcl_temperature 0.07"})
                                   # temperature of the routing contrastive loss
    moe_loss_weight: float = switch(1.0, family="transformer", inert_when="moe_experts=0", cite={
        "ProMoE": "code: rcl_weight 1.0; the loss summed over the MoE blocks, added to the flow loss"})
                                   # weight of the routing contrastive loss in the training loss

    # ---- DiffiT [DiffiT 3.2, appendix H-I] -------------------------------------------------------
    architecture: str = choice("transformer", "unet")   # the model family (models/families.py): transformer: the
                                        # flat model above (DiT/JiT/PixelDiT/SiT/latent DiffiT) | unet: DiffiT's
                                        # image-space U-Net (uses the unet_* fields, not depth/hidden_size/num_heads/
                                        # patch_size or the pixel pathway)
    time_conditioning: str = choice("adaln", "tmsa", family="transformer", cite={
        "DiT": "adaLN-Zero", "DiffiT": "5.9: TMSA instead of DiT's modulation"})
                                        # flat model's blocks: adaln: adaLN-Zero (DiT) | tmsa: DiffiT blocks, the time
                                        # token enters only through them (TMSA instead of DiT's modulation, DiffiT 5.9)
    tmsa_time: str = choice("qkv", "none", "rel_bias", "mlp", inert_when=ADALN_BLOCKS, cite={
        "DiffiT": "eq. 3-5: q, k, v each take a projection of the time token (Table 6)"})
                                        # where a DiffiT block takes the time token, DiffiT's Table 6: qkv (TMSA) |
                                        # none (plain self-attention) | rel_bias (config F) | mlp (config G)
    rel_pos_bias: str = choice("none", "relative", inert_when=ADALN_BLOCKS, cite={
        "DiffiT": "eq. 6: relative position bias B"})
                                        # relative: learned bias per head and offset
    window_size: Optional[int] = switch(None, inert_when=ADALN_BLOCKS, cite={
        "DiffiT": "I.1 and 5.10: local windows of 4 for CIFAR-10"})
                                        # DiffiT blocks attend in w x w windows; None or >= the map: whole map
                                        # (DiffiT: CIFAR-10 4, FFHQ-64 8; latent: the whole 16x16 grid)
    window_shift: bool = switch(False, inert_when=(ADALN_BLOCKS, "window_size=null"), cite={
        "Swin": "shifted windows in alternate blocks"})
                                        # shift alternate blocks' windows by w/2 (Swin); not in DiffiT
    time_embed_dim: Optional[int] = switch(None, inert_when=ADALN_BLOCKS, cite={
        "DiffiT": "Table 3: time dimension 512"})
                                        # width of DiffiT's time token; None = hidden_size
    unet_channels: List[int] = switch(factory=lambda: [128, 256, 256], family="unet", cite={
        "DiffiT": "Tables S.2-S.3 and I.1: 128, then 256 kept constant"})
                                        # width per level
    unet_blocks: List[int] = switch(factory=lambda: [4, 4, 4], family="unet", cite={
        "DiffiT": "H.1: L1 = L2 = L3 = 4 (I.1 says 2 per stage)"})
                                        # ResBlocks L_i per level
    unet_head_dim: int = switch(64, family="unet", cite={"EDM": "code: 64 channels per attention head"})
                                        # channels per attention head in the U-Net (not in the paper; EDM's 64)
    gn_groups: int = switch(32, family="unet")   # GroupNorm groups of the ResBlocks and head

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

    @property
    def moe_hidden(self) -> int:
        return 2 * self.hidden_size if self.moe_expert_hidden is None else self.moe_expert_hidden

    def moe_blocks(self) -> range:
        """Indices of the patch blocks with ProMoE's FFN: the odd ones [ProMoE code]."""
        return range(1, self.depth, 2) if self.moe_experts else range(0)

    @property
    def random_in_training(self) -> bool:
        """Whether a training forward draws random numbers (dropout, token routing)."""
        return self.dropout > 0 or self.token_routing != "none"

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

    def canonical(self) -> "ModelConfig":
        """The same model with every value that equals what its None means written as None (`compaction=16`
        at patch 4 is PixelDiT's default p^2), so that one model is written one way (training signatures)."""
        whole_map = self.grid_size if self.architecture == "transformer" else self.input_size
        same = {"compaction": self.compaction == self.patch_size ** 2,
                "pixel_attn_dim": self.pixel_attn_dim == self.hidden_size,
                "pixel_heads": self.pixel_heads == self.num_heads,
                "time_embed_dim": self.time_embed_dim == self.hidden_size,
                "window_size": self.window_size is not None and self.window_size >= whole_map
                and not self.window_shift}      # (a shifted whole-map window is not the whole map)
        return self.replace(**{name: None for name, equal in same.items() if equal})

    def inert_fields(self) -> dict[str, str]:
        """Switches that have no effect on this model, each with the setting that makes it so (e.g.
        `adaln` without a pixel pathway): what a config comparison should not list as a difference."""
        return inert_fields(self)

