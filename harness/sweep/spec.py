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
                                       # {host: 0.0.0.0}: that server reachable from a cluster's compute nodes
reuse_from: [other_sweep.yaml]         # finished runs of the same signature there count as done here
max_runs: 1000                         # refuse a plan larger than this (a typo in a grid)
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
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from toolkit.errors import ConfigError, closest, unknown

from ..configure import SEED_RANGE, group_options
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
    uri: Optional[str] = None             # None: <output>/<name>/mlflow.db (served over HTTP to slurm/local jobs)
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
        return dataclasses.replace(self, executor=executor, rows=rows)


TOP_KEYS = {f.name for f in dataclasses.fields(SweepSpec)} - {"path", "text"}
ROW_KEYS = {f.name for f in dataclasses.fields(RowSpec)}
TRACKING_KEYS = {f.name for f in dataclasses.fields(TrackingSpec)}
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
    seeds = _seeds(raw.get("seeds", [0]))
    tracking = raw.get("tracking") or {}
    if not isinstance(tracking, dict):
        raise ConfigError("tracking", reason="expected a mapping")
    for key, value in tracking.items():
        if key not in TRACKING_KEYS:
            raise _unknown_key(f"tracking.{key}", sorted(TRACKING_KEYS))
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"tracking.{key}", value, "expected a string (or null)")
    reuse_from = raw.get("reuse_from") or []
    if not isinstance(reuse_from, list) or not all(isinstance(v, str) and v for v in reuse_from):
        raise ConfigError("reuse_from", reuse_from, "expected a list of sweep files or tracking URIs")
    _check_paths(path, raw, reuse_from, tracking)
    max_runs = raw.get("max_runs", SweepSpec.max_runs)
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
        raise ConfigError("max_runs", max_runs, "expected a positive integer")
    labels = [row.label for row in rows]
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in labels:
        raise ConfigError("baseline", baseline, "no row has this label", suggestion=closest(baseline, labels))
    spec = SweepSpec(path=path, text=text, name=name, experiment=raw["experiment"], rows=rows, overrides=overrides,
                     grid=grid, seeds=seeds, executor=executor, tracking=TrackingSpec(**tracking),
                     output=raw.get("output", SweepSpec.output), baseline=baseline, reuse_from=reuse_from,
                     max_runs=max_runs, paper_metric=_paper_metric(raw.get("paper_metric"), rows),
                     description=raw.get("description", "").strip(), notes=raw.get("notes", "").strip())
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
