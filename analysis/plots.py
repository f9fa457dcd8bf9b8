"""Figures of a sweep: training loss, the metric over training, the final metric per row, quality
against cost (GFLOPs, images/s), and the runs' efficiency (images/s, data wait, peak memory, MFU). Each is
written as PNG and PDF. A progress figure (loss or metric
against steps) is drawn only when the finished runs logged it at two points or more; otherwise
`progress_notes` says so in one sentence. Error bars are the 95% t-intervals of the tables
(`analysis.stats`), absent with one seed.

Every row keeps one colour in every figure (tab10 by the row's index in the sweep file, so the same
sweep always draws the same way); grid points of a row share its colour and differ by line style and
marker. Curves and the cost scatter use the finished runs only (mean over seeds, with the seeds'
min–max as a band); a row with no finished run is left out of them but keeps its slot in the bar
chart, marked with its state. Figures are built with `matplotlib.figure.Figure` (no pyplot, no global
backend switch), so this works headless and inside notebooks alike.

Artists drawn for a row carry the row's label as their gid (`artist.get_gid()`), which is what the
tests use to check the colours.
"""
from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from harness.metric_registry import entry, lower_is_better, preferred

from .runs import SweepRuns, evaluations, metric_history
from .stats import MIN_N, t_interval
from .table import paper_label

LINE_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DPI = 150


@dataclass
class Series:
    """One line of the figures: a sweep row at one grid point (one row of the ablation table)."""
    label: str
    row: int
    grid: str             # JSON, as in the frame's `grid` column
    point: int            # index of the grid point within the row (line style / marker)
    name: str             # what the legend and axes show

    @property
    def style(self) -> str:
        return LINE_STYLES[self.point % len(LINE_STYLES)]

    @property
    def marker(self) -> str:
        return MARKERS[self.point % len(MARKERS)]


def row_colours(labels: list[str]) -> dict[str, str]:
    """label -> colour (hex), fixed by the row's index in the sweep file (`labels` in the file's order): the same in
    every figure, the report and the MLflow UI."""
    n = len(labels)
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    if n <= 20:
        return {label: to_hex(cmap(i % cmap.N)) for i, label in enumerate(labels)}
    return {label: to_hex(cmap(i / max(1, n - 1))) for i, label in enumerate(labels)}


def sweep_series(sweep: SweepRuns) -> list[Series]:
    """One per (row, grid point), in the sweep file's order."""
    out, seen = [], {}
    for label, grid in sweep.frame[["label", "grid"]].drop_duplicates().itertuples(index=False):
        point = seen.setdefault(label, 0)
        seen[label] += 1
        values = json.loads(grid) if grid else {}
        name = label + (" [" + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items()) + "]"
                        if values else "")
        out.append(Series(label, sweep.labels.index(label), grid, point, name))
    return sorted(out, key=lambda s: (s.row, s.point))


def axis_label(metric: str) -> str:
    return f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)"


def file_stem(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") or "metric"


# ---- data --------------------------------------------------------------------------------------

def _done(sweep: SweepRuns) -> pd.DataFrame:
    return sweep.frame[sweep.frame["state"] == "done"]


def finished_history(sweep: SweepRuns, key: str) -> pd.DataFrame:
    """`metric_history` of the finished runs only (label, seed, grid, step, value)."""
    done = _done(sweep)
    if done.empty:
        return pd.DataFrame(columns=["label", "seed", "grid", "step", "value"])
    history = metric_history(sweep, key)
    keep = set(zip(done["label"], done["seed"], done["grid"]))
    mask = [k in keep for k in zip(history["label"], history["seed"], history["grid"])]
    return history[mask] if len(history) else history


def final_values(sweep: SweepRuns, metric: str) -> dict[tuple[str, str], pd.Series]:
    """(label, grid) -> the finished runs' final metric values, indexed by seed."""
    done = _done(sweep)
    column = f"metric.{metric}"
    out = {}
    for s in sweep_series(sweep):
        group = done[(done["label"] == s.label) & (done["grid"] == s.grid)]
        values = group.set_index("seed")[column].dropna() if column in group else pd.Series(dtype=float)
        out[(s.label, s.grid)] = values.astype(float)
    return out


def progress_points(sweep: SweepRuns, key: str) -> list[int]:
    """The distinct steps at which the finished runs logged `key`."""
    return sorted({int(s) for s in finished_history(sweep, key)["step"]})


def progress_notes(sweep: SweepRuns, metric: str) -> list[str]:
    """One sentence for each progress figure left out because it would have fewer than two points."""
    notes = []
    for key in dict.fromkeys(["loss", metric.split("/")[0]]):
        points = progress_points(sweep, key)
        if len(points) < 2:
            at = f"once (step {points[0]})" if points else "at no point by a finished run"
            notes.append(f"{key} was logged {at}: no progress plot (it needs two evaluation points or more).")
    return notes


def _error(v: pd.Series) -> float | None:
    """Half-width of the 95% t-interval over seeds, None with fewer than two."""
    interval = t_interval(v)
    return interval.half_width if interval.n > 1 else None


def _state_text(sweep: SweepRuns, s: Series) -> str:
    group = sweep.frame[(sweep.frame["label"] == s.label) & (sweep.frame["grid"] == s.grid)]
    counts = group["state"].value_counts()
    return ", ".join(f"{state}" + (f" ({n})" if n > 1 else "") for state, n in counts.items()) or "missing"


# ---- figures -----------------------------------------------------------------------------------

def _figure(width: float = 8.0, height: float = 4.5, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _legend(fig: Figure, sweep: SweepRuns, series: list[Series], colours: dict[str, str],
            lines: bool = True, markers: bool = True) -> None:
    """One legend, always at the figure's right, listing every series in the file's order; those not
    drawn (no finished run) are listed greyed with their state, so no row silently disappears."""
    drawn = {(s.label, s.grid) for s in series}
    handles = []
    for s in sweep_series(sweep):
        if (s.label, s.grid) in drawn:
            handles.append(Line2D([], [], color=colours[s.label], linestyle=s.style if lines else "none",
                                  marker=s.marker if markers else None, label=s.name))
        else:
            handles.append(Line2D([], [], color="none", label=f"{s.name}: {_state_text(sweep, s)}, not drawn"))
    if handles:
        legend = fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False,
                            title=f"rows (baseline: {sweep.spec.baseline_label})", title_fontsize="small")
        for text, handle in zip(legend.get_texts(), handles):
            if handle.get_color() == "none":
                text.set_color("0.5")


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def curve_figure(sweep: SweepRuns, key: str, colours: dict[str, str], ylabel: str, title: str,
                 markers: bool = False) -> Figure:
    """Mean over seeds against step for each series, with the seeds' min–max as a band."""
    history = finished_history(sweep, key)
    fig, (ax,) = _figure()
    drawn = []
    for s in sweep_series(sweep):
        h = history[(history["label"] == s.label) & (history["grid"] == s.grid)]
        if h.empty:
            continue
        table = h.pivot_table(index="step", columns="seed", values="value", aggfunc="last").sort_index()
        steps = table.index.to_numpy(dtype=float)
        mean, low, high = table.mean(axis=1), table.min(axis=1), table.max(axis=1)
        colour = colours[s.label]
        ax.plot(steps, mean.to_numpy(), color=colour, linestyle=s.style, marker=s.marker if markers else None,
                markersize=4, label=s.name, gid=s.label)
        if table.shape[1] > 1:
            ax.fill_between(steps, low.to_numpy(), high.to_numpy(), color=colour, alpha=0.18, linewidth=0,
                            gid=s.label)
        drawn.append(s)
    if not drawn:
        _empty(ax, "no finished run yet")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title + (" — mean over seeds, band: min–max" if drawn else ""), fontsize="medium")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(fig, sweep, drawn, colours, markers=markers)
    return fig


def loss_figure(sweep: SweepRuns, colours: dict[str, str]) -> Figure:
    words = entry("loss").description
    return curve_figure(sweep, "loss", colours, words, f"{sweep.spec.name}: {words}")


def metric_curve_figure(sweep: SweepRuns, metric: str, colours: dict[str, str]) -> Figure:
    key = metric.split("/")[0]
    return curve_figure(sweep, key, colours, axis_label(key), f"{sweep.spec.name}: {key} during training",
                        markers=True)


def bar_figure(sweep: SweepRuns, metric: str, colours: dict[str, str]) -> Figure:
    """Final metric per row (mean over finished seeds, error bar: 95% t-interval, dots: each seed);
    rows without a finished run keep their slot, marked with their state."""
    series = sweep_series(sweep)
    values = final_values(sweep, metric)
    fig, (ax,) = _figure(width=max(6.0, 1.1 * len(series) + 3.0), height=4.8)
    x = np.arange(len(series))
    missing = []
    paper_handle = None
    for i, s in enumerate(series):
        v = values[(s.label, s.grid)]
        colour = colours[s.label]
        if len(v) == 0:
            missing.append((i, _state_text(sweep, s)))
            continue
        ax.bar(i, float(v.mean()), color=colour, edgecolor="black", linewidth=0.6, hatch=None if s.point == 0
               else ["", "//", "..", "xx"][s.point % 4], gid=s.label)
        if _error(v) is not None:
            bars = ax.errorbar(i, float(v.mean()), yerr=_error(v), color="black", capsize=4, linewidth=1)
            for line in bars.lines[2] if len(v) < MIN_N else []:      # unreliable interval: dashed
                line.set_linestyle("--")
        ax.scatter(np.full(len(v), i) + np.linspace(-0.12, 0.12, len(v)), v.to_numpy(), s=12, color="black",
                   zorder=3, alpha=0.7)
        paper = sweep.spec.rows[s.row].paper.get(metric)
        if paper is not None:
            paper_handle = ax.scatter([i], [paper], marker="D", s=40, facecolor="white", edgecolor="black",
                                      zorder=4, label=f"paper: {paper_label(sweep, metric)}")
    for i, text in missing:
        ax.text(i, 0, f" no finished run: {text}", rotation=90, ha="center", va="bottom", fontsize="small", color="0.3")
    ax.set_xticks(x, [s.name for s in series], rotation=25 if len(series) > 3 else 0, ha="right"
                  if len(series) > 3 else "center", fontsize="small")
    for tick, s in zip(ax.get_xticklabels(), series):
        tick.set_color(colours[s.label])
    ax.set_xlim(-0.6, len(series) - 0.4)
    ax.set_ylabel(axis_label(metric))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{sweep.spec.name}: final {metric} — mean, 95% t-interval (dashed: n < {MIN_N}), dots: seeds",
                 fontsize="medium")
    if paper_handle is not None:
        ax.legend(handles=[paper_handle], loc="upper right", fontsize="small")
    return fig


def cost_figure(sweep: SweepRuns, metric: str, colours: dict[str, str]) -> Figure:
    """Final metric against GFLOPs per image (left) and training throughput (right)."""
    series = sweep_series(sweep)
    values = final_values(sweep, metric)
    done = _done(sweep)
    fig, axes = _figure(width=11.0, height=4.5, ncols=2)
    drawn = []
    for s in series:
        v = values[(s.label, s.grid)]
        if len(v) == 0:
            continue
        group = sweep.frame[(sweep.frame["label"] == s.label) & (sweep.frame["grid"] == s.grid)]
        finished = done[(done["label"] == s.label) & (done["grid"] == s.grid)]
        throughput = (finished["metric.images_per_s"].dropna().mean() if "metric.images_per_s" in finished
                      else np.nan)
        mean = float(v.mean())
        for ax, xval in zip(axes, (float(group["gflops"].iloc[0]), throughput)):
            if pd.isna(xval):
                continue
            ax.errorbar(xval, mean, yerr=_error(v), color=colours[s.label], capsize=3, linewidth=1, zorder=2)
            ax.scatter([xval], [mean], color=colours[s.label], marker=s.marker, s=45, edgecolor="black",
                       linewidth=0.5, zorder=3, gid=s.label)
            ax.annotate(s.name, (xval, mean), xytext=(5, 4), textcoords="offset points", fontsize="x-small",
                        color=colours[s.label])
        drawn.append(s)
    for ax, xlabel in zip(axes, ("GFLOPs per forward pass", "training throughput (images/s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(axis_label(metric))
        ax.grid(alpha=0.3)
        ax.margins(x=0.2, y=0.1)
        if not drawn:
            _empty(ax, "no finished run yet")
    fig.suptitle(f"{sweep.spec.name}: final {metric} against cost (mean and 95% t-interval over seeds)",
                 fontsize="medium")
    _legend(fig, sweep, drawn, colours, lines=False)
    return fig


GUIDANCE_KEY = "param.eval.sampler.cfg_scale"


def guidance_evaluations(sweep: SweepRuns) -> pd.DataFrame:
    """The evaluations of the sweep's `evaluate:` grid (its proxy with a selection): one row per (run, protocol),
    from `analysis.runs.evaluations`; empty without an `evaluate:` section."""
    plan = sweep.sweep.evaluations if sweep.sweep.spec.evaluate is not None else None
    found = evaluations(sweep)
    if plan is None or found.empty:
        return found.iloc[0:0]
    wanted = {(e.run.signature, e.protocol.signature) for e in plan.evaluations}
    return found[[key in wanted for key in zip(found["signature"], found["protocol"])]]


def guidance_metric(sweep: SweepRuns, metric: str) -> str | None:
    """The metric the guidance curves show: `metric` when the evaluations have it, else the selection's, else the
    preferred one they have; None when they have none."""
    found = guidance_evaluations(sweep)
    logged = [c.removeprefix("metric.") for c in found.columns if c.startswith("metric.") and found[c].notna().any()]
    select = sweep.sweep.spec.evaluate.select if sweep.sweep.spec.evaluate is not None else None
    for name in (metric.split("/")[0], select and entry(select.metric).name):
        if name in logged:
            return name
    return preferred(logged)


def guidance_figure(sweep: SweepRuns, metric: str, colours: dict[str, str]) -> Figure | None:
    """`metric` against the guidance scale, one line per row (and per value of the other evaluate.grid axes: line
    style), the mean over the row's runs with their min–max as a band; the point each row's selection chose is
    starred. None when the grid does not vary the guidance scale."""
    found = guidance_evaluations(sweep)
    column = f"metric.{metric}"
    if found.empty or column not in found or found[GUIDANCE_KEY].nunique() < 2:
        return None
    axes_keys = [k for k in sweep.sweep.spec.evaluate.grid if k != "eval.sampler.cfg_scale"]
    others = found[[f"param.{k}" for k in axes_keys]].astype(str).agg(", ".join, axis=1) if axes_keys else \
        pd.Series("", index=found.index)
    found = found.assign(other=others)
    variants = list(dict.fromkeys(found["other"]))
    fig, (ax,) = _figure(width=9.0)
    drawn, handles = [], []
    for s in sweep_series(sweep):
        rows = found[(found["label"] == s.label) & (found["grid"] == s.grid)]
        for v, variant in enumerate(variants):
            data = rows[rows["other"] == variant]
            if data.empty:
                continue
            table = data.pivot_table(index=GUIDANCE_KEY, columns="seed", values=column, aggfunc="last").sort_index()
            x = table.index.to_numpy(dtype=float)
            style = LINE_STYLES[v % len(LINE_STYLES)]
            ax.plot(x, table.mean(axis=1).to_numpy(), color=colours[s.label], linestyle=style,
                    marker=MARKERS[v % len(MARKERS)], markersize=4, gid=s.label)
            if table.shape[1] > 1:
                ax.fill_between(x, table.min(axis=1).to_numpy(), table.max(axis=1).to_numpy(), color=colours[s.label],
                                alpha=0.15, linewidth=0, gid=s.label)
            name = s.name + (f" ({', '.join(k.split('.')[-1] for k in axes_keys)} {variant})" if variant else "")
            handles.append(Line2D([], [], color=colours[s.label], linestyle=style,
                                  marker=MARKERS[v % len(MARKERS)], label=name))
        drawn.append(s)
    chosen = selected_points(sweep)
    for (label, grid), point in chosen.items():
        if point is None or "eval.sampler.cfg_scale" not in point:
            continue
        rows = found[(found["label"] == label) & (found["grid"] == grid)]
        match = rows
        for key, value in point.items():
            match = match[match[f"param.{key}"].astype(str) == str(value)]
        if not match.empty:
            ax.scatter([float(point["eval.sampler.cfg_scale"])], [match[column].mean()], marker="*", s=180,
                       color=colours[label], edgecolor="black", linewidth=0.6, zorder=4, gid=label)
    if chosen:
        handles.append(Line2D([], [], color="0.3", marker="*", linestyle="none", markersize=10,
                              label="selected (evaluate.select)"))
    stage = "proxy" if sweep.sweep.spec.evaluate.select else "grid"
    protocol = found["protocol_text"].iloc[0].split(", ")[:2]
    ax.set_xlabel("guidance scale (eval.sampler.cfg_scale)")
    ax.set_ylabel(axis_label(metric))
    ax.grid(alpha=0.3)
    ax.set_title(f"{sweep.spec.name}: {metric} against guidance ({stage}: {', '.join(protocol)}) — mean over "
                 f"seeds, band: min–max", fontsize="medium")
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False,
               title="rows", title_fontsize="small")
    return fig


def selected_points(sweep: SweepRuns) -> dict[tuple[str, str], dict | None]:
    """(label, grid) -> the evaluate.grid point its selection chose (per row; none per run), from the sweep's
    selection runs."""
    from harness.sweep.protocols import selections
    plan = sweep.sweep.evaluations if sweep.sweep.spec.evaluate is not None else None
    if plan is None or plan.spec.select is None or plan.spec.select.per != "row":
        return {}
    made = selections(sweep.client, sweep.spec)
    out = {}
    for group in plan.groups:
        selection = made.get(plan.selection_signature(group))
        out[(group.label, json.dumps(group.grid, sort_keys=True))] = (
            json.loads(selection.data.tags["selected_point"]) if selection is not None else None)
    return out


EFFICIENCY_PANELS = (   # (title, the per-seed values from the finished runs' last logged window)
    ("training images/s", lambda sweep: final_values(sweep, "images_per_s")),
    ("data wait (% of the step)", lambda sweep: _share(final_values(sweep, "data_wait_s"),
                                                        final_values(sweep, "step_time_s"))),
    ("peak memory per device (GiB)", lambda sweep: final_values(sweep, "peak_memory_gb")),
    ("MFU (% of the dense peak)", lambda sweep: {k: 100 * v for k, v in final_values(sweep, "mfu").items()}),
)


def _share(part: dict, whole: dict) -> dict:
    return {key: 100 * (part[key] / whole[key]).dropna() for key in part}


def efficiency_figure(sweep: SweepRuns, colours: dict[str, str]) -> Figure:
    """Per row, the runs' efficiency telemetry (harness/telemetry.py): throughput, the share of the step spent
    waiting for data, peak memory and MFU (absent on the CPU), mean over finished seeds with each seed a dot."""
    series = sweep_series(sweep)
    fig, axes = _figure(width=max(11.0, 1.6 * len(series) + 6.0), height=4.2, ncols=len(EFFICIENCY_PANELS))
    for ax, (title, values_of) in zip(axes, EFFICIENCY_PANELS):
        values = values_of(sweep)
        drawn = False
        for i, s in enumerate(series):
            v = values.get((s.label, s.grid), pd.Series(dtype=float))
            if len(v) == 0:
                continue
            ax.bar(i, float(v.mean()), color=colours[s.label], edgecolor="black", linewidth=0.6, gid=s.label)
            ax.scatter(np.full(len(v), i) + np.linspace(-0.12, 0.12, len(v)), v.to_numpy(), s=10, color="black",
                       zorder=3, alpha=0.7)
            drawn = True
        if not drawn:
            _empty(ax, "not logged by a finished run" + (" (CPU runs have no MFU)" if "MFU" in title else ""))
        ax.set_xticks(np.arange(len(series)), [s.name for s in series], rotation=30, ha="right", fontsize="x-small")
        for tick, s in zip(ax.get_xticklabels(), series):
            tick.set_color(colours[s.label])
        ax.set_title(title, fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{sweep.spec.name}: efficiency of the finished runs (their last logged window; dots: seeds)",
                 fontsize="medium")
    return fig


def build_figures(sweep: SweepRuns, metric: str) -> dict[str, Figure]:
    """name -> figure; names are the file stems `make_plots` writes. Progress figures with fewer than two
    points are left out (`progress_notes` says which)."""
    colours = row_colours(sweep.labels)
    stem = file_stem(metric)
    figures = {}
    if len(progress_points(sweep, "loss")) >= 2:
        figures["loss"] = loss_figure(sweep, colours)
    key = metric.split("/")[0]
    if key != "loss" and len(progress_points(sweep, key)) >= 2:     # loss: it would repeat the loss figure
        figures[f"{file_stem(key)}_during_training"] = metric_curve_figure(sweep, metric, colours)
    figures[f"{stem}_per_row"] = bar_figure(sweep, metric, colours)
    figures[f"{stem}_vs_cost"] = cost_figure(sweep, metric, colours)
    shown = guidance_metric(sweep, metric) if sweep.sweep.spec.evaluate is not None else None
    guidance = guidance_figure(sweep, shown, colours) if shown else None
    if guidance is not None:
        figures[f"{file_stem(shown)}_vs_guidance"] = guidance
    if "metric.step_time_s" in sweep.frame:                # runs that log their efficiency (harness/telemetry.py)
        figures["efficiency"] = efficiency_figure(sweep, colours)
    return figures


def make_plots(sweep: SweepRuns, out_dir: str | Path, metric: str) -> list[Path]:
    """Write every figure as `<out_dir>/<name>.png` and `.pdf`; returns the paths, PNG then PDF per figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in build_figures(sweep, metric).items():
        for suffix in (".png", ".pdf"):
            path = out_dir / f"{name}{suffix}"
            fig.savefig(path, dpi=DPI, metadata=None if suffix == ".png" else {"Creator": "ditlab analysis"})
            paths.append(path)
    return paths


def samples_side_by_side(sweep: SweepRuns, grids: list, path: str | Path, per_line: int = 2,
                         width: float = 5.0) -> Path:
    """The rows' sample grids (`analysis.samples.RowGrid`) in one figure, `per_line` to a line, each `width` inches
    wide under its row's label in the row's colour; a row without a grid says why in its place. The report's
    summary shows it."""
    import matplotlib.image
    colours = row_colours(sweep.labels)
    pictures = {id(grid): matplotlib.image.imread(grid.path) for grid in grids if grid.path is not None}
    aspect = max((p.shape[0] / p.shape[1] for p in pictures.values()), default=1.0)     # height / width
    lines = -(-max(1, len(grids)) // per_line)
    columns = min(per_line, max(1, len(grids)))
    fig = Figure(figsize=(width * columns, (width * aspect + 0.5) * lines), layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax, grid in zip(axes, grids):
        name = grid.label + ("" if grid.grid in ("{}", "", None) else f" {grid.grid}")
        ax.set_title(textwrap.fill(name, 50), fontsize=9, color=colours.get(grid.label, "black"))
        if grid.path is None:
            ax.text(0.5, 0.5, textwrap.fill(f"no grid: {grid.reason}", 30), ha="center", va="center",
                    transform=ax.transAxes, color="0.4", fontsize=8)
        else:
            ax.imshow(pictures[id(grid)], interpolation="nearest")
        ax.set_axis_off()
    for ax in axes[len(grids):]:
        ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def log_plots(sweep: SweepRuns, paths: list[Path]) -> int:
    """Log the files to the sweep's parent MLflow run (artifact folder `plots`); returns how many
    were logged (0 when the sweep was never submitted)."""
    if not sweep.parent_run_id:
        return 0
    for path in paths:
        sweep.client.log_artifact(sweep.parent_run_id, str(path), "plots")
    return len(paths)
