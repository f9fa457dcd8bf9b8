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

import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.sweep.server import answers, launch_mlflow_server, stop_group, store_uri
from harness.sweep.spec import SweepError, SweepSpec

COMPARE_HINT = ("To compare runs: tick their checkboxes and press Compare (params, metrics and charts side "
                "by side), or open the chart view (second icon above the table) to overlay their curves.")


def _remote(spec: SweepSpec) -> bool:
    return store_uri(spec).startswith(("http://", "https://"))


def _remote_message(spec: SweepSpec) -> str:
    uri = store_uri(spec)
    if not answers(uri.rstrip("/")):
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


def start_ui(spec: SweepSpec, host: str = "127.0.0.1", port: int | None = None,
             timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """Start an MLflow UI server on the sweep's store; wait until it answers. Returns the process (stop it
    with `stop_ui`) and the URL of the sweep's runs table. Raises SweepError when the sweep has logged
    nothing yet or logs to a remote tracking server (which serves the UI itself), RuntimeError when the
    server does not start within `timeout` seconds."""
    if _remote(spec):
        raise SweepError(f"{spec.path}: tracking.uri: {_remote_message(spec)}")
    experiment = experiment_id(spec)
    proc, base = launch_mlflow_server(store_uri(spec), spec.folder / "mlartifacts", spec.folder / "mlflow-ui.log",
                                      host, port, timeout)
    return proc, runs_url(base, experiment)


def stop_ui(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop the server and every process it started (its own process group)."""
    stop_group(proc.pid, grace)
    proc.wait()


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
