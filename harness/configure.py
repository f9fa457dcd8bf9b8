"""From command-line overrides to one checked `TrainConfig`: hydra composition, validation, signature.

    overrides (`+experiment=pixeldit_xl_paper model.adaln=B ...`)
      -> hydra compose over the ConfigStore (schema `TrainConfig`, one `model` option per preset)
         and the YAML experiments in harness/conf/experiment/
      -> `TrainConfig` object, validated field by field (one-line errors naming the key)
      -> signature: hash of everything that changes the result.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from models.config import ConfigError, ModelConfig
from models.presets import PRESETS

from .config import TrainConfig

CONF_DIR = Path(__file__).parent / "conf"

# Keys that do not change what a run computes: where files go, how often things are printed or saved,
# worker counts, and how results are tracked. Prefixes end with a dot.
NON_RESULT_KEYS = ("run.name", "run.out_dir", "run.resume", "run.device", "data.num_workers", "train.log_every",
                   "checkpoint.", "tracking.", "eval.cache_dir", "eval.batch_size", "experiment")

CHOICES = {
    "optim.schedule": ("constant", "step", "cosine"),
    "train.precision": ("bf16", "fp32"),
    "eval.metric": ("fid", "offline", "none"),
    "run.resume": ("auto", "never"),
    "run.device": ("auto", "cpu", "cuda"),
}


@lru_cache(maxsize=1)
def register_configs() -> None:
    """The schema and one `model` group option per preset, so `model=dit_xl16` picks a preset."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for name, fields in PRESETS.items():
        store.store(group="model", name=name, node=ModelConfig(**fields))


@dataclass
class ResolvedConfig:
    cfg: TrainConfig
    model_preset: str               # the `model` option chosen (before field overrides)
    overrides: list[str]

    @property
    def signature(self) -> str:
        return config_signature(self.cfg)


def compose_config(overrides: Iterable[str] = (), source: str = "overrides") -> tuple[DictConfig, str]:
    """Hydra composition only (no validation): the config tree and the chosen model preset."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{source}: {_one_line(err)}") from None
    model_preset = composed.hydra.runtime.choices.get("model", "?")
    with open_dict(composed):
        del composed["hydra"]
    return composed, model_preset


def resolve(overrides: Iterable[str] = (), source: str = "overrides") -> ResolvedConfig:
    """Compose and validate; every error is one line naming the key and raised as ConfigError."""
    overrides = list(overrides)
    composed, model_preset = compose_config(overrides, source)
    try:
        cfg: TrainConfig = OmegaConf.to_object(composed)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{source}: {_one_line(err)}") from None
    validate(cfg)
    return ResolvedConfig(cfg, model_preset, overrides)


def _one_line(err: Exception) -> str:
    """Hydra/OmegaConf messages span lines and hide the reason in a cause; keep the key and the reason."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    reason = lines[0] if lines else type(err).__name__
    if "Could not find '" in str(err):                   # unknown group option: list the choices
        group, option = str(err).split("Could not find '")[1].split("'")[0].split("/", 1)
        return f"{group}={option}: unknown option, expected one of {group_options(group)}"
    return f"{key}: {reason}" if key and key not in reason else reason


def group_options(group: str) -> list[str]:
    """The options of a config group: model presets, or the YAML files of harness/conf/<group>/."""
    if group == "model":
        return list(PRESETS)
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def validate(cfg: TrainConfig) -> None:
    """Field checks that need no data on disk and no network; the trainer adds data and REPA checks."""
    from .objectives import validate_objective
    from .sampling import validate_sampler
    from .data import validate_data

    cfg.model.validate()
    for key, choices in CHOICES.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: unknown value, expected one of {list(choices)}")
    validate_objective(cfg.objective, cfg.model)
    validate_sampler(cfg.eval.sampler, cfg.objective.kind, cfg.objective.ddpm_steps)
    validate_data(cfg.data, cfg.model.image_size)
    if cfg.model.latent_downsample != 1:
        raise ConfigError(f"model.latent_downsample={cfg.model.latent_downsample}: training on VAE latents is not "
                          f"supported (no VAE encoder here); use a pixel-space model such as model=dit_xl16")
    optim, train = cfg.optim, cfg.train
    if (optim.lr is None) == (optim.blr is None):
        raise ConfigError(f"optim.lr={optim.lr}, optim.blr={optim.blr}: set exactly one of them")
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"optim.betas={list(optim.betas)}: expected [beta1, beta2] in [0, 1)")
    for key in ("weight_decay", "warmup_epochs", "grad_clip", "grad_clip_after_step", "min_lr", "step_lr"):
        if getattr(optim, key) < 0:
            raise ConfigError(f"optim.{key}={getattr(optim, key)}: must be >= 0")
    if not cfg.ema.decays or not all(0 < d < 1 for d in cfg.ema.decays):
        raise ConfigError(f"ema.decays={list(cfg.ema.decays)}: expected a non-empty list of decays in (0, 1)")
    if cfg.ema.eval_decay not in cfg.ema.decays:
        raise ConfigError(f"ema.eval_decay={cfg.ema.eval_decay}: must be one of ema.decays={list(cfg.ema.decays)}")
    if cfg.repa.weight < 0:
        raise ConfigError(f"repa.weight={cfg.repa.weight}: must be >= 0")
    if cfg.repa.weight > 0 and not cfg.model.repa:
        raise ConfigError(f"repa.weight={cfg.repa.weight}: REPA needs the model's hook and projector "
                          f"(model.repa=true), or set repa.weight=0")
    if (train.epochs is None) == (train.steps is None):
        raise ConfigError(f"train.epochs={train.epochs}, train.steps={train.steps}: set exactly one of them")
    if (train.steps is not None and train.steps <= 0) or (train.epochs is not None and train.epochs <= 0):
        raise ConfigError("train.steps/train.epochs: the run length must be positive")
    if train.global_batch <= 0 or train.grad_accum <= 0 or train.global_batch % train.grad_accum:
        raise ConfigError(f"train.global_batch={train.global_batch}: must be a positive multiple of "
                          f"train.grad_accum={train.grad_accum}")
    if cfg.model.num_classes == 0 and cfg.eval.sampler.cfg_scale != 1.0:
        raise ConfigError(f"eval.sampler.cfg_scale={cfg.eval.sampler.cfg_scale}: an unconditional model "
                          f"(model.num_classes=0) has no guidance; use 1.0")
    if not 0 <= train.label_dropout < 1:
        raise ConfigError(f"train.label_dropout={train.label_dropout}: must be in [0, 1)")
    if train.log_every <= 0 or cfg.checkpoint.every_steps <= 0:
        raise ConfigError("train.log_every/checkpoint.every_steps: must be positive")
    if cfg.eval.metric != "none" and (cfg.eval.num_samples <= 0 or cfg.eval.batch_size <= 0):
        raise ConfigError(f"eval.num_samples={cfg.eval.num_samples}: must be positive when eval.metric is set")


def flatten(cfg: Any) -> dict[str, Any]:
    """Dotted keys -> leaf values of a config (a dataclass, or a DictConfig)."""
    tree = _plain(cfg) if dataclasses.is_dataclass(cfg) else OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            out[prefix[:-1]] = node

    walk("", tree)
    return out


def _plain(node: Any) -> Any:
    """Nested dicts and lists of a dataclass tree, without copying it through OmegaConf (fast)."""
    if dataclasses.is_dataclass(node):
        return {f.name: _plain(getattr(node, f.name)) for f in dataclasses.fields(node)}
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(value) for value in node]
    return node


def affects_result(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NON_RESULT_KEYS)


def config_signature(cfg: TrainConfig) -> str:
    """Short hash of the resolved config minus keys that do not change the result."""
    items = {k: v for k, v in flatten(cfg).items() if affects_result(k)}
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
