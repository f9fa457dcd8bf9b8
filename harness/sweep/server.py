"""The sweep's MLflow tracking server.

Jobs never write one sqlite file concurrently: for the slurm and local executors they log over HTTP to
an `mlflow server` that owns the store (sqlite under the sweep folder, or a PostgreSQL URI). The
server runs detached, so `run_sweep.py` returns while jobs run; its pid, start identity and URL are in server.json
(a recycled pid is never taken for it, nor stopped: harness/sweep/processes.py).
The database and the experiment are created (`store.prepare_store`) before the server and any job start.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .processes import OwnedProcess, start_identity, stop_groups
from .spec import SweepSpec
from .store import store_uri

WILDCARDS = ("0.0.0.0", "::")   # listening on every interface


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


def _info_path(spec: SweepSpec) -> Path:
    return spec.folder / "server.json"


def running_server(spec: SweepSpec) -> str | None:
    path = _info_path(spec)
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    return info["url"] if _process(info).alive() and answers(info["url"]) else None


def _process(info: dict) -> OwnedProcess:
    return OwnedProcess(info["pid"], None, info.get("started"))


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
    url = f"http://{'127.0.0.1' if host in (*WILDCARDS, '127.0.0.1', 'localhost') else host}:{port}"
    deadline = time.time() + timeout
    while not answers(url):
        if proc.poll() is not None or time.time() > deadline:
            stop_groups([proc.pid])
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"mlflow server did not start within {timeout:.0f}s on port {port}; "
                               f"see {log_path}:\n" + "\n".join(tail))
        time.sleep(0.3)
    return proc, url


def start_server(spec: SweepSpec, backend_uri: str | None = None, host: str | None = None,
                 port: int | None = None, timeout: float = 90) -> str:
    """Start (or find) the detached server of this sweep's store and return the URL its jobs log to (the store
    exists). `host` (default: the sweep's `tracking.host`, else 127.0.0.1): where it listens; listening on
    every interface, it is advertised by this machine's hostname, which a cluster's compute nodes resolve."""
    url = running_server(spec)
    if url:
        return url
    host = host or spec.tracking.host or "127.0.0.1"
    backend = backend_uri or store_uri(spec)
    proc, url = launch_mlflow_server(backend, spec.folder / "mlartifacts", spec.folder / "mlflow-server.log",
                                     host, port, timeout)
    if host in WILDCARDS:
        url = f"http://{socket.gethostname()}:{url.rsplit(':', 1)[1]}"
    _info_path(spec).write_text(json.dumps({"pid": proc.pid, "started": start_identity(proc.pid), "url": url,
                                            "backend": backend}))
    return url


def stop_server(spec: SweepSpec) -> bool:
    path = _info_path(spec)
    if not path.exists():
        return False
    info = json.loads(path.read_text())
    if _process(info).alive():
        stop_groups([info["pid"]])
    path.unlink()
    return True
