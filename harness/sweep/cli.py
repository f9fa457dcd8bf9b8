"""`python run_sweep.py` — YAML sweep -> plan of resolved runs -> submission -> MLflow.

    python run_sweep.py SWEEP.yaml [--dry-run] [--retry] [--wait] [--executor slurm|local|debug]
    python run_sweep.py submit SWEEP.yaml ...         (the same)
    python run_sweep.py status SWEEP.yaml
    python run_sweep.py cancel SWEEP.yaml
    python run_sweep.py logs SWEEP.yaml LABEL [--seed S]
    python run_sweep.py mlflow-server SWEEP.yaml [--backend-uri URI] [--host H] [--port P] [--stop]
    python run_sweep.py table SWEEP.yaml [--metric NAME] [--at STEP_OR_EPOCH ...] [--format markdown|latex|html|csv]
    python run_sweep.py report SWEEP.yaml [--metric NAME]
    python run_sweep.py ui SWEEP.yaml [--port P]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from models.config import ConfigError

from .executors import submit
from .plan import PlannedRun, load_plan, plan_sweep, write_plan_cache
from .server import prepare_store, start_server, stop_server, store_uri
from .spec import EXECUTOR_KINDS, SweepSpec, load_sweep
from .state import RunState, read_manifest, record_submission, scheduler_states, sweep_states

COMMANDS = ("submit", "status", "cancel", "logs", "mlflow-server", "table", "report", "ui")


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["submit", *argv]
    parser = argparse.ArgumentParser(prog="python run_sweep.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="validate, plan, submit what is not done or running")
    p.add_argument("sweep")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    p.add_argument("--retry", action="store_true", help="also resubmit failed runs")
    p.add_argument("--wait", action="store_true", help="follow progress until every run has ended")
    p.add_argument("--executor", choices=EXECUTOR_KINDS, help="override the file's executor.kind")
    p.add_argument("--report", action="store_true", help="with --wait: then print the table and write the report")
    p = sub.add_parser("status", help="one line per run")
    p.add_argument("sweep")
    p = sub.add_parser("cancel", help="cancel the sweep's live jobs")
    p.add_argument("sweep")
    p = sub.add_parser("logs", help="a run's job log")
    p.add_argument("sweep")
    p.add_argument("label")
    p.add_argument("--seed", type=int)
    p = sub.add_parser("mlflow-server", help="start (or stop) the sweep's MLflow tracking server")
    p.add_argument("sweep")
    p.add_argument("--backend-uri", help="sqlite:///... or postgresql://... (default: the sweep's sqlite file)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve compute nodes of a cluster")
    p.add_argument("--port", type=int)
    p.add_argument("--stop", action="store_true")
    p = sub.add_parser("table", help="the ablation table, from MLflow")
    p.add_argument("sweep")
    p.add_argument("--metric", help="default: fid, else fd, else loss")
    p.add_argument("--at", nargs="*", help="points of training: epoch_80, step_300, or a number (epochs first)")
    p.add_argument("--format", default="markdown", choices=("markdown", "latex", "html", "csv"))
    p.add_argument("--baseline", help="the row label differences are taken against (default: the file's)")
    p = sub.add_parser("report", help="write, execute and render the report notebook; log it to MLflow")
    p.add_argument("sweep")
    p.add_argument("--metric")
    p = sub.add_parser("ui", help="the MLflow UI of the sweep's store, on 127.0.0.1")
    p.add_argument("sweep")
    p.add_argument("--port", type=int)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        spec = load_sweep(args.sweep)
        if args.command == "mlflow-server":
            return server_command(spec, args)
        if args.command in ("table", "report", "ui"):
            return analysis_command(spec, args)
        runs = plan_sweep(spec) if args.command == "submit" else load_plan(spec)
        return {"submit": submit_command, "status": status_command, "cancel": cancel_command,
                "logs": logs_command}[args.command](spec, runs, args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


# ---- submit --------------------------------------------------------------------------------------

def submit_command(spec: SweepSpec, runs: list[PlannedRun], args) -> int:
    kind = args.executor or spec.executor.kind
    if args.dry_run:
        states = current_states(spec, runs) if (spec.folder / "mlflow.db").exists() or spec.tracking.uri else None
        print_plan(spec, runs, states, kind)
        return 0
    experiment_id = prepare_store(spec)
    write_plan_cache(spec, runs)
    client = MlflowClient(store_uri(spec))
    manifest = read_manifest(spec)
    states = sweep_states(spec, runs, client, manifest)
    wanted = {"new", "failed"} if args.retry else {"new"}
    todo = [s.run for s in states if s.state in wanted]
    print_plan(spec, runs, states, kind)
    counts = {state: sum(s.state == state for s in states) for state in ("done", "running", "pending", "failed")}
    others = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    hint = "; --retry resubmits the failed ones" if counts["failed"] and not args.retry else ""
    print(f"{len(todo)} of {len(runs)} runs to submit" + (f" ({others}{hint})" if others else ""))
    if todo:
        tracking_uri = spec.tracking.uri or (store_uri(spec) if kind == "debug" else start_server(spec))
        parent = client.create_run(experiment_id, run_name=f"{spec.name} #{len(manifest['submissions']) + 1}",
                                   tags={"sweep": spec.name, "sweep_role": "parent", "executor": kind,
                                         "sweep_file": str(spec.path.resolve())})
        parent_id = parent.info.run_id
        client.log_text(parent_id, spec.text, "sweep.yaml")           # the file as written, comments included
        client.log_dict(parent_id, plan_records(spec, runs, states), "plan.json")
        try:
            jobs = submit(spec, todo, kind, tracking_uri, parent_id)
        except Exception as err:
            client.set_tag(parent_id, "failure_reason", f"{type(err).__name__}: {err}")
            client.set_terminated(parent_id, "FAILED")
            raise
        record_submission(spec, manifest, todo, jobs, parent_id, kind)
        client.log_batch(parent_id, params=[])
        client.set_tag(parent_id, "job_ids", ",".join(sorted({j.job_id for j in jobs}))[:5000])
        client.set_terminated(parent_id, "FINISHED")
        print(f"submitted {len(jobs)} runs as {len({j.job_id.split('_')[0] for j in jobs})} "
              f"{'array(s)' if kind == 'slurm' else 'job(s)'}; parent MLflow run {parent_id}; "
              f"manifest {spec.folder / 'manifest.json'}")
    if args.wait:
        code = wait_command(spec, runs)
        if args.report:
            analysis_command(spec, argparse.Namespace(command="table", metric=None, at=None, format="markdown",
                                                      baseline=None))
            analysis_command(spec, argparse.Namespace(command="report", metric=None))
        return code
    return 0


def plan_records(spec: SweepSpec, runs: list[PlannedRun], states: list[RunState] | None) -> list[dict]:
    by_name = {s.run.run_name: s.state for s in states} if states else {}
    return [{"label": r.label, "seed": r.seed, "grid": r.grid, "run_name": r.run_name, "signature": r.signature,
             "params": r.params, "gflops": r.gflops, "overrides": r.config_overrides,
             "state": by_name.get(r.run_name, "new")} for r in runs]


def print_plan(spec: SweepSpec, runs: list[PlannedRun], states: list[RunState] | None, kind: str) -> None:
    by_name = {s.run.run_name: s.state for s in states} if states else {}
    print(f"sweep {spec.name}: {len(runs)} runs ({len(spec.rows)} rows x "
          f"{max(1, len(runs) // (len(spec.rows) * len(spec.seeds)))} grid points x {len(spec.seeds)} seeds), "
          f"executor {kind}, folder {spec.folder}")
    width = max(len(r.label) for r in runs)
    for r in runs:
        changes = [o for o in r.config_overrides if not o.startswith("run.seed=")]
        row_changes = [o for o in changes if o.split("=")[0] in spec.rows[r.row].set or o.split("=")[0] in r.grid]
        print(f"  {r.label:<{width}}  seed {r.seed:<3} {r.params / 1e6:9.2f}M {r.gflops:10.2f} GFLOPs  "
              f"{r.signature}  {by_name.get(r.run_name, 'new'):8s} {' '.join(row_changes)}")


# ---- status, wait, cancel, logs ----------------------------------------------------------------

def current_states(spec: SweepSpec, runs: list[PlannedRun]) -> list[RunState]:
    return sweep_states(spec, runs, MlflowClient(store_uri(spec)))


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def status_command(spec: SweepSpec, runs: list[PlannedRun], args=None) -> int:
    states = current_states(spec, runs)
    width = max(len(r.label) for r in runs)
    for s in states:
        metric = next(((k, v) for k, v in (s.metrics or {}).items() if k in ("fid", "fd")), None)
        grid = " " + json.dumps(s.run.grid) if s.run.grid else ""
        print(f"{s.run.label:<{width}}  seed {s.run.seed:<3} {s.state:8s} step {s.step if s.step is not None else '-':>7} "
              f"loss {s.loss if s.loss is not None else float('nan'):8.4f} "
              f"{(metric[0] + ' ' + format(metric[1], '.4g')) if metric else '':12s} "
              f"heartbeat {format_age(s.heartbeat_age_s):>6}  job {s.job_id or '-'}{grid}"
              + (f"  ({s.reason})" if s.state == "failed" and s.reason else ""))
    counts = {k: sum(s.state == k for s in states) for k in ("done", "running", "pending", "failed", "new")}
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def wait_command(spec: SweepSpec, runs: list[PlannedRun], poll_s: float = 10.0) -> int:
    while True:
        states = current_states(spec, runs)
        counts = {k: sum(s.state == k for s in states) for k in ("done", "running", "pending", "failed", "new")}
        print(time.strftime("%H:%M:%S"), " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
        if not counts["running"] and not counts["pending"]:
            return 1 if counts["failed"] else 0
        time.sleep(poll_s)


def cancel_command(spec: SweepSpec, runs: list[PlannedRun], args=None) -> int:
    manifest = read_manifest(spec)
    records = list(manifest["runs"].values())
    states = scheduler_states(records)
    live_slurm = sorted({r["job_id"] for r in records if r["executor"] == "slurm"
                         and states.get(r["job_id"]) in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED")})
    if live_slurm:
        subprocess.run(["scancel", *live_slurm], check=False)
    live_local = sorted({int(r["job_id"]) for r in records if r["executor"] == "local"
                         and states.get(r["job_id"]) == "RUNNING"})
    for pid in live_local:
        os.kill(pid, signal.SIGTERM)
    print(f"cancelled {len(live_slurm)} SLURM and {len(live_local)} local jobs")
    return 0


def logs_command(spec: SweepSpec, runs: list[PlannedRun], args) -> int:
    manifest = read_manifest(spec)
    chosen = [r for r in runs if r.label == args.label and (args.seed is None or r.seed == args.seed)]
    if not chosen:
        raise ConfigError(f"{spec.path}: rows: no run labelled {args.label!r}"
                          + (f" with seed {args.seed}" if args.seed is not None else ""))
    for run in chosen:
        record = manifest["runs"].get(run.run_name)
        print(f"==> {run.label} seed {run.seed} ({run.run_name})")
        if record is None:
            print("    not submitted")
            continue
        for path in (record["stdout"], record["stderr"]):
            print(f"--- {path}")
            print(open(path).read() if os.path.exists(path) else "(no log yet)")
    return 0


def server_command(spec: SweepSpec, args) -> int:
    if args.stop:
        print("stopped" if stop_server(spec) else "no server was running")
        return 0
    url = start_server(spec, backend_uri=args.backend_uri, host=args.host, port=args.port)
    print(f"MLflow tracking server for {spec.name}: {url}  (set `tracking: {{uri: {url}}}` to share it)")
    return 0


def analysis_command(spec: SweepSpec, args) -> int:
    """table / report / ui: everything is read back from MLflow (analysis/)."""
    if args.command == "ui":
        from analysis.ui import ui_command
        return ui_command(spec, port=args.port)
    from analysis.runs import load_sweep_runs
    if args.command == "report":
        from analysis.report import write_report
        notebook, html = write_report(spec.path, metric=args.metric)
        print(f"report: {html}\nnotebook: {notebook} (re-runs on its own: it reads MLflow)")
        return 0
    from analysis.table import build_table
    table = build_table(load_sweep_runs(spec.path), metric=args.metric, at=args.at, baseline=args.baseline)
    print(table.render(args.format))
    return 0
