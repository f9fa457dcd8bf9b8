"""The model families of the zoo, in one place: each `architecture` value maps to the module and class
that build it, the checks only it needs, and its miniature (the same switches at toy size).

    transformer  models.transformer.DiffusionTransformer  DiT, JiT, PixelDiT, SiT/REPA, latent DiffiT
    unet         models.diffit.DiffiTUNet                 DiffiT's image-space U-Net [DiffiT Fig. 4]

Nothing else branches on `cfg.architecture`: `ModelConfig.validate` runs the common checks and then the
family's, `build_model` builds the family's class, `miniature` shrinks a config the family's way. The
classes are imported when first built, so validating a config imports no model code. Which switches act in
which family is declared on the fields (`family=`, `inert_when=` in models/config.py).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from toolkit.errors import ConfigError

if TYPE_CHECKING:                     # torch loads when a model is built, not when a config is checked
    import torch
    from torch import nn

    from .config import ModelConfig  # the config dispatches to its family: no import back at run time


@dataclass(frozen=True)
class Family:
    module: str                                                  # where the model class lives
    model: str                                                   # its name there; built as model(cfg)
    validate: Callable[[ModelConfig], None]                      # checks only this family needs
    miniature: Callable[[ModelConfig, int, int, int], ModelConfig]   # (cfg, hidden_size, depth, pixel_depth)

    def model_class(self) -> type[nn.Module]:
        return getattr(importlib.import_module(self.module), self.model)


def check_window(cfg: ModelConfig, size: int, where: str) -> None:
    """DiffiT's windows (`window_size`, None = the whole map) must tile a size x size map."""
    if cfg.window_size is None:
        return
    if cfg.window_size <= 0:
        raise ConfigError("model.window_size", cfg.window_size, "must be positive (or null: the whole map)")
    if size % min(cfg.window_size, size):
        raise ConfigError("model.window_size", cfg.window_size, f"does not tile {where}")


def check_heads(dim_key: str, dim: int, heads_key: str, heads: int, rope: bool) -> None:
    if heads <= 0 or dim % heads:
        raise ConfigError(f"model.{heads_key}", heads, f"must divide model.{dim_key}={dim}")
    if rope and (dim // heads) % 4:
        raise ConfigError(f"model.{heads_key}", heads, f"2D RoPE needs a head width divisible by 4, "
                          f"got {dim_key}/{heads_key}={dim // heads}")


# ---- the flat transformer -----------------------------------------------------------------------

def validate_transformer(cfg: ModelConfig) -> None:
    if cfg.hint_fraction > 0 and not cfg.pixel_pathway:
        raise ConfigError("model.hint_fraction", reason="GT pixel hints need the pixel pathway "
                          "(model.pixel_pathway=true)")
    if cfg.time_conditioning == "tmsa":
        if cfg.in_context_tokens:
            raise ConfigError("model.in_context_tokens", reason="in-context tokens have no place on the grid of "
                              "DiffiT's windows (model.time_conditioning=tmsa needs 0)")
        check_window(cfg, cfg.grid_size, "the patch grid")
    if cfg.time_embed_dim not in (None, cfg.hidden_size):
        raise ConfigError("model.time_embed_dim", cfg.time_embed_dim, f"the flat model's time token has "
                          f"the width of its tokens, model.hidden_size={cfg.hidden_size}")
    if cfg.repa and not 1 <= cfg.repa_block <= cfg.depth:
        raise ConfigError("model.repa_block", cfg.repa_block, f"REPA block beyond depth={cfg.depth} "
                          f"(valid: 1..{cfg.depth})")
    validate_decoder_routing_moe(cfg)
    if cfg.pixel_pathway:
        p = cfg.patch_size
        if cfg.pixel_depth <= 0:
            raise ConfigError("model.pixel_depth", cfg.pixel_depth, "must be positive")
        r = cfg.compaction_rate
        if r <= 0 or (p * p) % r:
            raise ConfigError("model.compaction", cfg.compaction, f"the compaction rate must divide "
                              f"patch_size^2={p * p}")
        if cfg.pixel_attention:
            check_heads("pixel_attn_dim", cfg.attn_dim, "pixel_heads", cfg.attn_heads, cfg.uses_rope)


def validate_decoder_routing_moe(cfg: ModelConfig) -> None:
    """The pixel decoders [DeCo, PixNerd], token routing [TREAD, SPRINT] and ProMoE's FFN."""
    if not cfg.pixel_pathway and cfg.decoder != "linear":
        for key in ("decoder_dim", "decoder_depth", "decoder_mlp_ratio"):
            if getattr(cfg, key) <= 0:
                raise ConfigError(f"model.{key}", getattr(cfg, key), "must be positive")
    if cfg.token_routing != "none":
        if cfg.time_conditioning == "tmsa":
            raise ConfigError("model.token_routing", cfg.token_routing, "DiffiT blocks (model.time_conditioning="
                              "tmsa) see the whole token grid; routing drops tokens from it")
        if not 0.0 < cfg.routing_fraction < 1.0:
            raise ConfigError("model.routing_fraction", cfg.routing_fraction, "must be in (0, 1)")
        if not 0 <= cfg.routing_start < cfg.routing_end < cfg.depth:
            raise ConfigError("model.routing_end", cfg.routing_end, f"the route needs 0 <= model.routing_start="
                              f"{cfg.routing_start} < routing_end < depth={cfg.depth}")
        if cfg.repa and cfg.routing_start < cfg.repa_block <= cfg.routing_end:
            raise ConfigError("model.repa_block", cfg.repa_block, f"REPA would align only the tokens left on the "
                              f"route (blocks {cfg.routing_start}..{cfg.routing_end}); align before or after it")
    if cfg.moe_experts:
        if cfg.moe_experts < 0:
            raise ConfigError("model.moe_experts", cfg.moe_experts, "must be >= 0 (0: dense FFNs)")
        if cfg.time_conditioning == "tmsa" or cfg.ffn != "swiglu":
            key, value = ("model.ffn", cfg.ffn) if cfg.ffn != "swiglu" else ("model.time_conditioning", "tmsa")
            raise ConfigError(key, value, "ProMoE's experts are the SwiGLU FFNs of adaLN patch blocks "
                              "(model.ffn=swiglu, model.time_conditioning=adaln)")
        if cfg.moe_hidden <= 0:
            raise ConfigError("model.moe_expert_hidden", cfg.moe_expert_hidden, "must be positive")
        if cfg.moe_temperature <= 0:
            raise ConfigError("model.moe_temperature", cfg.moe_temperature, "must be positive")


def miniature_transformer(cfg: ModelConfig, hidden_size: int, depth: int, pixel_depth: int) -> ModelConfig:
    """16 patches (patch at most 8), `depth` blocks of width `hidden_size`, 4 heads, at most 4 in-context tokens;
    pixel decoders of width 8, at most 3 experts of SwiGLU width `hidden_size` (16-byte rows for grouped_mm)."""
    patch = min(cfg.patch_size, 8)
    compaction = cfg.compaction if cfg.compaction is None or (patch * patch) % cfg.compaction == 0 else None
    return cfg.replace(
        input_size=4 * patch, patch_size=patch, num_classes=10, depth=depth, hidden_size=hidden_size,
        num_heads=4, bottleneck_dim=16, in_context_tokens=min(cfg.in_context_tokens, 4),
        in_context_start=min(cfg.in_context_start, depth - 1), pixel_depth=min(cfg.pixel_depth, pixel_depth),
        compaction=compaction, pixel_attn_dim=None if cfg.pixel_attn_dim is None else 16,
        repa_block=min(cfg.repa_block, depth), repa_hidden=hidden_size, repa_dim=32,
        routing_start=max(0, min(cfg.routing_start, depth - 3)), routing_end=min(cfg.routing_end, depth - 1),
        decoder_dim=min(cfg.decoder_dim, 8), decoder_depth=min(cfg.decoder_depth, 2),
        moe_experts=min(cfg.moe_experts, 3), moe_expert_hidden=3 * hidden_size // 2,   # SwiGLU width D, aligned
    ).validate()


# ---- DiffiT's image-space U-Net -------------------------------------------------------------------

def validate_unet(cfg: ModelConfig) -> None:
    for key in ("pixel_pathway", "repa"):
        if getattr(cfg, key):
            raise ConfigError(f"model.{key}", True, "not available with model.architecture=unet")
    if cfg.hint_fraction > 0:
        raise ConfigError("model.hint_fraction", reason="GT pixel hints need model.architecture=transformer")
    chs, blocks = list(cfg.unet_channels), list(cfg.unet_blocks)
    if not chs or len(blocks) != len(chs):
        raise ConfigError("model.unet_blocks", blocks, f"one entry per level of model.unet_channels={chs}")
    if min(blocks) < 1:
        raise ConfigError("model.unet_blocks", blocks, "every level needs at least one ResBlock")
    if cfg.input_size % 2 ** (len(chs) - 1):
        raise ConfigError("model.input_size", cfg.input_size, f"not divisible by 2^{len(chs) - 1} for "
                          f"{len(chs)} U-Net levels")
    for ch in chs:
        if ch <= 0 or ch % cfg.unet_head_dim:
            raise ConfigError("model.unet_channels", chs, f"every width must be a positive multiple of "
                              f"model.unet_head_dim={cfg.unet_head_dim}")
        if cfg.gn_groups <= 0 or ch % cfg.gn_groups:
            raise ConfigError("model.gn_groups", cfg.gn_groups, f"must divide every width of "
                              f"model.unet_channels={chs}")
    for size in cfg.unet_sizes:
        check_window(cfg, size, f"a {size}x{size} U-Net level")


def miniature_unet(cfg: ModelConfig, hidden_size: int, depth: int, pixel_depth: int) -> ModelConfig:
    """16x16 pixels, the same number of levels at widths hidden_size/4 .. hidden_size/2, one ResBlock each."""
    levels = len(cfg.unet_channels)
    channels = [hidden_size // 4] + [hidden_size // 2] * (levels - 1)
    return cfg.replace(
        input_size=2 ** (levels + 1), num_classes=10, unet_channels=channels, unet_blocks=[1] * levels,
        unet_head_dim=8, gn_groups=4, time_embed_dim=hidden_size, time_freq_dim=32,
        window_size=None if cfg.window_size is None else 2,
    ).validate()


# ---- the registry -----------------------------------------------------------------------------------

# Its keys are the allowed values of `ModelConfig.architecture` (tests/test_model_behaviour.py checks both agree).
FAMILIES: dict[str, Family] = {
    "transformer": Family("models.transformer", "DiffusionTransformer", validate_transformer, miniature_transformer),
    "unet": Family("models.diffit", "DiffiTUNet", validate_unet, miniature_unet),
}


def family(cfg: ModelConfig) -> Family:
    return FAMILIES[cfg.architecture]


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> nn.Module:
    """Build (and validate) the model of `cfg.architecture`; `device='meta'` allocates nothing, for
    counting and planning. Every model maps (x, t, y[, hint, hint_mask]) to a `ModelOutput`."""
    import torch
    with torch.device(device or "cpu"):
        return family(cfg).model_class()(cfg)


def miniature(cfg: ModelConfig, hidden_size: int = 64, depth: int = 2, pixel_depth: int = 1) -> ModelConfig:
    """The same switches at toy size, for CPU tests and benchmarks (each family shrinks its own way)."""
    return family(cfg).miniature(cfg, hidden_size, depth, pixel_depth)
