"""A sweep's runs as one pandas frame, read from MLflow (one query) and the scheduler (one call).

One row per planned run, in the sweep file's order, whether or not it ran: `state` says done, failed,
running, pending or new, so a table never has a silent gap.

Whose numbers (`protocol`): `training`, each run's own evaluation (during training, under its config's protocol);
`selected`, the confirmations of the sweep's `evaluate.select` (each row at its chosen point); `evaluate`, the one
protocol of an `evaluate:` without a grid; or one evaluation protocol (harness/protocol.py) by its name or
signature. By default the first that applies of selected, evaluate, training (`default_protocol`). Every row
carries the protocol of its numbers (`protocol`, `protocol_name`, `protocol_text`): a table never mixes protocols
without saying so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd
from mlflow.tracking import MlflowClient

from harness import metric_registry
from harness.protocol import EvalProtocol, protocol_of_run
from harness.sweep.plan import PlannedRun
from harness.sweep.spec import SweepSpec
from harness.sweep.sweep import Sweep
from harness.tracking import mlflow_client
from toolkit.errors import ConfigError, closest


@dataclass
class SweepRuns:
    sweep: Sweep
    frame: pd.DataFrame          # see `load_sweep_runs`
    histories: dict = field(default_factory=dict)    # metric key -> `metric_history` frame (read once)
    protocol: str = "training"   # whose numbers: training | selected | a protocol's signature
    states: list = field(default_factory=list)       # the RunStates the frame was made from
    selection: dict = field(default_factory=dict)    # selected: group title -> its selection's MLflow run

    @property
    def spec(self) -> SweepSpec:
        return self.sweep.spec

    @property
    def plan(self) -> list[PlannedRun]:
        return self.sweep.plan

    @property
    def client(self) -> MlflowClient:
        return self.sweep.client

    @property
    def parent_run_id(self) -> str | None:
        """The latest submission's parent run (plots and reports are logged there)."""
        return self.sweep.parent_run_id

    @property
    def labels(self) -> list[str]:
        return [row.label for row in self.spec.rows]

    @property
    def grid_keys(self) -> list[str]:
        return list(self.spec.grid)


def load_sweep_runs(sweep: Sweep, protocol: str | None = None) -> SweepRuns:
    """Columns: label, row, seed, grid (JSON), one column per grid key, run_name, signature, state,
    mlflow_run_id, params (count), gflops, failure_reason, checkpoint (the run's `checkpoint` tag: its
    final checkpoint file), `metric.<name>` for every latest metric (loss, fd, fd/step_300, images_per_s, ...),
    `param.<key>` for the resolved config, and the protocol of the run's numbers (`protocol`, `protocol_name`,
    `protocol_text`, `eval_run_id`: the MLflow run holding them). `protocol`: whose numbers (module docstring);
    an unknown one is refused in one line listing the protocols the sweep's runs were evaluated under."""
    states = sweep.states()                      # nothing submitted, or the store gone: one line, no file created
    rows = []
    for state in states:
        run, found = state.run, state.mlflow_run
        row = {"label": run.label, "row": run.row, "seed": run.seed, "grid": json.dumps(run.grid, sort_keys=True),
               **run.grid, "run_name": run.run_name, "signature": run.signature, "state": state.state,
               "mlflow_run_id": state.mlflow_run_id, "params": run.params, "gflops": run.gflops,
               "failure_reason": state.reason, "store": state.store, "source": state.source}
        if found is not None:
            row["checkpoint"] = found.data.tags.get("checkpoint")
            row.update({f"metric.{k}": v for k, v in found.data.metrics.items()})
            row.update({f"param.{k}": v for k, v in found.data.params.items()})
            if found.data.params.get("eval.metric", "none") != "none":
                own = protocol_of_run(found.data.params, found.data.tags)
                row.update(protocol=own.signature, protocol_name=own.name, protocol_text=own.describe(),
                           eval_run_id=found.info.run_id)
        rows.append(row)
    runs = SweepRuns(sweep, pd.DataFrame(rows), states=states)
    protocol = protocol or default_protocol(sweep)
    if protocol == "training":
        return runs
    return _under(runs, rows, protocol)


def default_protocol(sweep: Sweep) -> str:
    """Whose numbers a table shows unless told: the confirmations of `evaluate.select`, else the one protocol of an
    `evaluate:` without a grid (`evaluate`), else each run's own evaluation (`training`)."""
    evaluate = sweep.spec.evaluate
    if evaluate is None:
        return "training"
    return "selected" if evaluate.select else "evaluate" if len(evaluate.points) == 1 else "training"


def evaluations(sweep: SweepRuns) -> pd.DataFrame:
    """Every evaluation of the sweep's finished runs, one row per (run, protocol): label, row, seed, grid, run_name,
    signature, protocol (signature), protocol_name, protocol_text, eval_run_id, stage (training: the run's own;
    grid, proxy, confirm: `evaluate:`; eval: `run_sweep.py eval`), point (JSON: the evaluate.grid values), the
    protocol's values (`param.<key>`, e.g. param.eval.sampler.cfg_scale as a number) and `metric.<name>`."""
    from harness.sweep.protocols import done_evaluations, home_of
    if "evaluations" in sweep.histories:
        return sweep.histories["evaluations"]
    runs = {}
    for state in sweep.states:
        runs.setdefault(state.run.signature, []).append(state.run)
    records = []
    for (signature, protocol_signature), found in done_evaluations(sweep.states, home_of(sweep.sweep)).items():
        tags, params = found.data.tags, found.data.params
        own = tags.get("sweep_role") != "evaluation"
        protocol = protocol_of_run(params, tags) if own else EvalProtocol.from_params(
            params, int(tags.get("eval_protocol_version", 1)))
        scored = {m.name for m in metric_registry.scored_by(protocol.metric)} | {"classifier_acc"}
        metrics = {f"metric.{k}": v for k, v in found.data.metrics.items() if k in scored}
        for run in runs.get(signature, []):
            records.append({"label": run.label, "row": run.row, "seed": run.seed,
                            "grid": json.dumps(run.grid, sort_keys=True), "run_name": run.run_name,
                            "signature": signature, "protocol": protocol_signature, "protocol_name": protocol.name,
                            "protocol_text": protocol.describe(), "eval_run_id": found.info.run_id,
                            "stage": "training" if own else tags.get("eval_stage", "eval"),
                            "point": tags.get("eval_point", "{}"),
                            **{f"param.{k}": v for k, v in protocol.values.items()}, **metrics})
    frame = pd.DataFrame(records)
    sweep.histories["evaluations"] = frame
    return frame


def _under(runs: SweepRuns, rows: list[dict], protocol: str) -> SweepRuns:
    """The runs' numbers under one protocol (or each row's selected one): each row's sample-based metrics and
    evaluation params replaced by those of its evaluation under it (none where it was not evaluated)."""
    found = evaluations(runs)
    chosen: dict[str, str] = {}                  # signature -> protocol signature
    if protocol == "selected":
        chosen = _selected(runs)
    elif protocol == "evaluate":
        evaluate = runs.sweep.spec.evaluate
        if evaluate is None or len(evaluate.points) != 1:
            raise ConfigError("--protocol", protocol, "means the one protocol of an evaluate: section without a grid; "
                              + ("the sweep has none" if evaluate is None else f"this one has {len(evaluate.points)} "
                                 "points: name one protocol (or selected)"))
        chosen = {e.run.signature: e.protocol.signature for e in runs.sweep.evaluations.evaluations}
    else:
        known = found.drop_duplicates("protocol") if len(found) else found
        names = dict(zip(known["protocol"], known["protocol_name"])) if len(found) else {}
        matches = [sig for sig, name in names.items() if protocol in (sig, name)] \
            or [sig for sig in names if len(protocol) >= 4 and sig.startswith(protocol)] \
            or [sig for sig, name in names.items() if protocol in name]
        if len(matches) != 1:
            options = ["training", *(["selected"] if _has_selection(runs) else []),
                       *(["evaluate"] if runs.sweep.spec.evaluate and len(runs.sweep.spec.evaluate.points) == 1
                         else []), *sorted(names.values())]
            reason = (f"matches {len(matches)} protocols: {sorted(names[m] for m in matches)}; name one" if matches
                      else f"no run of this sweep was evaluated under it; protocols: {options}")
            raise ConfigError("--protocol", protocol, reason,
                              suggestion=None if matches else closest(protocol, options))
        chosen = {signature: matches[0] for signature in set(found["signature"])}
    by_key = {(r["signature"], r["protocol"]): r for r in found.to_dict("records")} if len(found) else {}
    out = []
    for row in rows:
        row = {k: v for k, v in row.items() if not (k.startswith("metric.") and _evaluation_metric(k))
               and k not in ("protocol", "protocol_name", "protocol_text", "eval_run_id")}
        record = by_key.get((row["signature"], chosen.get(row["signature"])))
        if record is not None and row["state"] == "done":
            row.update({k: v for k, v in record.items() if k.startswith("metric.") and pd.notna(v)})
            row.update({k: str(v) for k, v in record.items() if k.startswith("param.")})   # as MLflow params read
            row.update(protocol=record["protocol"], protocol_name=record["protocol_name"],
                       protocol_text=record["protocol_text"], eval_run_id=record["eval_run_id"],
                       eval_point=record["point"])
        out.append(row)
    return SweepRuns(runs.sweep, pd.DataFrame(out), runs.histories, protocol, runs.states, runs.selection)


def _evaluation_metric(column: str) -> bool:
    name = column.removeprefix("metric.")
    return "/" in name or metric_registry.entry(name).sample_based or name == "classifier_acc"


def _has_selection(runs: SweepRuns) -> bool:
    return runs.sweep.spec.evaluate is not None and runs.sweep.spec.evaluate.select is not None


def _selected(runs: SweepRuns) -> dict[str, str]:
    """Training signature -> the protocol its row's selection confirmed it under."""
    from harness.sweep.protocols import selections
    if not _has_selection(runs):
        raise ConfigError("--protocol", "selected", "the sweep has no evaluate.select: nothing was selected")
    plan = runs.sweep.evaluations
    made = selections(runs.sweep.client, runs.sweep.spec)
    out = {}
    for group in plan.groups:
        selection = made.get(plan.selection_signature(group))
        if selection is None:
            continue
        runs.selection[group.title] = selection
        point = json.loads(selection.data.tags["selected_point"])
        out.update({run.signature: plan.confirm(run, point).signature for run in group.runs})
    return out


def metric_history(sweep: SweepRuns, key: str) -> pd.DataFrame:
    """Long frame (label, seed, grid, step, value) of one metric over training (one history query per
    run, once per key: for plots; tables need only `load_sweep_runs`)."""
    if key in sweep.histories:
        return sweep.histories[key]
    records, clients = [], {sweep.sweep.store_uri: sweep.client}
    for row in sweep.frame.itertuples():
        if row.mlflow_run_id is None:
            continue
        if row.store not in clients:              # a reused run lives in its own store
            clients[row.store] = mlflow_client(row.store)
        client = clients[row.store]
        for m in client.get_metric_history(row.mlflow_run_id, key):
            records.append({"label": row.label, "seed": row.seed, "grid": row.grid, "step": m.step,
                            "value": m.value})
    sweep.histories[key] = pd.DataFrame(records, columns=["label", "seed", "grid", "step", "value"])
    return sweep.histories[key]
