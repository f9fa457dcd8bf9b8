"""The sweep layer against real executors: a real single-node SLURM (started by .ci/run through
scripts/local_slurm.sh) and local subprocesses. SLURM tests are skipped, saying why, where no cluster
answers; the same scenarios then still run with the local executor."""
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from harness.checkpoint import load_checkpoint
from harness.configure import resolve
from harness.sweep.cli import main
from harness.sweep.plan import plan_sweep
from harness.sweep.server import stop_server, store_uri
from harness.sweep.spec import SweepError, load_sweep
from harness.train import train

def slurm_available() -> str | None:
    """None when a SLURM controller answers, else the reason to skip."""
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (no sbatch); scripts/local_slurm.sh start installs and starts one"
    if "SLURM_CONF" not in os.environ:
        return "SLURM_CONF is not set; run `scripts/local_slurm.sh start` and export what `env` prints"
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or "idle" not in probe.stdout and "mix" not in probe.stdout:
        return f"no idle SLURM node answers: {probe.stderr.strip() or probe.stdout.strip()}"
    return None


SLURM_SKIP = slurm_available()
EXECUTORS = ["local", pytest.param("slurm", marks=pytest.mark.skipif(SLURM_SKIP is not None,
                                                                    reason=str(SLURM_SKIP)))]
TINY = {"train.steps": 4, "train.global_batch": 16, "train.log_every": 2, "model.depth": 2,
        "model.hidden_size": 32, "model.num_heads": 2, "eval.metric": "none", "checkpoint.every_steps": 2}
# Steps of tens of milliseconds, so a job can be interrupted mid-run.
SLOW = {**TINY, "train.steps": 40, "train.global_batch": 32, "model.hidden_size": 64, "model.num_heads": 4,
        "checkpoint.every_steps": 5, "train.log_every": 5}


def write_sweep(folder: Path, name="s", rows=None, executor="local", overrides=None, **more) -> Path:
    sweep = {"name": name, "experiment": "tiny_digits", "output": str(folder / "out"),
             "overrides": overrides or TINY,
             "rows": rows or [{"label": "patch-wise", "set": {"model.adaln": "B"}},
                              {"label": "pixel-wise", "set": {"model.adaln": "C"}}],
             "seeds": [0, 1], "executor": {"kind": executor, "max_parallel": 4}, **more}
    path = folder / f"{name}.yaml"
    path.write_text("# a comment that must survive\n" + yaml.safe_dump(sweep, sort_keys=False))
    return path


def wait_until(predicate, timeout=300, every=0.5, what="condition"):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def states(path: Path) -> dict:
    spec = load_sweep(path)
    from harness.sweep.cli import current_states
    return {(s.run.label, s.run.seed): s for s in current_states(spec, plan_sweep(spec))}


def all_ended(path: Path) -> bool:
    return all(s.state in ("done", "failed") for s in states(path).values())


@pytest.fixture
def sweep_dir(tmp_path):
    yield tmp_path
    for path in tmp_path.glob("*.yaml"):             # stop the tracking servers the sweeps started
        try:
            stop_server(load_sweep(path))
        except SweepError:                          # a deliberately malformed file started none
            pass


def children(path: Path):
    spec = load_sweep(path)
    client = MlflowClient(store_uri(spec))
    experiment = client.get_experiment_by_name(spec.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, kids


# ---- malformed sweeps: one line naming file and key; nothing submitted, nothing created -------------

@pytest.mark.parametrize("mutate, key", [
    (lambda text: text + "rows: [\n", "invalid YAML"),
    (lambda text: text + "colour: blue\n", "colour: unknown key"),
    (lambda text: text.replace("model.adaln: B", "model.adaln: Q"), "rows[0].set.model.adaln='Q': unknown value"),
    (lambda text: re.sub(r"rows:\n(- .*\n(  .*\n)*)+", "rows: []\n", text), "rows: at least one row"),
    (lambda text: text.replace("label: pixel-wise", "label: patch-wise"), "rows[1].label='patch-wise': duplicate"),
    (lambda text: text.replace("max_parallel: 4", "max_parallel: 4\n  gpus: 8"), "executor.gpus: unknown executor field"),
    (lambda text: text.replace("model.adaln: B", "model: nope"), "rows[0].set.model=nope: unknown option"),
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
                             {"label": "variant", "set": {"model": "table4_pixelwise", "model.pixel_attention": False}}])
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

def last_logged_loss(log: str, run_name: str) -> float:
    lines = [l for l in log.splitlines() if l.startswith("step ")]
    return float(lines[-1].split(" loss ")[1].split()[0])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_sweep_submits_completes_dedups_and_retries_exactly_the_failed_run(sweep_dir, capsys, executor):
    path = write_sweep(sweep_dir, name=f"e2e_{executor}", executor=executor, overrides=SLOW)
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
    for kid in kids:
        record = manifest["runs"][kid.info.run_name]
        assert kid.data.tags["label"] == record["label"] and kid.data.tags["seed"] == str(record["seed"])
        if kid.info.status == "FINISHED":             # MLflow's numbers are the job log's numbers
            log = Path(record["stdout"]).read_text()
            assert kid.data.metrics["loss"] == pytest.approx(last_logged_loss(log, kid.info.run_name), abs=6e-5)
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

def release_when_requeued(job_id: str) -> None:
    """SLURM holds a requeued batch job for 120 s (EligibleTime); let it start now."""
    def requeued():
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        return "JobState=PENDING" in out and "Restarts=1" in out
    wait_until(requeued, timeout=120, what=f"job {job_id} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


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
    assert "cancelled 0 SLURM and 2 local jobs" in capsys.readouterr().out
    wait_until(lambda: all_ended(path), what="the cancelled runs to end")
    ended = states(path)
    assert {s.state for s in ended.values()} == {"failed"}
    assert all(s.mlflow_run.info.status == "KILLED" for s in ended.values())   # checkpointed, then stopped
    assert main(["logs", str(path), "pixel-wise", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "==> pixel-wise seed 0" in out and "step 5/400 loss" in out
