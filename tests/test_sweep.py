"""The sweep layer against real executors: a real single-node SLURM (started by .ci/run through
scripts/local_slurm.sh) and local subprocesses. SLURM tests are skipped, saying why, where no cluster
answers; the same scenarios then still run with the local executor."""
import dataclasses
import functools
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    EXECUTORS,
    ON_POSTGRES,
    ON_SLURM,
    SLOW,
    SLURM_SKIP,
    TINY,
    TINY_OFFLINE_EVAL,
    all_ended,
    children,
    release_when_requeued,
    states,
    wait_until,
    write_sweep,
)

from commands.cli import main
from harness.checkpoint import load_checkpoint
from harness.configure import resolve
from harness.sweep.executors import Task, executor_class, parse_spec
from harness.sweep.plan import plan_sweep
from harness.sweep.spec import load_sweep
from harness.trainer import train

# ---- malformed sweeps: one line naming file and key; nothing submitted, nothing created -------------

@pytest.mark.parametrize("mutate, key", [
    (lambda text: text + "rows: [\n", "invalid YAML"),
    (lambda text: text + "colour: blue\n", "colour: unknown key"),
    (lambda text: text.replace("model.adaln: B", "model.adaln: Q"), "rows[0].set.model.adaln='Q': unknown value"),
    (lambda text: re.sub(r"rows:\n(- .*\n(  .*\n)*)+", "rows: []\n", text), "rows: at least one row"),
    (lambda text: text.replace("label: pixel-wise", "label: patch-wise"), "rows[1].label='patch-wise': duplicate"),
    (lambda text: text.replace("max_parallel: 4", "max_parallel: 4\n  gpus: 8"),
     "executor.gpus: unknown executor field"),
    (lambda text: text.replace("model.adaln: B", "model: nope"), "rows[0].set.model='nope': unknown option"),
    (lambda text: text.replace("model.depth: 2", "model.depth: deep"), "overrides.model.depth"),
])
def test_malformed_sweeps_fail_before_anything_is_created(sweep_dir, capsys, mutate, key):
    path = write_sweep(sweep_dir)
    path.write_text(mutate(path.read_text()))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ") and key in err and "\n" not in err, err
    assert not (sweep_dir / "out").exists()          # no store, no manifest, no job


def test_plan_resolves_each_run_exactly_as_the_training_job_will(sweep_dir):
    path = write_sweep(sweep_dir, grid={"optim.lr": [1e-3, 2e-3]},
                       rows=[{"label": "base", "set": {"model": "table4_ptc"}, "executor": {"timeout_min": 9}},
                             {"label": "variant",
                              "set": {"model": "table4_pixelwise", "model.pixel_attention": False}}])
    spec = load_sweep(path)
    runs = plan_sweep(spec)
    assert len(runs) == 2 * 2 * 2
    assert [r.executor.timeout_min for r in runs] == [9] * 4 + [240] * 4
    for run in runs:
        job = resolve(run.overrides(spec, "sqlite:///x.db", parent_run_id="p"))
        assert job.signature == run.signature
        assert (job.cfg.model, job.cfg.optim, job.cfg.run.seed) == (run.cfg.model, run.cfg.optim, run.cfg.run.seed)
    assert len({r.signature for r in runs}) == 8


# ---- end to end: submit, complete, dedup, fail, retry ------------------------------------------

def last_logged_loss(log: str) -> float:
    lines = [line for line in log.splitlines() if line.startswith("step ")]
    return float(lines[-1].split(" loss ")[1].split()[0])


@pytest.mark.parametrize("executor, tracking", [("local", "sqlite"), pytest.param("slurm", "sqlite", marks=ON_SLURM),
                                                pytest.param("local", "postgresql", marks=ON_POSTGRES)],
                         indirect=["tracking"])
def test_sweep_submits_completes_dedups_and_retries_exactly_the_failed_run(tracking, sweep_dir, capsys, executor):
    path = write_sweep(sweep_dir, name=f"e2e_{executor}", executor=executor, overrides=SLOW, tracking=tracking)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 runs to submit" in out
    manifest = json.loads((load_sweep(path).folder / "manifest.json").read_text())
    job_ids = [r["job_id"] for r in manifest["runs"].values()]
    if executor == "slurm":                           # one array: <array id>_<task>
        assert len({j.split("_")[0] for j in job_ids}) == 1 and all("_" in j for j in job_ids)

    # make one run fail for real: interrupt its job mid-run with the scheduler's own tool
    victim = manifest["runs"][next(n for n, r in manifest["runs"].items() if r["label"] == "pixel-wise"
                                   and r["seed"] == 1)]
    run_dir = load_sweep(path).folder / next(n for n, r in manifest["runs"].items() if r is victim)
    wait_until(lambda: (run_dir / "checkpoints" / "last.pt").exists(), what="the victim's first checkpoint")
    if executor == "slurm":
        subprocess.run(["scancel", victim["job_id"]], check=True)
    else:
        os.kill(int(victim["job_id"]), signal.SIGTERM)
    wait_until(lambda: all_ended(path), what="all runs to end")
    ended = states(path)
    assert [k for k, s in ended.items() if s.state == "failed"] == [("pixel-wise", 1)]

    client, parents, kids = children(path)
    assert len(parents) == 1 and len(kids) == 4
    assert {k.data.tags["mlflow.parentRunId"] for k in kids} == {parents[0].info.run_id}
    assert client.download_artifacts(parents[0].info.run_id, "sweep.yaml").endswith("sweep.yaml")
    assert "# a comment that must survive" in Path(client.download_artifacts(parents[0].info.run_id,
                                                                              "sweep.yaml")).read_text()
    by_run = {(r["label"], r["seed"]): name for name, r in manifest["runs"].items()}
    for kid in kids:
        run_name = by_run[kid.data.tags["label"], int(kid.data.tags["seed"])]
        record = manifest["runs"][run_name]
        assert kid.info.run_name == f"{record['label']} · seed {record['seed']}"
        if kid.info.status == "FINISHED":             # MLflow's numbers are the run's log's numbers
            log = (load_sweep(path).folder / run_name / "job.log").read_text()
            assert kid.data.metrics["loss"] == pytest.approx(last_logged_loss(log), abs=6e-5)
        if executor == "slurm":
            assert kid.data.tags["slurm_job_id"] == record["job_id"]

    assert main([str(path)]) == 0                     # nothing new: 0 submitted, the failure is reported
    assert "0 of 4 runs to submit (3 done, 1 failed; --retry resubmits the failed ones)" in capsys.readouterr().out
    assert main([str(path), "--retry"]) == 0
    assert "1 of 4 runs to submit" in capsys.readouterr().out
    wait_until(lambda: all_ended(path), what="the retried run")
    assert {s.state for s in states(path).values()} == {"done"}
    assert main(["status", str(path)]) == 0
    assert "done=4" in capsys.readouterr().out


# ---- SLURM preemption: checkpoint, requeue, resume, identical weights -----------------------------

@pytest.mark.skipif(SLURM_SKIP is not None, reason=str(SLURM_SKIP))
@pytest.mark.parametrize("interrupt", ["scontrol requeue", "scancel --signal=USR2"])
def test_interrupted_slurm_job_requeues_and_ends_identical_to_an_uninterrupted_run(sweep_dir, interrupt):
    name = "rq_" + interrupt.split()[0]
    path = write_sweep(sweep_dir, name=name, executor="slurm", overrides=SLOW, seeds=[0],
                       rows=[{"label": "pixel-wise", "set": {"model.adaln": "C"}}])
    assert main([str(path)]) == 0
    spec = load_sweep(path)
    manifest = json.loads((spec.folder / "manifest.json").read_text())
    (run_name, record), = manifest["runs"].items()
    run_dir = spec.folder / run_name
    wait_until(lambda: (run_dir / "checkpoints" / "last.pt").exists(), what="the first checkpoint")
    if interrupt == "scontrol requeue":
        subprocess.run(["scontrol", "requeue", record["job_id"]], check=True)
    else:
        subprocess.run(["scancel", "--signal=USR2", record["job_id"]], check=True)
    release_when_requeued(record["job_id"])
    wait_until(lambda: all_ended(path), what="the resumed run")

    run, = plan_sweep(spec)
    straight = train(resolve([*run.overrides(spec, f"sqlite:///{sweep_dir / 'straight.db'}"),
                              f"run.out_dir={sweep_dir / 'straight'}"]))
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    reference = load_checkpoint(straight.run_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == reference["step"] == 40
    assert all(torch.equal(resumed["model"][k], reference["model"][k]) for k in reference["model"])
    _, _, kids = children(path)
    (kid,) = kids
    assert kid.info.status == "FINISHED" and kid.data.tags["resumed"] == "true"
    assert 0 < int(kid.data.tags["interrupted_at_step"]) < 40


def test_cancel_stops_live_jobs_and_logs_shows_a_runs_output(sweep_dir, capsys):
    path = write_sweep(sweep_dir, name="cancel", overrides={**SLOW, "train.steps": 400}, seeds=[0])
    assert main([str(path)]) == 0
    spec = load_sweep(path)
    manifest = json.loads((spec.folder / "manifest.json").read_text())
    run_dirs = [spec.folder / name for name in manifest["runs"]]
    wait_until(lambda: all((d / "checkpoints" / "last.pt").exists() for d in run_dirs), what="checkpoints")
    capsys.readouterr()
    assert main(["cancel", str(path)]) == 0
    assert "cancelled 2 local, 0 slurm jobs" in capsys.readouterr().out
    wait_until(lambda: all_ended(path), what="the cancelled runs to end")
    ended = states(path)
    assert {s.state for s in ended.values()} == {"failed"}
    assert all(s.mlflow_run.info.status == "KILLED" for s in ended.values())   # checkpointed, then stopped
    assert main(["logs", str(path), "pixel-wise", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "==> pixel-wise · seed 0" in out and "step 5/400 loss" in out


def test_logs_shows_one_runs_lines_when_one_job_runs_several(sweep_dir, capsys):
    """A local lane runs its runs one after another in one job; each run's output is also its own job.log."""
    path = write_sweep(sweep_dir, name="lane", seeds=[0])
    path.write_text(path.read_text().replace("max_parallel: 4", "max_parallel: 1"))
    assert main([str(path), "--wait"]) == 0                   # follows the lane's two runs to their end
    from harness.sweep.server import running_server
    assert running_server(load_sweep(path)) is None              # ... and stops the server it started
    records = list(json.loads((load_sweep(path).folder / "manifest.json").read_text())["runs"].values())
    assert len({r["job_id"] for r in records}) == 1 and len(records) == 2       # one job, two runs
    assert Path(records[0]["stdout"]).read_text().count("step 4/4 loss") == 2
    _, _, kids = children(path)
    capsys.readouterr()
    for kid in kids:
        label = kid.data.tags["label"]
        assert main(["logs", str(path), label]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"==> {label} · seed 0 (") and out.count("step 4/4 loss") == 1
        assert kid.data.metrics["loss"] == pytest.approx(last_logged_loss(out), abs=6e-5)
    for query in ("PIXEL", "1"):                                 # a piece of the label (any case), the row index
        assert main(["logs", str(path), query]) == 0
        assert capsys.readouterr().out.startswith("==> pixel-wise · seed 0 (")
    assert main(["logs", str(path), "pixelwise"]) == 2
    err = capsys.readouterr().err
    assert "rows are ['patch-wise', 'pixel-wise']" in err and err.rstrip().endswith("(did you mean pixel-wise?)")
    assert main(["logs", str(path), "wise"]) == 2
    assert "label='wise': matches 2 rows: ['0 patch-wise', '1 pixel-wise']" in capsys.readouterr().err


def test_logs_follow_prints_a_running_runs_log_as_it_grows_until_its_job_ends(sweep_dir, capsys):
    path = write_sweep(sweep_dir, name="follow", overrides={**SLOW, "train.steps": 200}, seeds=[0],
                       rows=[{"label": "patch-wise", "set": {"model.adaln": "B"}}])
    assert main([str(path)]) == 0
    spec = load_sweep(path)
    (record,) = json.loads((spec.folder / "manifest.json").read_text())["runs"].values()
    log = spec.folder / record["run_name"] / "job.log"
    wait_until(lambda: log.exists() and "step 5/200 loss" in log.read_text(), what="the run's first lines")
    assert "step 200/200 loss" not in log.read_text()           # followed while it runs
    capsys.readouterr()
    assert main(["logs", str(path), "patch", "-f"]) == 0          # returns when the job has ended
    out = capsys.readouterr().out
    assert states(path)[("patch-wise", 0)].state == "done"
    assert out.startswith("==> patch-wise · seed 0 (") and out.count("step 200/200 loss") == 1
    assert out.count("step 5/200 loss") == 1                    # every line once
    assert out.endswith(log.read_text())


def test_runs_are_named_by_row_and_seed_and_the_parent_carries_the_description(sweep_dir):
    """Run names `LABEL · seed S`; the parent run's description is the sweep's description and notes; each
    evaluation point is logged under the name it was asked by (`fd/step_3`, `fd/epoch_0.02`) and nothing else
    (no `fd/epoch_0.0265` beside every step point); the step and heartbeat under MLflow's system/ section."""
    overrides = {**TINY, **TINY_OFFLINE_EVAL, "eval.at_steps": [3], "eval.at_epochs": [0.02],
                 "eval.cache_dir": str(sweep_dir / "cache")}
    path = write_sweep(sweep_dir, name="named", executor="debug", overrides=overrides, seeds=[0],
                       description="Which AdaLN?", notes="A *toy* check.")
    assert main([str(path)]) == 0
    client, (parent,), kids = children(path)
    assert parent.data.tags["mlflow.note.content"] == "Which AdaLN?\n\n**Notes.** A *toy* check."
    assert sorted(kid.info.run_name for kid in kids) == ["patch-wise · seed 0", "pixel-wise · seed 0"]
    for kid in kids:
        assert {key for key in kid.data.metrics if "/" in key} == {
            "fd/step_3", "class_acc/step_3", "fd/epoch_0.02", "class_acc/epoch_0.02", "system/step",
            "system/heartbeat"}
        assert [m.step for m in client.get_metric_history(kid.info.run_id, "fd")] == [2, 3, 4]


def test_row_tags_sort_as_text_in_the_files_row_order(sweep_dir):
    """MLflow's UI sorts tags as text: the `row` tag is zero-padded, so row 10 comes after row 9, not after row 1."""
    rows = [{"label": f"lr {i}", "set": {"optim.lr": 1e-3 * (i + 1)}} for i in range(11)]
    spec = load_sweep(write_sweep(sweep_dir, name="eleven", rows=rows, seeds=[0]))
    tags = [next(o for o in run.overrides(spec, "sqlite:///x.db") if o.startswith("+tracking.tags.row="))
            for run in plan_sweep(spec)]
    assert tags[2] == '+tracking.tags.row="02"' and tags[10] == '+tracking.tags.row="10"'
    assert sorted(tags) == tags


@pytest.mark.skipif(SLURM_SKIP is not None, reason=str(SLURM_SKIP))
def test_cancel_stops_slurm_jobs_in_every_live_state_status_knows(sweep_dir, capsys):
    """A job held after a requeue (REQUEUE_HOLD; SLURM 22.05 shows it PENDING, held) is live for `status`, so
    `cancel` stops it too."""
    path = write_sweep(sweep_dir, name="held", executor="slurm", overrides={**SLOW, "train.steps": 4000}, seeds=[0],
                       rows=[{"label": "pixel-wise", "set": {"model.adaln": "C"}}])
    assert main([str(path)]) == 0
    spec = load_sweep(path)
    (record,) = json.loads((spec.folder / "manifest.json").read_text())["runs"].values()
    job = record["job_id"]
    state = lambda: subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout  # noqa: E731
    wait_until(lambda: "JobState=RUNNING" in state(), what="the job to run")
    subprocess.run(["scontrol", "requeuehold", job], check=True)
    wait_until(lambda: "JobState=REQUEUE_HOLD" in state() or "Reason=job_requeued_in_held_state" in state(),
               what="the hold")
    assert states(path)[("pixel-wise", 0)].state == "pending"
    capsys.readouterr()
    assert main(["cancel", str(path)]) == 0
    assert "cancelled 0 local, 1 slurm jobs" in capsys.readouterr().out
    wait_until(lambda: "JobState=CANCELLED" in state(), what="the cancellation")


# ---- stages: a task waits for the jobs it depends on --------------------------------------------------

def shell_task(name: str, script: str, after: tuple[str, ...] = ()) -> Task:
    """A task running a shell line (`functools.partial` of a library function: it unpickles in any job)."""
    return Task(name, parse_spec({"kind": "slurm" if "slurm" in name else "local"}, "executor"),
                functools.partial(subprocess.run, ["bash", "-c", script], check=True), after)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_task_starts_only_once_the_jobs_it_waits_for_ended(sweep_dir, executor):
    log = sweep_dir / "order.log"
    runner = executor_class(executor)(sweep_dir, "stages")
    first = runner.submit([shell_task(f"{executor}-first", f"sleep 4; echo first >> {log}")])
    runner.submit([shell_task(f"{executor}-second", f"echo second >> {log}", after=(first[0].job_id,))])
    wait_until(lambda: log.exists() and len(log.read_text().split()) == 2, timeout=240, what="both tasks")
    assert log.read_text().split() == ["first", "second"]


@pytest.mark.skipif(SLURM_SKIP is not None, reason=str(SLURM_SKIP))
def test_slurm_drops_a_task_whose_dependency_failed(sweep_dir):
    log = sweep_dir / "order.log"
    runner = executor_class("slurm")(sweep_dir, "stages")
    first = runner.submit([shell_task("slurm-first", "exit 1")])
    second = runner.submit([shell_task("slurm-second", f"echo second >> {log}", after=(first[0].job_id,))])
    records = [dataclasses.asdict(r) | {"submitted": time.time()} for r in first + second]
    wait_until(lambda: not any(s in runner.LIVE for s in runner.states(records).values()), timeout=240,
               what="both jobs to end")
    assert runner.states(records)[second[0].job_id] == "CANCELLED" and not log.exists()
