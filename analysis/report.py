"""A sweep's report: a generated notebook, executed headlessly with papermill and rendered to HTML.

    from analysis.report import write_report
    notebook, html = write_report(Sweep.open("sweeps/tiny_table4.yaml"))     # -> <sweep folder>/report/

The notebook holds no numbers of its own: it opens the sweep and reads MLflow (`load_sweep_runs`), so it
re-runs later on its own (`papermill <notebook> out.ipynb`, or top to bottom in Jupyter) and shows the
sweep as it is then. It opens with its answer:

- Summary: the question (the sweep's `description`), the answer (the table's verdict), the table at a glance
  (`analysis.glance`), and one sample grid per row side by side, every row from the same noise and labels
  (`analysis.samples`); then a box with the recipe every row shares;
- What each row changes: its resolved config against the baseline and against the row above, every key that
  differs named (settings without effect on the row's model left out: `ModelConfig.inert_fields`);
- Details: the sweep file, the full table with its caption (interval, test, what ours and the paper's numbers
  are), the evaluation protocols, the run behind each grid, the plots (`analysis.plots`; progress plots only with
  two evaluation points or more), the failed and missing runs with their reasons, and the environment
  (versions, the runs' git commits).

Paths are shown relative to the sweep folder. The HTML shows the outputs only; the notebook keeps the code.
The notebook, the HTML and the table (`table.md`, `.tex`, `.csv`, `table_glance.md`) are logged to the sweep's latest
parent MLflow run under `report/` (the plots under `plots/`, the sample grids under `samples/`), and the parent run's
description links to them and shows the table at a glance (`link_report`).
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from harness import configure
from harness.metric_registry import entry, sample_metrics_of_training
from harness.sweep.store import sqlite_path
from harness.sweep.sweep import Sweep
from models.config import ModelConfig
from toolkit.cli import kernel_arguments

from .glance import render, short_header
from .runs import SweepRuns

REPO_ROOT = Path(__file__).resolve().parents[1]
# Bookkeeping keys that differ between any two runs and say nothing about what a row changes.
BOOKKEEPING_KEYS = ("run.name", "run.out_dir", "run.resume", "run.seed", "tracking.")
SIDE_BY_SIDE = "side_by_side.png"        # the summary's sample grids, under the report's `samples/`
REPORT_LINKS = "**The report:**"         # where the links start in the parent run's description
GLANCE = "table_glance.md"               # the table at a glance, rounded: shown in the parent run's description
DESCRIPTION_LIMIT = 8000                 # MLflow's longest tag value (its MAX_TAG_VAL_LENGTH): a larger table is linked
STATE_REASON = {"new": "not submitted", "pending": "queued, not started", "running": "still running"}


# ---- what the notebook shows (functions, so the notebook's cells stay short) ---------------------

def _is_bookkeeping(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in BOOKKEEPING_KEYS)


def row_configs(sweep: SweepRuns) -> dict[str, dict[str, str]]:
    """label -> resolved config (flattened, values as MLflow stores them) of the row's first run at
    the first grid point, from the `param.*` columns; rows that never reached MLflow fall back to the
    planned config."""
    frame = sweep.frame
    params = [c for c in frame.columns if c.startswith("param.")]
    first_grid = frame["grid"].iloc[0] if len(frame) else "{}"
    configs: dict[str, dict[str, str]] = {}
    for label in sweep.labels:
        group = frame[(frame["label"] == label) & (frame["grid"] == first_grid)]
        with_params = group[group[params].notna().any(axis=1)] if params else group.iloc[0:0]
        if len(with_params):
            row = with_params.iloc[0]
            configs[label] = {c.removeprefix("param."): str(row[c]) for c in params if pd.notna(row[c])}
            continue
        planned = next((r for r in sweep.plan if r.label == label and r.cfg is not None
                        and json.dumps(r.grid, sort_keys=True) == first_grid), None)
        if planned is not None:
            from harness.configure import flatten
            configs[label] = {k: str(v)[:6000] for k, v in flatten(planned.cfg).items()}
        else:
            configs[label] = {}
    return configs


def model_config_of(config: dict[str, str]) -> ModelConfig:
    """The ModelConfig of a flattened config whose values are strings, as MLflow stores them."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {}
    for key, text in config.items():
        name = key.removeprefix("model.")
        if key.startswith("model.") and name in names:
            try:
                values[name] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                values[name] = text
    return ModelConfig(**values)


def config_differences(sweep: SweepRuns, against: str = "baseline",
                       configs: dict[str, dict[str, str]] | None = None) -> pd.DataFrame:
    """Long frame (label, key, baseline, value): for every row but the first compared, the resolved config
    keys whose value differs from the baseline row's (`against="baseline"`; the column `baseline` holds the
    baseline's value) or from the row above's (`against="previous"`; `baseline` holds the row above's value).
    Left out: bookkeeping keys (run names, paths, tracking) and model switches without effect on the row's model
    (`ModelConfig.inert_fields`, e.g. `adaln` without a pixel pathway); a switch that has no effect on the
    compared row's model says so."""
    configs = row_configs(sweep) if configs is None else configs
    records = []
    for index, label in enumerate(sweep.labels):
        other = sweep.spec.baseline_label if against == "baseline" else (sweep.labels[index - 1] if index else None)
        if other is None or other == label:
            continue
        base, config = configs.get(other, {}), configs[label]
        records += [{"label": label, "key": key, "baseline": a, "value": b} for key, a, b in
                    configure.config_differences(base, config, model_config_of(base), model_config_of(config),
                                                 _is_bookkeeping)]
    return pd.DataFrame(records, columns=["label", "key", "baseline", "value"])


def differences_markdown(sweep: SweepRuns, configs: dict[str, dict[str, str]] | None = None) -> str:
    """Each row's differences against the baseline and against the row above, every differing key named: one
    table per row (a value equal to this row's shows as `=`)."""
    configs = row_configs(sweep) if configs is None else configs
    baseline = sweep.spec.baseline_label
    against = {kind: {label: dict(zip(group["key"], group["baseline"]))
                      for label, group in config_differences(sweep, kind, configs).groupby("label", sort=False)}
               for kind in ("baseline", "previous")}
    lines = [f"Baseline row: **{_md(baseline)}**. Listed: the resolved config keys whose value differs from the "
             f"baseline's or from the row above's (first seed of each row; run names, paths and tracking left "
             f"out, and model switches that have no effect on the row's model).", ""]
    for index, label in enumerate(sweep.labels):
        if index == 0 and label == baseline:
            continue
        above = sweep.labels[index - 1] if index else None
        to_base, to_above = against["baseline"].get(label, {}), against["previous"].get(label, {})
        keys = sorted(set(to_base) | set(to_above))
        name = f"**{_md(label)}**"
        if label == baseline:
            lines += [f"{name} (the baseline)" + (f": {_keys(len(to_above))} from the row above" if to_above
                                                   else ": same effective config as the row above"), ""]
            if not keys:
                continue
        elif not keys:
            lines += [f"{name}: same effective config as the baseline" + ("" if above in (None, baseline) else
                                                                         " and the row above"), ""]
            continue
        else:
            lines += [f"{name}: {_keys(len(to_base))} from the baseline"
                      + ("" if above in (None, baseline) else f", {_keys(len(to_above))} from the row above "
                                                            f"({_md(above)})"), ""]
        show_above = above is not None and above != baseline
        config = configs.get(label, {})
        header = ["key"] + (["baseline"] if label != baseline else []) + (["row above"] if show_above else []) \
            + ["this row"]
        lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for key in keys:
            value = config.get(key, "(unset)")
            cells = [f"`{key}`"] + ([_md(shown_value(sweep, to_base.get(key, "=")))] if label != baseline else []) \
                + ([_md(shown_value(sweep, to_above.get(key, "=")))] if show_above else []) \
                + [_md(shown_value(sweep, value))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _keys(n: int) -> str:
    return f"{n} key differs" if n == 1 else f"{n} keys differ"


# ---- the summary: the question, its answer, the table, the samples side by side; the shared recipe ----------

# The settings a reader looks for first in a recipe (shown first, when every row shares them).
RECIPE_KEYS = ("data.name", "data.resolution", "model.patch_size", "model.hidden_size", "model.depth",
               "objective.kind", "model.prediction", "train.steps", "train.epochs", "train.global_batch",
               "optim.optimizer", "optim.lr", "ema.eval_decay", "eval.metric", "eval.num_samples",
               "eval.sampler.kind", "eval.sampler.steps", "eval.sampler.cfg_scale")


def question(sweep: SweepRuns, table) -> str:
    """What the sweep asks: its `description`, else what every ablation asks of its table's metric."""
    return sweep.spec.description or (f"How does each row change {short_header(table.primary)[:-2]} against the "
                                      f"baseline row {sweep.spec.baseline_label}?")


def summary_markdown(sweep: SweepRuns, table) -> str:
    """The report's opening: the question, the answer (the table's verdict), the table at a glance."""
    return f"**Question.** {_md(question(sweep, table))}\n\n**Answer.** " + render(table, "markdown")


def shared_recipe(sweep: SweepRuns, configs: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The resolved settings every row shares (bookkeeping left out), `RECIPE_KEYS` first."""
    configs = list((row_configs(sweep) if configs is None else configs).values())
    configs = [c for c in configs if c] or [{}]
    shared = {key: value for key, value in configs[0].items()
              if not _is_bookkeeping(key) and all(c.get(key) == value for c in configs[1:])}
    return {**{k: shared[k] for k in RECIPE_KEYS if k in shared}, **dict(sorted(shared.items()))}


def recipe_markdown(sweep: SweepRuns, configs: dict[str, dict[str, str]] | None = None) -> str:
    """A box (a block quote): the headline settings every row shares, then every other shared setting by
    section, and the keys that vary between rows."""
    configs = row_configs(sweep) if configs is None else configs
    shared = shared_recipe(sweep, configs)
    headline = [k for k in RECIPE_KEYS if k in shared]
    varied = sorted({k for c in configs.values() for k in c if not _is_bookkeeping(k)} - set(shared))
    sections: dict[str, list[str]] = {}
    for key, value in shared.items():
        if key not in headline:
            section, _, name = key.partition(".")
            sections.setdefault(section, []).append(f"{name or section} {value}")
    shared = {key: shown_value(sweep, value) for key, value in shared.items()}
    lines = [f"**The recipe every row shares** ({sweep.spec.experiment} experiment, {len(sweep.labels)} rows, "
             f"seeds {sweep.spec.seeds}): " + " · ".join(f"`{k}` {_md(shared[k])}" for k in headline), ""]
    for section, items in sections.items():
        lines += [f"*{_md(section)}*: " + " · ".join(_md(item) for item in items), ""]
    lines += ["*Varied between rows* (each row's values below): "
              + (", ".join(f"`{k}`" for k in varied) if varied else "nothing")]
    return "\n".join("> " + line if line else ">" for line in lines)


def failed_runs(sweep: SweepRuns) -> pd.DataFrame:
    """Every planned run that did not finish: label, seed, grid, state, reason, run name, MLflow run."""
    frame = sweep.frame
    bad = frame[frame["state"] != "done"]
    records = []
    for r in bad.itertuples():
        reason = r.failure_reason if isinstance(r.failure_reason, str) and r.failure_reason else None
        records.append({"label": r.label, "seed": r.seed, "grid": r.grid, "state": r.state,
                        "reason": reason or STATE_REASON.get(r.state, "no reason recorded"),
                        "run_name": r.run_name, "mlflow_run_id": r.mlflow_run_id})
    return pd.DataFrame(records, columns=["label", "seed", "grid", "state", "reason", "run_name", "mlflow_run_id"])


def failed_markdown(sweep: SweepRuns, failed: pd.DataFrame | None = None) -> str:
    failed = failed_runs(sweep) if failed is None else failed
    total = len(sweep.frame)
    if failed.empty:
        return f"All {total} planned runs finished."
    counts = failed["state"].value_counts()
    lines = [f"{len(failed)} of {total} planned runs did not finish ("
             + ", ".join(f"{n} {state}" for state, n in counts.items()) + ").", "",
             "| row | seed | grid | state | reason | run |", "| --- | --- | --- | --- | --- | --- |"]
    for r in failed.itertuples():
        grid = "" if r.grid in ("{}", "", None) else r.grid
        lines.append(f"| {_md(r.label)} | {r.seed} | {_md(grid)} | {r.state} | {_md(shown_text(sweep, r.reason))} | "
                     f"{_md(r.run_name)} |")
    return "\n".join(lines)


def environment(sweep: SweepRuns) -> dict[str, str]:
    """The report's interpreter and library versions, and where the runs came from (their git
    commits and hosts, from the MLflow tags of one query)."""
    import matplotlib
    import mlflow
    info = {"python": sys.version.split()[0], "interpreter": shown_path(sweep, sys.executable),
            "platform": platform.platform()}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:                           # pragma: no cover - torch is a dependency
        info["torch"] = "not installed"
    info.update({"mlflow": mlflow.__version__, "pandas": pd.__version__, "matplotlib": matplotlib.__version__})
    tags = run_tags(sweep)
    commits = sorted({t.get("git_commit", "unknown") for t in tags.values()})
    hosts = sorted({t.get("host", "unknown") for t in tags.values()})
    info["runs' git commit"] = ", ".join(commits) if commits else "no run in MLflow"
    if len(commits) > 1:
        info["runs' git commit"] += "  (the runs were made at different commits)"
    info["runs' hosts"] = ", ".join(hosts) if hosts else "-"
    info["report's git commit"] = _git_commit()
    info["tracking store"] = shown_store(sweep)
    info["parent MLflow run"] = sweep.parent_run_id or "none (never submitted)"
    info["generated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return info


def environment_markdown(sweep: SweepRuns) -> str:
    info = environment(sweep)
    return "\n".join(["| | |", "| --- | --- |", *(f"| {_md(k)} | {_md(v)} |" for k, v in info.items())])


def run_tags(sweep: SweepRuns) -> dict[str, dict[str, str]]:
    """MLflow run id -> tags, for the sweep's runs in the frame (one paged query)."""
    from harness.sweep.state import mlflow_runs
    ids = set(sweep.frame["mlflow_run_id"].dropna())
    if not ids:
        return {}
    runs = mlflow_runs(sweep.client, sweep.spec.experiment_name, sweep.spec.name)
    return {r.info.run_id: dict(r.data.tags) for r in runs.values() if r.info.run_id in ids}


def shown_path(sweep: SweepRuns, path: str | Path) -> str:
    """A path as the report shows it: relative to the sweep folder, so that it names no folder of the machine
    that made it and still holds where the sweep folder is copied with its checkout."""
    return os.path.relpath(Path(path).resolve(), sweep.spec.folder.resolve())


def shown_value(sweep: SweepRuns, value: str) -> str:
    """A config value as the report shows it: an absolute path relative to the sweep folder, anything else as is."""
    return shown_path(sweep, value) if os.path.isabs(value) and "\n" not in value else value


def shown_text(sweep: SweepRuns, text: str) -> str:
    """A message (a failure reason) with the sweep folder's absolute path written relative to it."""
    folder = str(sweep.spec.folder.resolve())
    return text.replace(folder + os.sep, "").replace(folder, ".")


def shown_store(sweep: SweepRuns) -> str:
    """The tracking store: a sqlite file by its path relative to the sweep folder; a database or server by URI."""
    uri = str(sweep.client.tracking_uri)
    path = sqlite_path(uri)
    return f"sqlite: {shown_path(sweep, path)}" if path is not None else uri


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _md(value) -> str:
    """A value as Markdown text (a table cell, a list item, bold): shown as written, never read as
    Markdown — a label such as "+ RoPE" stays text, not a bullet."""
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")
    for char in "*_`<":                              # emphasis, code, HTML
        text = text.replace(char, "\\" + char)
    if text[:1] in ("+", "-", "#", ">"):             # a list marker, heading or quote at the start of a line
        return "\\" + text
    return re.sub(r"^(\d+)([.)])", r"\1\\\2", text)    # "1. x" would start an ordered list


def evaluation_markdown(sweep: SweepRuns, metric: str) -> str:
    """What the table's numbers are (their protocol), the protocols the sweep's runs were evaluated under, and —
    with `evaluate.select` — which point each row selected on the proxy, its figures, and the table of the
    confirmed numbers."""
    from .plots import guidance_metric
    from .runs import evaluations, load_sweep_runs
    from .table import build_table, protocol_sentences
    sentences, _ = protocol_sentences(sweep)
    lines = [" ".join(sentences) or "The runs logged no evaluation.", ""]
    found = evaluations(sweep)
    if len(found):
        lines += ["Every protocol the runs were evaluated under (an evaluation is an MLflow run nested under its "
                  "training run, named by its protocol; `run_sweep.py table --protocol NAME` tabulates one):", "",
                  "| protocol | signature | what | stage | runs |", "| --- | --- | --- | --- | --- |"]
        for signature, group in found.groupby("protocol", sort=False):
            first = group.iloc[0]
            lines.append(f"| `{first['protocol_name']}` | `{signature}` | {_md(first['protocol_text'])} | "
                         f"{', '.join(dict.fromkeys(group['stage']))} | {group['signature'].nunique()} |")
        lines.append("")
    evaluate = sweep.spec.evaluate
    if evaluate is None:
        return "\n".join(lines)
    plan = sweep.sweep.evaluations
    there = {(s, p) for s, p in zip(found["signature"], found["protocol"])} if len(found) else set()
    done = sum((e.run.signature, e.protocol.signature) in there for e in plan.evaluations)
    lines += [f"`evaluate:` {len(evaluate.points)} protocols per run ("
              + " x ".join(f"`{k}` {v}" for k, v in evaluate.grid.items()) + (f"; set {evaluate.set}" if evaluate.set
                                                                             else "")
              + f"): {done} of {len(plan.evaluations)} evaluations done. "
              + (f"The guidance curve of each row ({guidance_metric(sweep, metric)}) is in the plots below."
                 if "eval.sampler.cfg_scale" in evaluate.grid else ""), ""]
    if evaluate.select is None:
        return "\n".join(lines)
    selected = load_sweep_runs(sweep.sweep, protocol="selected")
    name = entry(evaluate.select.metric).name
    lines += ["### Selection", "", "| row | selected | " + f"proxy {name} at each point (mean over runs) | runs |",
              "| --- | --- | --- | --- |"]
    for group in plan.groups:
        run = selected.selection.get(group.title)
        if run is None:
            lines.append(f"| {_md(group.title)} | not selected yet | | |")
            continue
        tags = run.data.tags
        point = json.loads(tags["selected_point"])
        figures = [{"point": p, "mean": m} for p, m in zip(evaluate.points, json.loads(tags["proxy_means"]))]
        shown = lambda p: ", ".join(f"{k.split('.')[-1]}={v}" for k, v in p.items())     # noqa: E731
        text = "; ".join(("**{}**" if f["point"] == point else "{}").format(_md(f"{shown(f['point'])}: "
                                                                             f"{f['mean']:.4g}")) for f in figures)
        lines.append(f"| {_md(group.title)} | {_md(shown(point))} | {text} | "
                     f"{tags.get('selection_runs', '?')} of {len(group.runs)} |")
    confirmed = build_table(selected, name if f"metric.{name}" in selected.frame else None)
    lines += ["", "### The confirmed numbers", "", confirmed.to_markdown()]
    return "\n".join(lines)


def samples_markdown(sweep: SweepRuns, grids) -> list[tuple[str, str | None]]:
    """(Markdown caption, PNG path or None) per table row: the run sampled, its distance and class
    accuracy beside its grid, or why there is no grid."""
    frame = sweep.frame
    out = []
    for grid in grids:
        name = grid.label + ("" if grid.grid in ("{}", "", None) else f" {grid.grid}")
        if grid.path is None:
            out.append((f"**{_md(name)}**: no grid ({_md(shown_text(sweep, grid.reason))}).", None))
            continue
        same = (frame["label"] == grid.label) & (frame["grid"] == grid.grid) & (frame["seed"] == grid.seed)
        run = frame[same].iloc[0]
        scores = ", ".join(f"{key} {run[f'metric.{key}']:.4g}" for key in sample_metrics_of_training()
                           if f"metric.{key}" in run and pd.notna(run[f"metric.{key}"]))
        out.append((f"**{_md(name)}**: seed {grid.seed}, step {grid.step}" + (f"; this run's {scores}" if scores
                    else "") + ".", str(grid.path)))
    return out


# ---- the notebook --------------------------------------------------------------------------------

def build_notebook(sweep: Sweep, out_dir: str | Path, metric: str | None = None,
                   workdir: str | Path | None = None) -> nbformat.NotebookNode:
    """The report notebook of a sweep (not executed). `workdir` is where a relative `output:` of the
    sweep file resolves (the directory the sweep was submitted from)."""
    spec = sweep.spec
    sweep_path = spec.path.resolve()
    workdir = str(Path(workdir or os.getcwd()).resolve())
    rows = "\n".join(f"{i + 1}. {_md(row.label)}" + (" (baseline)" if row.label == spec.baseline_label else "")
                     for i, row in enumerate(spec.rows))
    grid = f" crossed with the grid {json.dumps(spec.grid)}" if spec.grid else ""
    cells = [
        new_markdown_cell(f"# Ablation report: {spec.name}\n\n## Summary"),
        new_code_cell(
            "# Parameters (papermill: -p sweep_path ... -p metric ...). metric None: fid, else fd, else loss.\n"
            f"sweep_path = {str(sweep_path)!r}\n"
            f"metric = {metric!r}\n"
            f"out_dir = {str(Path(out_dir).resolve())!r}\n"
            f"workdir = {workdir!r}",
            metadata={"tags": ["parameters"]}),
        new_code_cell(
            "import os\n"
            "import sys\n"
            "import warnings\n"
            "from pathlib import Path\n\n"
            "warnings.filterwarnings(\"ignore\", message=\"IProgress not found\")   # tqdm, imported by mlflow\n"
            f"sys.path.insert(0, {str(REPO_ROOT)!r})    # the ditlab checkout that generated this report\n"
            "os.chdir(workdir)                 # where a relative `output:` of the sweep file resolves\n\n"
            "import pandas as pd\n"
            "from IPython.display import Image, Markdown, display\n\n"
            "from analysis.plots import make_plots, progress_notes, samples_side_by_side\n"
            "from analysis.report import (differences_markdown, environment_markdown, evaluation_markdown,\n"
            "                             failed_markdown, recipe_markdown, row_configs, samples_markdown,\n"
            "                             shown_path, shown_store, summary_markdown, write_tables)\n"
            "from analysis.samples import GRID_SEED, sample_grids\n"
            "from analysis.runs import load_sweep_runs\n"
            "from analysis.table import build_table, default_metric\n"
            "from harness.sweep.sweep import Sweep\n\n"
            "pd.set_option(\"display.max_columns\", 100)\n"
            "pd.set_option(\"display.max_colwidth\", 200)"),
        new_code_cell(
            "sweep = load_sweep_runs(Sweep.open(sweep_path))\n"
            "metric = metric or default_metric(sweep)\n"
            "table = build_table(sweep, metric)\n"
            "grids = sample_grids(sweep, Path(out_dir) / \"samples\")\n"
            "configs = row_configs(sweep)"),
        new_code_cell(
            "display(Markdown(summary_markdown(sweep, table)))\n"
            f"side_by_side = samples_side_by_side(sweep, grids, Path(out_dir) / \"samples\" / {SIDE_BY_SIDE!r})\n"
            "display(Image(filename=str(side_by_side)))\n"
            "display(Markdown(f\"Samples of each row's first finished seed, every row from the same noise (seed \"\n"
            "                 f\"{GRID_SEED}) and the same labels (columns: classes; lines: noise draws), so rows \"\n"
            "                 f\"compare image by image (`{shown_path(sweep, side_by_side)}`).\"))"),
        new_code_cell("display(Markdown(recipe_markdown(sweep, configs)))"),
        new_markdown_cell("## What each row changes"),
        new_code_cell("display(Markdown(differences_markdown(sweep, configs)))"),
        new_markdown_cell(
            "## Details\n\n"
            + (f"{spec.description}\n\n" if spec.description else "")
            + f"Sweep file `{os.path.relpath(sweep_path, spec.folder.resolve())}` (relative to the sweep folder; "
            f"experiment `{spec.experiment}`): {len(spec.rows)} rows{grid}, seeds {spec.seeds}, compared against "
            f"the baseline row **{_md(spec.baseline_label)}**.\n\n"
            f"{rows}\n\n"
            + (f"**Notes.** {spec.notes}\n\n" if spec.notes else "")
            + "Everything in this report is read from the sweep's MLflow store when the notebook runs "
            "(`load_sweep_runs`), so re-running it shows the sweep as it is then: "
            "`papermill this.ipynb out.ipynb -p metric fd`, or run all cells in Jupyter. Paths are relative to "
            "the sweep folder. Generated by `analysis.report.write_report`."),
        new_code_cell(
            "states = sweep.frame[\"state\"].value_counts()\n"
            "display(Markdown(f\"**{len(sweep.frame)} planned runs**: \"\n"
            "                 + \", \".join(f\"{n} {state}\" for state, n in states.items())\n"
            "                 + f\". Metric: **{metric}**; MLflow store `{shown_store(sweep)}`, \"\n"
            "                 f\"parent run `{sweep.parent_run_id}`.\"))"),
        new_markdown_cell("### The ablation table in full\n\nMean and 95% t-interval over the finished seeds (n), "
                          "class accuracy beside the distance where the runs logged it, paired t-tests against the "
                          "baseline and the row above set beside the paper's ordering, and the runs' states; the "
                          "caption below the table says what each number is."),
        new_code_cell(
            "display(Markdown(table.to_markdown()))\n"
            "table_paths = write_tables(table, out_dir)\n"
            "csv, tex = (shown_path(sweep, p) for p in table_paths[2:0:-1])\n"
            "display(Markdown(f\"The numbers behind the table (each seed's value, the intervals, the tests): \"\n"
            "                 f\"`{csv}`; LaTeX: `{tex}`.\"))"),
        new_markdown_cell("### Evaluation protocols\n\nWhat the numbers are: the protocol each was evaluated under "
                          "(sampler, guidance, EMA, samples, seed, scorer), every protocol the runs were evaluated "
                          "under, and the sweep's `evaluate:` grid and selection."),
        new_code_cell("display(Markdown(evaluation_markdown(sweep, metric)))"),
        new_markdown_cell("### Samples\n\nThe run behind each row's grid in the summary: its final checkpoint with "
                          "the EMA weights it was evaluated with, sampled by its own sampler settings."),
        new_code_cell(
            "for caption, path in samples_markdown(sweep, grids):\n"
            "    display(Markdown(caption + (f\" (`{shown_path(sweep, path)}`)\" if path else \"\")))"),
        new_markdown_cell("### Plots\n\nOne colour per row in every figure (the colours of the summary's sample "
                          "titles); written as PNG and PDF next to this report."),
        new_code_cell(
            "plot_paths = make_plots(sweep, Path(out_dir) / \"plots\", metric)\n"
            "for note in progress_notes(sweep, metric):\n"
            "    display(Markdown(note))\n"
            "for path in plot_paths:\n"
            "    if path.suffix == \".png\":\n"
            "        display(Markdown(f\"**{path.stem}** (`{shown_path(sweep, path)}`, and `.pdf`)\"))\n"
            "        display(Image(filename=str(path)))"),
        new_markdown_cell("### Failed and missing runs"),
        new_code_cell("display(Markdown(failed_markdown(sweep)))"),
        new_markdown_cell("### Environment"),
        new_code_cell("display(Markdown(environment_markdown(sweep)))"),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def write_tables(table, out_dir: str | Path) -> list[Path]:
    """The table as `table.md` (in full, as the report shows it), `table.tex` (fitted to a page:
    analysis/glance.py), `table.csv` and `table_glance.md` (the verdict, the table at a glance, its legend: what
    the parent run's description shows) in `out_dir`."""
    paths = []
    for name, fmt, wide in (("table.md", "markdown", True), ("table.tex", "latex", False),
                            ("table.csv", "csv", False), (GLANCE, "markdown", False)):
        path = Path(out_dir) / name
        path.write_text(render(table, fmt, wide=wide), encoding="utf-8")
        paths.append(path)
    return paths


def render_html(notebook_path: Path, html_path: Path) -> Path:
    """The executed notebook as HTML: outputs only (the notebook keeps the code)."""
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook_path, as_version=4))
    html_path.write_text(body, encoding="utf-8")
    return html_path


def write_report(sweep: Sweep, out_dir: Path | None = None, metric: str | None = None,
                 execute: bool = True, log: bool = True) -> tuple[Path, Path]:
    """Build the sweep's report notebook, execute it (papermill, the python3 kernel of this
    interpreter), render it to HTML, and log both (and the plots) to the parent MLflow run.
    Returns (notebook, html) under `out_dir` (default `<sweep folder>/report/`).

    A cell that fails still leaves the executed notebook and its HTML (with the error) on disk; the
    error is then raised and nothing is logged."""
    sweep.check_store()
    spec = sweep.spec
    out_dir = Path(out_dir).resolve() if out_dir is not None else spec.folder / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path.cwd()
    notebook_path, html_path = out_dir / f"{spec.name}_report.ipynb", out_dir / f"{spec.name}_report.html"
    nb = build_notebook(sweep, out_dir, metric, workdir)
    started = time.time() - 1
    if execute:
        import papermill
        try:
            papermill.execute_notebook(nb, str(notebook_path), kernel_name="python3", cwd=str(workdir),
                                       parameters={"sweep_path": str(spec.path.resolve()), "metric": metric,
                                                   "out_dir": str(out_dir), "workdir": str(workdir)},
                                       progress_bar=False, log_output=False, extra_arguments=kernel_arguments())
        finally:
            if notebook_path.exists():
                render_html(notebook_path, html_path)
    else:
        nbformat.write(nb, notebook_path)
        render_html(notebook_path, html_path)
    if log:
        client, parent = sweep.client, sweep.parent_run_id
        if parent:
            for path in (notebook_path, html_path):
                client.log_artifact(parent, str(path), "report")
            for path in sorted(out_dir.glob("table*")):            # the tables this execution wrote
                if path.stat().st_mtime >= started:
                    client.log_artifact(parent, str(path), "report")
            for folder in ("plots", "samples"):                     # the figures this execution wrote
                for path in sorted((out_dir / folder).glob("*")):
                    if path.suffix in (".png", ".pdf") and path.stat().st_mtime >= started:
                        client.log_artifact(parent, str(path), folder)
            glance = out_dir / GLANCE
            link_report(client, parent, html_path.name, (out_dir / "samples" / SIDE_BY_SIDE).exists(),
                        glance.read_text(encoding="utf-8") if glance.exists() and glance.stat().st_mtime >= started
                        else None)
    return notebook_path, html_path


def link_report(client, parent: str, html_name: str, with_samples: bool, glance: str | None = None) -> None:
    """Append to the parent run's description (MLflow's `mlflow.note.content`, Markdown) links to the report, its
    table and plots in the UI's artifact view, the table at a glance (`glance`: its verdict and numbers rounded as
    the terminal's table rounds them, where MLflow's run list shows every digit logged; left out when the
    description would pass MLflow's DESCRIPTION_LIMIT) and the rows' samples side by side; what an earlier report
    appended is replaced. Relative links: they hold on any host and port the UI is served from."""
    run = client.get_run(parent)
    note = run.data.tags.get("mlflow.note.content", "").split("\n\n" + REPORT_LINKS)[0].split(REPORT_LINKS)[0]
    view = f"#/experiments/{run.info.experiment_id}/runs/{parent}/artifactPath"
    training = "?workflowType=machine_learning"        # MLflow's model-training navigation, not its GenAI one
    links = (f"{REPORT_LINKS} [{_md(html_name)}]({view}/report/{html_name}{training}) · "
             f"[the table]({view}/report/table.md{training}) · [the plots]({view}/plots{training})")
    samples = (f"\n\n![every row's samples, from the same noise](get-artifact?path=samples%2F{SIDE_BY_SIDE}"
               f"&run_uuid={parent})") if with_samples else ""
    text = (note + "\n\n" if note else "") + links
    if glance and len(with_glance := text + "\n\n" + glance.strip()) + len(samples) <= DESCRIPTION_LIMIT:
        text = with_glance
    client.set_tag(parent, "mlflow.note.content", text + samples)
