"""Browse a sweep in the MLflow web UI: `python run_sweep.py ui SWEEP.yaml [--port P]`.

`start_ui` serves the sweep's store with `mlflow server` (the documented command for the UI in MLflow 3;
`mlflow ui` is its hidden alias) on 127.0.0.1, and returns the URL of the sweep's view of its runs table,
built from MLflow's own state, tags and names (nothing patched):

- the view is a *shared view* (MLflow's "Share" button: the experiment tag `mlflow.sharedViewState.<key>`,
  opened by `?viewStateShareKey=<key>`): the sweep's runs only (`tags.sweep`), in the file's row order, grouped
  by row label (one colour per row, the row's mean beside its runs), with the columns that matter on the first
  screen — the metric, the loss and the parameters the rows switch — instead of MLflow's defaults;
- `workflowType=machine_learning` opens MLflow's model-training side navigation instead of the GenAI one;
- runs are named `LABEL · seed S` (the trainer's `tracking.run_name`), drawn in their row's colour (the report's:
  MLflow's `mlflow.runColor` tag), their `row` tag zero-padded so that it sorts as the file's order; the
  experiment's description is the sweep's `description:`, and the parent run's links to the report
  (`analysis.report.link_report`).

MLflow's Assistant panel opens by itself on a browser's first visit to a local server; closing it once is
remembered by the browser (MLflow offers no switch to keep it closed).

The server is a process group of its own, stopped by `stop_ui` (and by `ui_command` on Ctrl-C, SIGTERM or
SIGHUP), so no worker outlives it. Its log is <sweep folder>/mlflow-ui.log.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.parse

from harness.metric_registry import shown_by_default
from harness.sweep.processes import stop_groups
from harness.sweep.reader import all_runs
from harness.sweep.server import answers, launch_mlflow_server
from harness.sweep.spec import SweepError, SweepSpec
from harness.sweep.sweep import Sweep

COMPARE_HINT = ("The runs are grouped by row label (Group by: label), each row in its colour with its mean; the "
                "chart view (second icon above the table) draws each row's curves; tick runs and press Compare "
                "for their parameters and metrics side by side.")


def _remote(sweep: Sweep) -> bool:
    return sweep.store_uri.startswith(("http://", "https://"))


def _remote_message(sweep: Sweep) -> str:
    uri = sweep.store_uri
    if not answers(uri.rstrip("/")):
        return f"{sweep.name} logs to the tracking server {uri}, which does not answer now"
    return f"{sweep.name} logs to the tracking server {uri}, which serves the UI: {runs_url(uri, *prepare_view(sweep))}"


def prepare_view(sweep: Sweep) -> tuple[str, str]:
    """(experiment id, view key) of the sweep, after checking the store is the sweep's (harness/sweep/store.py)
    and writing its view there."""
    client = sweep.client
    experiment = client.get_experiment_by_name(sweep.spec.experiment_name).experiment_id
    return experiment, sweep_view(client, sweep.spec, experiment)


SHARED_VIEW_TAG = "mlflow.sharedViewState."       # MLflow's prefix of a shared view's experiment tag
RUN_COLOR_TAG = "mlflow.runColor"                 # the colour MLflow's UI draws a run in (its "change colour")
COLUMN_WIDTH = 110                                # pixels: a number to 4 digits, a parameter's value


def view_state(spec: SweepSpec, runs: list) -> dict:
    """The sweep's view of the runs table, in MLflow's shared-view format (search facets and UI state of its
    experiment page): the sweep's runs in row order, grouped by label; columns (beside MLflow's fixed run name,
    start time and duration): the seed, the metric, then the result-affecting parameters whose value differs
    between runs, narrow enough for several to fit on the first screen."""
    from harness.configure import affects_result
    children = [run for run in runs if "label" in run.data.tags]
    logged = {key for run in children for key in run.data.metrics}
    metric = shown_by_default(logged)
    keys = sorted({key for run in children for key in run.data.params})
    switched = [key for key in keys if key != "run.seed" and affects_result(key)
                and len({run.data.params.get(key) for run in children}) > 1]
    # the seed as a column of its own: a long label cuts the `LABEL · seed S` run name before its seed
    columns = ["tags.`seed`", f"metrics.`{metric}`", *(f"params.`{key}`" for key in switched)]
    return {
        "searchFilter": f"tags.sweep = '{spec.name}'", "orderByKey": "tags.`row`", "orderByAsc": True,
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns, "columnWidths": {column: COLUMN_WIDTH for column in columns},
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "label"}]},
        "groupsExpanded": {"tag.label": True},     # the group of runs without a label: the submissions' parent runs
        "runsHiddenMode": "SHOW_ALL", "useGroupedValuesInCharts": True, "hideEmptyCharts": True,
    }


def sweep_view(client, spec: SweepSpec, experiment: str) -> str:
    """Write the sweep's view (and the experiment's description) to its experiment, and each run's colour (its
    row's, as in the report) to the run; returns the view's key."""
    from analysis.plots import row_colours
    runs = list(all_runs(client, [experiment], f"tags.sweep = '{spec.name}'"))
    client.set_experiment_tag(experiment, SHARED_VIEW_TAG + spec.name, json.dumps(view_state(spec, runs)))
    colours = row_colours([row.label for row in spec.rows])
    for run in runs:
        colour = colours.get(run.data.tags.get("label"))
        if colour and run.data.tags.get(RUN_COLOR_TAG) != colour:
            client.set_tag(run.info.run_id, RUN_COLOR_TAG, colour)
    if spec.description:
        client.set_experiment_tag(experiment, "mlflow.note.content", spec.description)
    return spec.name


def runs_url(base: str, experiment: str, view: str) -> str:
    """The experiment's runs table in the sweep's view, with MLflow's model-training navigation."""
    query = urllib.parse.urlencode({"viewStateShareKey": view, "workflowType": "machine_learning"})
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs?{query}"


def start_ui(sweep: Sweep, host: str = "127.0.0.1", port: int | None = None,
             timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """Start an MLflow UI server on the sweep's store; wait until it answers. Returns the process (stop it
    with `stop_ui`) and the URL of the sweep's runs table. Raises SweepError when the sweep has logged
    nothing yet or logs to a remote tracking server (which serves the UI itself), RuntimeError when the
    server does not start within `timeout` seconds."""
    if _remote(sweep):
        raise SweepError("tracking.uri", reason=_remote_message(sweep), source=str(sweep.path))
    experiment, view = prepare_view(sweep)
    proc, base = launch_mlflow_server(sweep.store_uri, sweep.folder / "mlartifacts", sweep.folder / "mlflow-ui.log",
                                      host, port, timeout)
    return proc, runs_url(base, experiment, view)


def stop_ui(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop the server and every process it started (its own process group)."""
    stop_groups([proc.pid], grace)
    proc.wait()


def serve_ui(sweep: Sweep, port: int | None = None) -> int:
    """Start the UI, print its URL and how to compare runs, serve until Ctrl-C, SIGTERM or SIGHUP."""
    if _remote(sweep):
        message = _remote_message(sweep)
        print(message)
        if message.endswith("does not answer now"):
            return 1
        print(COMPARE_HINT)
        return 0
    proc, url = start_ui(sweep, port=port)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        print(f"MLflow UI for sweep {sweep.name}: {url}")
        print(COMPARE_HINT)
        print("Ctrl-C stops it.", flush=True)
        code = proc.wait()
        print(f"the MLflow UI exited with code {code}; see {sweep.folder / 'mlflow-ui.log'}", file=sys.stderr)
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
