"""MLflow tracking of one run, through `MlflowClient` (no global fluent state, so runs can share a process).

Only rank 0 tracks; other ranks get `NullTracker`. The default store is sqlite under the run folder;
a sweep passes its tracking server or shared store, and its parent run id.
"""
from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from toolkit.errors import reason
from toolkit.files import atomic_write_text

from .config import TrackingConfig

MAX_BATCH = 100   # MLflow's limit of params (and tags) per log_batch call


def mlflow_client(uri: str) -> MlflowClient:
    """A client of the tracking store at `uri` (sqlite file, PostgreSQL, or a tracking server): every MLflow
    client of the harness is made here."""
    return MlflowClient(uri)


def tracking_uri(cfg: TrackingConfig, run_dir: Path) -> str:
    return cfg.uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root.resolve().as_uri())


class Tracker:
    """One MLflow run: created, or continued when resumed. Any failure once the run exists ends it FAILED
    with the reason. A resumed run logs each (metric, step) at most once: the steps a killed attempt logged
    after its last checkpoint are logged again by the next attempt, with the same values (training is
    exactly reproducible), and are skipped."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, run_name: str, run_id: str | None,
                 tags: dict[str, str], params: dict[str, Any]):
        self.client = mlflow_client(tracking_uri(cfg, run_dir))
        self.run_id = run_id
        self.logged_through: dict[str, int] = {}      # metric -> last step already in the store
        try:
            if run_id is None:
                experiment_id = ensure_experiment(self.client, cfg.experiment, run_dir / "mlartifacts")
                all_tags = {"host": socket.gethostname(), "git_commit": git_commit(), **cfg.tags, **tags}
                if cfg.parent_run_id:
                    all_tags["mlflow.parentRunId"] = cfg.parent_run_id
                self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
                items = [Param(k, str(v)[:6000]) for k, v in params.items()]
                for start in range(0, len(items), MAX_BATCH):
                    self.client.log_batch(self.run_id, params=items[start:start + MAX_BATCH])
            else:                                    # resumed: the same run continues
                self.client.update_run(run_id, status="RUNNING")
                self.set_tags({"resumed": "true", **tags})
                for key in self.client.get_run(run_id).data.metrics:
                    history = self.client.get_metric_history(run_id, key)
                    self.logged_through[key] = max(m.step for m in history) if history else -1
        except BaseException as err:
            if self.run_id is not None:
                self._try_finish("FAILED", reason(err))
            raise

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self.logged_through.get(k, -1)]
        for start in range(0, len(items), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start:start + MAX_BATCH])

    def history(self, key: str) -> dict[int, float]:
        """step -> value of a metric this run has logged."""
        return {m.step: m.value for m in self.client.get_metric_history(self.run_id, key)}

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_json(self, data: dict, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.set_tags({"failure_reason": reason[:5000]})
        self.client.set_terminated(self.run_id, status)

    def _try_finish(self, status: str, reason: str) -> None:
        try:
            self.finish(status, reason)
        except Exception:                         # the store itself failed: the job's failure file tells why
            pass


def migrated_signatures(cfg: TrackingConfig, run_dir: Path, run_id: str) -> tuple[str | None, list[str]]:
    """(current signature, earlier signatures) of an MLflow run that `run_sweep.py migrate` may have re-signed."""
    tags = mlflow_client(tracking_uri(cfg, run_dir)).get_run(run_id).data.tags
    return tags.get("signature"), [s for s in tags.get("signature_previous", "").split(",") if s]


class NullTracker:
    """What ranks other than 0 use: every call does nothing."""
    run_id = None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))
