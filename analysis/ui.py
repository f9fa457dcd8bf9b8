"""Browse a sweep in the MLflow web UI: `python run_sweep.py ui SWEEP.yaml [--port P]`.

`start_ui` serves the sweep's store with `mlflow server` (the documented command for the UI in MLflow 3;
`mlflow ui` is its hidden alias) on 127.0.0.1, and returns the URL of the sweep's runs table: one flat row
per run, sorted by the sweep's row order (the `row` tag), the parent run of each submission last. The
experiment's default page in MLflow 3 is a GenAI overview, and the runs table nests a sweep's runs under
the collapsed parent of their submission unless sorted by something other than the start time.

The server is a process group of its own, stopped by `stop_ui` (and by `ui_command` on Ctrl-C, SIGTERM or
SIGHUP), so no worker outlives it. Its log is <sweep folder>/mlflow-ui.log.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.sweep.server import free_port, pid_alive, store_uri
from harness.sweep.spec import SweepError, SweepSpec

COMPARE_HINT = ("To compare runs: tick their checkboxes and press Compare (params, metrics and charts side "
                "by side), or open the chart view (second icon above the table) to overlay their curves.")


def _remote(spec: SweepSpec) -> bool:
    return store_uri(spec).startswith(("http://", "https://"))


def _remote_message(spec: SweepSpec) -> str:
    uri = store_uri(spec)
    if not _answers(uri.rstrip("/")):
        return f"{spec.name} logs to the tracking server {uri}, which does not answer now"
    return f"{spec.name} logs to the tracking server {uri}, which serves the UI: {runs_url(uri, experiment_id(spec))}"


def experiment_id(spec: SweepSpec) -> str:
    """The id of the sweep's experiment; a SweepError when nothing has been logged yet."""
    uri = store_uri(spec)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise SweepError(f"{spec.path}: nothing logged yet ({uri[len('sqlite:///'):]} does not exist): "
                         f"submit the sweep first")
    experiment = MlflowClient(uri).get_experiment_by_name(spec.experiment_name)
    if experiment is None:
        raise SweepError(f"{spec.path}: the store {uri} has no experiment {spec.experiment_name!r}: "
                         f"submit the sweep first")
    return experiment.experiment_id


def runs_url(base: str, experiment: str) -> str:
    """The experiment's runs table, flat and in the sweep's row order (see the module docstring)."""
    query = urllib.parse.urlencode({"orderByKey": "tags.`row`", "orderByAsc": "true"}, quote_via=urllib.parse.quote)
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs?{query}"


def _answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            if response.status != 200:
                return False
        with urllib.request.urlopen(f"{base}/", timeout=5) as response:    # the UI's page, not only the API
            return response.status == 200 and b"<html" in response.read(4096).lower()
    except OSError:
        return False


def start_ui(spec: SweepSpec, host: str = "127.0.0.1", port: int | None = None,
             timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """Start an MLflow UI server on the sweep's store; wait until it answers. Returns the process (stop it
    with `stop_ui`) and the URL of the sweep's runs table. Raises SweepError when the sweep has logged
    nothing yet or logs to a remote tracking server (which serves the UI itself), RuntimeError when the
    server does not start within `timeout` seconds."""
    if _remote(spec):
        raise SweepError(f"{spec.path}: tracking.uri: {_remote_message(spec)}")
    experiment = experiment_id(spec)
    port = port or free_port()
    artifacts = (spec.folder / "mlartifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = spec.folder / "mlflow-ui.log"
    # The server's GenAI job runner (a pool of huey consumers) serves nothing a sweep shows: leave it off.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri(spec),
             "--host", host, "--port", str(port), "--workers", "1",
             # runs keep file:// artifact URIs under the experiment's artifact_location, which the server
             # reads directly; runs and experiments created from the UI get proxied artifacts stored there too
             "--artifacts-destination", artifacts.as_uri()],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '127.0.0.1', '::', 'localhost') else host}:{port}"
    deadline = time.time() + timeout
    while not _answers(base):
        if proc.poll() is not None or time.time() > deadline:
            stop_ui(proc)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"the MLflow UI did not start within {timeout:.0f}s on port {port}; "
                               f"see {log_path}:\n" + "\n".join(tail))
        time.sleep(0.3)
    return proc, runs_url(base, experiment)


def stop_ui(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop the server and every process it started (its own process group): SIGTERM, then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + grace
    while _group_alive(proc.pid) and time.time() < deadline:     # workers shut down after their parent
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process of the group remains."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
            return True
        except OSError:
            return False
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and pid_alive(int(entry)):
                    return True
            except OSError:
                continue
    return False


def ui_command(spec: SweepSpec, port: int | None = None) -> int:
    """Start the UI, print its URL and how to compare runs, serve until Ctrl-C, SIGTERM or SIGHUP."""
    if _remote(spec):
        message = _remote_message(spec)
        print(message)
        if message.endswith("does not answer now"):
            return 1
        print(COMPARE_HINT)
        return 0
    proc, url = start_ui(spec, port=port)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        print(f"MLflow UI for sweep {spec.name}: {url}")
        print(COMPARE_HINT)
        print("Ctrl-C stops it.", flush=True)
        code = proc.wait()
        print(f"the MLflow UI exited with code {code}; see {spec.folder / 'mlflow-ui.log'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):    # a second Ctrl-C must not cut this short
            previous.setdefault(sig, signal.signal(sig, signal.SIG_IGN))
        try:
            stop_ui(proc)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
