"""A sweep's runs as one pandas frame, read from MLflow (one query) and the scheduler (one call).

One row per planned run, in the sweep file's order, whether or not it ran: `state` says done, failed,
running, pending or new, so a table never has a silent gap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.sweep.plan import PlannedRun, load_plan
from harness.sweep.server import store_uri
from harness.sweep.spec import SweepSpec, load_sweep
from harness.sweep.state import read_manifest, sweep_states


@dataclass
class SweepRuns:
    spec: SweepSpec
    plan: list[PlannedRun]
    frame: pd.DataFrame          # see `load_sweep_runs`
    client: MlflowClient
    parent_run_id: str | None    # the latest submission's parent run (plots and reports are logged there)

    @property
    def labels(self) -> list[str]:
        return [row.label for row in self.spec.rows]

    @property
    def grid_keys(self) -> list[str]:
        return list(self.spec.grid)


def load_sweep_runs(path: str | Path) -> SweepRuns:
    """Columns: label, row, seed, grid (JSON), one column per grid key, run_name, signature, state,
    mlflow_run_id, params (count), gflops, failure_reason, `metric.<name>` for every latest metric
    (loss, fd, fd/step_300, images_per_s, ...), and `param.<key>` for the resolved config."""
    spec = load_sweep(path)
    plan = load_plan(spec)
    client = MlflowClient(store_uri(spec))
    manifest = read_manifest(spec)
    rows = []
    for state in sweep_states(spec, plan, client, manifest):
        run, found = state.run, state.mlflow_run
        row = {"label": run.label, "row": run.row, "seed": run.seed, "grid": json.dumps(run.grid, sort_keys=True),
               **run.grid, "run_name": run.run_name, "signature": run.signature, "state": state.state,
               "mlflow_run_id": state.mlflow_run_id, "params": run.params, "gflops": run.gflops,
               "failure_reason": state.reason}
        if found is not None:
            row.update({f"metric.{k}": v for k, v in found.data.metrics.items()})
            row.update({f"param.{k}": v for k, v in found.data.params.items()})
        rows.append(row)
    parent = manifest["submissions"][-1]["parent_run_id"] if manifest["submissions"] else None
    return SweepRuns(spec, plan, pd.DataFrame(rows), client, parent)


def metric_history(sweep: SweepRuns, key: str) -> pd.DataFrame:
    """Long frame (label, seed, grid, step, value) of one metric over training (one history query per
    run: for plots; tables need only `load_sweep_runs`)."""
    records = []
    for row in sweep.frame.itertuples():
        if row.mlflow_run_id is None:
            continue
        for m in sweep.client.get_metric_history(row.mlflow_run_id, key):
            records.append({"label": row.label, "seed": row.seed, "grid": row.grid, "step": m.step,
                            "value": m.value})
    return pd.DataFrame(records, columns=["label", "seed", "grid", "step", "value"])
