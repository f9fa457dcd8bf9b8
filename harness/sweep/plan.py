"""From a sweep file to the plan: one resolved, validated run per (row, grid point, seed).

Every run's config resolves exactly as `python -m harness.train <overrides>` would resolve it (tested),
and its model builds on the meta device (params and GFLOPs are counted there). Hydra composition is
cached per (experiment, model preset) and plain field overrides are merged on top, so planning a
thousand runs takes seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from models.complexity import measure
from models.config import ConfigError, ModelConfig

from ..config import TrainConfig
from ..configure import _one_line, compose_config, config_signature, validate
from ..files import atomic_write_text
from .spec import ExecutorSpec, SweepError, SweepSpec

GROUP_KEYS = ("model",)          # config groups a row may pick by name (hydra `model=<preset>`)


@dataclass
class PlannedRun:
    index: int
    label: str
    row: int
    seed: int
    grid: dict
    config_overrides: list[str]          # what the row, grid and seed change, in hydra syntax
    run_name: str
    signature: str
    executor: ExecutorSpec
    cfg: TrainConfig | None             # None when the plan was read back from the plan cache
    params: int = 0
    gflops: float = 0.0
    paper: dict = field(default_factory=dict)

    def overrides(self, spec: SweepSpec, tracking_uri: str, parent_run_id: str | None = None) -> list[str]:
        """The full command line of `harness.train` for this run."""
        extra = [f"run.name={self.run_name}", f"run.out_dir={json.dumps(str(spec.folder))}",
                 f"tracking.uri={json.dumps(tracking_uri)}", f"tracking.experiment={json.dumps(spec.experiment_name)}",
                 f"+tracking.tags.sweep={json.dumps(spec.name)}", f"+tracking.tags.label={json.dumps(self.label)}",
                 f"+tracking.tags.seed={json.dumps(str(self.seed))}", f"+tracking.tags.row={json.dumps(str(self.row))}"]
        if self.grid:
            extra.append(f"+tracking.tags.grid={json.dumps(json.dumps(self.grid, sort_keys=True))}")
        if parent_run_id:
            extra.append(f"tracking.parent_run_id={parent_run_id}")
        return [f"+experiment={spec.experiment}", *self.config_overrides, *extra]


def to_override(key: str, value) -> str:
    """One hydra override; values as JSON, which both hydra's grammar and YAML read back unchanged."""
    if key in GROUP_KEYS:
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "row"


@lru_cache(maxsize=64)
def _composed(experiment: str, groups: tuple[tuple[str, str], ...]):
    composed, preset = compose_config([f"+experiment={experiment}", *(f"{k}={v}" for k, v in groups)],
                                      source="sweep")
    return composed, preset


_complexity_cache: dict[str, tuple[int, float]] = {}


def complexity(model: ModelConfig) -> tuple[int, float]:
    """(params, GFLOPs) of a model config, built once on the meta device."""
    key = repr(model)
    if key not in _complexity_cache:
        result = measure(model)
        _complexity_cache[key] = (result.params, result.gflops)
    return _complexity_cache[key]


@lru_cache(maxsize=4096)
def _resolve_cached(experiment: str, overrides_json: str) -> TrainConfig:
    overrides = json.loads(overrides_json)
    groups = tuple((k, str(v)) for k, v in overrides.items() if k in GROUP_KEYS)
    composed, _ = _composed(experiment, groups)
    fields = [f"{k}={json.dumps(v)}" for k, v in overrides.items() if k not in GROUP_KEYS]
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(composed, OmegaConf.from_dotlist(fields)))
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None
    validate(cfg)
    return cfg


def resolve_fast(experiment: str, overrides: dict) -> TrainConfig:
    """Equivalent to `configure.resolve` for plain `key: value` overrides. Composition is cached per
    model preset and resolution per distinct override set; runs that differ only in `run.seed` share
    everything but their `run` section (the returned configs are read, never mutated)."""
    seed = overrides.get("run.seed")
    rest = {k: v for k, v in overrides.items() if k != "run.seed"}
    cfg = _resolve_cached(experiment, json.dumps(rest))
    if seed is None:
        return cfg
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))


def _where(spec: SweepSpec, row: int, key: str | None) -> str:
    """The place in the sweep file a failing config key came from, as a prefix of the message."""
    if key is not None:
        if key in spec.rows[row].set or key.split(".")[0] in spec.rows[row].set:
            return f"rows[{row}].set."
        if key in spec.grid:
            return "grid."
        if key in spec.overrides:
            return "overrides."
    return f"rows[{row}] ({spec.rows[row].label!r}): "


def _failing_key(message: str) -> str | None:
    match = re.match(r"([A-Za-z_][\w.]*)\s*[=:]", message)
    return match.group(1) if match else None


def plan_sweep(spec: SweepSpec) -> list[PlannedRun]:
    """Validate every run of the sweep; the first failure is one line naming the file and the key."""
    grid_keys = list(spec.grid)
    grid_points = [dict(zip(grid_keys, values)) for values in itertools.product(*spec.grid.values())] or [{}]
    runs: list[PlannedRun] = []
    for row_index, row in enumerate(spec.rows):
        executor = spec.executor_for(row)
        for point in grid_points:
            for seed in spec.seeds:
                overrides = {**spec.overrides, **row.set, **point, "run.seed": seed}
                try:
                    cfg = resolve_fast(spec.experiment, overrides)
                    params, gflops = complexity(cfg.model)
                except ConfigError as err:
                    message = str(err).removeprefix("sweep: ")
                    raise SweepError(f"{spec.path}: {_where(spec, row_index, _failing_key(message))}"
                                     f"{message}") from None
                signature = config_signature(cfg)
                grid_tag = "".join(f"-{slug(k.split('.')[-1])}{slug(str(v))}" for k, v in point.items())
                run_name = f"{slug(row.label)}{grid_tag}-s{seed}-{signature[:8]}"
                runs.append(PlannedRun(
                    index=len(runs), label=row.label, row=row_index, seed=seed, grid=point,
                    config_overrides=[to_override(k, v) for k, v in overrides.items()],
                    run_name=run_name, signature=signature, executor=executor, cfg=cfg,
                    params=params, gflops=gflops, paper=row.paper))
    names = [run.run_name for run in runs]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise SweepError(f"{spec.path}: rows: two runs resolve to the same config ({duplicate}); "
                         f"make the rows differ")
    return runs


# ---- the plan cache: status and tables of big sweeps without re-planning ----------------------------

CACHED_FIELDS = ("index", "label", "row", "seed", "grid", "config_overrides", "run_name", "signature",
                 "params", "gflops", "paper")


def code_fingerprint() -> str:
    """Hash of the sources that decide how a sweep resolves (configs, presets, validation)."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("models/*.py"), *root.glob("harness/*.py"), *root.glob("harness/conf/**/*.yaml")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _plan_key(spec: SweepSpec) -> str:
    return hashlib.sha256(spec.text.encode()).hexdigest()[:16] + code_fingerprint()


def write_plan_cache(spec: SweepSpec, runs: list[PlannedRun]) -> None:
    atomic_write_text(spec.folder / "plan.json", json.dumps(
        {"key": _plan_key(spec), "runs": [{name: getattr(run, name) for name in CACHED_FIELDS} for run in runs]}))


def load_plan(spec: SweepSpec) -> list[PlannedRun]:
    """The plan, from `<folder>/plan.json` when neither the sweep file nor the code changed since a
    submission wrote it; otherwise planned (and validated) again."""
    path = spec.folder / "plan.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == _plan_key(spec):
            return [PlannedRun(**entry, executor=spec.executor_for(spec.rows[entry["row"]]), cfg=None)
                    for entry in cached["runs"]]
    return plan_sweep(spec)
