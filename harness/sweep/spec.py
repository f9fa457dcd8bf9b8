"""The sweep file: named rows (an ablation table), optional grid axes, seeds, executor, tracking.

```yaml
name: pixeldit_table4
description: Does each of PixelDiT's design steps lower gFID?   # the parent run's description, the report's
notes: Rows as in PixelDiT Table 4.    # optional, Markdown: shown in the report and on the parent run
experiment: pixeldit_xl_paper          # base experiment preset (harness/conf/experiment)
output: ../runs                        # the sweep's folder is <output>/<name>; relative to THIS file's folder
overrides: {train.epochs: 80}          # applied to every run
baseline: "Vanilla DiT/16"             # the row differences are measured against (default: the first)
rows:                                  # in table order; `set` holds config overrides, `model` picks a preset
  - {label: "Vanilla DiT/16", set: {model: table4_vanilla_dit16}, paper: {fid: 9.84}}
  - {label: "+ RoPE, RMSNorm", set: {model: table4_rope_rmsnorm}, executor: {timeout_min: 600}}
paper_metric:                          # what the rows' `paper:` numbers are, one entry per key used there
  fid: {metric: gFID-50K, dataset: ImageNet 256x256, source: "PixelDiT Table 4, XL, 80 epochs"}
grid: {optim.lr: [1.0e-4, 2.0e-4]}     # optional Cartesian axes, crossed with every row
seeds: [0, 1, 2]                       # the sweep owns run.seed (and run.name, run.out_dir, tracking.*)
executor: {kind: slurm, partition: gpu, gpus_per_node: 8, timeout_min: 240}   # fields of its kind only
tracking: {uri: null}                  # null: the sweep's own store (a local server for slurm/local)
                                       # {host: 0.0.0.0}: that server reachable from a cluster's compute nodes (it
                                       # then requires the sweep's credentials); {uri: postgresql://ditlab@db/ditlab}:
                                       # the runs in PostgreSQL (the password in ~/.pgpass)
latents: {shards: 8, executor: {gpus_per_node: 1, timeout_min: 120}}
                                       # latent rows: their latent caches are a stage (harness.latents prepare) the
                                       # training runs wait for; a cache already made is used as it is
disk_budget: 2TB                       # refuse a plan whose checkpoints may take more (checkpoint.keep_*, `gc`)
reuse_from: [other_sweep.yaml]         # finished runs of the same signature there count as done here
max_runs: 1000                         # refuse a plan larger than this (a typo in a grid)
evaluate:                              # evaluations of every finished run, no retraining (harness/sweep/protocols.py)
  set: {eval.num_samples: 10000}       # changes to each run's own protocol (its eval.* settings, ema.eval_decay)
  grid: {eval.sampler.cfg_scale: [1.0, 1.5, 2.0], ema.eval_decay: [0.9996, 0.9999]}   # protocol axes, crossed
  select:                              # optional, as JiT chooses: the grid point that minimises `metric` on a proxy
    metric: fid                        # count with one seed, per row (or per run), confirmed with another seed
    per: row
    proxy: {eval.num_samples: 8000, eval.seed: 1}
    confirm: {eval.num_samples: 50000, eval.seed: 2}
```

The file is never rewritten: its text, comments included, is what gets logged to MLflow. Everything a
hostile or careless file can get wrong is refused here or in planning, in one line naming the file and
the key, before anything is created: among others, values YAML reads as something else than numbers, text,
booleans, lists and mappings (a date, bytes), non-finite numbers (`.nan`, `.inf`), text with control or
bidirectional-override characters anywhere (a label that rewrites the terminal or reads backwards; a newline
in an executor field that would add a line to the job script; only `description` and `notes` may span lines),
an unknown experiment, an `output` that is (or lies under) a file, a `reuse_from` sweep file or sqlite store
that does not exist, a relative sqlite store (it would depend on the working directory).

`paper:` numbers are kept as written (`3.50` stays `3.50` in every table: `PaperValue`, a float that
keeps its YAML text) and must be numbers. `paper_metric` says what they measure — the paper's metric
and dataset (required) and where it was printed (optional) — so a table never puts an unlabelled paper
column beside its own. Without `paper_metric` the tables label the paper column "not stated"; with it,
every `paper:` key of the rows must have an entry and every entry must be used.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from toolkit.errors import ConfigError, closest, unknown
from toolkit.sizes import parse_size

from ..configure import SEED_RANGE, affects_result, affects_training, group_options, schema_keys
from ..metric_registry import METRICS as REGISTERED_METRICS
from ..protocol import PROTOCOL_KEYS, protocol_defaults
from .executors import ExecutorSpec, parse_spec
from .safe_yaml import read_yaml

MAX_NAME = 100                  # the name is a folder and an MLflow experiment name
MAX_LABEL = 200                 # a label is an MLflow run name, a table row and a plot legend
MULTILINE_KEYS = ("description", "notes")     # Markdown: the only text that may hold line breaks and tabs
BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Config keys a sweep sets itself for every run: rows, grid and overrides may not.
OWNED_KEYS = {"run.seed": "the sweep's `seeds:` set it", "run.name": "the sweep names its runs",
              "run.out_dir": "runs live in the sweep's folder (`output:`)", "run.resume": "jobs always resume",
              "experiment": "the sweep's `experiment:` picks it", "tracking": "the sweep's `tracking:` section sets it"}


@dataclass
class TrackingSpec:
    uri: Optional[str] = None             # the store: None: <output>/<name>/mlflow.db; a database (postgresql://user@
                                          # host/db: a cluster's store; password in ~/.pgpass); slurm/local jobs log to
                                          # it through the sweep's own server. Or a server's http(s):// URL (used as is)
    experiment: Optional[str] = None      # MLflow experiment; default: the sweep name
    host: Optional[str] = None            # where the sweep's own tracking server listens (default 127.0.0.1: jobs on
                                          # this machine); 0.0.0.0: every interface, jobs reach it by this machine's
                                          # hostname (a cluster's compute nodes); or one address of this machine


@dataclass(frozen=True)
class PaperMetric:
    """What a sweep's `paper:` numbers measure, e.g. gFID-50K on ImageNet 256x256, PixelDiT Table 4."""
    metric: str                           # the paper's metric, as the paper names it: "gFID-50K"
    dataset: str                          # the paper's data and resolution: "ImageNet 256x256"
    source: str = ""                      # where it is printed: "PixelDiT Table 4, XL, 80 epochs"

    def __str__(self) -> str:
        return f"{self.metric}, {self.dataset}" + (f" ({self.source})" if self.source else "")


class PaperValue(float):
    """A `paper:` number that keeps the text it was written with: str(PaperValue("3.50")) == "3.50"."""

    def __new__(cls, text):
        value = super().__new__(cls, text)
        value.text = str(text)
        return value

    def __str__(self) -> str:
        return self.text


@dataclass
class LatentStageSpec:
    """`latents:`: the latent caches of the sweep's latent runs are made by a stage of `shards` jobs (a SLURM array,
    local processes) that their training jobs wait for (harness/sweep/stages.py)."""
    shards: int = 1                       # jobs that encode each cache (its shards)
    executor: Optional[ExecutorSpec] = None   # the sweep's executor with these changes (one device per job)


@dataclass
class SelectSpec:
    """`evaluate.select`: the grid point that minimises (or maximises) `metric` on the proxy protocol, per row (the
    mean over its runs) or per run, confirmed under the confirm protocol."""
    metric: str
    proxy: dict                           # protocol changes of the proxy (eval.num_samples, eval.seed required)
    confirm: dict                         # protocol changes of the confirmation (another eval.seed)
    per: str = "row"                      # row: one choice per table row | run: one per run


@dataclass
class EvaluateSpec:
    """`evaluate:`: the protocols (harness/protocol.py) every finished run is evaluated under, without retraining:
    each run's own protocol with `set` applied, at every point of `grid` (and, with `select`, at the proxy's
    count and seed, then the selected point at the confirmation's)."""
    set: dict = field(default_factory=dict)   # protocol key -> value, for every evaluation
    grid: dict = field(default_factory=dict)  # protocol key -> values, crossed
    select: Optional[SelectSpec] = None

    @property
    def points(self) -> list[dict]:
        return [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())] or [{}]


@dataclass
class RowSpec:
    label: str
    set: dict = field(default_factory=dict)
    executor: Optional[ExecutorSpec] = None   # the sweep's executor with this row's changes
    paper: dict = field(default_factory=dict)       # metric key -> PaperValue


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
    output: str = "runs"
    baseline: Optional[str] = None
    reuse_from: list = field(default_factory=list)
    max_runs: int = 1000
    paper_metric: dict = field(default_factory=dict)   # `paper:` key -> PaperMetric
    description: str = ""                 # what the sweep asks, in a sentence or two: the parent run's description
    notes: str = ""                       # anything else worth keeping beside the results (Markdown)
    latents: Optional[LatentStageSpec] = None   # the latent-cache stage, when declared
    evaluate: Optional[EvaluateSpec] = None   # evaluations of the finished runs under protocols
    disk_budget: Any = None               # the most its runs' checkpoints may take (800GB, 2TiB): checked at planning

    @property
    def folder(self) -> Path:
        """Where the sweep keeps its store, manifest, job logs and run folders: <output>/<name>, a relative
        `output` taken from the sweep file's folder (never from the working directory)."""
        return (self.path.resolve().parent / self.output / self.name).resolve()

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def baseline_label(self) -> str:
        return self.baseline or self.rows[0].label

    @property
    def num_runs(self) -> int:
        return len(self.rows) * math.prod(len(v) for v in self.grid.values()) * len(self.seeds)

    def executor_for(self, row: RowSpec) -> ExecutorSpec:
        return row.executor or self.executor

    def with_executor(self, kind: str) -> "SweepSpec":
        """The sweep run by another kind of executor (`--executor`): the fields that kind does not take
        (another kind's) are dropped, everywhere."""
        executor = parse_spec({"kind": kind}, "executor", self.executor)
        rows = [dataclasses.replace(row, executor=None if row.executor is None else
                                    parse_spec({"kind": kind}, "executor", row.executor)) for row in self.rows]
        latents = self.latents
        if latents is not None and latents.executor is not None:
            latents = dataclasses.replace(latents, executor=parse_spec({"kind": kind}, "executor", latents.executor))
        return dataclasses.replace(self, executor=executor, rows=rows, latents=latents)


TOP_KEYS = {f.name for f in dataclasses.fields(SweepSpec)} - {"path", "text"}
ROW_KEYS = {f.name for f in dataclasses.fields(RowSpec)}
TRACKING_KEYS = {f.name for f in dataclasses.fields(TrackingSpec)}
EVALUATE_KEYS = [f.name for f in dataclasses.fields(EvaluateSpec)]
SELECT_KEYS = [f.name for f in dataclasses.fields(SelectSpec)]
MAX_EVALUATION_POINTS = 10000             # points of `evaluate.grid` (a typo in a list)
PAPER_METRIC_KEYS = [f.name for f in dataclasses.fields(PaperMetric)]


class SweepError(ConfigError):
    """A malformed sweep file; the message names the file and the key."""


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        text, raw = read_yaml(path)
        return _parse(path, text, raw)
    except ConfigError as err:
        raise SweepError(err.key, err.value, err.reason, source=str(path), suggestion=err.suggestion) from None


def _parse(path: Path, text: str, raw: Any) -> SweepSpec:
    if not isinstance(raw, dict):
        raise ConfigError(None, reason="expected a mapping with name, experiment and rows")
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown_key(str(key), sorted(TOP_KEYS))
    _check_values(raw)
    for key in ("name", "experiment"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(key, reason="required, a non-empty string")
    name = raw["name"]
    if not name.replace("_", "").replace("-", "").isalnum() or not name.isascii() or not name[0].isalnum():
        raise ConfigError("name", name, "use letters, digits, '-' and '_' only, starting with a letter or digit")
    experiments = group_options("experiment")
    if raw["experiment"] not in experiments:
        raise ConfigError("experiment", raw["experiment"], f"unknown experiment (harness/conf/experiment/), expected "
                          f"one of {experiments}", suggestion=closest(raw["experiment"], experiments))
    if len(name) > MAX_NAME:
        raise ConfigError("name", f"{name[:20]}...", f"{len(name)} characters; at most {MAX_NAME} "
                                                   f"(it names a folder and an MLflow experiment)")
    for key in ("output", "baseline", "description", "notes"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(key, raw[key], "expected a string")
    executor = parse_spec(raw.get("executor") or {}, "executor")
    rows = _rows(raw.get("rows"), executor, _paper_texts(text))
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError("overrides", reason="expected a mapping of config keys to values")
    _check_config_keys(overrides, "overrides")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError("grid", reason="expected a mapping of config keys to non-empty lists")
    _check_config_keys(grid, "grid")
    for key in grid:
        if not affects_training(key):
            hint = "; evaluate each run at these values with `evaluate: {grid: ...}`" if affects_result(key) else ""
            raise ConfigError(f"grid.{key}", reason=f"does not change the trained weights: every grid point would be "
                              f"the same run{hint}")
    seeds = _seeds(raw.get("seeds", [0]))
    tracking = raw.get("tracking") or {}
    if not isinstance(tracking, dict):
        raise ConfigError("tracking", reason="expected a mapping")
    for key, value in tracking.items():
        if key not in TRACKING_KEYS:
            raise _unknown_key(f"tracking.{key}", sorted(TRACKING_KEYS))
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"tracking.{key}", value, "expected a string (or null)")
    if tracking.get("uri") and urllib.parse.urlsplit(tracking["uri"]).password:   # (the value is not repeated)
        raise ConfigError("tracking.uri", reason="holds a password, which would be logged with the sweep file; keep "
                          "it in ~/.pgpass (PGPASSFILE) for a database, in MLFLOW_TRACKING_PASSWORD for a server")
    reuse_from = raw.get("reuse_from") or []
    if not isinstance(reuse_from, list) or not all(isinstance(v, str) and v for v in reuse_from):
        raise ConfigError("reuse_from", reuse_from, "expected a list of sweep files or tracking URIs")
    _check_paths(path, raw, reuse_from, tracking)
    max_runs = raw.get("max_runs", SweepSpec.max_runs)
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
        raise ConfigError("max_runs", max_runs, "expected a positive integer")
    if raw.get("disk_budget") is not None:
        try:
            parse_size(raw["disk_budget"])
        except ValueError:
            raise ConfigError("disk_budget", raw["disk_budget"], "expected a size such as 800GB or 2TiB") from None
    labels = [row.label for row in rows]
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in labels:
        raise ConfigError("baseline", baseline, "no row has this label", suggestion=closest(baseline, labels))
    spec = SweepSpec(path=path, text=text, name=name, experiment=raw["experiment"], rows=rows, overrides=overrides,
                     grid=grid, seeds=seeds, executor=executor, tracking=TrackingSpec(**tracking),
                     output=raw.get("output", SweepSpec.output), baseline=baseline, reuse_from=reuse_from,
                     max_runs=max_runs, paper_metric=_paper_metric(raw.get("paper_metric"), rows),
                     description=raw.get("description", "").strip(), notes=raw.get("notes", "").strip(),
                     latents=_latents(raw.get("latents"), executor),
                     evaluate=_evaluate(raw["evaluate"]) if "evaluate" in raw else None,
                     disk_budget=raw.get("disk_budget"))
    if spec.num_runs > max_runs:                   # before planning: a 10^6-run grid must not take minutes
        raise ConfigError("grid" if grid else "rows", reason=f"{spec.num_runs} runs ({len(rows)} rows x "
                          f"{spec.num_runs // (len(rows) * len(seeds))} grid points x {len(seeds)} seeds) exceed "
                          f"max_runs={max_runs}; raise max_runs if you mean it")
    return spec


def _rows(rows: Any, executor: ExecutorSpec, paper_texts: dict) -> list[RowSpec]:
    if not isinstance(rows, list) or not rows:
        raise ConfigError("rows", reason="at least one row is required")
    parsed, labels = [], set()
    for i, row in enumerate(rows):
        key = f"rows[{i}]"
        if not isinstance(row, dict):
            raise ConfigError(key, reason="expected a mapping with label and set")
        for sub in row:
            if sub not in ROW_KEYS:
                raise _unknown_key(f"{key}.{sub}", sorted(ROW_KEYS))
        label = row.get("label")
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{key}.label", reason="required, a non-empty string")
        if len(label) > MAX_LABEL:
            raise ConfigError(f"{key}.label", f"{label[:20]}...", f"{len(label)} characters; at most {MAX_LABEL} (a "
                              f"label is a run name and a table row)")
        if label != label.strip():
            raise ConfigError(f"{key}.label", label, "leading or trailing spaces (they hide in tables and plots)")
        if label in labels:
            raise ConfigError(f"{key}.label", label, "duplicate label")
        labels.add(label)
        for sub in ("set", "executor", "paper"):
            if not isinstance(row.get(sub) or {}, dict):
                raise ConfigError(f"{key}.{sub}", reason="expected a mapping")
        _check_config_keys(row.get("set") or {}, f"{key}.set")
        row_executor = parse_spec(row["executor"], f"{key}.executor", executor) if row.get("executor") else None
        parsed.append(RowSpec(label=label, set=row.get("set") or {}, executor=row_executor,
                              paper=_paper_values(row.get("paper") or {}, paper_texts, i)))
    return parsed


def _latents(raw: Any, executor: ExecutorSpec) -> Optional[LatentStageSpec]:
    """`latents: {shards: K, executor: {...}}` (both optional; `latents: {}` declares the stage with one shard)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("latents", raw, "expected a mapping such as {shards: 8, executor: {timeout_min: 120}}")
    for key in raw:
        if key not in ("shards", "executor"):
            raise _unknown_key(f"latents.{key}", ["executor", "shards"])
    shards = raw.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError("latents.shards", shards, "expected a positive integer")
    stage = raw.get("executor")
    return LatentStageSpec(shards, parse_spec(stage, "latents.executor", executor) if stage else None)


def _unknown_key(path: str, options: list[str]) -> ConfigError:
    """An unknown key: the closest valid one when one is near, else all of them."""
    suggestion = closest(path.rsplit(".", 1)[-1], options)
    return ConfigError(path, reason="unknown key" if suggestion else f"unknown key, expected one of {options}",
                       suggestion=suggestion)


def _check_config_keys(values: dict, where: str) -> None:
    """Config overrides name config keys; the keys the sweep sets itself are refused, saying why; a model preset is
    named by a string (a grid axis: a list of them)."""
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{where}.{key}", reason="expected a config key such as model.adaln")
        owned = OWNED_KEYS.get(key) or OWNED_KEYS.get(key.split(".")[0])
        if owned:
            raise ConfigError(f"{where}.{key}", reason=f"set by the sweep, not by a row ({owned})")
        if key == "model":
            for preset in values[key] if where == "grid" and isinstance(values[key], list) else [values[key]]:
                if preset not in group_options("model"):
                    raise unknown(f"{where}.{key}", preset, group_options("model"), "option")


def _check_values(node: Any, where: str = "") -> None:
    """Every key and value of the file: plain YAML types (a date or bytes would reach the runs as something else),
    finite numbers, and text without control or bidirectional-override characters."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str):
                _check_text(key, path, multiline=False)
            _check_values(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_values(value, f"{where}[{i}]")
    elif isinstance(node, str):
        _check_text(node, where, multiline=where in MULTILINE_KEYS)
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(where, node, "not a finite number")
    elif node is not None and not isinstance(node, (bool, int, float)):
        raise ConfigError(where, str(node), f"YAML reads this as {type(node).__name__}, not a number, text, boolean, "
                          "list or mapping (quote it to mean text)")


def _check_text(text: str, where: str, multiline: bool) -> None:
    for char in text:
        category = unicodedata.category(char)
        if char in BIDI_CONTROLS or (category in ("Cc", "Zl", "Zp") and not (multiline and char in "\n\t")):
            kind = "bidirectional-override" if char in BIDI_CONTROLS else "control" if category == "Cc" \
                else "line-separator"
            raise ConfigError(where, text[:80], f"holds the {kind} character U+{ord(char):04X}; write plain text")


def _check_paths(path: Path, raw: dict, reuse_from: list[str], tracking: dict) -> None:
    """The folders and files the sweep names: `output` must be (or become) a folder, never a file or under one;
    `reuse_from` sweep files and sqlite stores must exist; a sqlite store is an absolute path."""
    base = path.resolve().parent
    folder = (base / raw.get("output", SweepSpec.output) / raw["name"]).resolve()
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                key = "name" if place == folder else "output"
                raise ConfigError(key, raw[key] if key in raw else SweepSpec.output, f"{place} is a file, not a "
                                  f"folder: the sweep's folder would be {folder}")
            break
    for i, entry in enumerate(reuse_from):
        if "://" not in entry:
            other = Path(entry) if Path(entry).is_absolute() else base / entry
            if not other.is_file():
                raise ConfigError(f"reuse_from[{i}]", entry, f"no such sweep file ({other})")
        elif entry.startswith("sqlite:") and not _sqlite_file(entry).is_file():
            raise ConfigError(f"reuse_from[{i}]", entry, f"no such store ({_sqlite_file(entry)})")
    uri = tracking.get("uri")
    if isinstance(uri, str) and uri.startswith("sqlite:") and not _sqlite_file(uri).is_absolute():
        raise ConfigError("tracking.uri", uri, "a relative sqlite path depends on the working directory; write "
                          "sqlite:////absolute/path.db")


def _sqlite_file(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:").removeprefix("///"))


def _seeds(seeds: Any) -> list[int]:
    low, high = SEED_RANGE
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError("seeds", seeds, "expected a non-empty list of distinct integers")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed < high:
            raise ConfigError("seeds", seed, f"expected integers in [{low}, 2^32)")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", seeds, "seeds must be distinct")
    return seeds


def _paper_texts(text: str) -> dict[tuple[int, str], str]:
    """(row index, key) -> the source text of each `rows[i].paper.<key>` scalar (yaml.compose keeps it;
    safe_load would turn 3.50 into 3.5)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    out = {}
    rows = next((v for k, v in getattr(root, "value", []) if getattr(k, "value", None) == "rows"), None)
    for i, row in enumerate(rows.value if isinstance(rows, yaml.SequenceNode) else []):
        paper = next((v for k, v in getattr(row, "value", []) if getattr(k, "value", None) == "paper"), None)
        for key, value in paper.value if isinstance(paper, yaml.MappingNode) else []:
            if isinstance(value, yaml.ScalarNode):
                out[(i, str(key.value))] = value.value
    return out


def _paper_values(paper: dict, texts: dict, i: int) -> dict[str, PaperValue]:
    values = {}
    for key, value in paper.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"rows[{i}].paper.{key}", value, "expected the paper's number as printed (e.g. 3.50); "
                              "leave the key out where the paper has none")
        values[str(key)] = PaperValue(texts.get((i, str(key)), str(value)))
    return values


def _paper_metric(raw, rows: list[RowSpec]) -> dict[str, PaperMetric]:
    """`paper_metric: {<paper key>: {metric: ..., dataset: ..., source: ...}}`, one entry per key the rows'
    `paper:` numbers use (each entry used)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("paper_metric", reason="expected a mapping {<paper key>: {metric: ..., dataset: ..., "
                          "source: ...}}")
    used = sorted({key for row in rows for key in row.paper})
    out = {}
    for key, entry in raw.items():
        if key not in used:
            raise ConfigError(f"paper_metric.{key}", reason=f"no row has a paper.{key} number; the rows' paper keys "
                              f"are {used}", suggestion=closest(key, used))
        if not isinstance(entry, dict):
            raise ConfigError(f"paper_metric.{key}", entry, "expected a mapping with metric, dataset and optionally "
                              "source")
        for sub in entry:
            if sub not in PAPER_METRIC_KEYS:
                raise _unknown_key(f"paper_metric.{key}.{sub}", PAPER_METRIC_KEYS)
        for sub in PAPER_METRIC_KEYS:
            value = entry.get(sub, "")
            if not isinstance(value, str) or (sub != "source" and not value.strip()):
                raise ConfigError(f"paper_metric.{key}.{sub}", reason="required, a non-empty string (e.g. "
                                  "metric: gFID-50K, dataset: ImageNet 256x256)" if sub != "source" else
                                  "expected a string (where the paper prints it)")
        out[key] = PaperMetric(**entry)
    for i, row in enumerate(rows):
        for key in row.paper:
            if key not in out:
                raise ConfigError(f"rows[{i}].paper.{key}", reason=f"paper_metric has no entry saying what this "
                                  f"number measures (entries: {sorted(out)})", suggestion=closest(key, list(out)))
    return out


def _evaluate(raw) -> EvaluateSpec:
    """`evaluate:` with its keys, values and sizes checked; what the runs allow (an EMA among their ema.decays, a
    sampler of their objective) is checked by planning (`protocols.plan_evaluations`)."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("evaluate", reason="expected a mapping with grid (protocol axes), set and select")
    for key in raw:
        if key not in EVALUATE_KEYS:
            raise _unknown_key(f"evaluate.{key}", EVALUATE_KEYS)
    changes = _protocol_changes(raw.get("set") or {}, "evaluate.set")
    grid = raw.get("grid")
    if "grid" in raw and (not isinstance(grid, dict) or not grid):
        raise ConfigError("evaluate.grid", grid, "an empty grid: expected protocol keys with lists of values, e.g. "
                          "{eval.sampler.cfg_scale: [1.0, 2.0]}")
    grid = grid or {}
    for key, values in grid.items():
        _protocol_key(key, "evaluate.grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"evaluate.grid.{key}", values, "expected a non-empty list of values")
        for value in values:
            _protocol_value(key, value, f"evaluate.grid.{key}")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"evaluate.grid.{key}", values, "a value is listed twice")
        if key in changes:
            raise ConfigError(f"evaluate.grid.{key}", reason="also set by evaluate.set; keep one")
    if not grid and not changes:
        raise ConfigError("evaluate", reason="nothing to evaluate: give grid (protocol axes) or set")
    points = math.prod(len(v) for v in grid.values())
    if points > MAX_EVALUATION_POINTS:
        raise ConfigError("evaluate.grid", reason=f"{points} points exceed {MAX_EVALUATION_POINTS} (a typo in a list?)")
    spec = EvaluateSpec(set=changes, grid=grid)
    if raw.get("select") is not None:
        spec.select = _select(raw["select"], spec)
    return spec


def _select(raw, evaluate: EvaluateSpec) -> SelectSpec:
    if not isinstance(raw, dict):
        raise ConfigError("evaluate.select", reason="expected a mapping with metric, per, proxy and confirm")
    for key in raw:
        if key not in SELECT_KEYS:
            raise _unknown_key(f"evaluate.select.{key}", SELECT_KEYS)
    if len(evaluate.points) < 2:
        raise ConfigError("evaluate.select", reason="nothing to select: evaluate.grid has a single point")
    metric = raw.get("metric")
    names = sorted({name for m in REGISTERED_METRICS if m.sample_based for name in (m.name, *m.aliases)})
    if not isinstance(metric, str) or metric not in names:
        raise ConfigError("evaluate.select.metric", metric, f"expected a sample-based metric, one of {names}",
                          suggestion=closest(str(metric), names))
    per = raw.get("per", SelectSpec.per)
    if per not in ("row", "run"):
        raise ConfigError("evaluate.select.per", per, "expected row (one choice per table row, the mean over its "
                          "runs) or run", suggestion=closest(str(per), ["row", "run"]))
    stages = {}
    for stage in ("proxy", "confirm"):
        changes = _protocol_changes(raw.get(stage), f"evaluate.select.{stage}")
        for key in ("eval.num_samples", "eval.seed"):
            if changes.get(key) is None:
                raise ConfigError(f"evaluate.select.{stage}.{key}", reason="required: the selection is made on a "
                                  "proxy count with one sampling seed and confirmed with another")
            if key in evaluate.grid:
                raise ConfigError(f"evaluate.select.{stage}.{key}", reason="also an axis of evaluate.grid")
        stages[stage] = changes
    if stages["proxy"]["eval.seed"] == stages["confirm"]["eval.seed"]:
        raise ConfigError("evaluate.select.confirm.eval.seed", stages["confirm"]["eval.seed"], "the same seed as the "
                          "proxy: confirm with another seed, so the choice is not fitted to one draw of noise")
    return SelectSpec(metric=metric, proxy=stages["proxy"], confirm=stages["confirm"], per=per)


def _protocol_key(key, where: str) -> None:
    if key in PROTOCOL_KEYS:
        return
    if isinstance(key, str) and key in schema_keys() and affects_training(key):
        raise ConfigError(f"{where}.{key}", reason="changes the trained weights, not an evaluation: set it in a row "
                          "or the grid")
    short = [k.rsplit(".", 1)[-1] for k in PROTOCOL_KEYS]
    near = closest(str(key).rsplit(".", 1)[-1], short)
    raise ConfigError(f"{where}.{key}", reason="not an evaluation protocol key" + (
        "" if near else f", expected one of {list(PROTOCOL_KEYS)}"), suggestion=PROTOCOL_KEYS[short.index(near)]
        if near else None)


def _protocol_value(key: str, value, where: str) -> None:
    """Scalars of the right kind (the interval a pair); the rest is checked against each run in planning."""
    if key == "eval.sampler.cfg_interval":
        if not (isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value)):
            raise ConfigError(where, value, "expected [low, high]")
    elif key in ("eval.seed", "eval.reference"):
        if value is not None and not isinstance(value, int if key == "eval.seed" else str) or isinstance(value, bool):
            raise ConfigError(where, value, "expected an integer (or null)" if key == "eval.seed" else
                              "expected a path")
    elif isinstance(protocol_defaults()[key], bool) or not isinstance(protocol_defaults()[key], (int, float)):
        if not isinstance(value, str):
            raise ConfigError(where, value, "expected a string")
    elif not _number(value) or (isinstance(protocol_defaults()[key], int) and not isinstance(value, int)):
        raise ConfigError(where, value, "expected an integer" if isinstance(protocol_defaults()[key], int) else
                          "expected a number")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _protocol_changes(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(where, raw, "expected a mapping of evaluation protocol keys to values")
    for key, value in raw.items():
        _protocol_key(key, where)
        _protocol_value(key, value, f"{where}.{key}")
    return dict(raw)
