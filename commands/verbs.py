"""The verbs of `python run_sweep.py` (parsed in cli.py): submit, status, cancel, logs, mlflow-server, migrate,
table, report, ui, eval. `run_command` opens the sweep once (`harness.sweep.sweep.Sweep`) and hands it to the verb;
the verbs of results hand it on to `analysis/`. Every error is a ConfigError naming the sweep file and the key
(cli.py prints it).
"""
from __future__ import annotations

import argparse
import sys

from rich.console import Console

from harness.sweep import progress
from harness.sweep.executors import EXECUTORS, Task, executor_class
from harness.sweep.jobs import RUN_LOG_FILE, TrainJob
from harness.sweep.plan import PlannedRun, check_data_paths, data_paths
from harness.sweep.spec import SweepSpec
from harness.sweep.state import RunState
from harness.sweep.store import NotSubmitted
from harness.sweep.sweep import Sweep
from toolkit.errors import ConfigError, closest, reason


def run_command(args: argparse.Namespace) -> int:
    """Open the sweep once and run one parsed verb on it; an error that names no file is located in the sweep
    file."""
    sweep = Sweep.open(args.sweep)
    try:
        if getattr(args, "executor", None):
            try:
                sweep = Sweep(sweep.spec.with_executor(args.executor))
            except ConfigError as err:
                raise err.at(key="--executor") from None
        return VERBS[args.command](sweep, args)
    except ConfigError as err:
        raise err if err.source else err.at(source=str(sweep.path)) from None


# ---- submit --------------------------------------------------------------------------------------

def submit_command(sweep: Sweep, args) -> int:
    spec, runs = sweep.spec, sweep.plan_fresh()
    if args.show:
        return show_command(sweep, runs, args)
    if args.dry_run:
        states = sweep.states(reuse=not args.no_reuse) if sweep.manifest is not None else None
        print_plan(spec, runs, states)
        paths = data_paths(runs)
        if paths:
            print(f"note: data paths are checked at submission, not in a dry run: {', '.join(paths)}")
        return 0
    check_data_paths(spec, runs)
    experiment_id = sweep.prepare_store()
    sweep.write_plan_cache()
    client = sweep.client
    states = sweep.states(reuse=not args.no_reuse)
    wanted = {"new", "failed"} if args.retry or args.restart else {"new"}
    todo = [s.run for s in states if s.state in wanted]
    print_plan(spec, runs, states)
    counts = {state: sum(s.state == state for s in states) for state in ("done", "running", "pending", "failed")}
    reused = sum(s.source is not None for s in states)
    others = ", ".join(f"{n} {k}" + (f" ({reused} from other sweeps)" if k == "done" and reused else "")
                       for k, n in counts.items() if n)
    hint = "; --retry resubmits the failed ones" if counts["failed"] and not args.retry else ""
    print(f"{len(todo)} of {len(runs)} runs to submit" + (f" ({others}{hint})" if others else ""))
    jobs, parent_id = [], None
    from harness.sweep.server import running_server, start_server, stop_server
    server_url = running_server(spec)
    server_was_up = server_url is not None
    if todo:
        kinds = {run.executor.kind for run in todo}
        tracking_uri = spec.tracking.uri or (sweep.store_uri if kinds == {"debug"} else
                                             server_url or start_server(spec))
        number = len(sweep.manifest["submissions"]) + 1
        parent = client.create_run(experiment_id, run_name=f"{spec.name} #{number}",
                                   tags={"sweep": spec.name, "sweep_role": "parent",
                                         "executor": ",".join(sorted(kinds)), "sweep_file": str(spec.path.resolve()),
                                         **description_tags(spec)})
        parent_id = parent.info.run_id
        client.log_text(parent_id, spec.text, "sweep.yaml")           # the file as written, comments included
        client.log_dict(parent_id, plan_records(runs, states), "plan.json")
        try:
            for kind in sorted(kinds):
                tasks = [Task(run.run_name, run.executor, TrainJob(run.overrides(spec, tracking_uri, parent_id),
                                                                    restart=args.restart))
                         for run in todo if run.executor.kind == kind]
                submitted = executor_class(kind)(spec.folder, spec.name).submit(tasks)
                jobs += submitted
                sweep.record_submission(todo, submitted, parent_id, kind)
        except Exception as err:
            client.set_tag(parent_id, "failure_reason", reason(err))
            client.set_terminated(parent_id, "FAILED")
            raise
        client.set_tag(parent_id, "job_ids", ",".join(sorted({j.job_id for j in jobs}))[:5000])
        client.set_terminated(parent_id, "FINISHED")
        print(f"submitted {len(jobs)} runs as {len({j.job_id.split('_')[0] for j in jobs})} job(s) "
              f"({', '.join(sorted(kinds))}); parent MLflow run {parent_id}; manifest {sweep.manifest_path}")
    else:
        sweep.record_submission(todo, [], None, spec.executor.kind)
    if args.wait:
        code = wait_command(sweep)
        if args.report:
            table_command(sweep, argparse.Namespace(metric=None, at=None, format="markdown", baseline=None,
                                                    columns=None))
            report_command(sweep, argparse.Namespace(metric=None))
        if not server_was_up and stop_server(spec):     # every run has ended: no server left behind
            print(f"stopped the sweep's MLflow server (`run_sweep.py mlflow-server {spec.path}` starts it again)")
        return code
    return 0


def description_tags(spec: SweepSpec) -> dict[str, str]:
    """The sweep's `description:` and `notes:` as the parent run's description (MLflow's `mlflow.note.content`,
    Markdown) and tags."""
    note = "\n\n".join(part for part in (spec.description, f"**Notes.** {spec.notes}" if spec.notes else "") if part)
    tags = {"mlflow.note.content": note} if note else {}
    tags.update({key: getattr(spec, key) for key in ("description", "notes") if getattr(spec, key)})
    return tags


def show_command(sweep: Sweep, runs: list[PlannedRun], args) -> int:
    """`--dry-run --show LABEL [--seed S]`: one run's config as its job will resolve it, and what it changes
    from the baseline row at the same seed and grid point (bookkeeping and switches without effect left out)."""
    from harness.configure import affects_result, config_differences, flatten, resolve
    spec = sweep.spec
    run = pick_run(spec, runs, args.show, args.seed, "--show", first_seed=True)
    base = next(r for r in runs if r.label == spec.baseline_label and r.seed == run.seed and r.grid == run.grid)
    resolved = resolve(run.overrides(spec, sweep.store_uri), source=str(spec.path), check_paths=False)
    print(f"# {run.title}: run {run.run_name}, signature {run.signature}, {run.params / 1e6:.2f}M params, "
          f"{run.gflops:.2f} GFLOPs; resolved as its job resolves it (tracking.uri: the store; a local or slurm "
          f"job logs through the sweep's server)")
    print(resolved.recorded_yaml(), end="")
    shown = [r.interpolated.shown(flatten(r.cfg)) for r in (base, run)]      # `${oc.env:...}` as written
    changes = config_differences(*shown, base.cfg.model, run.cfg.model,
                                 lambda key: not affects_result(key) or key == "run.seed")
    print(f"# difference from the baseline row {base.label!r} (same seed and grid point): "
          + (f"{len(changes)} keys" if changes else "none" if run is not base else "this is the baseline row"))
    width = max((len(key) for key, _, _ in changes), default=0)
    for key, baseline, value in changes:
        print(f"#   {key:<{width}}  {baseline} -> {value}")
    return 0


def plan_records(runs: list[PlannedRun], states: list[RunState] | None) -> list[dict]:
    by_name = {s.run.run_name: s.shown for s in states} if states else {}
    return [{"label": r.label, "seed": r.seed, "grid": r.grid, "run_name": r.run_name, "signature": r.signature,
             "params": r.params, "gflops": r.gflops, "overrides": r.config_overrides,
             "state": by_name.get(r.run_name, "new")} for r in runs]


def print_plan(spec: SweepSpec, runs: list[PlannedRun], states: list[RunState] | None) -> None:
    by_name = {s.run.run_name: s.shown for s in states} if states else {}
    kinds = sorted({spec.executor_for(row).kind for row in spec.rows})
    print(f"sweep {spec.name}: {len(runs)} runs ({len(spec.rows)} rows x "
          f"{max(1, len(runs) // (len(spec.rows) * len(spec.seeds)))} grid points x {len(spec.seeds)} seeds), "
          f"executor {', '.join(kinds)}, folder {spec.folder}")
    width = max(len(r.label) for r in runs)
    for r in runs:
        changes = [o for o in r.config_overrides if not o.startswith("run.seed=")]
        row_changes = [o for o in changes if o.split("=")[0] in spec.rows[r.row].set or o.split("=")[0] in r.grid]
        print(f"  {r.label:<{width}}  seed {r.seed:<3} {r.params / 1e6:9.2f}M {r.gflops:10.2f} GFLOPs  "
              f"{r.signature}  {by_name.get(r.run_name, 'new'):8s} {' '.join(row_changes)}")


# ---- status, wait, cancel, logs ----------------------------------------------------------------

def status_command(sweep: Sweep, args) -> int:
    """One line per run (harness/sweep/progress.py); with --watch, refreshed until every run has ended."""
    if args.watch:
        return wait_command(sweep)
    progress.show(sweep.states(), Console())
    return 0


def wait_command(sweep: Sweep, poll_s: float = 10.0, console: Console | None = None) -> int:
    """Follow the runs until none is running or pending; 1 when one failed."""
    states = progress.follow(sweep.states, console or Console(), poll_s)
    return 1 if any(s.state == "failed" for s in states) else 0


def cancel_command(sweep: Sweep, args=None) -> int:
    """Stop the sweep's live jobs, using the same live states as `status` (a job is only ever this sweep's own:
    harness/sweep/executors/), then the sweep's trainers whose job is gone; without a manifest, the jobs are
    found in the sweep's submitit folders."""
    spec, manifest = sweep.spec, sweep.manifest
    records = list(manifest["runs"].values()) if manifest else []
    known = {(r["executor"], r["job_id"]) for r in records}
    executors = {kind: cls(spec.folder, spec.name) for kind, cls in EXECUTORS.items()}
    for kind, executor in executors.items():     # jobs the manifest does not list (or no manifest at all)
        records += [r for r in executor.discover() if (kind, r["job_id"]) not in known]
    if not records:
        raise NotSubmitted(None, reason=f"nothing submitted for {spec.name} under {spec.folder}",
                           source=str(spec.path))
    cancelled = {kind: executor.cancel([r for r in records if r["executor"] == kind])
                 for kind, executor in executors.items()}
    orphans = [trainer for executor in executors.values() for trainer in executor.stop_orphans()]
    print("cancelled " + ", ".join(f"{len(ids)} {kind}" for kind, ids in cancelled.items() if kind != "debug")
          + " jobs" + ("" if manifest else " (no manifest: jobs found in the submitit folders)"))
    if orphans:
        print(f"stopped {len(orphans)} trainer(s) whose job was gone: {', '.join(orphans)}")
    return 0


def pick_run(spec: SweepSpec, runs: list[PlannedRun], name: str, seed: int | None, key: str,
             first_seed: bool = False) -> PlannedRun:
    """The one run a row label (or run name) and seed name; without a seed, the row's only one (or, with
    `first_seed`, its first). Refused in one line listing what exists, with the closest label."""
    labels = [row.label for row in spec.rows]
    matches = [r for r in runs if name in (r.label, r.run_name)]
    if not matches:
        raise ConfigError(key, name, f"no row has this label; rows are {labels}",
                          suggestion=closest(name, labels + [r.run_name for r in runs]))
    seeds = sorted({r.seed for r in matches})
    if seed is None and len(seeds) > 1 and not first_seed:
        raise ConfigError("--seed", reason=f"the row {matches[0].label!r} has runs for seeds {seeds}: pick one")
    chosen = [r for r in matches if r.seed == (seeds[0] if seed is None else seed)]
    if not chosen:
        raise ConfigError("--seed", seed, f"not a seed of the sweep; seeds are {spec.seeds}")
    if len(chosen) > 1:
        raise ConfigError(key, name, f"{len(chosen)} runs at seed {chosen[0].seed} (grid points); name one by its "
                          f"run name: {[r.run_name for r in chosen]}")
    return chosen[0]


def logs_command(sweep: Sweep, args) -> int:
    """One run's output: `<run folder>/job.log`, every attempt (jobs.run_log)."""
    sweep.check_store()
    run = pick_run(sweep.spec, sweep.plan, args.label, args.seed, "label")
    path = sweep.folder / run.run_name / RUN_LOG_FILE
    print(f"==> {run.title} ({run.run_name}): {path}")
    if path.exists():
        sys.stdout.write(path.read_text(encoding="utf-8", errors="replace"))
        return 0
    record = sweep.manifest["runs"].get(run.run_name)
    print("not submitted" if record is None else f"no log yet: its job {record['job_id']} has not started this "
          f"run (the job's own log: {record['stderr']})")
    return 0


def server_command(sweep: Sweep, args) -> int:
    from harness.sweep.server import start_server, stop_server
    if args.stop:
        print("stopped" if stop_server(sweep.spec) else "no server was running")
        return 0
    sweep.prepare_store()
    url = start_server(sweep.spec, backend_uri=args.backend_uri, host=args.host, port=args.port)
    print(f"MLflow tracking server for {sweep.name}: {url}  (set `tracking: {{uri: {url}}}` to share it)")
    return 0


def migrate_command(sweep: Sweep, args) -> int:
    from harness.sweep.migrate import migrate_store
    return migrate_store(sweep, dry_run=args.dry_run)


def eval_command(sweep: Sweep, args) -> int:
    """`run_sweep.py eval`: sample and score every finished run (harness/sweep/evaluation.py)."""
    from harness.adm_metrics import parse_metrics
    from harness.sweep.evaluation import check_arguments, evaluate_sweep
    check_arguments(sweep.spec, args.label, args.num, args.shards)
    sweep.check_store()
    return evaluate_sweep(sweep, label=args.label, num=args.num, shards=args.shards, reference=args.reference,
                          sets=args.set, seed=args.seed, metrics=parse_metrics(args.metrics) if args.metrics else None,
                          inception=args.inception, wait=not args.no_wait, batch_size=args.batch_size,
                          cache_dir=args.cache_dir)


# ---- table, report, ui: everything read back from MLflow (analysis/) ---------------------------------

def table_command(sweep: Sweep, args) -> int:
    from analysis.runs import load_sweep_runs
    from analysis.table import build_table
    table = build_table(load_sweep_runs(sweep), metric=args.metric, at=args.at, baseline=args.baseline)
    print(table.render(args.format, args.columns))
    return 0


def report_command(sweep: Sweep, args) -> int:
    from analysis.report import write_report
    notebook, html = write_report(sweep, metric=args.metric)
    print(f"report: {html}\nnotebook: {notebook} (re-runs on its own: it reads MLflow)")
    return 0


def ui_command(sweep: Sweep, args) -> int:
    from analysis.ui import serve_ui
    sweep.check_store()
    return serve_ui(sweep, port=args.port)


VERBS = {"submit": submit_command, "status": status_command, "cancel": cancel_command, "logs": logs_command,
         "mlflow-server": server_command, "migrate": migrate_command, "table": table_command,
         "report": report_command, "ui": ui_command, "eval": eval_command}
