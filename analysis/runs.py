"""A sweep's runs as one pandas frame, read from MLflow (one query) and the scheduler (one call).

One row per planned run, in the sweep file's order, whether or not it ran: `state` says done, failed,
running, pending or new, so a table never has a silent gap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.sweep.plan import PlannedRun
from harness.sweep.spec import SweepSpec
from harness.sweep.sweep import Sweep
from harness.tracking import mlflow_client


@dataclass
class SweepRuns:
    sweep: Sweep
    frame: pd.DataFrame          # see `load_sweep_runs`
    histories: dict = field(default_factory=dict)    # metric key -> `metric_history` frame (read once)

    @property
    def spec(self) -> SweepSpec:
        return self.sweep.spec

    @property
    def plan(self) -> list[PlannedRun]:
        return self.sweep.plan

    @property
    def client(self) -> MlflowClient:
        return self.sweep.client

    @property
    def parent_run_id(self) -> str | None:
        """The latest submission's parent run (plots and reports are logged there)."""
        return self.sweep.parent_run_id

    @property
    def labels(self) -> list[str]:
        return [row.label for row in self.spec.rows]

    @property
    def grid_keys(self) -> list[str]:
        return list(self.spec.grid)


def load_sweep_runs(sweep: Sweep) -> SweepRuns:
    """Columns: label, row, seed, grid (JSON), one column per grid key, run_name, signature, state,
    mlflow_run_id, params (count), gflops, failure_reason, checkpoint (the run's `checkpoint` tag: its
    final checkpoint file), `metric.<name>` for every latest metric
    (loss, fd, fd/step_300, images_per_s, ...), and `param.<key>` for the resolved config."""
    rows = []
    for state in sweep.states():                 # nothing submitted, or the store gone: one line, no file created
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
    return SweepRuns(sweep, pd.DataFrame(rows))


def metric_history(sweep: SweepRuns, key: str) -> pd.DataFrame:
    """Long frame (label, seed, grid, step, value) of one metric over training (one history query per
    run, once per key: for plots; tables need only `load_sweep_runs`)."""
    if key in sweep.histories:
        return sweep.histories[key]
    records, clients = [], {sweep.sweep.store_uri: sweep.client}
    for row in sweep.frame.itertuples():
        if row.mlflow_run_id is None:
            continue
        if row.store not in clients:              # a reused run lives in its own store
            clients[row.store] = mlflow_client(row.store)
        client = clients[row.store]
        for m in client.get_metric_history(row.mlflow_run_id, key):
            records.append({"label": row.label, "seed": row.seed, "grid": row.grid, "step": m.step,
                            "value": m.value})
    sweep.histories[key] = pd.DataFrame(records, columns=["label", "seed", "grid", "step", "value"])
    return sweep.histories[key]
