"""The sweep's MLflow tracking server.

Jobs never write one sqlite file concurrently: for the slurm and local executors they log over HTTP to
an `mlflow server` that owns the store (sqlite under the sweep folder, or the PostgreSQL database of
`tracking.uri`). The server runs detached, so `run_sweep.py` returns while jobs run; its pid, start identity and
URL are in server.json (a recycled pid is never taken for it, nor stopped: harness/sweep/processes.py). The
database and the experiment are created (`store.prepare_store`) before the server and any job start. A server
that listens beyond the loopback requires the sweep's credentials (harness/sweep/auth.py) and accepts the Host
names its jobs use (MLflow refuses other Host headers than local and private addresses).
"""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .auth import Credentials, loopback, sweep_credentials
from .processes import OwnedProcess, start_identity, stop_groups
from .spec import SweepSpec
from .store import store_uri

WILDCARDS = ("0.0.0.0", "::")   # listening on every interface
# The server answers up to 40 requests at once (its WSGI app runs in anyio's default pool of 40 threads); with
# SQLAlchemy's default pool (5 + 10 connections) the others wait 30 s for a connection and then fail with a 400,
# which clients do not retry, so runs started together are lost.
SERVER_ENVIRONMENT = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "10", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "30"}


def answers(url: str, auth: Credentials | None = None) -> bool:
    """The server at `url` is up: its API health check and its UI page (as `auth`'s user) both answer."""
    page = urllib.request.Request(f"{url}/")
    if auth is not None:
        token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
        page.add_unredirected_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            if response.status != 200:
                return False
        with urllib.request.urlopen(page, timeout=5) as response:
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
    return info["url"] if _process(info).alive() and answers(info["url"], server_credentials(spec)) else None


def _process(info: dict) -> OwnedProcess:
    return OwnedProcess(info["pid"], None, info.get("started"))


def server_credentials(spec: SweepSpec) -> Credentials | None:
    """What the sweep's jobs must send to its server: its credentials when the server requires them."""
    path = _info_path(spec)
    if not path.exists() or not json.loads(path.read_text()).get("auth"):
        return None
    return sweep_credentials(spec.folder, spec.name, create=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def allowed_hosts(names: list[str]) -> str:
    """MLflow's allowed Host headers (its defaults: local and private addresses) and `names`, with any port."""
    from mlflow.server.security_utils import get_default_allowed_hosts
    return ",".join([*get_default_allowed_hosts(), *(f"{name}{suffix}" for name in names for suffix in ("", ":*"))])


def launch_mlflow_server(backend_uri: str, artifacts: Path, log_path: Path, host: str = "127.0.0.1",
                         port: int | None = None, timeout: float = 90, auth: Credentials | None = None,
                         names: list[str] = ()) -> tuple[subprocess.Popen, str]:
    """`mlflow server` in a process group of its own, returned once it answers, with its URL; with `auth`, MLflow's
    basic-auth app with that account (harness/sweep/auth.py); `names`: the host names clients reach it by.

    Artifacts: runs keep file:// URIs under their experiment's artifact_location, read directly; runs
    made from the UI get proxied artifacts under `artifacts`. MLflow's GenAI job workers (a pool of huey
    consumers) serve nothing a sweep uses and stay off."""
    port = port or free_port()
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--host", host,
               "--port", str(port), "--workers", "1", "--artifacts-destination", artifacts.resolve().as_uri()]
    env = {**SERVER_ENVIRONMENT, **os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if auth is not None:
        command += ["--app-name", "basic-auth"]
        env.update(auth.server_environment(log_path.parent))
    if names:
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = allowed_hosts(list(names))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    url = f"http://{'127.0.0.1' if host in (*WILDCARDS, '127.0.0.1', 'localhost') else host}:{port}"
    deadline = time.time() + timeout
    while not answers(url, auth):
        if proc.poll() is not None or time.time() > deadline:
            stop_groups([proc.pid])
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"mlflow server did not start within {timeout:.0f}s on port {port}; "
                               f"see {log_path}:\n" + "\n".join(tail))
        time.sleep(0.3)
    return proc, url


def start_server(spec: SweepSpec, host: str | None = None, port: int | None = None, timeout: float = 90) -> str:
    """Start (or find) the detached server of this sweep's store and return the URL its jobs log to (the store
    exists). `host` (default: the sweep's `tracking.host`, else 127.0.0.1): where it listens; listening on
    every interface, it is advertised by this machine's hostname, which a cluster's compute nodes resolve.
    Beyond the loopback it requires the sweep's credentials (`server_credentials`)."""
    url = running_server(spec)
    if url:
        return url
    host = host or spec.tracking.host or "127.0.0.1"
    backend = store_uri(spec)
    auth = None if loopback(host) else sweep_credentials(spec.folder, spec.name)
    names = [socket.gethostname(), socket.getfqdn()] if host in WILDCARDS else [host]
    proc, url = launch_mlflow_server(backend, spec.folder / "mlartifacts", spec.folder / "mlflow-server.log",
                                     host, port, timeout, auth, names)
    if host in WILDCARDS:
        url = f"http://{socket.gethostname()}:{url.rsplit(':', 1)[1]}"
    _info_path(spec).write_text(json.dumps({"pid": proc.pid, "started": start_identity(proc.pid), "url": url,
                                            "backend": backend, "auth": auth is not None}))
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
