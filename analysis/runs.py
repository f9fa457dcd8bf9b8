"""A sweep's runs as one pandas frame, read from MLflow (one query) and the scheduler (one call).

One row per planned run, in the sweep file's order, whether or not it ran: `state` says done, failed,
running, pending or new, so a table never has a silent gap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.sweep.plan import PlannedRun, load_plan
from harness.sweep.spec import SweepSpec, load_sweep
from harness.sweep.state import latest_parent_run_id, read_manifest, sweep_states
from harness.sweep.store import open_store


@dataclass
class SweepRuns:
    spec: SweepSpec
    plan: list[PlannedRun]
    frame: pd.DataFrame          # see `load_sweep_runs`
    client: MlflowClient
    parent_run_id: str | None    # the latest submission's parent run (plots and reports are logged there)
    histories: dict = field(default_factory=dict)    # metric key -> `metric_history` frame (read once)

    @property
    def labels(self) -> list[str]:
        return [row.label for row in self.spec.rows]

    @property
    def grid_keys(self) -> list[str]:
        return list(self.spec.grid)


def load_sweep_runs(path: str | Path) -> SweepRuns:
    """Columns: label, row, seed, grid (JSON), one column per grid key, run_name, signature, state,
    mlflow_run_id, params (count), gflops, failure_reason, checkpoint (the run's `checkpoint` tag: its
    final checkpoint file), `metric.<name>` for every latest metric
    (loss, fd, fd/step_300, images_per_s, ...), and `param.<key>` for the resolved config."""
    spec = load_sweep(path)
    manifest = read_manifest(spec)
    client = open_store(spec, manifest)          # nothing submitted, or the store gone: one line, no file created
    plan = load_plan(spec)
    rows = []
    for state in sweep_states(spec, plan, client, manifest):
        run, found = state.run, state.mlflow_run
        row = {"label": run.label, "row": run.row, "seed": run.seed, "grid": json.dumps(run.grid, sort_keys=True),
               **run.grid, "run_name": run.run_name, "signature": run.signature, "state": state.state,
               "mlflow_run_id": state.mlflow_run_id, "params": run.params, "gflops": run.gflops,
               "failure_reason": state.reason, "store": state.store, "source": state.source}
        if found is not None:
            row["checkpoint"] = found.data.tags.get("checkpoint")
            row.update({f"metric.{k}": v for k, v in found.data.metrics.items()})
            row.update({f"param.{k}": v for k, v in found.data.params.items()})
        rows.append(row)
    return SweepRuns(spec, plan, pd.DataFrame(rows), client, latest_parent_run_id(manifest))


def metric_history(sweep: SweepRuns, key: str) -> pd.DataFrame:
    """Long frame (label, seed, grid, step, value) of one metric over training (one history query per
    run, once per key: for plots; tables need only `load_sweep_runs`)."""
    if key in sweep.histories:
        return sweep.histories[key]
    records, clients = [], {}
    for row in sweep.frame.itertuples():
        if row.mlflow_run_id is None:
            continue
        client = clients.setdefault(row.store, MlflowClient(row.store))   # a reused run lives in its own store
        for m in client.get_metric_history(row.mlflow_run_id, key):
            records.append({"label": row.label, "seed": row.seed, "grid": row.grid, "step": m.step,
                            "value": m.value})
    sweep.histories[key] = pd.DataFrame(records, columns=["label", "seed", "grid", "step", "value"])
    return sweep.histories[key]
