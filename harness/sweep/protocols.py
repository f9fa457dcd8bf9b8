"""A sweep's `evaluate:` section (spec.py `EvaluateSpec`): the protocols every finished run is evaluated under
without retraining, which of those evaluations exist, and the stages a submission queues after training.

    train ──► grid evaluations: one task per (run, protocol), after that run's training job
          ──► select + confirm: one task per table row (or run), after the row's grid evaluations

Each run's protocols are its own (harness/protocol.py `EvalProtocol.of`: its eval.* settings and ema.eval_decay)
with `evaluate.set` applied, at every point of `evaluate.grid`. With `evaluate.select` the grid is evaluated at the
proxy's count and seed; the selection takes, per row (the mean over the row's runs) or per run, the grid point that
minimises the metric (maximises one where higher is better: harness/metric_registry.py), and the confirmation
evaluates that point at the confirmation's count and seed — as JiT chooses its CFG scale on 8K samples, then
reports 50K [JiT, appendix A]. The selection is an MLflow run of the sweep's store (`sweep_role=selection`: the
point chosen, the proxy figures of every point), the evaluations are child runs of their training runs
(harness/sweep/evaluation.py).

An evaluation that exists is never computed again: the stages hold only what is missing, so a killed or
re-submitted sweep resumes at its first missing piece, and submitting the same `evaluate:` twice computes nothing
the second time.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mlflow.entities import Param, RunTag

from toolkit.errors import ConfigError
from toolkit.files import atomic_write_text

from .. import metric_registry
from ..protocol import EvalProtocol
from .evaluation import (
    EVAL_ROLE,
    FAILURE_FILE,
    EvaluationJob,
    evaluation_places,
    find_evaluation,
    find_training_run,
)
from .executors import Task, executor_class
from .plan import PlannedRun
from .reader import all_runs
from .spec import EvaluateSpec, SweepError, SweepSpec
from .state import RunState

SELECTION_ROLE = "selection"          # the `sweep_role` tag of a selection's MLflow run
SELECTION_VERSION = 1


# =============================================================================================
# The plan: every run's protocols
# =============================================================================================
@dataclass
class PlannedEvaluation:
    run: PlannedRun                   # the first planned run of its signature
    protocol: EvalProtocol
    point: dict                       # its evaluate.grid values
    stage: str                        # grid, or proxy (with a selection)

    @property
    def task_name(self) -> str:
        return f"eval/{self.run.run_name}/{self.protocol.signature}"


@dataclass
class Group:
    """The runs one selection is made for: a table row at one grid point (per: row), or one run (per: run)."""
    label: str
    grid: dict
    seed: int | None                  # per: run
    runs: list[PlannedRun]            # one per signature

    @property
    def key(self) -> str:
        return json.dumps({"label": self.label, "grid": self.grid, "seed": self.seed}, sort_keys=True)

    @property
    def title(self) -> str:
        grid = " [" + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.grid.items()) + "]" if self.grid else ""
        return self.label + grid + ("" if self.seed is None else f" · seed {self.seed}")

    @property
    def task_name(self) -> str:
        return "confirm/" + hashlib.sha256(self.key.encode()).hexdigest()[:12]


@dataclass
class EvaluationPlan:
    spec: EvaluateSpec
    evaluations: list[PlannedEvaluation]
    groups: list[Group] = field(default_factory=list)

    def base(self, run: PlannedRun) -> EvalProtocol:
        return EvalProtocol.of(run.cfg).with_changes(self.spec.set)

    def confirm(self, run: PlannedRun, point: dict) -> EvalProtocol:
        return self.base(run).with_changes({**point, **self.spec.select.confirm})

    def selection_signature(self, group: Group) -> str:
        """What a selection depends on: the proxy protocols of its runs, the points, the rule, the confirmation."""
        select = self.spec.select
        payload = {"version": SELECTION_VERSION, "metric": select.metric, "per": select.per,
                   "confirm": select.confirm, "points": self.spec.points,
                   "runs": sorted([run.signature, [e.protocol.signature for e in self.evaluations if e.run is run]]
                                  for run in group.runs)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def plan_evaluations(spec: SweepSpec, runs: list[PlannedRun]) -> EvaluationPlan | None:
    """Every (run, protocol) of the sweep's `evaluate:` (None without one), each protocol checked against its run's
    config (an EMA among its ema.decays, a sampler of its objective, a scorer its data has): the first refusal is
    one line naming the sweep file and the key."""
    evaluate = spec.evaluate
    if evaluate is None:
        return None
    plan = EvaluationPlan(evaluate, [])
    distinct = [run for run in runs if run.same_as is None]
    select = evaluate.select
    for run in distinct:
        base = _checked(spec, run, lambda: EvalProtocol.of(run.cfg).with_changes(evaluate.set), {})
        for point in evaluate.points:
            changes = {**point, **(select.proxy if select else {})}
            protocol = _checked(spec, run, lambda: base.with_changes(changes), point)
            plan.evaluations.append(PlannedEvaluation(run, protocol, point, "proxy" if select else "grid"))
            if select:                                # the confirmation of every point the selection may choose
                _checked(spec, run, lambda: base.with_changes({**point, **select.confirm}), point, "confirm")
                if select.metric not in _metrics_of(protocol.metric):
                    raise SweepError("evaluate.select.metric", select.metric, f"not computed by the protocol's scorer "
                                     f"eval.metric={protocol.metric} (it gives {_metrics_of(protocol.metric)})",
                                     source=str(spec.path))
    if select:
        groups: dict[str, Group] = {}
        for run in distinct:
            group = Group(run.label, run.grid, run.seed if select.per == "run" else None, [])
            groups.setdefault(group.key, group).runs.append(run)
        plan.groups = list(groups.values())
    return plan


def reference_paths(plan: EvaluationPlan) -> list[str]:
    """The reference batches the plan's ADM evaluations read (what a dry run does not look at)."""
    select = plan.spec.select
    protocols = [e.protocol for e in plan.evaluations] + [plan.confirm(e.run, e.point) for e in plan.evaluations
                                                          if select]
    return sorted({p["eval.reference"] for p in protocols if p.metric == "adm" and p["eval.reference"]})


def check_references(spec: SweepSpec, plan: EvaluationPlan) -> None:
    """At submission, like data paths: every reference batch the evaluations need exists."""
    for path in reference_paths(plan):
        if not Path(path).exists():
            key = next((f"{name}.eval.reference" for name, section in
                        (("evaluate.set", plan.spec.set), ("evaluate.select.proxy", plan.spec.select and
                                                           plan.spec.select.proxy),
                         ("evaluate.select.confirm", plan.spec.select and plan.spec.select.confirm))
                        if section and section.get("eval.reference") == path), "eval.reference")
            raise SweepError(key, path, "file does not exist (checked at submission; a dry run does not look at "
                             "files)", source=str(spec.path))


def _metrics_of(scorer: str) -> list[str]:
    """The metric names (and aliases) a protocol's scorer computes."""
    return sorted({name for m in metric_registry.scored_by(scorer) if m.sample_based for name in (m.name, *m.aliases)})


def _checked(spec: SweepSpec, run: PlannedRun, make, point: dict, stage: str | None = None) -> EvalProtocol:
    """The protocol `make()` builds, checked against the run; a refusal names the key of the sweep file it comes from
    (evaluate.grid, evaluate.set, evaluate.select.*) and the run."""
    select = spec.evaluate.select
    try:
        protocol = make()
        protocol.check(run.cfg, where="")
        return protocol
    except ConfigError as err:
        key = err.key or ""
        sections = [("evaluate.grid", spec.evaluate.grid), ("evaluate.set", spec.evaluate.set)]
        if select is not None:
            sections.insert(0, (f"evaluate.select.{stage or 'proxy'}", select.confirm if stage else select.proxy))
        where = next((f"{name}.{key}" for name, section in sections if key in section), None)
        run_text = f"rows[{run.row}] ({run.label!r})" + (f" at {json.dumps(run.grid)}" if run.grid else "")
        if where is None:
            where, reason = "evaluate", f"{run_text} evaluates with its own {key}={err.value!r}: {err.reason}; set " \
                                        f"evaluate.set.{key}"
            raise SweepError(where, reason=reason, source=str(spec.path)) from None
        raise SweepError(where, err.value, f"{err.reason} ({run_text})", source=str(spec.path),
                         suggestion=err.suggestion) from None


# =============================================================================================
# What exists: evaluations (child runs, or a training run's own) and selections
# =============================================================================================
def done_evaluations(states: list[RunState], home=None) -> dict[tuple[str, str], object]:
    """(training signature, protocol signature) -> the MLflow run holding that evaluation, for every finished run of
    the states: each training run's own evaluation, and the evaluation runs of its store (one query per store) and
    of `home` ((client, experiment id): the evaluating sweep's store, which keeps the evaluations of runs reused
    from other stores)."""
    from ..tracking import mlflow_client
    finished = {}
    for state in states:
        if state.state == "done" and state.mlflow_run is not None:
            finished.setdefault(state.run.signature, state)
    found: dict[tuple[str, str], object] = {}
    places: dict[str, tuple[object, set]] = {}
    for state in finished.values():
        run = state.mlflow_run
        places.setdefault(state.store, (mlflow_client(state.store), set()))[1].add(run.info.experiment_id)
        if run.data.tags.get("eval_protocol") and run.data.params.get("eval.at_end") == "True":
            found[(state.run.signature, run.data.tags["eval_protocol"])] = run
    if home is not None:
        client, experiment_id = home
        places.setdefault(client.tracking_uri, (client, set()))[1].add(experiment_id)
    ids = {s.mlflow_run.info.run_id: s.run.signature for s in finished.values()}
    for client, experiments in places.values():
        for run in all_runs(client, sorted(experiments), f"tags.sweep_role = '{EVAL_ROLE}' and "
                                                         "attributes.status = 'FINISHED'"):
            signature = ids.get(run.data.tags.get("training_run_id"))
            key = (signature, run.data.tags.get("eval_protocol"))
            if signature and (key not in found or run.info.start_time > found[key].info.start_time):
                found[key] = run
    return found


def home_of(sweep) -> tuple | None:
    """(client, experiment id) of a sweep's own store, None before its first submission."""
    if sweep.manifest is None:
        return None
    experiment = sweep.client.get_experiment_by_name(sweep.spec.experiment_name)
    return (sweep.client, experiment.experiment_id) if experiment is not None else None


def selections(client, spec: SweepSpec) -> dict[str, object]:
    """Selection signature -> the newest finished selection run of the sweep."""
    experiment = client.get_experiment_by_name(spec.experiment_name)
    if experiment is None:
        return {}
    out: dict[str, object] = {}
    for run in all_runs(client, [experiment.experiment_id], f"tags.sweep_role = '{SELECTION_ROLE}' and "
                        f"tags.selection_sweep = '{spec.name}' and attributes.status = 'FINISHED'"):
        key = run.data.tags.get("selection_signature")
        if key not in out or run.info.start_time > out[key].info.start_time:
            out[key] = run
    return out


@dataclass
class Progress:
    """Where a sweep's evaluations stand."""
    evaluations: int = 0              # grid (proxy) evaluations planned
    evaluated: int = 0
    groups: int = 0                   # selections planned
    selected: int = 0
    confirmations: int = 0
    confirmed: int = 0
    failed: list[str] = field(default_factory=list)      # "<task>: <reason>"

    def lines(self, select: bool) -> list[str]:
        stage = "proxy" if select else "grid"
        out = [f"evaluate: {self.evaluated} of {self.evaluations} {stage} evaluations done"]
        if select:
            out[0] += (f"; {self.selected} of {self.groups} selections made, {self.confirmed} of {self.confirmations} "
                       "confirmations done")
        out += [f"  failed: {line}" for line in self.failed]
        return out


def progress(spec: SweepSpec, plan: EvaluationPlan, states: list[RunState], client, home=None) -> Progress:
    done = done_evaluations(states, home)
    out = Progress(len(plan.evaluations), sum((e.run.signature, e.protocol.signature) in done
                                              for e in plan.evaluations))
    for e in plan.evaluations:
        failure = spec.folder / "eval" / e.run.run_name / e.protocol.signature / FAILURE_FILE
        if (e.run.signature, e.protocol.signature) not in done and failure.is_file():
            out.failed.append(f"{e.run.title} under {e.protocol.name}: {json.loads(failure.read_text())['reason']}")
    if plan.spec.select:
        chosen = selections(client, spec)
        out.groups = len(plan.groups)
        for group in plan.groups:
            signature = plan.selection_signature(group)
            selection = chosen.get(signature)
            out.confirmations += len(group.runs)
            failure = spec.folder / "eval" / "selections" / signature / FAILURE_FILE
            if selection is None and failure.is_file():
                out.failed.append(f"selection for {group.title}: {json.loads(failure.read_text())['reason']}")
            if selection is None:
                continue
            out.selected += 1
            point = json.loads(selection.data.tags["selected_point"])
            for run in group.runs:
                protocol = plan.confirm(run, point)
                failure = spec.folder / "eval" / run.run_name / protocol.signature / FAILURE_FILE
                if (run.signature, protocol.signature) in done:
                    out.confirmed += 1
                elif failure.is_file():
                    out.failed.append(f"{run.title} under {protocol.name}: "
                                      f"{json.loads(failure.read_text())['reason']}")
    return out


# =============================================================================================
# The stages a submission queues after training
# =============================================================================================
@dataclass
class Stages:
    grid: list[Task]
    confirm: list[Task]
    computed: int                     # evaluations already there (not queued)
    live: int                         # evaluation jobs of earlier submissions still queued or running


def stages(sweep, plan: EvaluationPlan, states: list[RunState], training_jobs: dict[str, str],
           tracking_uri: Callable[[], str], reuse: bool, parent_run_id: str | None = None) -> Stages:
    """The evaluation tasks to queue: each missing (run, protocol) evaluation after its run's training job (just
    submitted, or still live from an earlier submission; none for a finished run), and each selection whose
    confirmations are missing after its runs' evaluations. `training_jobs`: run name -> job id of the training
    submitted now; `tracking_uri()`: where the jobs log (called once there is a task: it may start a server)."""
    from .evaluation import one_device
    from .store import reuse_stores
    spec = sweep.spec
    records = (sweep.manifest or {}).get("evaluations", {})
    live = live_jobs(spec, records)
    done = done_evaluations(states, home_of(sweep))
    stores_cache: list[list[str]] = []

    def stores() -> list[str]:
        if not stores_cache:
            own = tracking_uri()
            stores_cache.append(list(dict.fromkeys([own, *(s for s in reuse_stores(spec) if s != sweep.store_uri)]
                                                   if reuse else [own])))
        return stores_cache[0]

    by_signature = {s.run.signature: s for s in states if s.run.same_as is None}
    waits: dict[str, tuple[str, ...] | None] = {}      # run signature -> training jobs to wait for; None: no run
    for signature, state in by_signature.items():
        record = (sweep.manifest or {}).get("runs", {}).get(state.run.run_name)
        if state.run.run_name in training_jobs:
            waits[signature] = (training_jobs[state.run.run_name],)
        elif state.state == "done":
            waits[signature] = ()
        elif state.state in ("running", "pending") and record and record["executor"] == state.run.executor.kind:
            waits[signature] = (record["job_id"],)
        else:
            waits[signature] = None                   # failed or never trained: nothing to evaluate yet
    grid, computed, queued = [], 0, {}
    for e in plan.evaluations:
        if (e.run.signature, e.protocol.signature) in done:
            computed += 1
            continue
        if e.task_name in live:
            queued.setdefault(e.run.signature, []).append(live[e.task_name])
            continue
        after = waits.get(e.run.signature)
        if after is None:
            continue
        tags = {"eval_stage": e.stage, "evaluated_by_sweep": spec.name, "training_label": e.run.label,
                "training_seed": str(e.run.seed), "eval_point": json.dumps(e.point, sort_keys=True)}
        if e.run.grid:
            tags["training_grid"] = json.dumps(e.run.grid, sort_keys=True)
        task = Task(e.task_name, one_device(e.run.executor),
                    EvaluationJob(stores(), spec.experiment_name, e.run.signature, e.protocol.values_json,
                                  str(spec.folder / "eval" / e.run.run_name / e.protocol.signature), tags), after)
        grid.append(task)
    confirm = []
    if plan.spec.select:
        chosen = selections(sweep.client, spec) if sweep.manifest is not None else {}
        for group in plan.groups:
            signature = plan.selection_signature(group)
            selection = chosen.get(signature)
            if selection is not None:
                point = json.loads(selection.data.tags["selected_point"])
                if all((run.signature, plan.confirm(run, point).signature) in done for run in group.runs):
                    continue
            if group.task_name in live or all(waits.get(run.signature) is None for run in group.runs):
                continue
            members = {run.signature for run in group.runs}
            after = {job for run in group.runs for job in (waits.get(run.signature) or ())}
            after |= {"{eval:" + task.name + "}" for task in grid if task.fn.signature in members}   # (submit())
            after |= {job for run in group.runs for job in queued.get(run.signature, [])}
            confirm.append(Task(group.task_name, one_device(group.runs[0].executor),
                                ConfirmJob(stores()[0], stores(), spec.name, spec.experiment_name, group, plan,
                                           signature, str(spec.folder / "eval"), parent_run_id), tuple(sorted(after))))
    return Stages(grid, confirm, computed, sum(len(v) for v in queued.values()))


def live_jobs(spec: SweepSpec, records: dict[str, dict]) -> dict[str, str]:
    """Task name -> job id of the sweep's jobs of earlier submissions that are still queued or running."""
    out = {}
    for kind in {r["executor"] for r in records.values()}:
        mine = {name: r for name, r in records.items() if r["executor"] == kind}
        executor = executor_class(kind)(spec.folder, spec.name)      # its jobs only (harness/sweep/processes.py)
        states = executor.states(list(mine.values()))
        out.update({name: r["job_id"] for name, r in mine.items() if states.get(r["job_id"]) in executor.LIVE})
    return out


def submit(sweep, queued: Stages) -> list[dict]:
    """Submit the grid stage, then the confirmation stage after it (its `{eval:<task>}` placeholders replaced by the
    grid stage's job ids), each with the executor of its runs; records both in the manifest."""
    spec = sweep.spec
    records = []
    jobs: dict[str, str] = {}
    for stage, tasks in (("grid", queued.grid), ("confirm", queued.confirm)):
        for kind in sorted({task.spec.kind for task in tasks}):
            mine = []
            for task in tasks:
                if task.spec.kind != kind:
                    continue
                after = tuple(sorted({jobs.get(job[6:-1], "") if job.startswith("{eval:") else job
                                      for job in task.after} - {""}))
                mine.append(Task(task.name, task.spec, task.fn, after))
            for record in executor_class(kind)(spec.folder, f"{spec.name}-eval").submit(mine):
                entry = asdict(record) | {"submitted": time.time(), "stage": stage}
                records.append(entry)
                jobs[record.run_name] = record.job_id
                sweep.manifest.setdefault("evaluations", {})[record.run_name] = entry
    sweep.save_manifest()
    return records


# =============================================================================================
# The selection and its confirmation (one task per group)
# =============================================================================================
class ConfirmJob:
    """Select a group's grid point from its runs' proxy evaluations, record the selection in the sweep's store, and
    evaluate every run of the group under the confirmation protocol of that point."""

    def __init__(self, sweep_store: str, stores: list[str], sweep: str, experiment: str, group: Group,
                 plan: EvaluationPlan, signature: str, folder: str, parent_run_id: str | None):
        select = plan.spec.select
        self.sweep_store, self.stores, self.sweep, self.experiment = sweep_store, stores, sweep, experiment
        self.title, self.label, self.grid, self.seed = group.title, group.label, group.grid, group.seed
        self.signature, self.folder, self.parent_run_id = signature, folder, parent_run_id
        self.metric, self.per, self.points = select.metric, select.per, plan.spec.points
        self.runs = [{"signature": run.signature, "run_name": run.run_name, "seed": run.seed, "title": run.title,
                      "proxy": [plan.base(run).with_changes({**point, **select.proxy}).values_json
                                for point in self.points],
                      "confirm": [plan.confirm(run, point).values_json for point in self.points]}
                     for run in group.runs]

    def __call__(self) -> dict:
        try:
            chosen, figures = self.select()
        except Exception as err:
            path = Path(self.folder) / "selections" / self.signature / FAILURE_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"reason": f"{type(err).__name__}: {err}", "time": time.time()}))
            raise
        results, failed = {}, []
        for run in self.runs:
            if not figures["values"].get(run["signature"]):
                continue                              # its training or proxy evaluations failed
            protocol = EvalProtocol(run["confirm"][chosen])
            tags = {"eval_stage": "confirm", "evaluated_by_sweep": self.sweep, "training_label": self.label,
                    "training_seed": str(run["seed"]), "selection_signature": self.signature,
                    "eval_point": json.dumps(self.points[chosen], sort_keys=True)}
            job = EvaluationJob(self.stores, self.experiment, run["signature"], protocol.values_json,
                                str(Path(self.folder) / run["run_name"] / protocol.signature), tags)
            try:                                      # (a failure is written beside its shards, for `status`)
                results[run["run_name"]] = job()
            except Exception as err:
                failed.append(f"{run['title']}: {type(err).__name__}: {err}")
        if failed:
            raise RuntimeError("confirmations failed: " + "; ".join(failed))
        return {"point": self.points[chosen], "runs": results}

    def select(self) -> tuple[int, dict]:
        """(index of the chosen point, the proxy figures), the selection logged unless the same one is there."""
        from ..tracking import mlflow_client
        name = metric_registry.entry(self.metric).name
        values: dict[str, list[float | None]] = {}
        for run in self.runs:
            training_run, store = find_training_run(self.stores, run["signature"])
            if training_run is None:
                continue
            places = evaluation_places(training_run, store, self.sweep_store, self.experiment)
            found = [find_evaluation(training_run, EvalProtocol(p), places) for p in run["proxy"]]
            if all(f is not None and name in f.data.metrics for f in found):
                values[run["signature"]] = [f.data.metrics[name] for f in found]
        if not values:
            raise RuntimeError(f"{self.title}: no run has its proxy evaluations at every grid point; nothing to "
                               "select from")
        means = [sum(v[i] for v in values.values()) / len(values) for i in range(len(self.points))]
        better = max if metric_registry.entry(name).higher_is_better else min
        chosen = means.index(better(means))          # ties: the first point in the grid's order
        seeds = {run["signature"]: run["seed"] for run in self.runs}
        figures = {"metric": name, "per": self.per, "points": self.points, "means": means, "chosen": chosen,
                   "values": values, "seeds": {seeds[s]: v for s, v in values.items()}}
        client = mlflow_client(self.sweep_store)
        experiment = client.get_experiment_by_name(self.experiment)
        logged = all_runs(client, [experiment.experiment_id], f"tags.sweep_role = '{SELECTION_ROLE}' and "
                          f"tags.selection_signature = '{self.signature}' and attributes.status = 'FINISHED'")
        if not any(r.data.tags.get("selection_inputs") == _digest(values) for r in logged):
            self._log(client, experiment.experiment_id, figures)
        return chosen, figures

    def _log(self, client, experiment_id: str, figures: dict) -> None:
        chosen = figures["chosen"]
        point = self.points[chosen]
        confirm = EvalProtocol(self.runs[0]["confirm"][chosen])
        proxy = EvalProtocol(self.runs[0]["proxy"][chosen])
        tags = {"sweep_role": SELECTION_ROLE, "selection_sweep": self.sweep, "selection_signature": self.signature,
                "selection_label": self.label, "selection_grid": json.dumps(self.grid, sort_keys=True),
                "selected_point": json.dumps(point, sort_keys=True), "selection_metric": figures["metric"],
                "selection_per": self.per, "selected_protocol": confirm.signature,
                "selected_protocol_name": confirm.name, "proxy_protocol_name": proxy.name,
                "proxy_means": json.dumps([float(f"{m:.6g}") for m in figures["means"]]),    # in evaluate.grid order
                "selection_inputs": _digest(figures["values"]), "selection_runs": str(len(figures["values"]))}
        if self.seed is not None:
            tags["selection_seed"] = str(self.seed)
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run_id = client.create_run(experiment_id, run_name=f"selection · {self.title}", tags=tags).info.run_id
        params = {f"selected.{k}": str(v) for k, v in point.items()} | {"select.metric": figures["metric"],
                                                                          "select.per": self.per}
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag("mlflow.note.content", selection_note(self.title, figures))])
        client.log_dict(run_id, figures, "selection.json")
        client.set_terminated(run_id, "FINISHED")


def _digest(values: dict) -> str:
    """The proxy figures a selection was made from (a selection is logged again only when they changed)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def selection_note(title: str, figures: dict) -> str:
    """The selection as Markdown: every point's proxy mean, the chosen one in bold."""
    lines = [f"Selection for **{title}**: {figures['metric']} on the proxy, mean over {len(figures['values'])} "
             f"run(s), per {figures['per']}.", "", "| point | mean |", "| --- | --- |"]
    for i, (point, mean) in enumerate(zip(figures["points"], figures["means"])):
        text = ", ".join(f"{k}={v}" for k, v in point.items())
        lines.append(f"| {'**' + text + '**' if i == figures['chosen'] else text} | {mean:.4g} |")
    return "\n".join(lines)
