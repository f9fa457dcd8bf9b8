"""Where every run of a sweep stands: one MLflow query and one scheduler query for the whole sweep.

MLflow knows what finished or failed (by the run's signature tag); the manifest knows which job each
run was submitted as; the executors (one `sacct` call, or a process check) know which jobs are alive.
A run finished under the same signature elsewhere (another sweep of the store, or a store named by
`reuse_from`) is done here too: `done (from sweep X)`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import reason_line

from .executors import JobRecord, executor_class
from .jobs import job_failure
from .plan import PlannedRun
from .reader import Readers
from .spec import SweepSpec
from .store import finished_runs, reuse_stores, store_uri

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# ---- the manifest: what was submitted, as which job (`Sweep.manifest` reads and writes it) ---------

def read_manifest(path: Path) -> dict | None:
    """The manifest, or None for a sweep never submitted from its folder."""
    return json.loads(path.read_text()) if path.exists() else None


def new_manifest(spec: SweepSpec) -> dict:
    return {"sweep": spec.name, "file": str(spec.path.resolve()), "submissions": [], "runs": {}}


def record_submission(manifest: dict, runs: list[PlannedRun], jobs: list[JobRecord], parent_run_id: str | None,
                      kind: str) -> None:
    by_name = {run.run_name: run for run in runs}
    now = time.time()
    manifest["submissions"].append({"time": now, "parent_run_id": parent_run_id, "executor": kind,
                                    "runs": [job.run_name for job in jobs]})
    for job in jobs:
        run = by_name[job.run_name]
        manifest["runs"][job.run_name] = {"label": run.label, "seed": run.seed, "grid": run.grid,
                                          "signature": run.signature, "submitted": now, **asdict(job)}


# ---- states --------------------------------------------------------------------------------------

@dataclass
class RunState:
    run: PlannedRun
    state: str                      # new | pending | running | done | failed
    mlflow_run_id: str | None = None
    step: int | None = None
    loss: float | None = None
    metrics: dict | None = None
    heartbeat_age_s: float | None = None
    job_id: str | None = None
    reason: str | None = None
    mlflow_run: object | None = None  # the MLflow run (params, tags, latest metrics), when there is one
    source: str | None = None         # the sweep whose run this is, when reused from another sweep
    store: str | None = None          # the store holding the MLflow run

    @property
    def shown(self) -> str:
        return f"done (from sweep {self.source})" if self.source else self.state


def mlflow_runs(client: MlflowClient, experiment_name: str, sweep: str, readers: Readers | None = None
                ) -> dict[str, object]:
    """Latest MLflow run per signature for this sweep, in one (paged) query; with the `readers` of earlier polls,
    only what changed since (harness/sweep/reader.py)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return {}
    latest: dict[str, object] = {}
    for run in (readers or Readers()).runs(client, f"tags.sweep = '{sweep}'", [experiment.experiment_id]):
        signature = run.data.tags.get("signature")
        if signature and (signature not in latest or run.info.start_time > latest[signature].info.start_time):
            latest[signature] = run
    return latest


def scheduler_states(spec: SweepSpec, records: list[dict]) -> dict[str, str]:
    """job id -> state: one query per executor kind (one sacct call for all SLURM jobs), each job checked to be
    this sweep's."""
    states: dict[str, str] = {}
    for kind in {r["executor"] for r in records}:
        executor = executor_class(kind)(spec.folder, spec.name)
        states.update(executor.states([r for r in records if r["executor"] == kind]))
    return states


def sweep_states(spec: SweepSpec, runs: list[PlannedRun], client: MlflowClient, manifest: dict,
                 reuse: bool = True, readers: Readers | None = None) -> list[RunState]:
    tracked = mlflow_runs(client, spec.experiment_name, spec.name, readers)
    submitted = [manifest["runs"][r.run_name] for r in runs if r.run_name in manifest["runs"]]
    jobs = scheduler_states(spec, submitted) if submitted else {}
    here = {}                                     # run name -> (state here, job id, job state)
    for run in runs:
        record = manifest["runs"].get(run.run_name)
        job_id = record["job_id"] if record else None
        job_state = jobs.get(job_id) if job_id else None
        alive = job_state is not None and job_state in executor_class(record["executor"]).LIVE
        found = tracked.get(run.signature)
        status = found.info.status if found else None
        if status == "FINISHED":
            state = "done"
        elif alive:
            state = "running" if status == "RUNNING" else "pending"
        elif status in ("FAILED", "KILLED") or (job_id and status in ("RUNNING", None)):
            state = "failed"
        elif status == "RUNNING":                 # logged from outside this sweep's jobs
            state = "running"
        else:
            state = "new"
        here[run.run_name] = state, job_id, job_state
    # only a run that is new or failed here may be done elsewhere: a poll of a running sweep reads no other store
    wanted = {r.signature for r in runs if here[r.run_name][0] in ("new", "failed")}
    elsewhere = finished_runs(reuse_stores(spec), wanted, readers) if reuse and wanted else {}
    own, now = store_uri(spec), time.time()
    states = []
    for run in runs:
        state, job_id, job_state = here[run.run_name]
        found, store, source = tracked.get(run.signature), own, None
        if run.signature in elsewhere:
            other = elsewhere[run.signature]
            found, store, state = other.run, other.store, "done"
            source = other.sweep if other.sweep != spec.name or other.store != own else None
        metrics = dict(found.data.metrics) if found else {}
        # (`heartbeat` and `step` without the prefix: runs logged before the prefix)
        heartbeat = metrics.pop("system/heartbeat", metrics.pop("heartbeat", None))
        step = metrics.get("system/step", metrics.get("step"))
        reason = None
        if state == "failed":                     # the latest attempt's own reason first (it may not reach MLflow)
            reason = job_failure(spec.folder / run.run_name) \
                or (reason_line(found.data.tags.get("failure_reason", "")) if found else None) \
                or (f"job {job_id} ended ({job_state})" if job_id else None)
        states.append(RunState(run, state, found.info.run_id if found else None,
                               None if step is None else int(step), metrics.get("loss"),
                               metrics, now - heartbeat if heartbeat else None, job_id, reason, found,
                               source, store))
    return states
