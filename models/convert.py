"""Official checkpoints in and out of the zoo, for the functions the presets compute.

    sd = convert_state_dict(official_sd, source="pixeldit", cfg=model_config("pixeldit_xl"))
    build_model(cfg).load_state_dict(sd, strict=True)        # computes the official PixDiT's output
    official_sd = export_state_dict(model.state_dict(), "pixeldit", cfg)

    python -m models.convert CKPT --source pixeldit --preset pixeldit_xl [key=value ...] --out OUT.safetensors
    python -m harness.train ... model.init_from=OUT.safetensors           # train (and sample) from them

Sources and the official code whose state_dict layout each one reads and writes:
  pixeldit       gcy-hub/PixelDiT  pixdit_core/pixeldit_c2i.py `PixDiT` (pre- or post-modulation PiT blocks, from
                 `cfg.pixel_modulation`); its REPA projector lives in the trainer, saved as
                 `diffusion_trainer.proj.0.*` (c2i/src/diffusion.py `REPATrainer`)
  jit            JiT (LTH14's model_jit.py `JiT`)
  pixelgen       Zehong-Ma/PixelGen src/models/transformer/JiT.py `JiT` with `use_bottleneck=False` (one conv patch
                 embedding); its REPA projector lives in the trainer, saved as `diffusion_trainer.proj.0.*`
  dit            facebookresearch/DiT models.py `DiT`
  diffit_latent  NVlabs/DiffiT diffit/diffit.py `DiffiT` (the latent model)
  sit_repa       sihyun-yu/REPA models/sit.py `SiT`, with its projector `projectors.0.*`

What differs between the layouts is names and three pure re-layouts (the functions are the same):
the patch-embedding columns (the official codes flatten a patch channel-first, we pixel-first), the
RoPE channel pairs (PixelDiT and JiT rotate adjacent channels, in their own orders; we rotate halves:
q and k are permuted per head, which leaves q.k unchanged), and PixelDiT's SwiGLU (w1, w3 -> our w12).
Frozen tables the official models keep in their state dicts (the sin-cos `pos_embed`, DiffiT's
`relative_position_index`) are checked against ours on the way in and written on the way out.

A REPA projector is trained alongside and dropped for sampling: taken from the checkpoint when the
config has one and the checkpoint holds it, dropped when the config has none, and freshly initialised
(seed 0, the zoo's init) when the config has one and the checkpoint does not (PixelDiT's model files).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from toolkit.errors import ConfigError
from toolkit.files import sha256

from .config import ModelConfig
from .diffit import relative_position_index
from .families import build_model
from .layers import sincos_2d

SOURCES = ("pixeldit", "jit", "dit", "diffit_latent", "sit_repa", "pixelgen")
NAMES = {"pixeldit": "PixelDiT (PixDiT)", "jit": "JiT", "dit": "DiT", "diffit_latent": "latent DiffiT",
         "sit_repa": "REPA's SiT", "pixelgen": "PixelGen (JiT)"}


# ---- re-layouts: official tensors <-> ours --------------------------------------------------------

class Same:
    def to_ours(self, t: Tensor) -> Tensor:
        return t

    def to_official(self, t: Tensor) -> tuple[Tensor, ...]:
        return (t,)


@dataclass(frozen=True)
class PatchColumns:
    """Patch embedding: official (D, C, p, p) conv weight or (D, C*p*p) over `unfold`'s channel-first columns
    <-> ours (D, p*p*C) over pixel-first columns (`layers.patchify`)."""
    p: int
    channels: int
    conv: bool

    def to_ours(self, w: Tensor) -> Tensor:
        return w.reshape(w.shape[0], self.channels, self.p, self.p).permute(0, 2, 3, 1).reshape(w.shape[0], -1)

    def to_official(self, w: Tensor) -> tuple[Tensor, ...]:
        w = w.reshape(w.shape[0], self.p, self.p, self.channels).permute(0, 3, 1, 2).contiguous()
        return (w if self.conv else w.reshape(w.shape[0], -1),)


class Conv1x1:
    """A 1x1 convolution (JiT's bottleneck, second half) <-> our linear."""

    def to_ours(self, w: Tensor) -> Tensor:
        return w.flatten(1)

    def to_official(self, w: Tensor) -> tuple[Tensor, ...]:
        return (w[:, :, None, None],)


@dataclass(frozen=True)
class Rows:
    """A permutation of dim 0: ours = official[order] (RoPE channel pairs of q and k)."""
    order: Tensor

    def to_ours(self, t: Tensor) -> Tensor:
        return t[self.order.to(t.device)]

    def to_official(self, t: Tensor) -> tuple[Tensor, ...]:
        return (t[torch.argsort(self.order).to(t.device)],)


class Concat:
    """Two official weights stacked along dim 0 as one of ours (PixelDiT's SwiGLU w1, w3 -> w12)."""

    def to_ours(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b])

    def to_official(self, t: Tensor) -> tuple[Tensor, ...]:
        return tuple(half.clone() for half in t.chunk(2))


def rope_channel_order(head_dim: int, source: str) -> Tensor:
    """For each of our head channels, the official channel carrying the same rotation.

    Ours rotates pairs (k, k + hd/2): pairs k < hd/4 by the row at frequency k, the rest by the column.
    JiT rotates adjacent pairs (2m, 2m+1), rows first (model_util.VisionRotaryEmbeddingFast); PixelDiT
    rotates adjacent pairs with column and row interleaved per frequency (pair 2k: column, 2k+1: row;
    modules.precompute_freqs_cis_2d). The frequencies are theta^(-4k/hd) in all three.
    """
    half, quarter = head_dim // 2, head_dim // 4
    channel = torch.arange(head_dim)
    pair, second = channel % half, channel // half
    if source == "pixeldit":
        pair = torch.where(pair < quarter, 2 * pair + 1, 2 * (pair - quarter))
    return 2 * pair + second


def qkv_rows(dim: int, heads: int, head_order: Tensor) -> Rows:
    """Rows of a fused qkv projection: q and k permuted inside every head, v untouched."""
    hd = dim // heads
    rows = torch.arange(3 * dim).view(3, heads, hd)
    rows[:2] = rows[:2, :, head_order]
    return Rows(rows.flatten())


# ---- layouts ------------------------------------------------------------------------------------

Relayout = Same | PatchColumns | Conv1x1 | Rows | Concat


@dataclass(frozen=True)
class Rule:
    ours: str                       # regex over our key (full match)
    official: tuple[str, ...]       # the official key(s), as re templates (\1 ...)
    how: Relayout = Same()          # the re-layout
    optional: bool = False          # the REPA projector: may be absent from a checkpoint


# The time MLP and the label table: the same names in every official code.
_CONDITIONING = [
    Rule(r"t_embedder\.(.*)", (r"t_embedder.\1",)),
    Rule(r"y_embedder\.table\.weight", ("y_embedder.embedding_table.weight",)),
]


def _embedders(cfg: ModelConfig, patch_key: str, conv: bool) -> list[Rule]:
    """The one-linear patch embedding (a conv, or a linear over `unfold`), the time MLP and the label table."""
    return [
        Rule(r"patch_embed\.proj\.weight", (f"{patch_key}.weight",),
             PatchColumns(cfg.patch_size, cfg.in_channels, conv)),
        Rule(r"patch_embed\.proj\.bias", (f"{patch_key}.bias",)),
        *_CONDITIONING,
    ]


def _rope_attention(ours: str, theirs: str, dim: int, heads: int, head_order: Tensor) -> list[Rule]:
    """A RoPE attention's qkv, q/k norms and output projection, each head's channels in the official RoPE
    pairing. `ours` is a pattern with one group (the block index), `theirs` its replacement."""
    return [
        Rule(ours + r"\.attn\.qkv\.(.*)", (theirs + r".attn.qkv.\2",), qkv_rows(dim, heads, head_order)),
        Rule(ours + r"\.attn\.([qk])_norm\.weight", (theirs + r".attn.\2_norm.weight",), Rows(head_order)),
        Rule(ours + r"\.attn\.proj\.(.*)", (theirs + r".attn.proj.\2",)),
    ]


def _rules_dit(cfg: ModelConfig) -> list[Rule]:
    return _embedders(cfg, "x_embedder.proj", conv=True) + [
        Rule(r"blocks\.(\d+)\.attn\.(qkv|proj)\.(.*)", (r"blocks.\1.attn.\2.\3",)),
        Rule(r"blocks\.(\d+)\.ffn\.(fc[12])\.(.*)", (r"blocks.\1.mlp.\2.\3",)),
        Rule(r"blocks\.(\d+)\.adaLN\.(.*)", (r"blocks.\1.adaLN_modulation.1.\2",)),
        Rule(r"final_layer\.linear\.(.*)", (r"final_layer.linear.\1",)),
        Rule(r"final_layer\.adaLN\.(.*)", (r"final_layer.adaLN_modulation.1.\1",)),
    ]


def _rules_sit(cfg: ModelConfig) -> list[Rule]:
    return _rules_dit(cfg) + [Rule(r"repa_projector\.net\.(.*)", (r"projectors.0.\1",), optional=True)]


def _rules_jit(cfg: ModelConfig) -> list[Rule]:
    head = rope_channel_order(cfg.hidden_size // cfg.num_heads, "jit")
    return [
        *_CONDITIONING,
        Rule(r"patch_embed\.proj\.0\.weight", ("x_embedder.proj1.weight",),     # the bottleneck: conv p x p, then 1x1
             PatchColumns(cfg.patch_size, cfg.in_channels, conv=True)),
        Rule(r"patch_embed\.proj\.1\.weight", ("x_embedder.proj2.weight",), Conv1x1()),
        Rule(r"patch_embed\.proj\.1\.bias", ("x_embedder.proj2.bias",)),
        Rule(r"in_context_pos", ("in_context_posemb",)),
        Rule(r"blocks\.(\d+)\.norm([12])\.weight", (r"blocks.\1.norm\2.weight",)),
        *_rope_attention(r"blocks\.(\d+)", r"blocks.\1", cfg.hidden_size, cfg.num_heads, head),
        Rule(r"blocks\.(\d+)\.ffn\.(w12|w3)\.(.*)", (r"blocks.\1.mlp.\2.\3",)),
        Rule(r"blocks\.(\d+)\.adaLN\.(.*)", (r"blocks.\1.adaLN_modulation.1.\2",)),
        Rule(r"final_layer\.norm\.weight", ("final_layer.norm_final.weight",)),
        Rule(r"final_layer\.linear\.(.*)", (r"final_layer.linear.\1",)),
        Rule(r"final_layer\.adaLN\.(.*)", (r"final_layer.adaLN_modulation.1.\1",)),
    ]


def _rules_pixelgen(cfg: ModelConfig) -> list[Rule]:
    """JiT's layout with PixelGen's one conv patch embedding, and REPA's projector from its trainer."""
    return [
        Rule(r"patch_embed\.proj\.weight", ("x_embedder.proj1.weight",),
             PatchColumns(cfg.patch_size, cfg.in_channels, conv=True)),
        Rule(r"patch_embed\.proj\.bias", ("x_embedder.proj1.bias",)),
        *(rule for rule in _rules_jit(cfg) if not rule.ours.startswith(r"patch_embed")),
        Rule(r"repa_projector\.net\.(.*)", (r"diffusion_trainer.proj.0.\1",), optional=True),
    ]


def _rules_pixeldit(cfg: ModelConfig) -> list[Rule]:
    patch_head = rope_channel_order(cfg.hidden_size // cfg.num_heads, "pixeldit")
    pixel_head = rope_channel_order(cfg.attn_dim // cfg.attn_heads, "pixeldit")
    return _embedders(cfg, "s_embedder.proj", conv=False) + [
        Rule(r"blocks\.(\d+)\.norm([12])\.weight", (r"patch_blocks.\1.norm\2.weight",)),
        *_rope_attention(r"blocks\.(\d+)", r"patch_blocks.\1", cfg.hidden_size, cfg.num_heads, patch_head),
        Rule(r"blocks\.(\d+)\.ffn\.w12\.weight", (r"patch_blocks.\1.mlp.w1.weight", r"patch_blocks.\1.mlp.w3.weight"),
             Concat()),
        Rule(r"blocks\.(\d+)\.ffn\.w3\.weight", (r"patch_blocks.\1.mlp.w2.weight",)),
        Rule(r"blocks\.(\d+)\.adaLN\.(.*)", (r"patch_blocks.\1.adaLN_modulation.0.\2",)),
        Rule(r"repa_projector\.net\.(.*)", (r"diffusion_trainer.proj.0.\1",), optional=True),
        Rule(r"pixel_embed\.proj\.(.*)", (r"pixel_embedder.proj.\1",)),
        Rule(r"pixel_blocks\.(\d+)\.modulation\.proj\.(.*)", (r"pixel_blocks.\1.adaLN_modulation.0.\2",)),
        Rule(r"pixel_blocks\.(\d+)\.norm([12])\.weight", (r"pixel_blocks.\1.norm\2.weight",)),
        Rule(r"pixel_blocks\.(\d+)\.compaction\.compress\.(.*)", (r"pixel_blocks.\1.compress_to_attn.\2",)),
        Rule(r"pixel_blocks\.(\d+)\.compaction\.expand\.(.*)", (r"pixel_blocks.\1.expand_from_attn.\2",)),
        *_rope_attention(r"pixel_blocks\.(\d+)", r"pixel_blocks.\1", cfg.attn_dim, cfg.attn_heads, pixel_head),
        Rule(r"pixel_blocks\.(\d+)\.mlp\.(.*)", (r"pixel_blocks.\1.mlp.\2",)),
        Rule(r"pixel_out\.norm\.weight", ("final_layer.norm.weight",)),
        Rule(r"pixel_out\.linear\.(.*)", (r"final_layer.linear.\1",)),
    ]


def _rules_diffit(cfg: ModelConfig) -> list[Rule]:
    return _embedders(cfg, "x_embedder.proj", conv=True) + [
        Rule(r"blocks\.(\d+)\.block\.attn\.qkv_time\.(.*)", (r"blocks.\1.attn.qkv_temb.\2",)),
        Rule(r"blocks\.(\d+)\.block\.attn\.rel_bias", (r"blocks.\1.attn.relative_position_bias_table",)),
        Rule(r"blocks\.(\d+)\.block\.attn\.(qkv|proj)\.(.*)", (r"blocks.\1.attn.\2.\3",)),
        Rule(r"blocks\.(\d+)\.block\.ffn\.(fc[12])\.(.*)", (r"blocks.\1.mlp.\2.\3",)),
        Rule(r"final_layer\.linear\.(.*)", (r"final_layer.linear.\1",)),
    ]


def _pos_table(cfg: ModelConfig) -> dict[str, Tensor]:
    return {"pos_embed": sincos_2d(cfg.hidden_size, cfg.grid_size, cfg.grid_size)[None]}


def _diffit_tables(cfg: ModelConfig) -> dict[str, Tensor]:
    index = relative_position_index(cfg.grid_size)
    return {**_pos_table(cfg), **{f"blocks.{i}.attn.relative_position_index": index for i in range(cfg.depth)}}


@dataclass(frozen=True)
class Source:
    presets: tuple[str, ...]        # the zoo's presets of this code's models
    rules: Callable[[ModelConfig], list[Rule]]
    frozen: Callable[[ModelConfig], dict[str, Tensor]]     # fixed official tensors: checked in, written out
    official: dict[str, object]     # fields the official code fixes and the parameter shapes do not show
    projector: str | None = None    # where the official checkpoint keeps a REPA projector


_JIT_FUNCTION = dict(architecture="transformer", time_conditioning="adaln", pos_embed="both", rope_positions="index",
                     rope_theta=10000.0, norm="rmsnorm", time_max_period=10000.0, cond_silu=True, prediction="image",
                     flow_time="data_at_1")
_DIT_FUNCTION = dict(architecture="transformer", time_conditioning="adaln", pos_embed="abs_sincos",
                     norm="layernorm", gelu="tanh", time_max_period=10000.0, cond_silu=True)
LAYOUTS: dict[str, Source] = {
    "pixeldit": Source(("pixeldit_b", "pixeldit_l", "pixeldit_xl"), _rules_pixeldit, lambda cfg: {}, dict(
        architecture="transformer", time_conditioning="adaln", pos_embed="rope", rope_positions="span16",
        rope_theta=10000.0, norm="rmsnorm", gelu="exact", time_max_period=10.0, cond_silu=True, adaln="C",
        s_cond_timestep=True, compaction=None, pixel_attn_dim=None, pixel_heads=None, prediction="velocity",
        flow_time="data_at_1"), projector="diffusion_trainer.proj.0."),
    "jit": Source(("jit_b16", "jit_l16", "jit_h16", "jit_b32", "jit_l32", "jit_h32"), _rules_jit, _pos_table,
                  _JIT_FUNCTION),
    "pixelgen": Source(("pixelgen_xl",), _rules_pixelgen, _pos_table, dict(_JIT_FUNCTION, patch_embed="linear"),
                       projector="diffusion_trainer.proj.0."),
    "dit": Source(("dit_s2", "dit_b2", "dit_l2", "dit_xl2"), _rules_dit, _pos_table,
                  dict(_DIT_FUNCTION, prediction="noise")),
    "sit_repa": Source(("sit_xl2_repa",), _rules_sit, _pos_table,
                       dict(_DIT_FUNCTION, prediction="velocity", flow_time="data_at_0"), projector="projectors.0."),
    "diffit_latent": Source(("diffit_latent_xl2",), _rules_diffit, _diffit_tables, dict(
        _DIT_FUNCTION, time_conditioning="tmsa", tmsa_time="qkv", rel_pos_bias="relative", cond_silu=False,
        window_size=None, prediction="noise")),
}


def _layout(source: str, cfg: ModelConfig) -> tuple[Source, list[tuple[str, tuple[str, ...], Rule]], dict]:
    """The source, [(our key, official keys, rule)] in our state_dict's order, and our meta tensors."""
    if source not in LAYOUTS:
        raise ConfigError("source", source, f"unknown, expected one of {list(SOURCES)}")
    layout = LAYOUTS[source]
    for key, value in layout.official.items():
        if getattr(cfg, key) != value:
            raise ConfigError(f"model.{key}", getattr(cfg, key), f"the official {NAMES[source]} code has "
                              f"{value!r}; its weights compute another function here (its presets: "
                              f"{', '.join(layout.presets)})")
    ours = build_model(cfg, device="meta").state_dict()
    rules = layout.rules(cfg)
    table = []
    for key in ours:
        rule, match = next(((r, m) for r in rules if (m := re.fullmatch(r.ours, key))), (None, None))
        if rule is None:
            raise ConfigError(f"model.{key}", reason=f"has no place in the {NAMES[source]} layout")
        table.append((key, tuple(match.expand(t) for t in rule.official), rule))
    return layout, table, ours


def _shape(t) -> str:
    return str(tuple(t.shape))


def convert_state_dict(official_state_dict: dict[str, Tensor], source: str, cfg: ModelConfig) -> dict[str, Tensor]:
    """An official model's state_dict (layout of `source`) -> ours for `cfg`, ready for a strict load.

    Refuses, naming the first official key, a missing tensor, a shape the config does not expect, or a tensor
    the config has no place for (a wrong preset is the common cause); and a config whose function the
    official code does not compute (naming the field)."""
    layout, table, meta = _layout(source, cfg)
    given = dict(official_state_dict)
    out: dict[str, Tensor] = {}
    missing_projector = False
    for key, names, rule in table:
        expected = rule.how.to_official(meta[key])
        if rule.optional and not any(name in given for name in names):
            missing_projector = True
            continue
        for name, want in zip(names, expected):
            if name not in given:
                raise ConfigError(name, reason=f"missing from the checkpoint; this config expects shape {_shape(want)}")
            if given[name].shape != want.shape:
                raise ConfigError(name, reason=f"shape {_shape(given[name])} in the checkpoint, {_shape(want)} "
                                               f"for this config")
        out[key] = rule.how.to_ours(*(given.pop(name) for name in names))
    for name, table_value in layout.frozen(cfg).items():
        if name in given:
            value = given.pop(name)
            if value.shape != table_value.shape or not torch.allclose(value.float(), table_value.float(), atol=1e-5):
                raise ConfigError(name, reason="differs from the table this config computes (another grid or layout)")
    for name in given:
        if layout.projector and name.startswith(layout.projector) and not cfg.repa:
            continue                                  # a training-only projector the config does without
        raise ConfigError(name, reason=f"shape {_shape(given[name])} in the checkpoint, but this config has no "
                                       f"place for it")
    if missing_projector:
        out.update(fresh_projector(cfg))
    return out


def export_state_dict(state_dict: dict[str, Tensor], source: str, cfg: ModelConfig) -> dict[str, Tensor]:
    """Ours for `cfg` -> the official model's state_dict (layout of `source`), frozen tables included;
    `convert_state_dict` of the result gives `state_dict` back exactly."""
    layout, table, meta = _layout(source, cfg)
    ours = dict(state_dict)
    out: dict[str, Tensor] = {}
    for key, names, rule in table:
        if key not in ours:
            raise ConfigError(key, reason=f"missing from the weights; this config expects shape {_shape(meta[key])}")
        if ours[key].shape != meta[key].shape:
            raise ConfigError(key, reason=f"shape {_shape(ours[key])} in the weights, {_shape(meta[key])} for this "
                                          f"config")
        out.update(zip(names, rule.how.to_official(ours.pop(key))))
    if ours:
        raise ConfigError(next(iter(ours)), reason="in the weights, but this config has no place for it")
    return {**out, **layout.frozen(cfg)}


def fresh_projector(cfg: ModelConfig) -> dict[str, Tensor]:
    """A REPA projector as the zoo initialises one, from seed 0 (so a conversion is reproducible)."""
    from .transformer import RepaProjector
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        projector = RepaProjector(cfg)
        for module in projector.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                torch.nn.init.zeros_(module.bias)
    return {f"repa_projector.{k}": v for k, v in projector.state_dict().items()}


# ---- files ----------------------------------------------------------------------------------------

# Where each repository's training code keeps the weights: EMA first (what its samplers use), then the raw
# model. DiT/REPA: {"model", "ema", "opt", "args"}; JiT: {"model", "model_ema1", "model_ema2", ...} of its
# Denoiser (keys under `net.`); PixelDiT (Lightning): {"state_dict": {"denoiser.", "ema_denoiser.",
# "diffusion_trainer.proj."}}.
NESTED = {"ema": ("ema", "model_ema1", "model_ema", "state_dict", "model"), "raw": ("model", "state_dict", "net")}
PREFIXES = {"ema": ("ema_denoiser.", "denoiser."), "raw": ("denoiser.",)}
WRAPPERS = ("module.", "_orig_mod.", "net.")        # DDP, torch.compile, JiT's Denoiser


def read_checkpoint(path: Path, allow_pickle: bool = False) -> dict:
    """The object a repository saved: .safetensors, or a torch file (.pt/.pth/.ckpt/.bin)."""
    if not path.exists():
        raise ConfigError(None, reason="file does not exist", source=str(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):     # DiT/REPA training files keep their args
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:                                          # noqa: BLE001 (any unpickling failure)
        hint = "" if allow_pickle else "; if you trust the file, --allow-pickle reads objects beyond tensors"
        raise ConfigError(None, reason=f"cannot be read as a checkpoint ({type(err).__name__}){hint}",
                          source=str(path)) from None


def official_weights(saved: dict, which: str = "ema") -> tuple[dict[str, Tensor], str]:
    """The flat state_dict of the model inside a saved object, and where it was found."""
    where = []
    while not all(isinstance(v, Tensor) for v in saved.values()):
        key = next((k for k in NESTED[which] if isinstance(saved.get(k), dict)), None)
        if key is None:
            raise ConfigError(None, reason=f"holds no {which} weights under any of {list(NESTED[which])}")
        saved, where = saved[key], where + [key]
    prefix = next((p for p in PREFIXES[which] if any(k.startswith(p) for k in saved)), None)
    if prefix:                        # a Lightning module's state: one network's keys, plus the trainer's projector
        saved = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in saved.items()
                 if k.startswith(prefix) or k.startswith("diffusion_trainer.")}
        where.append(prefix.rstrip("."))
    for wrapper in WRAPPERS:
        if saved and all(k.startswith(wrapper) for k in saved):
            saved = {k[len(wrapper):]: v for k, v in saved.items()}
    return saved, "/".join(where) or "top level"


def load_weights(model: torch.nn.Module, path: str | Path) -> str:
    """Load our weights from a safetensors file strictly into `model`; returns the file's sha256. A file of
    another config is refused in one line naming its first mismatching key (`model.init_from`)."""
    from safetensors.torch import load_file
    path = Path(path)
    if not path.exists():
        raise ConfigError("model.init_from", str(path), "file does not exist")
    weights, expected = load_file(path), model.state_dict()
    for key, value in expected.items():
        if key not in weights:
            raise ConfigError("model.init_from", str(path), f"{key} is missing (shape {_shape(value)} expected)")
        if weights[key].shape != value.shape:
            raise ConfigError("model.init_from", str(path), f"{key} has shape {_shape(weights[key])}, this config "
                                                            f"expects {_shape(value)}")
    extra = next((key for key in weights if key not in expected), None)
    if extra:
        raise ConfigError("model.init_from", str(path), f"{extra} has no place in this config")
    model.load_state_dict(weights, strict=True)
    return sha256(path)


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    from .presets import model_config, preset_names
    parser = argparse.ArgumentParser(prog="python -m models.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="an official checkpoint (.pt/.pth/.ckpt/.safetensors)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the preset")
    parser.add_argument("--source", required=True, choices=SOURCES, help="the official code that saved it")
    parser.add_argument("--preset", required=True, help=f"our config of the same model ({', '.join(preset_names())})")
    parser.add_argument("--out", required=True, type=Path, help="where to write our weights (.safetensors)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="the EMA weights (default, what the official samplers use) or the raw ones")
    parser.add_argument("--allow-pickle", action="store_true", help="read torch files holding Python objects")
    args = parser.parse_intermixed_args(argv)      # overrides may come before, between or after the options
    try:
        cfg = model_config(args.preset, args.overrides)
        saved = read_checkpoint(args.checkpoint, args.allow_pickle)
        try:
            official, where = official_weights(saved, args.weights)
            ours = convert_state_dict(official, args.source, cfg)
        except ConfigError as err:
            raise err.at(source=str(args.checkpoint)) from None
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # one metadata entry: safetensors writes several in no fixed order, and the file's sha256 should be reproducible
    origin = {"source": args.source, "preset": args.preset, "overrides": args.overrides,
              "converted_from": args.checkpoint.name, "weights": where}
    metadata = {"models.convert": json.dumps(origin, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in ours.items()}, str(args.out), metadata=metadata)
    count = sum(v.numel() for v in ours.values())
    print(f"wrote {args.out}: {len(ours)} tensors, {count:,} values, {args.source} weights from "
          f"{args.checkpoint} ({where}); sha256 {sha256(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
