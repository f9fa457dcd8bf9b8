"""Named configurations: each paper's models as overrides of the `ModelConfig` defaults (PixelDiT-XL).

Published sizes each preset reproduces (checked in tests/test_presets.py):
  PixelDiT-B/L/XL 184M/569M/797M, 311 GFLOPs for XL at 256      [PixelDiT Table 6]
  JiT-B/L/H-16 131M/459M/953M, B/16 25 GMACs                     [JiT Table]
  DiT-S/B/L/XL-2 33M/130M/458M/675M, XL/2 119 GMACs              [DiT Table 1]
  latent DiffiT 561M                                             [DiffiT Table 9]
  SiT-XL/2 675M (REPA's SiT-XL/2: the same network)              [SiT Table; REPA]
  PixelGen-XL/16 676M                                            [PixelGen README]
and the exact trainable parameter counts of the official codes (`PUBLISHED[...]["official"]`).
The image-space DiffiT models have no published parameter count; `python -m models.inspect` prints ours.
REPA projectors are trained alongside and dropped for sampling; they are counted apart from these.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from toolkit.errors import ConfigError, from_omegaconf, unknown

from .config import ModelConfig
from .families import miniature  # noqa: F401  (each family's toy size; importable from here as before)

# PixelDiT official code (pixdit_core/pixeldit_c2i.py, c2i/configs/pix256_xl.yaml) is the ModelConfig
# default: linear patch embedding, RoPE only at linspace(0, 16, g) positions, RMSNorm with weights and
# q/k-norm, no qkv bias, bias-free SwiGLU, t in [0, 1] with max period 10, velocity output, exact-GELU
# PiT MLP; the REPA projector MLP D -> D -> D -> 768 on block 8 (c2i/src/diffusion.py REPATrainer).
PIXELDIT = dict(repa=True)

# JiT (model_jit.py): bottleneck patch embedding, abs sin-cos + RoPE at integer positions, qkv bias,
# SwiGLU with biases, 32 in-context class tokens, image (x) output, sinusoid max period 10000.
JIT = dict(patch_embed="bottleneck", bottleneck_dim=128, pos_embed="both", rope_positions="index",
           qkv_bias=True, ffn_bias=True, time_max_period=10000.0, in_context_tokens=32, prediction="image",
           pixel_pathway=False)

# DiT (models.py): LayerNorm without affine, abs sin-cos, GELU(tanh) MLP, qkv bias, noise output with
# learned sigma, on SD-VAE latents 4x32x32 with patch 2.
DIT = dict(pos_embed="abs_sincos", norm="layernorm", norm_affine=False, qk_norm=False, qkv_bias=True,
           ffn="gelu", gelu="tanh", ffn_bias=True, time_max_period=10000.0, prediction="noise", learn_sigma=True,
           pixel_pathway=False, in_channels=4, input_size=32, latent_downsample=8, patch_size=2)


def _sizes(depth, hidden, heads, **more):
    return dict(depth=depth, hidden_size=hidden, num_heads=heads, **more)


PRESETS: dict[str, dict] = {
    # ---- PixelDiT [PixelDiT Table 6]: patch 16, D_pix 16; REPA projector width D
    "pixeldit_b": {**PIXELDIT, **_sizes(12, 768, 12, pixel_depth=2, repa_hidden=768)},
    "pixeldit_l": {**PIXELDIT, **_sizes(22, 1024, 16, pixel_depth=4, repa_hidden=1024)},
    "pixeldit_xl": {**PIXELDIT, **_sizes(26, 1152, 16, pixel_depth=4, repa_hidden=1152)},
    # ---- JiT: in-context tokens before block 4/8/10; dropout only for H (in the middle half)
    "jit_b16": {**JIT, **_sizes(12, 768, 12, in_context_start=4)},
    "jit_l16": {**JIT, **_sizes(24, 1024, 16, in_context_start=8)},
    "jit_h16": {**JIT, **_sizes(32, 1280, 16, in_context_start=10, bottleneck_dim=256, dropout=0.2)},
    "jit_b32": {**JIT, **_sizes(12, 768, 12, in_context_start=4), "patch_size": 32, "input_size": 512},
    "jit_l32": {**JIT, **_sizes(24, 1024, 16, in_context_start=8), "patch_size": 32, "input_size": 512},
    "jit_h32": {**JIT, **_sizes(32, 1280, 16, in_context_start=10, bottleneck_dim=256, dropout=0.2),
                "patch_size": 32, "input_size": 512},
    # ---- DiT [DiT Table 1], latent 4x32x32, patch 2
    "dit_s2": {**DIT, **_sizes(12, 384, 6)},
    "dit_b2": {**DIT, **_sizes(12, 768, 12)},
    "dit_l2": {**DIT, **_sizes(24, 1024, 16)},
    "dit_xl2": {**DIT, **_sizes(28, 1152, 16)},
    # ---- SiT-XL/2 with REPA [REPA models/sit.py, loss.py]: DiT-XL/2's network without learned sigma, a
    # velocity output in SiT's time (t = 0 is data), the projector MLP D -> 2048 -> 2048 -> 768 on block 8
    "sit_xl2_repa": {**DIT, **_sizes(28, 1152, 16), "learn_sigma": False, "prediction": "velocity",
                     "flow_time": "data_at_0", "repa": True},
    # "Vanilla DiT/16" of PixelDiT Table 4: DiT-XL's architecture on 256 px with patch 16, trained in
    # PixelDiT's codebase, so its conventions (velocity output, t in [0,1], REPA) are PixelDiT's.
    "dit_xl16": {**DIT, **_sizes(28, 1152, 16), "in_channels": 3, "input_size": 256, "latent_downsample": 1,
                 "patch_size": 16,
                 "learn_sigma": False, "prediction": "velocity", "time_max_period": 10.0,
                 "repa": True, "repa_block": 8, "repa_projector": "mlp", "repa_hidden": 1152},
}

# ---- PixelGen-XL/16 [PixelGen; configs_c2i/PixelGen_XL.yaml, src/models/transformer/JiT.py]: JiT's network at
# XL size (28 blocks of 1152, 16 heads) with a linear patch embedding (`use_bottleneck: false`), 32 in-context
# tokens before block 8, projection dropout 0.1 in the middle half, REPA's projector D -> D -> D -> 768 on block 8.
PRESETS["pixelgen_xl"] = {**JIT, **_sizes(28, 1152, 16, in_context_start=8), "patch_embed": "linear",
                          "dropout": 0.1, "repa": True, "repa_block": 8, "repa_hidden": 1152}

# ---- DiffiT [DiffiT 3.2, appendix H-I; official code]. Its blocks: TMSA (time in q, k, v) with a relative
# position bias, LayerNorm without affine, GELU-tanh MLP; the time token is t_emb + y_emb (no SiLU).
DIFFIT = dict(time_conditioning="tmsa", tmsa_time="qkv", rel_pos_bias="relative", cond_silu=False,
              norm="layernorm", norm_affine=False, qk_norm=False, qkv_bias=True, ffn="gelu", gelu="tanh",
              ffn_bias=True, in_context_tokens=0)

# Latent DiffiT [DiffiT H.2, Fig. S.1; code `Diffit()`]: DiT-XL/2's layout (SD-VAE latents 4x32x32, patch 2,
# abs sin-cos, learned sigma) with DiffiT blocks attending over the whole 16x16 grid and an unmodulated final
# layer. Appendix H.2 says 30 layers; the official constructor says 28, and 28 gives Table 9's 561M.
PRESETS["diffit_latent_xl2"] = {**DIT, **DIFFIT, **_sizes(28, 1152, 16), "window_size": None}

# Image-space DiffiT [DiffiT Fig. 4, Tables S.2-S.3, H.1, I.1]: 3x3-conv tokenizer, levels of DiffiT
# ResBlocks at 128 channels then 256 ("except from the first to the second stage, the number of channels is
# kept constant"), conv down/up-sampling, a time token of width 512 [Table 3] from a positional embedding
# [Table 8] of EDM's c_noise, windows of 4 (CIFAR-10) and 8 (FFHQ-64) [I.1, 5.10]; trained with EDM.
# Blocks per level: H.1 says L = 4,4,4 (CIFAR-10) and 4,4,4,4 (FFHQ-64), used here; I.1 says 2,2,2 and
# 1,2,2,2 (`unet_blocks=[...]` selects those). Heads of 64 channels are our assumption (not in the paper).
DIFFIT_UNET = {**DIFFIT, "architecture": "unet", "in_channels": 3, "latent_downsample": 1, "patch_size": 1,
               "pixel_pathway": False, "repa": False, "prediction": "image", "learn_sigma": False,
               "pos_embed": "abs_sincos", "time_embed_dim": 512, "time_freq_dim": 128,
               "time_max_period": 10000.0, "unet_head_dim": 64, "gn_groups": 32}
PRESETS["diffit_cifar10"] = {**DIFFIT_UNET, "input_size": 32, "num_classes": 10, "window_size": 4,
                             "unet_channels": [128, 256, 256], "unet_blocks": [4, 4, 4]}
PRESETS["diffit_ffhq64"] = {**DIFFIT_UNET, "input_size": 64, "num_classes": 1, "window_size": 8,
                            "unet_channels": [128, 256, 256, 256], "unet_blocks": [4, 4, 4, 4]}

# ---- PixelDiT Table 4, row by row (PixelDiT-XL, 80 epochs; gFID 9.84, 8.53, OOM, 3.50, 2.36).
# Rows 1-2 are DiT-XL/16; the dual-level rows use PixelDiT-XL's patch pathway (N=26, M=4) so that
# the last row is exactly `pixeldit_xl`. "+RoPE, RMSNorm" takes PixelDiT's own: RoPE at its positions
# (the default placement) and its RMSNorm with a learnable weight.
PRESETS.update({
    "table4_vanilla_dit16": PRESETS["dit_xl16"],
    "table4_rope_rmsnorm": {**PRESETS["dit_xl16"], "pos_embed": "rope", "norm": "rmsnorm", "norm_affine": True},
    "table4_dual_patchwise_nocompact": {**PRESETS["pixeldit_xl"], "adaln": "B", "compaction": 1},
    "table4_ptc": {**PRESETS["pixeldit_xl"], "adaln": "B"},
    "table4_pixelwise": PRESETS["pixeldit_xl"],
})

# ---- The seeds' own code (`jitmask`), as its code-vs-paper audits describe it before their fixes:
# JiT-B/16 plus 3 pixel blocks with patch-wise AdaLN (B) and no timestep in s_cond, compaction of 16
# pixels into tokens of width D_pix (4096 attention tokens at 256 px), GT pixel hints fed to every pixel
# block, in-context tokens, x-prediction, no REPA. The pixel attention head count is not recorded in
# the seeds; one head of width 16 is assumed.
PRESETS["jitmask"] = {**PRESETS["jit_b16"], "pixel_pathway": True, "pixel_depth": 3, "pixel_dim": 16,
                      "adaln": "B", "s_cond_timestep": False, "compaction": 16, "pixel_attn_dim": 16,
                      "pixel_heads": 1, "hint_fraction": 0.25, "hint_loss_weight": 0.1,
                      "hint_path": "blocks"}


# Published sizes: parameters, and forward cost in each paper's own unit (PixelDiT reports FLOPs,
# DiT and JiT report multiply-accumulates) with the tolerance the tests hold us to; `official` is the
# exact trainable parameter count of the official code's model (frozen position tables and the REPA
# projector apart), which the preset must equal.
PUBLISHED: dict[str, dict] = {
    "pixeldit_b": dict(params=184e6, params_tol=0.005, official=184_749_155),
    "pixeldit_l": dict(params=569e6, params_tol=0.005, official=569_648_963),
    "pixeldit_xl": dict(params=797e6, params_tol=0.005, official=797_383_203, gflops=311, flops_tol=0.03),
    "jit_b16": dict(params=131e6, params_tol=0.01, official=131_123_712, gmacs=25, flops_tol=0.05),
    "jit_l16": dict(params=459e6, params_tol=0.01, official=458_877_664, gmacs=88, flops_tol=0.05),
    "jit_h16": dict(params=953e6, params_tol=0.01, official=952_514_368, gmacs=182, flops_tol=0.05),
    "jit_b32": dict(official=133_190_400),
    "jit_l32": dict(official=461_534_176),
    "jit_h32": dict(official=956_055_616),
    "dit_s2": dict(params=33e6, params_tol=0.01, official=32_865_056),
    "dit_b2": dict(params=130e6, params_tol=0.01, official=130_315_808),
    "dit_l2": dict(params=458e6, params_tol=0.01, official=457_840_672),
    "dit_xl2": dict(params=675e6, params_tol=0.01, official=674_834_720, gmacs=119, flops_tol=0.03),
    "sit_xl2_repa": dict(params=675e6, params_tol=0.01, official=674_816_272),
    "table4_dual_patchwise_nocompact": dict(gflops=82247, flops_tol=0.01),
    "diffit_latent_xl2": dict(params=561e6, params_tol=0.005, official=561_035_232),
    "pixelgen_xl": dict(params=676e6, params_tol=0.005, official=676_699_200),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def model_config(preset: str, overrides: Iterable[str] = (), source: str = "overrides") -> ModelConfig:
    """Resolve a preset plus `key=value` overrides (e.g. `adaln=B`, `compaction=16`) into a checked config.

    Errors are one line naming the key: unknown presets, unknown keys, wrongly typed values and
    invalid combinations are all refused before anything is built.
    """
    if preset not in PRESETS:
        raise unknown("model", preset, preset_names(), "preset")
    base = OmegaConf.structured(ModelConfig(**PRESETS[preset]))
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, reason="expected key=value", source=source)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        keys = [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)]
        raise from_omegaconf(err, source, keys, prefix="model.") from None
    return OmegaConf.to_object(merged).validate()

