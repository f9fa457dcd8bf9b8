"""A run is the run it claims to be: stable identity, located state, hostile input, no orphans.

Each test is a way a careless or hostile user broke the promise "never run the same thing twice, never lose
a result"; they run real sweeps (in-process debug executor, or real detached local jobs) on real MLflow stores.
"""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SLOW, STORES, TINY, states, submit_with_a_lost_node, tiny_overrides, wait_until, write_sweep
from mlflow.tracking import MlflowClient

from commands.cli import main
from harness.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest,
    previous_path,
    save_checkpoint,
    state_digest,
)
from harness.config import TrainConfig
from harness.configure import config_signature, flatten, resolve
from harness.sweep.plan import plan_sweep
from harness.sweep.processes import pid_alive
from harness.sweep.spec import load_sweep
from harness.sweep.store import store_uri
from harness.sweep.sweep import Sweep
from harness.trainer import RunFolderLock, train
from models.config import ModelConfig


def debug_sweep(folder: Path, name: str, **more) -> Path:
    return write_sweep(folder, name=name, executor="debug", **more)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


# ---- identity -------------------------------------------------------------------------------------

def test_a_new_field_whose_default_keeps_the_old_behaviour_changes_no_signature(monkeypatch):
    cfg = resolve(["+experiment=tiny_digits"]).cfg
    before = config_signature(cfg)
    new_field = ("new_switch", bool, dataclasses.field(default=False))
    extended = dataclasses.make_dataclass("ExtendedModelConfig", [new_field],
                                          bases=(ModelConfig,))
    upgraded = dataclasses.replace(cfg, model=extended(**dataclasses.asdict(cfg.model)))
    monkeypatch.setattr("harness.configure.schema_defaults",
                        lambda: flatten(TrainConfig(model=extended())))
    assert config_signature(upgraded) == before
    assert config_signature(dataclasses.replace(upgraded, model=dataclasses.replace(upgraded.model,
                                                                                     new_switch=True))) != before


def test_two_planned_runs_with_one_signature_are_refused(sweep_dir, capsys):
    path = debug_sweep(sweep_dir, "dup", rows=[{"label": "a", "set": {"model.adaln": "B"}},
                                               {"label": "b", "set": {"model.adaln": "B"}}])
    assert main([str(path), "--dry-run"]) == 2
    err = error_line(capsys)
    assert "rows[0] ('a') seed 0 and rows[1] ('b') seed 0 resolve to the same run" in err
    path = debug_sweep(sweep_dir, "seedgrid", grid={"run.seed": [0, 1]})
    assert main([str(path), "--dry-run"]) == 2
    assert "grid.run.seed: set by the sweep, not by a row (the sweep's `seeds:` set it)" in error_line(capsys)


@pytest.mark.parametrize("tracking", STORES, indirect=True)
def test_finished_runs_are_reused_across_sweeps_and_no_reuse_trains_anew(tracking, sweep_dir, capsys):
    first = debug_sweep(sweep_dir, "first", seeds=[0], tracking=tracking)
    assert main([str(first)]) == 0
    second = debug_sweep(sweep_dir, "second", seeds=[0], reuse_from=["first.yaml"], tracking=tracking,
                         rows=[{"label": "pixel-wise", "set": {"model.adaln": "C"}},
                               {"label": "global", "set": {"model.adaln": "A"}}])
    capsys.readouterr()
    assert main([str(second)]) == 0
    out = capsys.readouterr().out
    assert "done (from sweep first)" in out and "1 of 2 runs to submit (1 done (1 from other sweeps))" in out
    reused = states(second)[("pixel-wise", 0)]
    assert reused.state == "done" and reused.source == "first"
    assert reused.mlflow_run.data.tags["sweep"] == "first"
    assert main(["table", str(second), "--metric", "loss", "--wide"]) == 0
    table = capsys.readouterr().out
    assert table.count("(n=1)") == 2                  # the reused row is in this sweep's table
    assert main([str(second), "--no-reuse"]) == 0
    assert "1 of 2 runs to submit" in capsys.readouterr().out
    own = states(second)[("pixel-wise", 0)]
    assert own.source is None and own.mlflow_run.data.tags["sweep"] == "second"
    # a poll of a sweep whose run is running (here logged from outside its jobs) reads no other store
    third = debug_sweep(sweep_dir, "third", seeds=[0], reuse_from=["first.yaml"], tracking=tracking,
                        rows=[{"label": "pixel-wise", "set": {"model.adaln": "C"}}])
    watched = Sweep.open(third)
    experiment = watched.prepare_store()
    watched.save_manifest()
    watched.client.create_run(experiment, tags={"sweep": "third", "signature": watched.plan[0].signature})
    assert [s.state for s in watched.states()] == ["running"]
    assert [key[1] for key in watched.readers._readers] == ["tags.sweep = 'third'"]


@pytest.mark.parametrize("tracking", STORES, indirect=True)
def test_migration_resigns_runs_and_resume_accepts_a_checkpoint_of_the_old_signature(tracking, sweep_dir, capsys,
                                                                                    monkeypatch):
    path = debug_sweep(sweep_dir, "migr", seeds=[0], rows=[{"label": "pixel-wise", "set": {"model.adaln": "C"}}],
                       overrides={**TINY, "train.steps": 6}, tracking=tracking)
    submit_with_a_lost_node(monkeypatch, path, step=4)   # the first attempt dies after its step-4 checkpoint
    spec = load_sweep(path)
    (run,) = plan_sweep(spec)
    client = MlflowClient(store_uri(spec))
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name(spec.experiment_name).experiment_id],
                                       "tags.label = 'pixel-wise'")
    assert mlflow_run.info.status == "FAILED"
    # What an older harness left behind: run tag and checkpoint under another signature.
    ckpt = spec.folder / run.run_name / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    save_checkpoint({**state, "signature": "0ld0ld0ld0ld0ld0"}, ckpt)
    previous_path(ckpt).unlink()
    client.set_tag(mlflow_run.info.run_id, "signature", "0ld0ld0ld0ld0ld0")
    manifest = json.loads((spec.folder / "manifest.json").read_text())
    manifest["runs"][run.run_name]["signature"] = "0ld0ld0ld0ld0ld0"
    (spec.folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="holds a run of another config"):   # unmigrated: refused
        train(resolve(run.overrides(spec, store_uri(spec))))
    capsys.readouterr()
    assert main(["migrate", str(path)]) == 0
    assert f"0ld0ld0ld0ld0ld0 -> {run.signature}" in capsys.readouterr().out
    tags = client.get_run(mlflow_run.info.run_id).data.tags
    assert tags["signature"] == run.signature and tags["signature_previous"] == "0ld0ld0ld0ld0ld0"
    assert main([str(path), "--retry"]) == 0          # resumes the old checkpoint into the same MLflow run
    finished = client.get_run(mlflow_run.info.run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags["resumed"] == "true"
    assert load_checkpoint(ckpt)["step"] == 6
    assert states(path)[("pixel-wise", 0)].state == "done"


# ---- where a sweep lives ----------------------------------------------------------------------------

def test_relative_output_is_the_sweep_files_folder_not_the_working_directory(sweep_dir, tmp_path_factory):
    folder = sweep_dir / "project" / "sweeps"
    folder.mkdir(parents=True)
    path = debug_sweep(folder, "rel", seeds=[0], rows=[{"label": "b", "set": {"model.adaln": "B"}}])
    path.write_text(path.read_text().replace(f"output: {folder / 'out'}", "output: ../runs"))
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    submit = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), str(path)], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert submit.returncode == 0, submit.stderr
    assert (sweep_dir / "project" / "runs" / "rel" / "mlflow.db").exists()
    status = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), "status", str(path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0 and "done=1" in status.stdout, status.stderr
    assert not list(elsewhere.iterdir()) and not (ROOT / "mlflow.db").exists()


@pytest.mark.parametrize("command", ["status", "table", "report", "logs", "cancel", "ui"])
def test_commands_on_a_sweep_never_submitted_fail_in_one_line_and_create_nothing(sweep_dir, capsys, command):
    path = debug_sweep(sweep_dir, "never")
    before = files_under(sweep_dir)
    assert main([command, str(path), *(["patch-wise"] if command == "logs" else [])]) == 2
    assert f"nothing submitted for never under {sweep_dir / 'out' / 'never'}" in error_line(capsys)
    assert files_under(sweep_dir) == before


def test_a_store_that_disappeared_or_was_replaced_is_reported_not_recreated(sweep_dir, capsys):
    path = debug_sweep(sweep_dir, "gone", seeds=[0], rows=[{"label": "b", "set": {"model.adaln": "B"}}])
    assert main([str(path)]) == 0
    capsys.readouterr()
    db = load_sweep(path).folder / "mlflow.db"
    db.rename(db.with_suffix(".bak"))
    for command in (["status"], ["table"], []):     # not even a submission recreates it
        assert main([*command, str(path)]) == 2
        assert "is gone (the manifest records 1 runs submitted)" in error_line(capsys)
        assert not db.exists()
    db.with_suffix(".bak").rename(db)
    client = MlflowClient(store_uri(load_sweep(path)))
    client.set_experiment_tag(client.get_experiment_by_name("gone").experiment_id, "ditlab.store_id", "other")
    assert main(["status", str(path)]) == 2
    assert "is not the one sweep gone was submitted to" in error_line(capsys)
    (load_sweep(path).folder / "manifest.json").unlink()
    assert main(["status", str(path)]) == 2
    assert "the store is there: the manifest was removed?" in error_line(capsys)


# ---- jobs and processes ----------------------------------------------------------------------------

def trainer_pids(run_dir: Path) -> list[int]:
    """Processes training this run (their command line holds no run name: found by the lock they hold)."""
    lock = run_dir / ".lock"
    if not lock.exists():
        return []
    text = lock.read_text().split()
    pid = int(text[1]) if len(text) > 1 else None
    return [pid] if pid and pid_alive(pid) else []


def test_local_jobs_detach_die_with_their_controller_and_a_run_folder_has_one_trainer(sweep_dir, capsys):
    path = write_sweep(sweep_dir, name="orphans", overrides={**SLOW, "train.steps": 4000}, seeds=[0],
                       rows=[{"label": "b", "set": {"model.adaln": "B"}}])
    started = time.time()
    piped = subprocess.run(f"{sys.executable} {ROOT / 'run_sweep.py'} {path} | tail -1", shell=True, cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert piped.returncode == 0 and "submitted 1 runs" in piped.stdout    # returned while the job runs
    assert time.time() - started < 100
    spec = load_sweep(path)
    (record,) = json.loads((spec.folder / "manifest.json").read_text())["runs"].values()
    run_dir = spec.folder / record["run_name"]
    wait_until(lambda: trainer_pids(run_dir) and (run_dir / "checkpoints" / "last.pt").exists(),
               what="the trainer's first checkpoint")
    (trainer,) = trainer_pids(run_dir)
    with pytest.raises(Exception, match="is in use by pid"):    # a second trainer of the same run folder
        train(resolve(plan_sweep(spec)[0].overrides(spec, store_uri(spec))))
    os.kill(int(record["job_id"]), signal.SIGKILL)             # kill -9 the job's controller, not the trainer
    wait_until(lambda: not pid_alive(trainer), timeout=60, what="the trainer to die with its controller")
    wait_until(lambda: states(path)[("b", 0)].state == "failed", what="the run to read failed")
    (spec.folder / "manifest.json").unlink()                    # cancel works without a manifest too
    assert main(["cancel", str(path)]) == 0
    assert "no manifest" in capsys.readouterr().out


def test_a_job_that_fails_before_mlflow_shows_its_reason_in_status(sweep_dir, capsys):
    path = debug_sweep(sweep_dir, "early", seeds=[0], rows=[{"label": "b", "set": {"model.adaln": "B"}}])
    spec = load_sweep(path)
    (run,) = plan_sweep(spec)
    with RunFolderLock(spec.folder / run.run_name):           # another process holds the run folder
        assert main([str(path)]) == 0
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and "is in use by pid" in out


def test_resume_after_kill_9_logs_each_step_once_and_removes_partial_writes(tmp_path):
    overrides = tiny_overrides(tmp_path, "k9", steps=120, **{"train.log_every": 1, "checkpoint.every_steps": 7})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "harness.train", *overrides]
    run_dir = tmp_path / "runs" / "k9"
    checkpoint = run_dir / "checkpoints" / "last.pt"
    for cycle in range(3):
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: checkpoint.exists() and load_checkpoint(checkpoint)["step"] >= 10 * (cycle + 1)
                   or proc.poll() is not None, timeout=120, every=0.05, what="progress")
        time.sleep(0.3)
        proc.kill()
        proc.wait()
    (checkpoint.parent / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    assert subprocess.run(command, cwd=ROOT, env=env, capture_output=True).returncode == 0
    assert not list(checkpoint.parent.glob(".*.tmp"))
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ditlab").experiment_id])
    for key in ("loss", "lr", "system/step"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, 121)), key


# ---- checkpoints ------------------------------------------------------------------------------------

def test_damaged_checkpoints_are_refused_in_one_line_kept_and_the_previous_one_used(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(64)}, "step": 1, "signature": "s"}, path)
    save_checkpoint({"model": {"w": torch.full((64,), 2.0)}, "step": 2, "signature": "s"}, path)
    assert load_checkpoint(previous_path(path))["step"] == 1
    good = path.read_bytes()
    for damage in (b"", good[: len(good) // 2], good.replace(torch.full((64,), 2.0).numpy().tobytes(),
                                                             torch.full((64,), 3.0).numpy().tobytes())):
        path.write_bytes(damage)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
        state, used, problems = load_latest(path)
        assert used == previous_path(path) and state["step"] == 1 and problems
        assert path.with_name("last.pt.corrupt").read_bytes() == damage
        path.write_bytes(good)
    previous_path(path).write_bytes(b"garbage")
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no good checkpoint to resume from"):
        load_latest(path)
    assert state_digest({"a": torch.ones(2)}) != state_digest({"a": torch.ones(2, dtype=torch.float64)})


# ---- hostile and malformed sweep files ----------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.write_bytes(b"\x00\x01\x02binary"), "binary file"),
    (lambda p: p.write_bytes("name: caf\xe9\n".encode("latin-1")), "not UTF-8 text"),
    (lambda p: (p.unlink(), p.mkdir()), "not a file"),
    (lambda p: p.write_text(BOMB + p.read_text()), "aliases expand to more than"),
    (lambda p: p.write_text(p.read_text() + "grid: {optim.lr: [" + ", ".join(["0.1"] * 1000) + "], "
                            "optim.weight_decay: [" + ", ".join(["0.1"] * 1000) + "]}\n"), "max_runs=1000"),
    (lambda p: p.write_text(p.read_text().replace("- 0\n- 1\n", "- true\n")), "seeds=true"),
    (lambda p: p.write_text(p.read_text().replace("- 0\n- 1\n", "- 4294967296\n")), "seeds=4294967296"),
    (lambda p: p.write_text(p.read_text() + "name: again\n"), "name: duplicate key"),
    (lambda p: p.write_text(p.read_text().replace("max_parallel: 4", "max_parallel: 4\n  partition: gpu")),
     "executor.partition: a slurm executor field"),
    (lambda p: p.write_text(p.read_text().replace("model.adaln: B", "run.out_dir: /tmp/x")),
     "rows[0].set.run.out_dir: set by the sweep"),
    (lambda p: p.write_text(p.read_text().replace("model.adaln: B", "run.name: x")), "rows[0].set.run.name: set by"),
    (lambda p: p.write_text(p.read_text().replace("model.adaln: B", "model.adaln: B\n  paper: {fid: n/a}")),
     "rows[0].paper.fid='n/a': expected the paper's number"),
    (lambda p: p.write_text(p.read_text() + "reuse_from: [3]\n"), "reuse_from=[3]"),
    (lambda p: p.write_text(re.sub(r"output: .*", "output: [1]", p.read_text())), "output=[1]: expected a string"),
    (lambda p: p.write_text(p.read_text() + "tracking: {uri: 5}\n"), "tracking.uri=5: expected a string"),
    (lambda p: p.write_text(p.read_text().replace("max_parallel: 4", "max_parallel: true")), "max_parallel"),
    (lambda p: p.write_text(p.read_text().replace("name: s\n", "name: " + "n" * 300 + "\n")), "at most 100"),
    (lambda p: p.write_text(p.read_text().replace("seeds:", "seed:")), "seed: unknown key"),
    # round three: non-finite numbers, values YAML reads as something else, control and bidi characters, paths
    (lambda p: p.write_text(p.read_text().replace("model.depth: 2", "model.depth: 2\n  optim.lr: .nan")),
     "overrides.optim.lr=nan: not a finite number"),
    (lambda p: p.write_text(p.read_text() + "grid: {optim.weight_decay: [0.0, .inf]}\n"),
     "grid.optim.weight_decay[1]=inf: not a finite number"),
    (lambda p: p.write_text(p.read_text().replace("max_parallel: 4", "max_parallel: 4\n  timeout_min: -.inf")),
     "executor.timeout_min=-inf: not a finite number"),
    (lambda p: p.write_text(p.read_text().replace("model.depth: 2", "model.depth: 2\n  data.path: 2024-01-31")),
     "overrides.data.path='2024-01-31': YAML reads this as date"),
    (lambda p: p.write_text(p.read_text().replace("label: patch-wise", 'label: "patch-wise \\u202e1.0 :DIF"')),
     "rows[0].label='patch-wise \\u202e1.0 :DIF': holds the bidirectional-override character U+202E"),
    (lambda p: p.write_text(p.read_text().replace("label: patch-wise", 'label: "patch\\e[2Jwise"')),
     "rows[0].label='patch\\x1b[2Jwise': holds the control character U+001B"),
    (lambda p: p.write_text(p.read_text() + 'description: "Which\\rAdaLN?"\n'), "description='Which\\rAdaLN?'"),
    (lambda p: p.write_text(p.read_text().replace("model.adaln: B", 'model.adaln: B\n    "model.\\u2066depth": 3')),
     "holds the bidirectional-override character U+2066"),
    (lambda p: p.write_text(p.read_text().replace("kind: local\n  max_parallel: 4", 'kind: slurm\n  partition: '
                                                  '"gpu\\n#SBATCH --uid=0"')),
     "executor.partition='gpu\\n#SBATCH --uid=0': holds the control character U+000A"),
    (lambda p: p.write_text(p.read_text().replace("label: patch-wise", "label: ' patch-wise'")),
     "rows[0].label=' patch-wise': leading or trailing spaces"),
    (lambda p: p.write_text(p.read_text().replace("name: s\n", "name: --help\n")), "starting with a letter or digit"),
    (lambda p: p.write_text(p.read_text().replace("experiment: tiny_digits", "experiment: ../train")),
     "experiment='../train': unknown experiment"),
    (lambda p: p.write_text(p.read_text().replace("model.adaln: B", "model: 5")),
     "rows[0].set.model=5: unknown option"),
    (lambda p: (p.with_name("a_file").write_text("x"),
                p.write_text(re.sub(r"output: .*", f"output: {p.with_name('a_file')}", p.read_text()))),
     "is a file, not a folder: the sweep's folder would be"),
    (lambda p: p.write_text(p.read_text() + "reuse_from: [missing.yaml]\n"), "reuse_from[0]='missing.yaml': no such "
                                                                             "sweep file"),
    (lambda p: p.write_text(p.read_text() + "reuse_from: ['sqlite:////nowhere/mlflow.db']\n"), "no such store"),
    (lambda p: p.write_text(p.read_text() + "tracking: {uri: 'sqlite:///mlflow.db'}\n"),
     "a relative sqlite path depends on the working directory"),
])
def test_hostile_sweep_files_are_refused_in_one_line_before_anything_is_created(sweep_dir, capsys, make, expected):
    path = write_sweep(sweep_dir)
    make(path)
    started = time.time()
    assert main([str(path)]) == 2
    err = error_line(capsys)
    assert err.startswith(f"error: {path}: ") and expected in err, err
    assert time.time() - started < 30                        # planning a huge grid is refused, not attempted
    assert not (sweep_dir / "out").exists()


def test_a_manifest_deleted_or_replaced_at_submission_is_reported_with_what_the_store_holds(sweep_dir, capsys):
    path = debug_sweep(sweep_dir, "lost", seeds=[0], rows=[{"label": "b", "set": {"model.adaln": "B"}}])
    assert main([str(path)]) == 0
    spec = load_sweep(path)
    manifest = spec.folder / "manifest.json"
    manifest.rename(manifest.with_suffix(".bak"))
    capsys.readouterr()
    assert main([str(path)]) == 2
    err = error_line(capsys)
    assert (f"no submission recorded in {manifest}, but the store {store_uri(spec)} (store id " in err
            and "holds 1 runs of sweep lost (1 finished): the manifest was deleted or replaced" in err)
    assert not manifest.exists()                                 # never silently recreated
    other = debug_sweep(sweep_dir, "other", seeds=[0], rows=[{"label": "b", "set": {"model.adaln": "B"}}])
    assert main([str(other)]) == 0
    manifest.write_text((load_sweep(other).folder / "manifest.json").read_text())
    capsys.readouterr()
    assert main([str(path)]) == 2
    assert f"{manifest} is the manifest of sweep 'other', not of lost: it was replaced" in error_line(capsys)


def test_a_mistyped_top_level_key_suggests_the_right_one(sweep_dir, capsys):
    path = write_sweep(sweep_dir)
    path.write_text(path.read_text().replace("seeds:", "seed:"))
    assert main([str(path)]) == 2
    assert "(did you mean seeds?)" in error_line(capsys)


def test_the_full_scale_table4_plans_without_its_dataset_and_says_paths_are_checked_at_submission(capsys):
    assert main([str(ROOT / "sweeps" / "pixeldit_table4.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 runs" in out and "note: data paths are checked at submission, not in a dry run" in out


def test_environment_interpolations_are_recorded_as_expressions_not_values(sweep_dir, monkeypatch):
    monkeypatch.setenv("DITLAB_TEST_SECRET", "s3cr3t-token")
    path = debug_sweep(sweep_dir, "secret", seeds=[0], rows=[{"label": "b", "set": {"model.adaln": "B"}}],
                       overrides={**TINY, "data.path": "${oc.env:DITLAB_TEST_SECRET}"})
    assert main([str(path)]) == 0
    run = states(path)[("b", 0)].mlflow_run
    assert run.data.params["data.path"] == "${oc.env:DITLAB_TEST_SECRET}"
    assert "s3cr3t-token" not in json.dumps(run.data.params)
    config = (load_sweep(path).folder / plan_sweep(load_sweep(path))[0].run_name / "config.yaml").read_text()
    assert "${oc.env:DITLAB_TEST_SECRET}" in config and "s3cr3t-token" not in config


def test_dry_runs_and_refusals_show_the_expression_never_the_secret(sweep_dir, monkeypatch, capsys):
    from harness.train import main as train_main
    secret = "/s3cr3t-t0ken/images"
    monkeypatch.setenv("DITLAB_TEST_SECRET", secret)
    path = debug_sweep(sweep_dir, "dry", seeds=[0], rows=[{"label": "b", "set": {"model.adaln": "B"}},
                                                          {"label": "env", "set": {"model.adaln": "C", "data.path":
                                                                                   "${oc.env:DITLAB_TEST_SECRET}"}}])
    for args in (["--dry-run"], ["--dry-run", "--show", "env"]):
        assert main([str(path), *args]) == 0
        out = capsys.readouterr().out
        assert secret not in out and "${oc.env:DITLAB_TEST_SECRET}" in out
    overrides = ["+experiment=tiny_digits", "data.path=${oc.env:DITLAB_TEST_SECRET}"]
    assert train_main([*overrides, "--info"]) == 0
    out = capsys.readouterr().out
    assert secret not in out and "data.path=${oc.env:DITLAB_TEST_SECRET}" in out
    assert train_main([*overrides, "data.name=imagefolder"]) == 2          # refused: the path does not exist
    err = capsys.readouterr().err
    assert secret not in err and "data.path='${oc.env:DITLAB_TEST_SECRET}': does not exist" in err
    path.write_text(path.read_text().replace("model.adaln: C", "model.adaln: C\n    data.name: imagefolder"))
    assert main([str(path)]) == 2                                          # and at submission
    err = capsys.readouterr().err
    assert secret not in err and "data.path='${oc.env:DITLAB_TEST_SECRET}': does not exist" in err


def test_initial_weights_count_by_their_contents_not_their_path(tmp_path):
    from safetensors.torch import save_file
    weights = {"w": torch.ones(3)}
    for name in ("a.safetensors", "b.safetensors"):
        save_file(weights, str(tmp_path / name))
    save_file({"w": torch.zeros(3)}, str(tmp_path / "c.safetensors"))
    signature = {name: config_signature(resolve(["+experiment=tiny_digits", f"model.init_from={tmp_path / name}"]).cfg)
                 for name in ("a.safetensors", "b.safetensors", "c.safetensors")}
    assert signature["a.safetensors"] == signature["b.safetensors"] != signature["c.safetensors"]
