"""Named configurations: each paper's models as overrides of the `ModelConfig` defaults (PixelDiT-XL).

Published sizes each preset reproduces (checked in tests/test_presets.py):
  PixelDiT-B/L/XL 184M/569M/797M, 311 GFLOPs for XL at 256      [PixelDiT Table 6]
  JiT-B/L/H-16 131M/459M/953M, B/16 25 GMACs                     [JiT Table]
  DiT-S/B/L/XL-2 33M/130M/458M/675M, XL/2 119 GMACs              [DiT Table 1]
  latent DiffiT 561M                                             [DiffiT Table 9]
The image-space DiffiT models have no published parameter count; `python -m models.inspect` prints ours.
REPA projectors are trained alongside and dropped for sampling; they are counted apart from these.
"""
from __future__ import annotations

from typing import Iterable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, ModelConfig

# PixelDiT official code: linear patch embedding, RoPE only, RMSNorm + q/k-norm, no qkv bias,
# bias-free SwiGLU, t in [0, 1] with max period 10, velocity output, REPA MLP D -> D -> D -> 768
# on block 8. These are the ModelConfig defaults; listed here so the table reads on its own.
PIXELDIT = dict(patch_embed="linear", pos_embed="rope", norm="rmsnorm", qk_norm=True, qkv_bias=False,
                ffn="swiglu", ffn_bias=False, time_max_period=10.0, prediction="velocity",
                pixel_pathway=True, pixel_dim=16, adaln="C", s_cond_timestep=True, compaction=None,
                repa=True, repa_block=8, repa_projector="mlp")

# JiT: bottleneck patch embedding, abs sin-cos + RoPE, qkv bias, SwiGLU with biases, 32 in-context
# class tokens, image (x) output, sinusoid max period 10000, no pixel pathway.
JIT = dict(patch_embed="bottleneck", bottleneck_dim=128, pos_embed="both", norm="rmsnorm", qk_norm=True,
           qkv_bias=True, ffn="swiglu", ffn_bias=True, time_max_period=10000.0, in_context_tokens=32,
           prediction="image", pixel_pathway=False, repa=False)

# DiT: LayerNorm without affine, abs sin-cos, GELU(tanh) MLP, qkv bias, noise output with learned
# sigma, on SD-VAE latents 4x32x32 with patch 2.
DIT = dict(patch_embed="linear", pos_embed="abs_sincos", norm="layernorm", qk_norm=False, qkv_bias=True,
           ffn="gelu", ffn_bias=True, time_max_period=10000.0, prediction="noise", learn_sigma=True,
           pixel_pathway=False, repa=False, in_channels=4, input_size=32, latent_downsample=8, patch_size=2)


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
    # "Vanilla DiT/16" of PixelDiT Table 4: DiT-XL's architecture on 256 px with patch 16, trained in
    # PixelDiT's codebase, so its conventions (velocity output, t in [0,1], REPA) are PixelDiT's.
    "dit_xl16": {**DIT, **_sizes(28, 1152, 16), "in_channels": 3, "input_size": 256, "latent_downsample": 1,
                 "patch_size": 16,
                 "learn_sigma": False, "prediction": "velocity", "time_max_period": 10.0,
                 "repa": True, "repa_block": 8, "repa_projector": "mlp", "repa_hidden": 1152},
}

# ---- DiffiT [DiffiT 3.2, appendix H-I; official code]. Its blocks: TMSA (time in q, k, v) with a relative
# position bias, LayerNorm without affine, GELU-tanh MLP; the time token is t_emb + y_emb (no SiLU).
DIFFIT = dict(time_conditioning="tmsa", tmsa_time="qkv", rel_pos_bias="relative", cond_silu=False,
              norm="layernorm", qk_norm=False, qkv_bias=True, ffn="gelu", ffn_bias=True, in_context_tokens=0)

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
# the last row is exactly `pixeldit_xl`.
PRESETS.update({
    "table4_vanilla_dit16": PRESETS["dit_xl16"],
    "table4_rope_rmsnorm": {**PRESETS["dit_xl16"], "pos_embed": "rope", "norm": "rmsnorm"},
    "table4_dual_patchwise_nocompact": {**PRESETS["pixeldit_xl"], "adaln": "B", "compaction": 1},
    "table4_ptc": {**PRESETS["pixeldit_xl"], "adaln": "B"},
    "table4_pixelwise": PRESETS["pixeldit_xl"],
})

# ---- The seeds' own code (`jitmask`), as ../shared/seeds/000 and 001 describe it before their fixes:
# JiT-B/16 plus 3 pixel blocks with patch-wise AdaLN (B) and no timestep in s_cond, compaction of 16
# pixels into tokens of width D_pix (4096 attention tokens at 256 px), GT pixel hints fed to every pixel
# block, in-context tokens, x-prediction, no REPA. The pixel attention head count is not recorded in
# the seeds; one head of width 16 is assumed.
PRESETS["jitmask"] = {**PRESETS["jit_b16"], "pixel_pathway": True, "pixel_depth": 3, "pixel_dim": 16,
                      "adaln": "B", "s_cond_timestep": False, "compaction": 16, "pixel_attn_dim": 16,
                      "pixel_heads": 1, "hint_fraction": 0.25, "hint_loss_weight": 0.1,
                      "hint_path": "blocks"}


# Published sizes: parameters, and forward cost in each paper's own unit (PixelDiT reports FLOPs,
# DiT and JiT report multiply-accumulates) with the tolerance the tests hold us to.
PUBLISHED: dict[str, dict] = {
    "pixeldit_b": dict(params=184e6, params_tol=0.005),
    "pixeldit_l": dict(params=569e6, params_tol=0.005),
    "pixeldit_xl": dict(params=797e6, params_tol=0.005, gflops=311, flops_tol=0.03),
    "jit_b16": dict(params=131e6, params_tol=0.01, gmacs=25, flops_tol=0.05),
    "jit_l16": dict(params=459e6, params_tol=0.01, gmacs=88, flops_tol=0.05),
    "jit_h16": dict(params=953e6, params_tol=0.01, gmacs=182, flops_tol=0.05),
    "dit_s2": dict(params=33e6, params_tol=0.01),
    "dit_b2": dict(params=130e6, params_tol=0.01),
    "dit_l2": dict(params=458e6, params_tol=0.01),
    "dit_xl2": dict(params=675e6, params_tol=0.01, gmacs=119, flops_tol=0.03),
    "table4_dual_patchwise_nocompact": dict(gflops=82247, flops_tol=0.01),
    "diffit_latent_xl2": dict(params=561e6, params_tol=0.005),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def model_config(preset: str, overrides: Iterable[str] = (), source: str = "overrides") -> ModelConfig:
    """Resolve a preset plus `key=value` overrides (e.g. `adaln=B`, `compaction=16`) into a checked config.

    Errors are one line naming the key: unknown presets, unknown keys, wrongly typed values and
    invalid combinations are all refused before anything is built.
    """
    if preset not in PRESETS:
        raise ConfigError(f"model={preset!r}: unknown preset, expected one of {preset_names()}")
    base = OmegaConf.structured(ModelConfig(**PRESETS[preset]))
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: {item!r}: expected key=value")
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{source}: model.{key}: {reason}") from None
    return OmegaConf.to_object(merged).validate()


def miniature(cfg: ModelConfig, hidden_size: int = 64, depth: int = 2, pixel_depth: int = 1) -> ModelConfig:
    """The same switches at toy size, for CPU tests and benchmarks: 16 patches, 2 blocks, width 64
    (a U-Net: 16x16 pixels, the same number of levels at widths hidden_size/4 .. hidden_size/2)."""
    if cfg.architecture == "unet":
        levels = len(cfg.unet_channels)
        channels = [hidden_size // 4] + [hidden_size // 2] * (levels - 1)
        return cfg.replace(
            input_size=2 ** (levels + 1), num_classes=10, unet_channels=channels, unet_blocks=[1] * levels,
            unet_head_dim=8, gn_groups=4, time_embed_dim=hidden_size, time_freq_dim=32,
            window_size=None if cfg.window_size is None else 2,
        ).validate()
    patch = min(cfg.patch_size, 8)
    compaction = cfg.compaction if cfg.compaction is None or (patch * patch) % cfg.compaction == 0 else None
    return cfg.replace(
        input_size=4 * patch, patch_size=patch, num_classes=10, depth=depth, hidden_size=hidden_size,
        num_heads=4, bottleneck_dim=16, in_context_tokens=min(cfg.in_context_tokens, 4),
        in_context_start=min(cfg.in_context_start, depth - 1), pixel_depth=min(cfg.pixel_depth, pixel_depth),
        compaction=compaction, pixel_attn_dim=None if cfg.pixel_attn_dim is None else 16,
        repa_block=min(cfg.repa_block, depth), repa_hidden=hidden_size, repa_dim=32,
    ).validate()
