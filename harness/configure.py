"""From command-line overrides to one checked `TrainConfig`: hydra composition, validation, signature.

    overrides (`+experiment=pixeldit_xl_paper model.adaln=B ...`)
      -> hydra compose over the ConfigStore (schema `TrainConfig`, one `model` option per preset)
         and the YAML experiments in harness/conf/experiment/
      -> `TrainConfig` object, validated field by field (one-line errors naming the key)
      -> signature: hash of everything that changes the result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from models.config import ModelConfig
from models.presets import PRESETS
from toolkit.errors import ConfigError, from_omegaconf, unknown
from toolkit.fields import check_choices, inert_fields

from .config import TrainConfig

CONF_DIR = Path(__file__).parent / "conf"
SEED_RANGE = (0, 2 ** 32)       # seeds every generator of the harness accepts (torch, numpy, splitmix)

# Keys that do not change what a run computes: where files go, how often things are printed or saved,
# worker counts, how the model is spread over ranks (like the number of ranks, which is not in the config:
# the same run up to the order of float reductions, tested), and how results are tracked. Prefixes end with a dot.
NON_RESULT_KEYS = ("run.name", "run.out_dir", "run.resume", "run.device", "data.num_workers", "data.latents",
                   "train.log_every", "train.parallel", "train.activation_checkpointing",
                   "checkpoint.", "tracking.", "eval.cache_dir", "eval.batch_size", "eval.reference", "experiment")
# Keys that change an evaluation's numbers but not the trained weights: they make the evaluation protocol
# (harness/protocol.py), not the run. Out of the training signature since version 3: a run evaluated at another
# guidance scale or EMA is the same run, evaluated again (`evaluate:` in a sweep), never trained again.
EVALUATION_KEYS = ("eval.", "ema.eval_decay")

@lru_cache(maxsize=1)
def register_configs() -> None:
    """The schema and one `model` group option per preset, so `model=dit_xl16` picks a preset."""
    from hydra.core.config_store import ConfigStore  # hydra: imported when a config is first composed, not by `status`
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for name, fields in PRESETS.items():
        store.store(group="model", name=name, node=ModelConfig(**fields))


RESOLVER_CALL = re.compile(r"\$\{[\w.]+:")     # `${oc.env:VAR}`, not `${model.hidden_size}` (another key's value)


@dataclass(frozen=True)
class Interpolated:
    """The keys of a config set by `${...}` expressions, and the text resolvers gave them (an environment variable
    may hold a secret): every view of the config that is printed, logged or stored shows the expression instead."""
    expressions: dict[str, str] = dataclasses.field(default_factory=dict)   # key -> `${...}` it was set by
    values: dict[str, str] = dataclasses.field(default_factory=dict)        # resolved text -> its expression

    @classmethod
    def of(cls, tree: DictConfig) -> "Interpolated":
        """From a composed (not yet resolved) config tree; a value that does not resolve is left out."""
        raw = OmegaConf.to_container(tree, resolve=False)
        expressions = {key: value for key, value in flatten(raw).items() if isinstance(value, str) and "${" in value}
        plain, values = OmegaConf.create(raw), {}
        for key, expression in expressions.items():
            if RESOLVER_CALL.search(expression):
                try:
                    value = OmegaConf.select(plain, key, throw_on_resolution_failure=True)
                except Exception:                 # an unset variable: its error names the expression
                    continue
                if value is not None and len(str(value)) >= 3:
                    values[str(value)] = expression
        return cls(expressions, values)

    def hide(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, self.values[value])
        return text

    def shown(self, flat: dict[str, Any]) -> dict[str, Any]:
        """A flattened config as it may be shown: expressions in place of their values."""
        return {**flat, **{key: expression for key, expression in self.expressions.items() if key in flat}}

    def error(self, err: ConfigError) -> ConfigError:
        """The error with the expression in place of every value resolved from one."""
        value = self.expressions.get(err.key, err.value) if err.has_value else err.value
        if isinstance(value, str):
            value = self.hide(value)
        return type(err)(err.key, value, self.hide(err.reason), source=err.source,
                         suggestion=err.suggestion and self.hide(err.suggestion))


@dataclass
class ResolvedConfig:
    cfg: TrainConfig
    model_preset: str               # the `model` option chosen (before field overrides)
    overrides: list[str]
    interpolated: Interpolated = dataclasses.field(default_factory=Interpolated)

    @property
    def expressions(self) -> dict[str, str]:
        """key -> the `${...}` expression that set it."""
        return self.interpolated.expressions

    @property
    def signature(self) -> str:
        return config_signature(self.cfg)

    def recorded(self) -> dict[str, Any]:
        """The flat config as MLflow records it: interpolated values (`${oc.env:TOKEN}`) as their expressions,
        so a secret read from the environment never lands in the store."""
        return {**flatten(self.cfg), **self.expressions}

    def recorded_yaml(self) -> str:
        """The config file of the run, with the same expressions in place of their values."""
        tree = OmegaConf.structured(self.cfg)
        for key, expression in self.expressions.items():
            OmegaConf.update(tree, key, expression, force_add=True)
        return OmegaConf.to_yaml(tree)


def compose_config(overrides: Iterable[str] = (), source: str = "overrides") -> tuple[DictConfig, str]:
    """Hydra composition only (no validation): the config tree and the chosen model preset."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise config_error(err, source) from None
    model_preset = composed.hydra.runtime.choices.get("model", "?")
    with open_dict(composed):
        del composed["hydra"]
    return composed, model_preset


def resolve(overrides: Iterable[str] = (), source: str = "overrides", check_paths: bool = True) -> ResolvedConfig:
    """Compose and validate; every error is one line naming the key and raised as ConfigError. `check_paths=False`
    leaves data paths unchecked (a config printed, not run)."""
    overrides = list(overrides)
    composed, model_preset = compose_config(overrides, source)
    interpolated = Interpolated.of(composed)
    try:
        cfg: TrainConfig = OmegaConf.to_object(composed)
        validate(cfg, check_paths)
    except OmegaConfBaseException as err:
        raise interpolated.error(config_error(err, source)) from None
    except ConfigError as err:
        raise interpolated.error(err) from None
    return ResolvedConfig(cfg, model_preset, overrides, interpolated)


def config_error(err: Exception, source: str | None) -> ConfigError:
    """A hydra/OmegaConf error as one ConfigError: the key, the reason, the closest valid key or option."""
    if "Could not find '" in str(err):                   # unknown group option: list the choices
        group, option = str(err).split("Could not find '")[1].split("'")[0].split("/", 1)
        return unknown(group, option, group_options(group), "option").at(source=source)
    return from_omegaconf(err, source, schema_keys())


def schema_keys() -> tuple[str, ...]:
    """Every dotted key of the training config (what an override may name)."""
    return tuple(schema_defaults())


def group_options(group: str) -> list[str]:
    """The options of a config group: model presets, or the YAML files of harness/conf/<group>/."""
    if group == "model":
        return list(PRESETS)
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def validate(cfg: TrainConfig, check_paths: bool = True) -> None:
    """Field checks that need no network; the trainer adds data and REPA checks. `check_paths=False` (a dry
    run of a sweep planned away from its cluster) leaves data paths unchecked."""
    cfg.model.validate()
    check_choices(cfg, "")                    # a misspelt value is refused before torch is imported
    from .data import HELD_OUT_DATASETS, validate_data
    from .objectives import validate_objective
    from .perceptual import validate_perceptual
    from .retention import validate_policy
    from .sampling import validate_sampler, validate_sde_noise

    validate_objective(cfg.objective, cfg.model)
    validate_sampler(cfg.eval.sampler, cfg.objective.kind, cfg.objective.ddpm_steps)
    validate_sde_noise(cfg.eval.sampler, cfg.objective.noise_scale)
    channels = cfg.eval.sampler.cfg_channels
    if channels is not None and channels > cfg.model.in_channels:
        raise ConfigError("eval.sampler.cfg_channels", channels, f"more than the guided quantity's "
                          f"model.in_channels={cfg.model.in_channels} channels")
    from .vae import image_channels, is_latent, validate_vae
    if is_latent(cfg):
        validate_vae(cfg, check_paths)
    validate_data(cfg.data, cfg.model.image_size, image_channels(cfg), check_paths)
    if cfg.eval.metric == "offline" and cfg.data.name not in HELD_OUT_DATASETS:
        raise ConfigError("eval.metric", "offline", f"needs a dataset with a held-out split to fit its classifier "
                          f"(data.name one of {list(HELD_OUT_DATASETS)}); use eval.metric=fid")
    low, high = SEED_RANGE
    if isinstance(cfg.run.seed, bool) or not low <= cfg.run.seed < high:
        raise ConfigError("run.seed", cfg.run.seed, f"expected an integer in [{low}, 2^32)")
    optim, train = cfg.optim, cfg.train
    if (optim.lr is None) == (optim.blr is None):
        raise ConfigError("optim.lr", optim.lr, f"set exactly one of optim.lr and optim.blr (optim.blr={optim.blr})")
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError("optim.betas", list(optim.betas), "expected [beta1, beta2] in [0, 1)")
    for key in ("weight_decay", "warmup_epochs", "grad_clip", "grad_clip_after_step", "min_lr", "step_lr"):
        if getattr(optim, key) < 0:
            raise ConfigError(f"optim.{key}", getattr(optim, key), "must be >= 0")
    if not 0 <= optim.muon_momentum < 1:
        raise ConfigError("optim.muon_momentum", optim.muon_momentum, "must be in [0, 1)")
    if isinstance(optim.muon_ns_steps, bool) or not 1 <= optim.muon_ns_steps < 100:
        raise ConfigError("optim.muon_ns_steps", optim.muon_ns_steps, "expected an integer in [1, 100)")
    if not cfg.ema.decays or not all(0 < d < 1 for d in cfg.ema.decays):
        raise ConfigError("ema.decays", list(cfg.ema.decays), "expected a non-empty list of decays in (0, 1)")
    if cfg.ema.eval_decay not in cfg.ema.decays:
        raise ConfigError("ema.eval_decay", cfg.ema.eval_decay, f"must be one of ema.decays={list(cfg.ema.decays)}")
    if cfg.repa.weight < 0:
        raise ConfigError("repa.weight", cfg.repa.weight, "must be >= 0")
    validate_perceptual(cfg.perceptual, cfg.model, cfg.objective.kind)
    if cfg.repa.weight > 0 and not cfg.model.repa:
        raise ConfigError("repa.weight", cfg.repa.weight, "REPA needs the model's hook and projector "
                          "(model.repa=true), or set repa.weight=0")
    if (train.epochs is None) == (train.steps is None):
        raise ConfigError("train.steps", train.steps, f"set exactly one of train.steps and train.epochs "
                          f"(train.epochs={train.epochs})")
    if (train.steps is not None and train.steps <= 0) or (train.epochs is not None and train.epochs <= 0):
        raise ConfigError("train.steps" if train.steps is not None else "train.epochs",
                          train.steps if train.steps is not None else train.epochs, "the run length must be positive")
    if train.global_batch <= 0 or train.grad_accum <= 0 or train.global_batch % train.grad_accum:
        raise ConfigError("train.global_batch", train.global_batch, f"must be a positive multiple of "
                          f"train.grad_accum={train.grad_accum}")
    if cfg.model.num_classes == 0 and cfg.eval.sampler.cfg_scale != 1.0:
        raise ConfigError("eval.sampler.cfg_scale", cfg.eval.sampler.cfg_scale, "an unconditional model "
                          "(model.num_classes=0) has no guidance; use 1.0")
    if not 0 <= train.label_dropout < 1:
        raise ConfigError("train.label_dropout", train.label_dropout, "must be in [0, 1)")
    if train.log_every <= 0:
        raise ConfigError("train.log_every", train.log_every, "must be positive")
    if cfg.checkpoint.every_steps <= 0:
        raise ConfigError("checkpoint.every_steps", cfg.checkpoint.every_steps, "must be positive")
    validate_policy(cfg)
    if cfg.eval.metric != "none" and (cfg.eval.num_samples <= 0 or cfg.eval.batch_size <= 0):
        raise ConfigError("eval.num_samples", cfg.eval.num_samples, "must be positive when eval.metric is set")


def flatten(cfg: Any) -> dict[str, Any]:
    """Dotted keys -> leaf values of a config (a dataclass, a DictConfig, or a nested dict)."""
    if dataclasses.is_dataclass(cfg):
        tree = _plain(cfg)
    else:
        tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
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


def config_differences(base: dict[str, Any], other: dict[str, Any], base_model: ModelConfig, model: ModelConfig,
                       ignore: Callable[[str], bool]) -> list[tuple[str, str, str]]:
    """(key, base value, other value), as text, of every key whose value differs between two flattened configs.
    Left out: the keys `ignore` names, and model switches without effect on `model` (`ModelConfig.inert_fields`,
    e.g. `adaln` without a pixel pathway); a switch without effect on the base model says so beside its value."""
    base_inert, inert = base_model.inert_fields(), model.inert_fields()
    out = []
    for key in sorted(set(base) | set(other)):
        field = key.removeprefix("model.") if key.startswith("model.") else None
        if ignore(key) or field in inert:
            continue
        a, b = str(base.get(key, "(unset)")), str(other.get(key, "(unset)"))
        if a != b:
            out.append((key, a + (f" (no effect there: {base_inert[field]})" if field in base_inert else ""), b))
    return out


# Version of the signature scheme; bump it (and migrate stores: `run_sweep.py migrate`) only when the
# scheme itself changes. v1 hashed the full resolved config; v2 hashes its difference from the schema defaults;
# v3 leaves the evaluation settings out (EVALUATION_KEYS) and writes each model one way: a value equal to what
# its None means is None (`ModelConfig.canonical`), and a switch without effect (`inert_when=`: on the model,
# `ModelConfig.inert_fields`, or on training, e.g. `optim.muon_momentum` under AdamW) is left out.
SIGNATURE_VERSION = 3


@lru_cache(maxsize=1)
def schema_defaults() -> dict[str, Any]:
    return flatten(TrainConfig())


def affects_training(key: str) -> bool:
    """Whether a key changes the trained weights (what the training signature hashes)."""
    return affects_result(key) and not any(key == k or (k.endswith(".") and key.startswith(k))
                                           for k in EVALUATION_KEYS)


def result_delta(cfg: TrainConfig, version: int | None = None) -> dict[str, Any]:
    """The keys that change the trained weights whose value differs from the schema defaults (`TrainConfig()`),
    each model written one way (see SIGNATURE_VERSION). Initial weights count by their contents (a file's
    sha256), not by where the file lies; so does a latent model's latent cache (its content key,
    harness/latents.py), while a pixel model's `vae.*` settings count for nothing. `version=2`: the delta of the
    previous scheme (every result-affecting key as written), what stores signed before version 3 hold."""
    from .vae import is_latent, latent_key
    version = version or SIGNATURE_VERSION
    defaults = schema_defaults()
    flat, keep = flatten(cfg), affects_training
    if version >= 3:
        model = cfg.model.canonical()            # (the loss reads the hint fields only when they act on the model:
        dropped = {f"model.{name}" for name in model.inert_fields()}     # hints need the pixel pathway)
        sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "model"}
        dropped |= {f"{key}.{name}" for key, section in sections.items() if dataclasses.is_dataclass(section)
                    for name in inert_fields(section)}        # training switches too (`muon_*` under AdamW)
        flat = {**flat, **{f"model.{k}": v for k, v in flatten(model).items()}}
        flat = {k: v for k, v in flat.items() if k not in dropped}
    else:
        keep = affects_result
    delta = {k: v for k, v in flat.items() if keep(k) and (k not in defaults or defaults[k] != v)}
    if delta.get("model.init_from") and Path(delta["model.init_from"]).is_file():
        from models.convert import sha256
        delta["model.init_from"] = "sha256:" + sha256(delta["model.init_from"])
    if is_latent(cfg):
        delta["data.latents"] = "key:" + latent_key(cfg)
    else:
        delta = {k: v for k, v in delta.items() if not k.startswith("vae.")}
    return delta


def config_signature(cfg: TrainConfig, version: int | None = None) -> str:
    """Short hash of what a run trains: the difference from the schema defaults of the keys that change the trained
    weights, as Dora hashes the delta against its base config. A new field whose default keeps the old behaviour
    changes no signature; changing a default changes every signature that relied on it (tests/test_signatures.py
    holds the shipped sweeps' signatures). `version`: another scheme's signature (2: what older stores hold)."""
    version = version or SIGNATURE_VERSION
    payload = {"signature_version": version, "delta": result_delta(cfg, version)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_from_params(params: dict[str, str]) -> TrainConfig:
    """A run's config from its MLflow params (values logged as `str(value)`: Python literals). Keys that no longer
    exist are ignored; keys that change neither the weights nor an evaluation keep their defaults; keys added to
    the schema since the run was logged take their defaults, which keep the old behaviour by construction."""
    import yaml
    known = set(schema_keys())
    tree = OmegaConf.structured(TrainConfig)
    for key, text in params.items():
        if key in known and affects_result(key):
            try:                                  # YAML reads Python's True/False, numbers and lists; OmegaConf
                value = None if text == "None" else yaml.safe_load(text)     # types them by the schema
            except yaml.YAMLError:
                value = text
            OmegaConf.update(tree, key, value, merge=False)
    return OmegaConf.to_object(tree)


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
