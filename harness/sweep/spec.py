"""The sweep file: named rows (an ablation table), optional grid axes, seeds, executor, tracking.

```yaml
name: pixeldit_table4
experiment: pixeldit_xl_paper          # base experiment preset (harness/conf/experiment)
overrides: {train.epochs: 80}          # applied to every run
baseline: "Vanilla DiT/16"             # the row differences are measured against (default: the first)
rows:                                  # in table order; `set` holds config overrides, `model` picks a preset
  - {label: "Vanilla DiT/16", set: {model: table4_vanilla_dit16}, paper: {fid: 9.84}}
  - {label: "+ RoPE, RMSNorm", set: {model: table4_rope_rmsnorm}, executor: {timeout_min: 600}}
grid: {optim.lr: [1.0e-4, 2.0e-4]}     # optional Cartesian axes, crossed with every row
seeds: [0, 1, 2]
executor: {kind: slurm, partition: gpu, gpus_per_node: 8, timeout_min: 240}
tracking: {uri: null}                  # null: the sweep's own store (a local server for slurm/local)
```

The file is never rewritten: its text, comments included, is what gets logged to MLflow.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from models.config import ConfigError

EXECUTOR_KINDS = ("slurm", "local", "debug")


@dataclass
class ExecutorSpec:
    kind: str = "local"                   # slurm (submitit job arrays) | local (subprocesses) | debug (in-process)
    partition: Optional[str] = None
    gpus_per_node: int = 0                # tasks per node = GPUs (one rank each); 0 = one CPU task
    nodes: int = 1
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    timeout_min: int = 240
    array_parallelism: int = 64           # SLURM: array tasks running at once
    max_parallel: int = 2                 # local: runs at once
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    setup: list = field(default_factory=list)                    # shell lines run before each job
    additional_parameters: dict = field(default_factory=dict)    # any other sbatch option
    max_num_timeout: int = 3              # requeues after a time-out before giving up (preemptions are free)


@dataclass
class TrackingSpec:
    uri: Optional[str] = None             # None: <output>/<name>/mlflow.db (served over HTTP to slurm/local jobs)
    experiment: Optional[str] = None      # MLflow experiment; default: the sweep name


@dataclass
class RowSpec:
    label: str
    set: dict = field(default_factory=dict)
    executor: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)


@dataclass
class SweepSpec:
    path: Path
    text: str
    name: str
    experiment: str
    rows: list[RowSpec]
    overrides: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    seeds: list = field(default_factory=lambda: [0])
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    output: str = "runs"                  # the sweep's folder is <output>/<name>
    baseline: Optional[str] = None

    @property
    def folder(self) -> Path:
        """Where the sweep keeps its store, manifest, job logs and run folders: <output>/<name>,
        with a relative `output` taken from the working directory (like hydra's outputs/)."""
        return (Path(self.output) / self.name).resolve()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def baseline_label(self) -> str:
        return self.baseline or self.rows[0].label

    def executor_for(self, row: RowSpec) -> ExecutorSpec:
        return dataclasses.replace(self.executor, **row.executor)


TOP_KEYS = {f.name for f in dataclasses.fields(SweepSpec)} - {"path", "text"}
ROW_KEYS = {f.name for f in dataclasses.fields(RowSpec)}
EXECUTOR_KEYS = {f.name: f for f in dataclasses.fields(ExecutorSpec)}
TRACKING_KEYS = {f.name for f in dataclasses.fields(TrackingSpec)}


class SweepError(ConfigError):
    """A malformed sweep file; the message names the file and the key."""


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise SweepError(f"{where}: file does not exist")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SweepError(f"{where}: invalid YAML{at}: {reason}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{where}: expected a mapping with name, experiment and rows")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SweepError(f"{where}: {sorted(unknown)[0]}: unknown key, expected one of {sorted(TOP_KEYS)}")
    for key in ("name", "experiment"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise SweepError(f"{where}: {key}: required, a non-empty string")
    if not raw["name"].replace("_", "").replace("-", "").isalnum():
        raise SweepError(f"{where}: name={raw['name']!r}: use letters, digits, '-' and '_' only")
    rows = raw.get("rows")
    if not isinstance(rows, list) or not rows:
        raise SweepError(f"{where}: rows: at least one row is required")
    parsed_rows, labels = [], set()
    for i, row in enumerate(rows):
        key = f"rows[{i}]"
        if not isinstance(row, dict):
            raise SweepError(f"{where}: {key}: expected a mapping with label and set")
        unknown = set(row) - ROW_KEYS
        if unknown:
            raise SweepError(f"{where}: {key}.{sorted(unknown)[0]}: unknown key, expected one of {sorted(ROW_KEYS)}")
        label = row.get("label")
        if not isinstance(label, str) or not label.strip():
            raise SweepError(f"{where}: {key}.label: required, a non-empty string")
        if label in labels:
            raise SweepError(f"{where}: {key}.label={label!r}: duplicate label")
        labels.add(label)
        for sub in ("set", "executor", "paper"):
            if not isinstance(row.get(sub, {}) or {}, dict):
                raise SweepError(f"{where}: {key}.{sub}: expected a mapping")
        _check_executor(row.get("executor") or {}, f"{where}: {key}.executor")
        parsed_rows.append(RowSpec(label=label, set=row.get("set") or {}, executor=row.get("executor") or {},
                                   paper=row.get("paper") or {}))
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SweepError(f"{where}: overrides: expected a mapping of config keys to values")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise SweepError(f"{where}: grid: expected a mapping of config keys to non-empty lists")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise SweepError(f"{where}: seeds: expected a non-empty list of distinct integers")
    executor = raw.get("executor") or {}
    if not isinstance(executor, dict):
        raise SweepError(f"{where}: executor: expected a mapping")
    _check_executor(executor, f"{where}: executor")
    tracking = raw.get("tracking") or {}
    if not isinstance(tracking, dict) or set(tracking) - TRACKING_KEYS:
        bad = sorted(set(tracking) - TRACKING_KEYS)[0] if isinstance(tracking, dict) else ""
        raise SweepError(f"{where}: tracking.{bad}: unknown key, expected one of {sorted(TRACKING_KEYS)}")
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in labels:
        raise SweepError(f"{where}: baseline={baseline!r}: no row has this label")
    return SweepSpec(path=path, text=text, name=raw["name"], experiment=raw["experiment"], rows=parsed_rows,
                     overrides=overrides, grid=grid, seeds=seeds, executor=ExecutorSpec(**executor),
                     tracking=TrackingSpec(**tracking), output=str(raw.get("output", "runs")), baseline=baseline)


def _check_executor(values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if key not in EXECUTOR_KEYS:
            raise SweepError(f"{where}.{key}: unknown executor field, expected one of {sorted(EXECUTOR_KEYS)}")
    kind = values.get("kind")
    if kind is not None and kind not in EXECUTOR_KINDS:
        raise SweepError(f"{where}.kind={kind!r}: unknown executor, expected one of {list(EXECUTOR_KINDS)}")
    for key in ("gpus_per_node", "nodes", "timeout_min", "array_parallelism", "max_parallel", "max_num_timeout"):
        value = values.get(key)
        if value is not None and (not isinstance(value, int) or value < (0 if key in ("gpus_per_node",
                                                                                      "max_num_timeout") else 1)):
            raise SweepError(f"{where}.{key}={value!r}: expected a positive integer")
