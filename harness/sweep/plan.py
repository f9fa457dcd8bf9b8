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

from models.config import ModelConfig
from toolkit.errors import ConfigError
from toolkit.files import atomic_write_text

from ..config import TrainConfig
from ..configure import (
    Interpolated,
    affects_result,
    affects_training,
    compose_config,
    config_error,
    config_signature,
    flatten,
    validate,
)
from ..protocol import EvalProtocol
from ..retention import Footprint, footprint
from .executors import ExecutorSpec
from .spec import SweepError, SweepSpec

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
    params: int | None = 0               # None: not counted (`plan_sweep(full=False)`)
    gflops: float | None = 0.0
    paper: dict = field(default_factory=dict)
    same_as: int | None = None          # the index of an earlier planned run that is the same run (one signature:
                                        # a grid point that only moves a switch without effect on this row's model)
    disk: Footprint | None = None       # its checkpoints at most (harness/retention.py); None: read from the cache
    interpolated: Interpolated = field(default_factory=Interpolated)   # `${...}` values: shown as expressions

    @property
    def title(self) -> str:
        """The run as people name it, its MLflow run name: `+ RoPE, RMSNorm · seed 1` (grid values in brackets)."""
        grid = " [" + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.grid.items()) + "]" if self.grid else ""
        return f"{self.label}{grid} · seed {self.seed}"

    def overrides(self, spec: SweepSpec, tracking_uri: str, parent_run_id: str | None = None) -> list[str]:
        """The full command line of `harness.train` for this run."""
        extra = [f"run.name={self.run_name}", f"run.out_dir={hydra_value(str(spec.folder))}",
                 f"tracking.uri={hydra_value(tracking_uri)}",
                 f"tracking.experiment={hydra_value(spec.experiment_name)}",
                 f"tracking.run_name={hydra_value(self.title)}",
                 f"+tracking.tags.sweep={hydra_value(spec.name)}", f"+tracking.tags.label={hydra_value(self.label)}",
                 f"+tracking.tags.seed={hydra_value(str(self.seed))}",
                 f"+tracking.tags.row={hydra_value(row_tag(self.row, len(spec.rows)))}"]
        if self.grid:
            extra.append(f"+tracking.tags.grid={hydra_value(json.dumps(self.grid, sort_keys=True))}")
        if parent_run_id:
            extra.append(f"tracking.parent_run_id={parent_run_id}")
        return [f"+experiment={spec.experiment}", *self.config_overrides, *extra]


def row_tag(row: int, rows: int) -> str:
    """A row's index as its MLflow tag, zero-padded to the widest index so that text order is row order (the UI
    sorts tags as text: row 10 after row 9, not after row 1)."""
    return f"{row:0{len(str(rows - 1))}d}"


def hydra_value(value) -> str:
    """A value as JSON, which both hydra's grammar and YAML read back unchanged (text as written: `·`, not `\\u00b7`,
    which hydra would keep as six characters)."""
    return json.dumps(value, ensure_ascii=False)


def to_override(key: str, value) -> str:
    """One hydra override."""
    if key in GROUP_KEYS:
        return f"{key}={value}"
    return f"{key}={hydra_value(value)}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "row"


@lru_cache(maxsize=64)
def _composed(experiment: str, groups: tuple[tuple[str, str], ...]):
    composed, preset = compose_config([f"+experiment={experiment}", *(f"{k}={v}" for k, v in groups)],
                                      source="sweep")
    return composed, preset


_complexity_cache: dict[str, tuple[int, float, int]] = {}


def complexity(model: ModelConfig) -> tuple[int, float, int]:
    """(params, GFLOPs, trained params: with the REPA projector) of a model config, built once on the meta device."""
    key = repr(model)
    if key not in _complexity_cache:
        from models.complexity import measure  # torch: only when planning (read-only verbs read the plan cache)
        result = measure(model)
        _complexity_cache[key] = (result.params, result.gflops, result.params + result.repa_params)
    return _complexity_cache[key]


@lru_cache(maxsize=4096)
def _resolve_cached(experiment: str, overrides_json: str, check: bool = True) -> tuple[TrainConfig, Interpolated]:
    overrides = json.loads(overrides_json)
    groups = tuple((k, str(v)) for k, v in overrides.items() if k in GROUP_KEYS)
    composed, _ = _composed(experiment, groups)
    fields = [f"{k}={json.dumps(v)}" for k, v in overrides.items() if k not in GROUP_KEYS]
    interpolated = Interpolated()
    try:
        merged = OmegaConf.merge(composed, OmegaConf.from_dotlist(fields))
        interpolated = Interpolated.of(merged)
        cfg = OmegaConf.to_object(merged)
        if check:                                # data paths: at submission (`check_data_paths`), not in a dry run
            validate(cfg, check_paths=False)
    except OmegaConfBaseException as err:
        raise interpolated.error(config_error(err, None)) from None
    except ConfigError as err:
        raise interpolated.error(err) from None
    return cfg, interpolated


def resolve_fast(experiment: str, overrides: dict, check: bool = True) -> tuple[TrainConfig, Interpolated]:
    """Equivalent to `configure.resolve` for plain `key: value` overrides (without `check`, resolved but not
    validated). Composition is cached per model preset and resolution per distinct override set; runs that
    differ only in `run.seed` share everything but their `run` section (the returned configs are read, never
    mutated)."""
    seed = overrides.get("run.seed")
    rest = {k: v for k, v in overrides.items() if k != "run.seed"}
    cfg, interpolated = _resolve_cached(experiment, json.dumps(rest), check)
    if seed is None:
        return cfg, interpolated
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed)), interpolated


def _where(spec: SweepSpec, row: int, key: str | None) -> str:
    """The path in the sweep file to the failing config key: where the row, grid or overrides set it,
    else the row (a key the preset or experiment set, refused in combination with the row's)."""
    if key is not None:
        if key in spec.rows[row].set or key.split(".")[0] in spec.rows[row].set:
            return f"rows[{row}].set.{key}"
        if key in spec.grid:
            return f"grid.{key}"
        if key in spec.overrides:
            return f"overrides.{key}"
    return f"rows[{row}] ({spec.rows[row].label!r}): {key}" if key else f"rows[{row}] ({spec.rows[row].label!r})"


def check_world_size(cfg: TrainConfig, executor: ExecutorSpec) -> None:
    """Each rank of a run's job takes an equal share of every global batch, in equal micro-batches."""
    world, accum = executor.world_size, cfg.train.grad_accum
    if world > 1 and cfg.train.global_batch % (world * accum):
        raise ConfigError("train.global_batch", cfg.train.global_batch, f"must be divisible by the job's {world} "
                          f"ranks (executor nodes x tasks_per_node) x train.grad_accum={accum}")


def plan_sweep(spec: SweepSpec, full: bool = True) -> list[PlannedRun]:
    """Validate every run of the sweep; the first failure is one line naming the file and the key. Not `full`:
    the runs and their signatures only, what a verb that reads the store and shows no model's size needs when
    the code changed since the submission wrote the plan cache (an upgrade): resolved, not validated, no model
    built (no torch); parameters, FLOPs and checkpoint sizes None. Validation never changes a config (the
    signatures equal a full plan's: tests/test_signatures.py)."""
    grid_keys = list(spec.grid)
    grid_points = [dict(zip(grid_keys, values)) for values in itertools.product(*spec.grid.values())] or [{}]
    runs: list[PlannedRun] = []
    for row_index, row in enumerate(spec.rows):
        executor = spec.executor_for(row)
        for point in grid_points:
            for seed in spec.seeds:
                overrides = {**spec.overrides, **row.set, **point, "run.seed": seed}
                try:
                    cfg, interpolated = resolve_fast(spec.experiment, overrides, check=full)
                    check_world_size(cfg, executor)
                    params, gflops, trained = complexity(cfg.model) if full else (None, None, None)
                except ConfigError as err:
                    raise err.at(source=str(spec.path), key=_where(spec, row_index, err.key)) from None
                signature = config_signature(cfg)
                grid_tag = "".join(f"-{slug(k.split('.')[-1])}{slug(str(v))}" for k, v in point.items())
                run_name = f"{slug(row.label)}{grid_tag}-s{seed}-{signature[:8]}"
                runs.append(PlannedRun(
                    index=len(runs), label=row.label, row=row_index, seed=seed, grid=point,
                    config_overrides=[to_override(k, v) for k, v in overrides.items()],
                    run_name=run_name, signature=signature, executor=executor, cfg=cfg,
                    params=params, gflops=gflops, paper=row.paper,
                    disk=footprint(cfg, trained) if full else None,
                    interpolated=interpolated))
    first: dict[str, PlannedRun] = {}
    for run in runs:                             # one signature is one run, trained once
        other = first.setdefault(run.signature, run)
        if other is run:
            continue
        if (other.row != run.row and other.grid == run.grid) or EvalProtocol.of(other.cfg) != EvalProtocol.of(run.cfg):
            where = _describe(spec, other) + " and " + _describe(spec, run)
            differ = sorted(k for k, v in flatten(run.cfg).items()
                            if not affects_training(k) and affects_result(k) and flatten(other.cfg).get(k) != v)
            hint = (f": they differ only in evaluation settings ({', '.join(differ)}), which do not change the trained "
                    f"weights; evaluate the run under each with `evaluate:`" if differ else
                    "; make the rows differ or drop one")
            raise SweepError("rows", reason=f"{where} resolve to the same run (signature {run.signature}){hint}",
                             source=str(spec.path))
        # the same row at another grid point (or another row at another point) that trains the same model: the
        # run is trained once and shows at both points of the table
        run.same_as, run.run_name = other.index, other.run_name
    return runs


def _describe(spec: SweepSpec, run: PlannedRun) -> str:
    grid = f" at {json.dumps(run.grid)}" if run.grid else ""
    return f"rows[{run.row}] ({run.label!r}){grid} seed {run.seed}"


def check_data_paths(spec: SweepSpec, runs: list[PlannedRun]) -> None:
    """The data paths, initial weights and VAE weights a dry run leaves unchecked, checked once per distinct config
    before submission (`runs` freshly planned: their configs are resolved)."""
    from ..data import validate_data
    from ..vae import image_channels, is_latent, validate_vae
    seen = set()
    for run in runs:
        init = run.cfg.model.init_from
        if init and not Path(init).is_file():
            raise SweepError(_where(spec, run.row, "model.init_from"),
                             run.interpolated.expressions.get("model.init_from", init), "file does not exist (checked "
                             "at submission; a dry run does not look at files)", source=str(spec.path))
        data = run.cfg.data
        key = repr((data, run.cfg.model.in_channels, is_latent(run.cfg) and run.cfg.vae))
        if key in seen:
            continue
        seen.add(key)
        try:
            if is_latent(run.cfg):
                validate_vae(run.cfg, check_paths=True)
            validate_data(data, data.resolution, image_channels(run.cfg))
        except ConfigError as err:
            err = run.interpolated.error(err)
            reason = f"{err.reason} (checked at submission; a dry run does not look at data paths)"
            raise SweepError(_where(spec, run.row, err.key), err.value, reason, source=str(spec.path)) from None


def data_paths(runs: list[PlannedRun]) -> list[str]:
    """The data paths and initial weights of a plan (what a dry run does not check), as written: a path read from
    the environment as its `${oc.env:...}` expression."""
    return sorted({run.interpolated.expressions.get(key, path) for run in runs if run.cfg is not None
                   for key, path in (("data.path", run.cfg.data.path), ("model.init_from", run.cfg.model.init_from))
                   if path})


# ---- the plan cache: status and tables of big sweeps without re-planning ----------------------------

CACHED_FIELDS = ("index", "label", "row", "seed", "grid", "config_overrides", "run_name", "signature",
                 "params", "gflops", "paper", "same_as")


def code_fingerprint() -> str:
    """Hash of the sources that decide how a sweep resolves (configs, presets, validation)."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("models/*.py"), *root.glob("harness/*.py"), *root.glob("harness/conf/**/*.yaml")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _plan_key(spec: SweepSpec, code: str) -> str:
    return hashlib.sha256(spec.text.encode()).hexdigest()[:16] + code


def write_plan_cache(spec: SweepSpec, runs: list[PlannedRun]) -> None:
    """`<folder>/plan.json`: the planned runs, and the parameter and FLOP counts of their models."""
    code = code_fingerprint()
    counts = {key: _complexity_cache[key] for key in {repr(run.cfg.model) for run in runs if run.cfg is not None}
              if key in _complexity_cache}
    atomic_write_text(spec.folder / "plan.json", json.dumps(
        {"key": _plan_key(spec, code), "code": code, "complexity": counts,
         "runs": [{name: getattr(run, name) for name in CACHED_FIELDS} for run in runs]}))


def load_plan(spec: SweepSpec, full: bool = True) -> list[PlannedRun]:
    """The plan, from `<folder>/plan.json` when neither the sweep file nor the code changed since a
    submission wrote it; otherwise planned (and validated) again — with the cached models' counts while the code
    is the same, so that a sweep file edited after its submission is planned again without building a model
    (the read-only verbs never import torch); not `full` (`plan_sweep`) after the code changed."""
    path = spec.folder / "plan.json"
    if path.exists():
        cached, code = json.loads(path.read_text()), code_fingerprint()
        if cached.get("key") == _plan_key(spec, code):
            return [PlannedRun(**entry, executor=spec.executor_for(spec.rows[entry["row"]]), cfg=None)
                    for entry in cached["runs"]]
        if cached.get("code") == code:
            _complexity_cache.update({key: tuple(n) for key, n in cached.get("complexity", {}).items()})
            full = True                           # every model's counts are cached: none is built
    return plan_sweep(spec, full)
