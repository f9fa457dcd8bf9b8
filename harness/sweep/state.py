"""Where every run of a sweep stands: one MLflow query and one scheduler query for the whole sweep.

MLflow knows what finished or failed (by the run's signature tag); the manifest knows which job each
run was submitted as; one `sacct` call (or a pid check for local jobs) knows which jobs are alive.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from ..files import atomic_write_text
from .executors import JobRecord
from .plan import PlannedRun
from .server import pid_alive
from .spec import SweepSpec

ACCOUNTING_LAG_S = 600
LIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                     "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


# ---- the manifest: what was submitted, as which job ---------------------------------------------

def manifest_path(spec: SweepSpec) -> Path:
    return spec.folder / "manifest.json"


def read_manifest(spec: SweepSpec) -> dict:
    path = manifest_path(spec)
    if path.exists():
        return json.loads(path.read_text())
    return {"sweep": spec.name, "file": str(spec.path.resolve()), "submissions": [], "runs": {}}


def record_submission(spec: SweepSpec, manifest: dict, runs: list[PlannedRun], jobs: list[JobRecord],
                      parent_run_id: str, kind: str) -> None:
    by_name = {run.run_name: run for run in runs}
    now = time.time()
    manifest["submissions"].append({"time": now, "parent_run_id": parent_run_id, "executor": kind,
                                    "runs": [job.run_name for job in jobs]})
    for job in jobs:
        run = by_name[job.run_name]
        manifest["runs"][job.run_name] = {"label": run.label, "seed": run.seed, "grid": run.grid,
                                          "signature": run.signature, "submitted": now, **asdict(job)}
    atomic_write_text(manifest_path(spec), json.dumps(manifest, indent=1))


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


def mlflow_runs(client: MlflowClient, experiment_name: str, sweep: str) -> dict[str, object]:
    """Latest MLflow run per signature for this sweep, in one paged query."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return {}
    latest: dict[str, object] = {}
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], filter_string=f"tags.sweep = '{sweep}'",
                                  max_results=50000, page_token=token)
        for run in page:
            signature = run.data.tags.get("signature")
            if signature and (signature not in latest or run.info.start_time > latest[signature].info.start_time):
                latest[signature] = run
        token = page.token
        if not token:
            return latest


def scheduler_states(records: list[dict]) -> dict[str, str]:
    """job id -> state, with one sacct call for SLURM jobs and a pid check for local ones."""
    states: dict[str, str] = {}
    slurm_ids = sorted({r["job_id"] for r in records if r["executor"] == "slurm"})
    if slurm_ids:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(slurm_ids)],
                             capture_output=True, text=True, timeout=60)
        for line in out.stdout.splitlines():
            job_id, _, state = line.partition("|")
            states[job_id] = state.split()[0] if state else "UNKNOWN"
        # a pending array shows as one line "123_[0-3]": its tasks are pending
        for line_id in list(states):
            if "_[" in line_id:
                base = line_id.split("_[")[0]
                for r in records:
                    if r["job_id"].startswith(base + "_") and r["job_id"] not in states:
                        states[r["job_id"]] = states[line_id]
        # accounting lags the controller by a moment: a just-submitted job sacct does not list yet is pending
        now = time.time()
        for r in records:
            if r["executor"] == "slurm" and r["job_id"] not in states and now - r["submitted"] < ACCOUNTING_LAG_S:
                states[r["job_id"]] = "PENDING"
    for record in records:
        if record["executor"] == "local":
            states[record["job_id"]] = "RUNNING" if pid_alive(int(record["job_id"])) else "ENDED"
    return states


def sweep_states(spec: SweepSpec, runs: list[PlannedRun], client: MlflowClient,
                 manifest: dict | None = None) -> list[RunState]:
    manifest = manifest if manifest is not None else read_manifest(spec)
    tracked = mlflow_runs(client, spec.experiment_name, spec.name)
    submitted = [manifest["runs"][r.run_name] for r in runs if r.run_name in manifest["runs"]]
    jobs = scheduler_states(submitted) if submitted else {}
    now = time.time()
    states = []
    for run in runs:
        record = manifest["runs"].get(run.run_name)
        job_id = record["job_id"] if record else None
        job_state = jobs.get(job_id) if job_id else None
        alive = job_state in LIVE_SLURM_STATES or job_state == "RUNNING"
        found = tracked.get(run.signature)
        status = found.info.status if found else None
        if status == "FINISHED":
            state = "done"
        elif alive:
            state = "running" if status == "RUNNING" else "pending"
        elif record and record["executor"] == "debug" and status is None:
            state = "failed"
        elif status in ("FAILED", "KILLED") or (status == "RUNNING" and job_id) or (job_id and status is None):
            state = "failed"
        elif status == "RUNNING":                 # logged from outside this sweep's jobs
            state = "running"
        else:
            state = "new"
        metrics = dict(found.data.metrics) if found else {}
        heartbeat = metrics.pop("heartbeat", None)
        reason = found.data.tags.get("failure_reason") if found else None
        if state == "failed" and not reason:
            reason = f"job {job_id} ended ({job_state})" if job_id else None
        states.append(RunState(run, state, found.info.run_id if found else None,
                               int(metrics["step"]) if "step" in metrics else None, metrics.get("loss"),
                               metrics, now - heartbeat if heartbeat else None, job_id, reason, found))
    return states
