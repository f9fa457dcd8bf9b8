"""The verbs of `python run_sweep.py` (parsed in cli.py): submit, status, cancel, logs, mlflow-server, migrate, gc,
table, report, ui, eval. `run_command` opens the sweep once (`harness.sweep.sweep.Sweep`) and hands it to the verb;
the verbs of results hand it on to `analysis/`. Every error is a ConfigError naming the sweep file and the key
(cli.py prints it).
"""
from __future__ import annotations

import argparse
import codecs
import sys
import time

from rich.console import Console

from harness import accelerators
from harness.sweep import disk, progress
from harness.sweep.costs import RunCost, plan_costs, run_columns
from harness.sweep.costs import summary as cost_summary
from harness.sweep.executors import EXECUTORS, Task, executor_class
from harness.sweep.jobs import RUN_LOG_FILE, TrainJob
from harness.sweep.plan import PlannedRun, check_data_paths, data_paths
from harness.sweep.spec import SweepSpec
from harness.sweep.state import RunState
from harness.sweep.store import NotSubmitted
from harness.sweep.sweep import Sweep
from toolkit.errors import ConfigError, reason
from toolkit.sizes import format_size

from .address import pick_row, pick_run

READ_ONLY = ("status", "logs", "cancel")   # verbs that need only the runs and their signatures (no torch)


def run_command(args: argparse.Namespace) -> int:
    """Open the sweep once and run one parsed verb on it; an error that names no file is located in the sweep
    file."""
    sweep = Sweep.open(args.sweep, full=args.command not in READ_ONLY)
    try:
        if getattr(args, "executor", None):
            try:
                sweep = Sweep(sweep.spec.with_executor(args.executor), sweep.full)
            except ConfigError as err:
                raise err.at(key="--executor") from None
        return VERBS[args.command](sweep, args)
    except ConfigError as err:
        raise err if err.source else err.at(source=str(sweep.path)) from None


# ---- submit --------------------------------------------------------------------------------------

def submit_command(sweep: Sweep, args) -> int:
    from harness.sweep.protocols import check_references, plan_evaluations, reference_paths
    spec, runs = sweep.spec, sweep.plan_fresh()
    if args.show:
        return show_command(sweep, runs, args)
    evaluations = plan_evaluations(spec, runs)             # every protocol checked against its run, before anything
    from harness.sweep.stages import cache_needs, check_stage, describe, submit_stage
    disk.check_budget(spec, runs)                  # before anything is created, a dry run included
    if args.dry_run:
        states = sweep.states(reuse=not args.no_reuse) if sweep.manifest is not None else None
        target = accelerators.by_key(getattr(args, "gpu", accelerators.DEFAULT_TARGET))
        costs = plan_costs(runs, target)
        print_plan(spec, runs, states, costs)
        print(plan_summary(spec, runs, states, reuse=not args.no_reuse, retry=args.retry))
        print("\n".join(cost_summary(runs, costs, target)))
        for line in describe(cache_needs(spec, runs), spec):
            print(line)
        if evaluations is not None:
            print_evaluation_plan(sweep, evaluations, states)
        paths = data_paths(runs) + (reference_paths(evaluations) if evaluations is not None else [])
        if paths:
            print(f"note: data paths are checked at submission, not in a dry run: {', '.join(paths)}")
        return 0
    check_data_paths(spec, runs)
    if evaluations is not None:
        check_references(spec, evaluations)
    check_signature_versions(sweep, args.no_reuse)
    if sweep.manifest is None:                    # a first submission (every run to submit): refuse before the store
        check_stage(spec, cache_needs(spec, runs))
    experiment_id = sweep.prepare_store()
    sweep.write_plan_cache()
    client = sweep.client
    states = sweep.states(reuse=not args.no_reuse)
    wanted = {"new", "failed"} if args.retry or args.restart else {"new"}
    todo = [s.run for s in states if s.state in wanted and s.run.same_as is None]    # a shared run once
    needs = cache_needs(spec, todo)               # the latent caches the runs to submit read
    check_stage(spec, needs)
    print_plan(spec, runs, states)
    print(plan_summary(spec, runs, states, reuse=not args.no_reuse, retry=args.retry))
    jobs, parent_id = [], None
    from harness.sweep.auth import exported
    from harness.sweep.server import running_server, server_credentials, start_server, stop_server
    from harness.sweep.store import served
    server_url = running_server(spec)
    server_was_up = server_url is not None
    uris: dict[str, str] = {}

    def tracking_uri() -> str:                # where jobs log: the store itself in-process or when it is a server
        if "uri" not in uris:                 # already, else the sweep's own server (over its database)
            kinds = {row_executor.kind for row_executor in (spec.executor_for(row) for row in spec.rows)}
            uris["uri"] = sweep.store_uri if kinds == {"debug"} or served(sweep.store_uri) else \
                server_url or start_server(spec)
        return uris["uri"]

    def job_environment() -> dict[str, str]:  # the sweep's server credentials (if it requires them): jobs inherit them
        credentials = server_credentials(spec) if tracking_uri() != sweep.store_uri else None
        return credentials.job_environment() if credentials else {}

    if todo:
        kinds = {run.executor.kind for run in todo}
        number = len(sweep.manifest["submissions"]) + 1
        parent = client.create_run(experiment_id, run_name=f"{spec.name} #{number}",
                                   tags={"sweep": spec.name, "sweep_role": "parent",
                                         "executor": ",".join(sorted(kinds)), "sweep_file": str(spec.path.resolve()),
                                         **description_tags(spec)})
        parent_id = parent.info.run_id
        client.log_text(parent_id, spec.text, "sweep.yaml")           # the file as written, comments included
        client.log_dict(parent_id, plan_records(runs, states), "plan.json")
        try:
            after = submit_stage(spec, needs, sweep.manifest)     # training waits for the caches it reads
            for kind in sorted(kinds):
                tasks = [Task(run.run_name, run.executor, TrainJob(run.overrides(spec, tracking_uri(), parent_id),
                                                                    restart=args.restart),
                              after.get(run.run_name, ()))
                         for run in todo if run.executor.kind == kind]
                with exported(job_environment()):
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
    if evaluations is not None:
        with exported(job_environment()):
            submit_evaluations(sweep, evaluations, {job.run_name: job.job_id for job in jobs}, tracking_uri,
                               reuse=not args.no_reuse, parent_id=parent_id)
    if args.wait:
        code = wait_command(sweep)
        if args.report:
            table_command(sweep, argparse.Namespace(metric=None, at=None, format="text", baseline=None,
                                                    columns=None, wide=False, fit="page", protocol=None))
            report_command(sweep, argparse.Namespace(metric=None))
        if not server_was_up and stop_server(spec):     # every run has ended: no server left behind
            print(f"stopped the sweep's MLflow server (`run_sweep.py mlflow-server {spec.path}` starts it again)")
        return code
    return 0


def submit_evaluations(sweep: Sweep, evaluations, training_jobs: dict[str, str], tracking_uri, reuse: bool,
                       parent_id: str | None) -> None:
    """Queue the `evaluate:` stages after training: what is missing only (harness/sweep/protocols.py)."""
    from harness.sweep.protocols import stages, submit
    queued = stages(sweep, evaluations, sweep.states(reuse=reuse), training_jobs, tracking_uri, reuse, parent_id)
    if not queued.grid and not queued.confirm:
        print(f"evaluate: nothing to compute ({queued.computed} evaluations there"
              + (f", {queued.live} queued or running" if queued.live else "") + ")")
        return
    records = submit(sweep, queued)
    stage = "proxy" if evaluations.spec.select else "grid"
    print(f"evaluate: queued {len(queued.grid)} {stage} evaluations and {len(queued.confirm)} selections with their "
          f"confirmations ({queued.computed} evaluations already there" + (f", {queued.live} queued or running"
                                                                            if queued.live else "")
          + f"), {len(records)} tasks after their training ({spec_kinds(records)})")


def spec_kinds(records: list[dict]) -> str:
    return ", ".join(sorted({r["executor"] for r in records}))


def check_signature_versions(sweep: Sweep, no_reuse: bool) -> None:
    """Refuse to submit while the sweep's store holds runs signed under an older signature version: they would read
    `new` and be trained again (`run_sweep.py migrate` re-signs them)."""
    from harness.configure import SIGNATURE_VERSION
    from harness.sweep.state import mlflow_runs
    if sweep.manifest is None or no_reuse:
        return
    old = [run for run in mlflow_runs(sweep.client, sweep.spec.experiment_name, sweep.name).values()
           if int(run.data.tags.get("signature_version", "1")) < SIGNATURE_VERSION]
    if old:
        version = min(int(run.data.tags.get("signature_version", "1")) for run in old)
        raise ConfigError("store", reason=f"{len(old)} runs of {sweep.name} were signed under signature version "
                          f"{version} (this harness signs version {SIGNATURE_VERSION}): they would be trained again; "
                          f"run `python run_sweep.py migrate {sweep.path}` first (or --no-reuse to train anew)")


def plan_summary(spec: SweepSpec, runs: list[PlannedRun], states: list[RunState] | None, reuse: bool,
                 retry: bool) -> str:
    """How many runs will actually be submitted, of the distinct runs the plan holds (a grid point that only moves
    a switch without effect on a row's model is the same run as another point: trained once)."""
    distinct = [r for r in runs if r.same_as is None]
    if states is None:                         # never submitted: reuse from the reuse_from stores only
        from harness.sweep.store import finished_runs, reuse_stores
        elsewhere = finished_runs(reuse_stores(spec), {r.signature for r in distinct}) if reuse else {}
        counts, reused = {"done": len(elsewhere)}, len(elsewhere)
    else:
        first = {s.run.signature: s for s in reversed(states)}
        counts = {state: sum(s.state == state for s in first.values())
                  for state in ("done", "running", "pending", "failed")}
        reused = sum(s.source is not None for s in first.values())
    submitted = len(distinct) - sum(n for state, n in counts.items() if state != "failed" or not retry)
    others = ", ".join(f"{n} {k}" + (f" ({reused} from other sweeps)" if k == "done" and reused else "")
                       for k, n in counts.items() if n)
    hint = "; --retry resubmits the failed ones" if counts.get("failed") and not retry else ""
    shared = len(runs) - len(distinct)
    return (f"{submitted} of {len(distinct)} runs to submit" + (f" ({others}{hint})" if others else "")
            + (f"; {len(runs)} planned, {shared} of them the same run as another planned one (trained once)"
               if shared else ""))


def print_evaluation_plan(sweep: Sweep, evaluations, states: list[RunState] | None) -> None:
    from harness.sweep.protocols import done_evaluations, home_of
    spec = evaluations.spec
    axes = " x ".join(f"{k} {v}" for k, v in spec.grid.items()) or "one point"
    done = done_evaluations(states, home_of(sweep)) if states else {}
    there = sum((e.run.signature, e.protocol.signature) in done for e in evaluations.evaluations)
    print(f"evaluate: {len(spec.points)} protocol{'s' if len(spec.points) != 1 else ''} per run ({axes}"
          + (f"; set {spec.set}" if spec.set else "") + f"): {len(evaluations.evaluations)} evaluations, "
          f"{there} there, {len(evaluations.evaluations) - there} to compute after training")
    if spec.select:
        select = spec.select
        print(f"  select: the point of least {select.metric} per {select.per} on the proxy {select.proxy}, "
              f"confirmed with {select.confirm}: {len(evaluations.groups)} selections")


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


def print_plan(spec: SweepSpec, runs: list[PlannedRun], states: list[RunState] | None,
               costs: dict[str, RunCost] | None = None) -> None:
    """One line per run; with `costs` (a dry run), its GPU-hours and memory per GPU (harness/sweep/costs.py)."""
    by_name = {s.run.run_name: s.shown for s in states} if states else {}
    kinds = sorted({spec.executor_for(row).kind for row in spec.rows})
    print(f"sweep {spec.name}: {len(runs)} runs ({len(spec.rows)} rows x "
          f"{max(1, len(runs) // (len(spec.rows) * len(spec.seeds)))} grid points x {len(spec.seeds)} seeds), "
          f"executor {', '.join(kinds)}, folder {spec.folder}")
    width = max(len(r.label) for r in runs)
    for r in runs:
        changes = [o for o in r.config_overrides if not o.startswith("run.seed=")]
        row_changes = [o for o in changes if o.split("=")[0] in spec.rows[r.row].set or o.split("=")[0] in r.grid]
        same = f" (the same run as {runs[r.same_as].title})" if r.same_as is not None else ""
        cost = f"{run_columns(costs[r.run_name])} " if costs else ""
        print(f"  {r.label:<{width}}  seed {r.seed:<3} {r.params / 1e6:9.2f}M {r.gflops:10.2f} GFLOPs  "
              f"{format_size(r.disk.bytes):>10} ckpt  {cost}{r.signature}  {by_name.get(r.run_name, 'new'):8s} "
              f"{' '.join(row_changes)}{same}")
    print(disk.summary(spec, runs))


# ---- status, wait, cancel, logs ----------------------------------------------------------------

def status_command(sweep: Sweep, args) -> int:
    """One line per run (harness/sweep/progress.py), then where the evaluations stand; with --watch, refreshed
    until every run and evaluation has ended."""
    if args.watch:
        return wait_command(sweep)
    states = sweep.states()
    progress.show(states, Console())
    for line in evaluation_lines(sweep, states):
        print(line)
    return 0


def evaluation_lines(sweep: Sweep, states: list[RunState]) -> list[str]:
    from harness.sweep import protocols
    if sweep.evaluations is None:
        return []
    found = protocols.progress(sweep.spec, sweep.evaluations, states, sweep.client, protocols.home_of(sweep))
    return found.lines(sweep.spec.evaluate.select is not None)


def wait_command(sweep: Sweep, poll_s: float = 10.0, console: Console | None = None) -> int:
    """Follow the runs until none is running or pending, then the evaluations queued after them; 1 when a run or an
    evaluation failed."""
    from harness.sweep.protocols import live_jobs
    states = progress.follow(sweep.states, console or Console(), poll_s)
    code = 1 if any(s.state == "failed" for s in states) else 0
    records = (sweep.manifest or {}).get("evaluations", {})
    if sweep.evaluations is None or not records:
        return code
    shown = None
    while True:
        live = live_jobs(sweep.spec, records)
        states = sweep.states()
        lines = evaluation_lines(sweep, states)
        if lines != shown:
            print("\n".join(lines) + (f" ({len(set(live.values()))} job(s) live)" if live else ""), flush=True)
            shown = lines
        if not live:
            return code or int(any(line.startswith("  failed") for line in lines))
        time.sleep(poll_s)


def cancel_command(sweep: Sweep, args=None) -> int:
    """Stop the sweep's live jobs, using the same live states as `status` (a job is only ever this sweep's own:
    harness/sweep/executors/), then the sweep's trainers whose job is gone; without a manifest, the jobs are
    found in the sweep's submitit folders."""
    spec, manifest = sweep.spec, sweep.manifest
    records = [*manifest["runs"].values(), *manifest.get("evaluations", {}).values()] if manifest else []
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


def logs_command(sweep: Sweep, args) -> int:
    """One run's output: `<run folder>/job.log`, every attempt (jobs.run_log); `-f` follows it while its job runs.
    Reads no store (MLflow is not imported)."""
    sweep.check_submitted()
    run = pick_run(sweep.spec, sweep.plan, args.label, args.seed, "label")
    path = sweep.folder / run.run_name / RUN_LOG_FILE
    record = sweep.manifest["runs"].get(run.run_name)
    print(f"==> {run.title} ({run.run_name}): {path}")
    if record is not None and args.follow:
        follow_log(sweep.spec, path, record)
    elif path.exists():
        sys.stdout.write(path.read_text(encoding="utf-8", errors="replace"))
    else:
        print("not submitted" if record is None else f"no log yet: its job {record['job_id']} has not started this "
              f"run (the job's own log: {record['stderr']})")
    return 0


def follow_log(spec: SweepSpec, path, record: dict, every: float = 1.0) -> None:
    """Print a run's log as it grows (`logs -f`) until its job has ended (asked of its scheduler), then the rest."""
    from harness.sweep.state import scheduler_states
    live, position = executor_class(record["executor"]).LIVE, 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")    # a read may end inside a character
    while True:
        alive = scheduler_states(spec, [record]).get(record["job_id"]) in live
        if path.exists():
            with path.open("rb") as log:
                log.seek(position)
                chunk = log.read()
            position += len(chunk)
            sys.stdout.write(decoder.decode(chunk, final=not alive))
            sys.stdout.flush()
        if not alive:
            return
        time.sleep(every)


def server_command(sweep: Sweep, args) -> int:
    """Start the server of the sweep's store (the one its jobs, `status` and the tables all use) or stop it."""
    from harness.sweep.auth import CREDENTIALS_FILE
    from harness.sweep.server import server_credentials, start_server, stop_server
    from harness.sweep.store import served
    if args.stop:
        print("stopped" if stop_server(sweep.spec) else "no server was running")
        return 0
    if args.backend_uri and args.backend_uri != sweep.store_uri:
        raise ConfigError("--backend-uri", reason=f"not the sweep's store ({sweep.store_uri}), which its jobs, status "
                          f"and tables use: to keep the sweep's runs in that database, set it as `tracking: {{uri: "
                          f"...}}` in the sweep file")
    if served(sweep.store_uri):
        raise ConfigError("tracking.uri", sweep.store_uri, "the sweep logs to this server, run elsewhere; its own "
                          "server serves a database (tracking.uri: postgresql://... or none)")
    sweep.prepare_store()
    url = start_server(sweep.spec, host=args.host, port=args.port)
    credentials = server_credentials(sweep.spec)
    access = f"; it requires the sweep's credentials ({sweep.folder / CREDENTIALS_FILE})" if credentials else ""
    print(f"MLflow tracking server for {sweep.name}: {url}, store {sweep.store_uri}{access}")
    return 0


def gc_command(sweep: Sweep, args) -> int:
    from harness.sweep.gc import collect
    return collect(sweep, dry_run=args.dry_run)


def migrate_command(sweep: Sweep, args) -> int:
    from harness.sweep.migrate import migrate_store
    return migrate_store(sweep, dry_run=args.dry_run)


def eval_command(sweep: Sweep, args) -> int:
    """`run_sweep.py eval`: sample and score every finished run (harness/sweep/evaluation.py)."""
    from harness.adm_metrics import parse_metrics
    from harness.sweep.evaluation import check_arguments, evaluate_sweep
    label = pick_row(sweep.spec, sweep.plan, args.label, "--label") if args.label else None
    check_arguments(sweep.spec, label, args.num, args.shards)
    sweep.check_store()
    return evaluate_sweep(sweep, label=label, num=args.num, shards=args.shards, reference=args.reference,
                          sets=args.set, seed=args.seed, metrics=parse_metrics(args.metrics) if args.metrics else None,
                          inception=args.inception, wait=not args.no_wait, batch_size=args.batch_size,
                          cache_dir=args.cache_dir)


# ---- table, report, ui: everything read back from MLflow (analysis/) ---------------------------------

def table_command(sweep: Sweep, args) -> int:
    from analysis.glance import render
    from analysis.runs import load_sweep_runs
    from analysis.table import build_table
    table = build_table(load_sweep_runs(sweep, protocol=getattr(args, "protocol", None)), metric=args.metric,
                        at=args.at, baseline=args.baseline)
    print(render(table, args.format, args.columns, wide=args.wide, fit=args.fit).rstrip("\n"))
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
         "mlflow-server": server_command, "migrate": migrate_command, "gc": gc_command, "table": table_command,
         "report": report_command, "ui": ui_command, "eval": eval_command}
