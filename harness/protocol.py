"""An evaluation protocol: everything that makes an evaluation's numbers what they are, apart from the weights
it samples — which EMA of the run's bank, the sampler (kind, steps, guidance scale and interval, time shift),
how many samples with which labels from which seed, and what scores them (the offline classifier, FID against
a reference with given Inception weights, ADM's suite).

    protocol = EvalProtocol.of(cfg)          # a run's own (its eval.* settings and ema.eval_decay): in training
    other = protocol.with_changes({"eval.sampler.cfg_scale": 2.0, "ema.eval_decay": 0.9996})
    other.signature, other.name, other.describe(), other.params()

A protocol is written with the config keys it takes its values from (`PROTOCOL_KEYS`), so an evaluation's MLflow
params read like a run's. Its signature hashes the values that act (canonical: no guidance interval without
guidance, no EDM noise levels for a flow sampler, no reference or Inception weights for the offline metric) and
the protocol version, which says how samples are drawn:

    version 1   batch b of a protocol (images b*B .. b*B+B-1, B = eval.batch_size) draws its noise from its own
                generator, seeded by (seed, b), whoever samples it: the training loop's ranks, a shard job, any
                number of shards; image i is labelled i mod C (balanced) or drawn from (seed, b) (random); the
                samples are scored as 8-bit images. The in-training evaluation at the end of a run is therefore
                the same evaluation as that protocol's on the run's final checkpoint.
    version 0   before protocols existed: the training loop drew noise per rank and scored float samples; only
                read from the params of runs logged then (their in-training numbers keep that label).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import yaml

from toolkit.errors import ConfigError, closest

from .config import SAMPLERS, SamplerConfig, TrainConfig

PROTOCOL_VERSION = 1
SAMPLER_KEYS = tuple(f"eval.sampler.{f.name}" for f in dataclasses.fields(SamplerConfig))
PROTOCOL_KEYS = ("eval.metric", "eval.num_samples", *SAMPLER_KEYS, "ema.eval_decay", "eval.labels", "eval.seed",
                 "eval.batch_size", "eval.reference", "eval.inception")
SCORERS = ("offline", "fid", "adm")        # adm: ADM's suite against eval.reference (harness.adm_metrics)
EDM_ONLY = ("eval.sampler.sigma_min", "eval.sampler.sigma_max", "eval.sampler.rho")
LABELS = {"balanced": "class-balanced labels (image i: class i mod C)", "random": "random labels"}


@lru_cache(maxsize=1)
def protocol_defaults() -> dict[str, Any]:
    """Every protocol key's schema default (what a run that does not set it evaluates with)."""
    cfg = TrainConfig()
    return {key: _get(cfg, key) for key in PROTOCOL_KEYS}


def _get(cfg: TrainConfig, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, (list, tuple)) else node


@dataclass(frozen=True)
class EvalProtocol:
    """One evaluation protocol: a value for every key of PROTOCOL_KEYS (as JSON, so it is hashable)."""
    values_json: str
    version: int = PROTOCOL_VERSION

    # ---- making one ------------------------------------------------------------------------------

    @classmethod
    def of(cls, cfg: TrainConfig) -> "EvalProtocol":
        """The protocol a run's config evaluates with during training (its eval.* settings and EMA)."""
        return cls.from_values({key: _get(cfg, key) for key in PROTOCOL_KEYS})

    @classmethod
    def from_values(cls, values: dict[str, Any], version: int = PROTOCOL_VERSION) -> "EvalProtocol":
        unknown = sorted(set(values) - set(PROTOCOL_KEYS))
        if unknown:
            raise ConfigError(unknown[0], reason="not an evaluation protocol key",
                              suggestion=closest(unknown[0], PROTOCOL_KEYS))
        defaults = protocol_defaults()
        full = {**defaults, **values}
        for key, value in full.items():              # numbers as the schema types them (3 -> 3.0)
            if isinstance(defaults[key], float) and isinstance(value, int) and not isinstance(value, bool):
                full[key] = float(value)
            elif key == "eval.sampler.cfg_interval" and isinstance(value, (list, tuple)):
                full[key] = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return cls(json.dumps({key: full[key] for key in PROTOCOL_KEYS}), version)

    @classmethod
    def from_params(cls, params: dict[str, str], version: int = PROTOCOL_VERSION) -> "EvalProtocol":
        """The protocol of a run (or an evaluation) from its MLflow params (`str(value)` of each key); keys it
        did not log take their defaults (what the harness did before they existed)."""
        values = {}
        for key in PROTOCOL_KEYS:
            if key in params:
                text = params[key]
                try:
                    values[key] = None if text == "None" else yaml.safe_load(text)
                except yaml.YAMLError:
                    values[key] = text
        return cls.from_values(values, version)

    def with_changes(self, changes: dict[str, Any]) -> "EvalProtocol":
        return EvalProtocol.from_values({**self.values, **changes}, self.version)

    # ---- reading it --------------------------------------------------------------------------------

    @cached_property
    def values(self) -> dict[str, Any]:
        return json.loads(self.values_json)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def metric(self) -> str:
        return self["eval.metric"]

    @property
    def num_samples(self) -> int:
        return int(self["eval.num_samples"])

    @property
    def batch_size(self) -> int:
        return int(self["eval.batch_size"])

    @property
    def ema_decay(self) -> float:
        return float(self["ema.eval_decay"])

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(**{key.removeprefix("eval.sampler."): self[key] for key in SAMPLER_KEYS})

    def seed_for(self, run_seed: int, step: int) -> int:
        """The sampling seed: `eval.seed`, else the run's seed plus the evaluated step (the training loop's)."""
        return int(self["eval.seed"]) if self["eval.seed"] is not None else run_seed + step

    def canonical(self) -> dict[str, Any]:
        """The values that act: what the signature hashes."""
        out = dict(self.values)
        if float(out["eval.sampler.cfg_scale"]) == 1.0:
            out.pop("eval.sampler.cfg_interval")          # no guidance: the interval does nothing
        if out["eval.sampler.kind"] not in SAMPLERS["edm"]:
            for key in EDM_ONLY:
                out.pop(key)
        if out["eval.sampler.kind"] not in SAMPLERS["flow"]:
            out.pop("eval.sampler.time_shift")
        if out["eval.metric"] == "offline":               # the held-out split's classifier: no Inception, no file
            out.pop("eval.reference")
            out.pop("eval.inception")
        return out

    @cached_property
    def signature(self) -> str:
        payload = {"protocol_version": self.version, "values": self.canonical()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        """A short readable name: `offline500-ab2x20-cfg3.0-ema0.99-seedrun` (`--protocol` takes it or the
        signature)."""
        v = self.values
        parts = [f"{v['eval.metric']}{self.num_samples}", f"{v['eval.sampler.kind']}x{v['eval.sampler.steps']}",
                 f"cfg{v['eval.sampler.cfg_scale']:g}"]
        low, high = v["eval.sampler.cfg_interval"]
        if float(v["eval.sampler.cfg_scale"]) != 1.0 and (low, high) != (0.0, 1.0):
            parts[-1] += f"@{low:g}-{high:g}"
        if v["eval.sampler.time_shift"] != 1.0 and v["eval.sampler.kind"] in SAMPLERS["flow"]:
            parts.append(f"shift{v['eval.sampler.time_shift']:g}")
        parts.append(f"ema{v['ema.eval_decay']:g}")
        if v["eval.labels"] != "balanced":
            parts.append(f"{v['eval.labels']}labels")
        parts.append("seedrun" if v["eval.seed"] is None else f"seed{v['eval.seed']}")
        return "-".join(parts) + ("" if self.version == PROTOCOL_VERSION else f"-v{self.version}")

    def describe(self) -> str:
        """One sentence for captions and run names."""
        v = self.values
        guidance = f"guidance {v['eval.sampler.cfg_scale']:g}"
        if float(v["eval.sampler.cfg_scale"]) != 1.0:
            guidance += " on t in [{:g}, {:g}]".format(*v["eval.sampler.cfg_interval"])
        shift = f", time shift {v['eval.sampler.time_shift']:g}" if v["eval.sampler.time_shift"] != 1.0 else ""
        scorer = {"offline": "offline classifier (held-out split)", "fid": "FID (Inception)",
                  "adm": f"ADM suite against {v['eval.reference']}"}.get(v["eval.metric"], v["eval.metric"])
        seed = "the run's seed + step" if v["eval.seed"] is None else v["eval.seed"]
        text = (f"{scorer}, {self.num_samples} samples ({LABELS.get(v['eval.labels'], v['eval.labels'])}, seed "
                f"{seed}), {v['eval.sampler.kind']} {v['eval.sampler.steps']} steps, {guidance}{shift}, EMA "
                f"{v['ema.eval_decay']:g}")
        return text + ("" if self.version == PROTOCOL_VERSION else
                       " (logged before protocols: noise per rank, float samples)")

    def params(self) -> dict[str, str]:
        """The protocol as MLflow params: its config keys, values as a run's params write them (`str(value)`)."""
        return {key: str(value) for key, value in self.values.items()}

    def check(self, cfg: TrainConfig, where: str = "evaluate") -> None:
        """Refuse a protocol the run of `cfg` cannot be evaluated with, in one line naming the key: a sampler of
        another objective, an EMA the run does not keep, a scorer the data cannot have."""
        from .data import HELD_OUT_DATASETS
        from .sampling import validate_sampler
        try:
            validate_sampler(self.sampler, cfg.objective.kind, cfg.objective.ddpm_steps)
        except ConfigError as err:
            raise ConfigError(f"{where}.{err.key}" if where else err.key, err.value, err.reason,
                              suggestion=err.suggestion) from None
        where = f"{where}." if where else ""
        if self.ema_decay not in [float(d) for d in cfg.ema.decays]:
            raise ConfigError(f"{where}ema.eval_decay", self.ema_decay, f"not an EMA the run keeps: ema.decays="
                              f"{list(cfg.ema.decays)} (the checkpoint holds those; add the decay to ema.decays and "
                              "train again to evaluate it)")
        if self.metric not in SCORERS:
            raise ConfigError(f"{where}eval.metric", self.metric, f"an evaluation needs a scorer, one of "
                              f"{list(SCORERS)}", suggestion=closest(str(self.metric), SCORERS))
        if self.metric == "offline" and cfg.data.name not in HELD_OUT_DATASETS:
            raise ConfigError(f"{where}eval.metric", "offline", f"needs a dataset with a held-out split "
                              f"(data.name one of {list(HELD_OUT_DATASETS)})")
        if self.metric == "adm" and not self["eval.reference"]:
            raise ConfigError(f"{where}eval.reference", None, "the ADM suite needs a reference batch (an ADM .npz "
                              "or an image folder)")
        for key in ("eval.num_samples", "eval.batch_size"):
            if isinstance(self[key], bool) or not isinstance(self[key], int) or self[key] < 1:
                raise ConfigError(f"{where}{key}", self[key], "expected a positive integer")
        if self["eval.labels"] not in LABELS:
            raise ConfigError(f"{where}eval.labels", self["eval.labels"], f"expected one of {list(LABELS)}",
                              suggestion=closest(str(self["eval.labels"]), LABELS))
        seed = self["eval.seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32):
            raise ConfigError(f"{where}eval.seed", seed, "expected an integer in [0, 2^32), or null (the run's "
                              "seed + step)")
        if self.metric in ("offline", "fid") and self.num_samples < 2:
            raise ConfigError(f"{where}eval.num_samples", self.num_samples, "a Frechet distance needs 2 samples "
                              "or more")


def protocol_of_run(params: dict[str, str], tags: dict[str, str]) -> EvalProtocol:
    """The protocol of a training run's own (in-training) evaluation: its `eval_protocol` tag's, recomputed from its
    params; runs logged before protocols (no tag) drew their samples by the older scheme (version 0)."""
    version = int(tags.get("eval_protocol_version", 0))
    return EvalProtocol.from_params(params, version)
