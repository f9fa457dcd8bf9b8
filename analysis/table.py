"""The ablation table of a sweep, like the paper's: one row per sweep row (and grid point), in file order.

Columns: params, GFLOPs, the metric at each chosen point of training as mean ± std over seeds with n,
the difference against the baseline row with a paired test over seeds (rows within seed noise are
marked), the paper's number where the sweep file gives it, throughput, and the runs' states — a row
whose runs failed or never ran says so instead of leaving a blank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .runs import SweepRuns

HIGHER_IS_BETTER = ("class_acc", "acc", "is", "inception_score", "precision", "recall", "images_per_s")
NOISE_P = 0.05          # a paired t-test over seeds with p above this: "within seed noise"


def lower_is_better(metric: str) -> bool:
    """FID, FD and losses go down; accuracies, precision/recall and throughput go up."""
    return metric.split("/")[0] not in HIGHER_IS_BETTER


def default_metric(sweep: SweepRuns) -> str:
    columns = set(sweep.frame.columns)
    return next((m for m in ("fid", "fd") if f"metric.{m}" in columns), "loss")


def metric_column(sweep: SweepRuns, metric: str, point: str | None) -> tuple[str, str]:
    """(frame column, display name) of a metric at a point: None = the final value, `epoch_80`,
    `step_300`, or a bare number (epochs if such an evaluation exists, else steps)."""
    if point is None or point in ("final", "end"):
        return f"metric.{metric}", metric
    names = [point] if "_" in point else [f"epoch_{float(point):g}", f"step_{int(float(point))}"]
    for name in names:
        column = f"metric.{metric}/{name}"
        if column in sweep.frame.columns:
            return column, f"{metric} @ {name.replace('_', ' ')}"
    return f"metric.{metric}/{names[0]}", f"{metric} @ {names[0].replace('_', ' ')}"


@dataclass
class AblationTable:
    frame: pd.DataFrame       # numbers: one row per (label, grid point), in the sweep's order
    metric: str
    points: list[str]         # display names of the metric columns, e.g. ["fd @ step 300", "fd"]
    lower_is_better: bool
    baseline: str

    # ---- formats -----------------------------------------------------------------------------

    def display(self, bold: tuple[str, str] = ("**", "**")) -> pd.DataFrame:
        """Strings for reading: mean ± std (n), Δ with a noise mark, failures spelled out."""
        out = pd.DataFrame(index=self.frame.index)
        f = self.frame
        out["row"] = f["label"]
        for key in [c for c in f.columns if c.startswith("grid.")]:
            out[key.removeprefix("grid.")] = f[key].astype(str)
        out["params (M)"] = (f["params"] / 1e6).map("{:.2f}".format)
        out["GFLOPs"] = f["gflops"].map("{:.2f}".format)
        for point in self.points:
            best = self._best(point)
            out[point] = [self._cell(f.loc[i], point, i == best, bold) for i in f.index]
        last = self.points[-1]
        out[f"Δ {last}"] = [self._delta(f.loc[i], last) for i in f.index]
        for column in [c for c in f.columns if c.startswith("paper ")]:
            out[column] = f[column].map(lambda v: "" if v is None or pd.isna(v) else f"{v:g}")
        out["img/s"] = f["images_per_s"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        out["runs"] = f["runs"]
        return out

    def _best(self, point):
        means = self.frame[f"{point} mean"]
        if means.notna().sum() == 0:
            return None
        return means.idxmin() if self.lower_is_better else means.idxmax()

    def _cell(self, row, point, is_best, bold) -> str:
        mean, std, n = row[f"{point} mean"], row[f"{point} std"], row[f"{point} n"]
        if n == 0:
            return row["missing"]
        text = f"{mean:.4g}" + (f" ± {std:.2g}" if n > 1 else "") + f" (n={n})"
        return f"{bold[0]}{text}{bold[1]}" if is_best else text

    def _delta(self, row, point) -> str:
        if row["label"] == self.baseline:
            return "baseline"
        delta = row[f"{point} delta"]
        if pd.isna(delta):
            return "–"
        p = row[f"{point} p"]
        mark = " (within seed noise)" if not pd.isna(p) and p > NOISE_P else ""
        return f"{delta:+.4g}" + (f", p={p:.2g}" if not pd.isna(p) else "") + mark

    def to_markdown(self) -> str:
        return self.display().to_markdown(index=False)

    def to_latex(self) -> str:
        shown = self.display(bold=("", ""))
        styler = shown.style.hide(axis="index").format(escape="latex")
        for point in self.points:
            best = self._best(point)
            if best is not None:
                styler = styler.set_properties(subset=pd.IndexSlice[[best], [point]], **{"textbf": "--rwrap"})
        return styler.to_latex(hrules=True, column_format="l" + "r" * (shown.shape[1] - 1))

    def to_html(self) -> str:
        shown = self.display(bold=("", ""))
        styler = shown.style.hide(axis="index")
        for point in self.points:
            best = self._best(point)
            if best is not None:
                styler = styler.set_properties(subset=pd.IndexSlice[[best], [point]], **{"font-weight": "bold"})
        return styler.to_html()

    def to_csv(self) -> str:
        return self.frame.to_csv(index=False)

    def render(self, fmt: str) -> str:
        return {"markdown": self.to_markdown, "latex": self.to_latex, "html": self.to_html,
                "csv": self.to_csv}[fmt]()


def build_table(sweep: SweepRuns, metric: str | None = None, at: list[str] | None = None,
                baseline: str | None = None) -> AblationTable:
    metric = metric or default_metric(sweep)
    lower = lower_is_better(metric)
    baseline = baseline or sweep.spec.baseline_label
    if baseline not in sweep.labels:
        from models.config import ConfigError
        raise ConfigError(f"--baseline {baseline!r}: no row has this label; rows are {sweep.labels}")
    frame = sweep.frame
    columns = [metric_column(sweep, metric, point) for point in (at or [None])]
    paper_keys = sorted({key for row in sweep.spec.rows for key in row.paper})   # the paper's own metrics
    records = []
    for (label, grid), group in frame.groupby(["label", "grid"], sort=False):
        done = group[group["state"] == "done"]
        counts = group["state"].value_counts()
        record = {"label": label, "row": int(group["row"].iloc[0]), "grid": grid,
                  **{f"grid.{k}": group[k].iloc[0] for k in sweep.grid_keys},
                  "params": int(group["params"].iloc[0]), "gflops": float(group["gflops"].iloc[0]),
                  "images_per_s": done["metric.images_per_s"].mean() if "metric.images_per_s" in done else np.nan,
                  "runs": ", ".join(f"{n} {state}" for state, n in counts.items()),
                  "missing": _missing_text(counts)}
        for column, name in columns:
            values = done[column].dropna() if column in done else pd.Series(dtype=float)
            record[f"{name} mean"] = values.mean() if len(values) else np.nan
            record[f"{name} std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            record[f"{name} n"] = int(len(values))
            record[f"{name} values"] = dict(zip(done.loc[values.index, "seed"], values))
        paper = sweep.spec.rows[record["row"]].paper
        record.update({f"paper {key}": paper.get(key) for key in paper_keys})
        records.append(record)
    table = pd.DataFrame(records).sort_values(["row"], kind="stable").reset_index(drop=True)
    for _, name in columns:                      # differences against the baseline at the same grid point
        deltas, pvalues = [], []
        for _, row in table.iterrows():
            base = table[(table["label"] == baseline) & (table["grid"] == row["grid"])]
            if base.empty or row["label"] == baseline:
                deltas.append(np.nan)
                pvalues.append(np.nan)
                continue
            base = base.iloc[0]
            deltas.append(row[f"{name} mean"] - base[f"{name} mean"])
            pvalues.append(_paired_p(row[f"{name} values"], base[f"{name} values"]))
        table[f"{name} delta"] = deltas
        table[f"{name} p"] = pvalues
    return AblationTable(table, metric, [name for _, name in columns], lower, baseline)


def _paired_p(values: dict, base: dict) -> float:
    """Paired t-test over the seeds both rows finished; NaN with fewer than two pairs."""
    seeds = sorted(set(values) & set(base))
    if len(seeds) < 2:
        return math.nan
    a, b = np.array([values[s] for s in seeds]), np.array([base[s] for s in seeds])
    if np.allclose(a - b, (a - b)[0]):           # identical differences: no variance to test against
        return 0.0 if not np.isclose((a - b)[0], 0) else 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def _missing_text(counts: pd.Series) -> str:
    parts = [f"{state} ({n})" for state, n in counts.items() if state != "done"]
    return "no finished run: " + ", ".join(parts) if parts else "missing"
