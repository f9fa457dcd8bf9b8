"""The sweep's MLflow store and tracking server.

Jobs never write one sqlite file concurrently: for the slurm and local executors they log over HTTP to
an `mlflow server` that owns the store (sqlite under the sweep folder, or a PostgreSQL URI). The
server runs detached, so `run_sweep.py` returns while jobs run; its pid and URL are in server.json.
The database and the experiment are created before any job starts.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from ..tracking import ensure_experiment
from .spec import SweepSpec


def store_uri(spec: SweepSpec) -> str:
    """Where status and tables read from: the configured URI, else the sweep's own sqlite file."""
    return spec.tracking.uri or f"sqlite:///{spec.folder / 'mlflow.db'}"


def prepare_store(spec: SweepSpec) -> str:
    """Create the database and the experiment once, before any job fans out; returns the experiment id."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    return ensure_experiment(MlflowClient(store_uri(spec)), spec.experiment_name, spec.folder / "mlartifacts")


def _info_path(spec: SweepSpec) -> Path:
    return spec.folder / "server.json"


def pid_alive(pid: int) -> bool:
    """True for a live process; False for none, or a zombie (ended, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def answers(url: str) -> bool:
    """The server at `url` is up: its API health check and its UI page both answer."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            if response.status != 200:
                return False
        with urllib.request.urlopen(f"{url}/", timeout=5) as response:
            return response.status == 200 and b"<html" in response.read(4096).lower()
    except OSError:
        return False


def running_server(spec: SweepSpec) -> str | None:
    path = _info_path(spec)
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    return info["url"] if pid_alive(info["pid"]) and answers(info["url"]) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_mlflow_server(backend_uri: str, artifacts: Path, log_path: Path, host: str = "127.0.0.1",
                         port: int | None = None, timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """`mlflow server` in a process group of its own, returned once it answers, with its URL.

    Artifacts: runs keep file:// URIs under their experiment's artifact_location, read directly; runs
    made from the UI get proxied artifacts under `artifacts`. MLflow's GenAI job workers (a pool of huey
    consumers) serve nothing a sweep uses and stay off."""
    port = port or free_port()
    artifacts.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--host", host,
             "--port", str(port), "--workers", "1", "--artifacts-destination", artifacts.resolve().as_uri()],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '127.0.0.1', '::', 'localhost') else host}:{port}"
    deadline = time.time() + timeout
    while not answers(url):
        if proc.poll() is not None or time.time() > deadline:
            stop_group(proc.pid)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"mlflow server did not start within {timeout:.0f}s on port {port}; "
                               f"see {log_path}:\n" + "\n".join(tail))
        time.sleep(0.3)
    return proc, url


def stop_group(pgid: int, grace: float = 10) -> None:
    """Stop a process group (a server and every worker it started): SIGTERM, then SIGKILL after `grace`."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while _group_alive(pgid) and time.time() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process of the group remains."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and pid_alive(int(entry)):
                    return True
            except OSError:
                continue
    return False


def start_server(spec: SweepSpec, backend_uri: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, timeout: float = 90) -> str:
    """Start (or find) the detached server of this sweep's store and return its URL."""
    url = running_server(spec)
    if url:
        return url
    prepare_store(spec)
    backend = backend_uri or store_uri(spec)
    proc, url = launch_mlflow_server(backend, spec.folder / "mlartifacts", spec.folder / "mlflow-server.log",
                                     host, port, timeout)
    _info_path(spec).write_text(json.dumps({"pid": proc.pid, "url": url, "backend": backend}))
    return url


def stop_server(spec: SweepSpec) -> bool:
    path = _info_path(spec)
    if not path.exists():
        return False
    stop_group(json.loads(path.read_text())["pid"])
    path.unlink()
    return True
