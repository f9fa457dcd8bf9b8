"""Checkpoint retention (harness/retention.py, `run_sweep.py gc`): the latest k >= 2, milestones never deleted, the
best by a metric; the disk a plan needs, refused over the sweep's budget; a resumed run keeps what an uninterrupted
one keeps; gc frees what the policy allows, and a gc killed at any point leaves every run resumable."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, SLOW, TINY, TINY_OFFLINE_EVAL, states, submit_with_a_lost_node, write_sweep
from mlflow.tracking import MlflowClient

from commands.cli import main
from harness import checkpoint
from harness.checkpoint import load_checkpoint, load_latest, save_checkpoint
from harness.configure import resolve
from harness.retention import copies
from harness.sweep.plan import plan_sweep
from harness.sweep.spec import load_sweep
from harness.sweep.store import store_uri
from harness.trainer import train


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def kept(folder: Path) -> dict[str, int]:
    """file name -> the step of the checkpoint it holds."""
    return {path.name: load_checkpoint(path)["step"] for path in sorted(folder.glob("*.pt"))}


def test_rotation_keeps_the_latest_k_and_a_kill_between_two_renames_loses_no_newer_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    for step in range(1, 6):
        save_checkpoint({"model": {"w": torch.full((4,), float(step))}, "step": step}, path, keep=3)
    assert kept(tmp_path) == {"last.pt": 5, "last.prev.pt": 4, "last.prev2.pt": 3}
    replace = os.replace
    for renames in range(3):                       # the save of step 6 killed after 0, 1 or 2 of its renames
        folder = tmp_path / f"kill{renames}"
        shutil.copytree(tmp_path, folder, ignore=shutil.ignore_patterns("kill*"))
        done = []

        def dying(src, dst):
            if len(done) == renames:
                raise KeyboardInterrupt("killed")
            done.append(dst)
            replace(src, dst)

        monkeypatch.setattr(checkpoint.os, "replace", dying)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint({"model": {"w": torch.zeros(4)}, "step": 6}, folder / "last.pt", keep=3)
        monkeypatch.setattr(checkpoint.os, "replace", replace)
        state, used, problems = load_latest(folder / "last.pt")
        assert state["step"] == 5 and not problems, (renames, used)      # the newest written is still there


@pytest.mark.parametrize("setting, expected", [
    ({"checkpoint.keep_latest": 1}, "checkpoint.keep_latest=1: at least 2: the newest checkpoint may be the one"),
    ({"checkpoint.keep_best": 1}, "checkpoint.keep_best=1: ranks the copies at evaluation points by a metric, "
                                  "and eval.metric=none evaluates nothing"),
    ({**TINY_OFFLINE_EVAL, "checkpoint.keep_best": 1, "checkpoint.best_metric": "fid"},
     "checkpoint.best_metric='fid': not logged at evaluation by eval.metric=offline"),
    ({"checkpoint.milestones": [0]}, "checkpoint.milestones=[0]: expected positive step numbers"),
])
def test_a_checkpoint_policy_that_cannot_work_is_refused_at_planning(sweep_dir, capsys, setting, expected):
    path = write_sweep(sweep_dir, executor="debug", overrides={**TINY, **setting})
    assert main([str(path), "--dry-run"]) == 2
    assert f"error: {path}: overrides." in (err := error_line(capsys)) and expected in err, err


def test_the_disk_estimate_is_what_a_run_writes_and_a_budget_it_exceeds_is_refused_at_planning(sweep_dir, capsys):
    policy = {"checkpoint.keep_latest": 3, "checkpoint.every_steps": 2, "checkpoint.milestones": [3],
              "eval.at_steps": [2], "eval.cache_dir": str(sweep_dir / "cache")}
    path = write_sweep(sweep_dir, name="disk", executor="debug", seeds=[0], overrides={**SLOW, **TINY_OFFLINE_EVAL,
                       "train.steps": 6, **policy}, rows=[{"label": "pixel-wise", "set": {"model.adaln": "C"}}])
    (run,) = plan_sweep(load_sweep(path))
    assert (run.disk.files, run.disk.rolling, run.disk.at_evaluation, run.disk.milestones) == (6, 3, 2, 1)
    assert main([str(path), "--dry-run"]) == 0
    assert "disk: up to" in capsys.readouterr().out
    assert main([str(path)]) == 0
    capsys.readouterr()
    files = sorted((load_sweep(path).folder / run.run_name / "checkpoints").glob("*.pt"))
    assert [f.name for f in files] == ["last.prev.pt", "last.prev2.pt", "last.pt", "step00000002.pt",
                                       "step00000003.pt", "step00000006.pt"]
    # weights, one EMA and AdamW's two moments, 4 bytes each: the file's size but for its few kB of names,
    # headers and recorded config
    for file in files:
        assert run.disk.file_bytes <= file.stat().st_size <= run.disk.file_bytes * 1.03, file

    (sweep_dir / "tight").mkdir()
    over = write_sweep(sweep_dir / "tight", name="tight", executor="debug", overrides={**SLOW, **TINY_OFFLINE_EVAL,
                       "train.steps": 6, **policy})
    budget = sum(r.disk.bytes for r in plan_sweep(load_sweep(over))) - 1      # its 4 runs need one byte more
    over.write_text(over.read_text() + f"disk_budget: {budget}\n")
    for command in ([str(over), "--dry-run"], [str(over)]):
        assert main(command) == 2
        err = error_line(capsys)
        assert err.startswith(f"error: {over}: disk_budget={budget}: the plan keeps up to ") and "for 4 runs (the " \
            "largest run: 6 files of" in err and "3 latest + 2 at evaluation points + 1 milestone)" in err, err
    assert not (sweep_dir / "tight" / "out").exists()       # nothing created
    over.write_text(over.read_text().replace(f"disk_budget: {budget}", "disk_budget: 2TiB"))
    assert main([str(over), "--dry-run"]) == 0
    assert "; disk_budget 2.20 TB" in capsys.readouterr().out
    over.write_text(over.read_text().replace("disk_budget: 2TiB", "disk_budget: lots"))
    assert main([str(over), "--dry-run"]) == 2
    assert "disk_budget='lots': expected a size such as 800GB or 2TiB" in error_line(capsys)


BEST_OF_FOUR = {**TINY, **TINY_OFFLINE_EVAL, "train.steps": 8, "checkpoint.every_steps": 3, "eval.at_steps": [2, 4, 6],
                "checkpoint.keep_latest": 3, "checkpoint.keep_best": 1, "checkpoint.milestones": [5]}


def test_a_resumed_run_keeps_exactly_the_checkpoints_an_uninterrupted_run_keeps(sweep_dir, monkeypatch):
    """The policy ranks the copies the first attempt made (their scores from MLflow) as it ranks its own."""
    path = write_sweep(sweep_dir, name="keep", executor="debug", seeds=[0],
                       rows=[{"label": "pixel-wise", "set": {"model.adaln": "C"}}],
                       overrides={**BEST_OF_FOUR, "eval.cache_dir": str(sweep_dir / "cache")})
    submit_with_a_lost_node(monkeypatch, path, step=6)
    spec = load_sweep(path)
    (run,) = plan_sweep(spec)
    folder = spec.folder / run.run_name / "checkpoints"
    assert states(path)[("pixel-wise", 0)].state == "failed" and load_latest(folder / "last.pt")[0]["step"] == 6
    assert main([str(path), "--retry"]) == 0
    assert states(path)[("pixel-wise", 0)].mlflow_run.data.tags["resumed"] == "true"

    straight = train(resolve([*run.overrides(spec, f"sqlite:///{sweep_dir / 'straight.db'}"),
                              f"run.out_dir={sweep_dir / 'straight'}"]))
    expected = kept(straight.run_dir / "checkpoints")
    assert kept(folder) == expected
    # the newest 3, the milestone, and one copy at an evaluation point: the best by fd of steps 2, 4, 6 and 8
    assert [name for name in expected if name.startswith("last")] == ["last.prev.pt", "last.prev2.pt", "last.pt"]
    (best,) = set(copies(folder)) - {5}
    history = MlflowClient(store_uri(spec)).get_metric_history(states(path)[("pixel-wise", 0)].mlflow_run_id, "fd")
    fd = {m.step: m.value for m in history}
    assert set(copies(folder)) == {5, best} and fd[best] == min(fd[s] for s in (2, 4, 6, 8))


# gc killed for real (SIGKILL) right after its n-th deletion
KILLED_GC = """
import os, pathlib, signal, sys
unlink, count = pathlib.Path.unlink, 0
def unlink_then_die(self, *args, **kwargs):
    global count
    unlink(self, *args, **kwargs)
    count += 1
    if count == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
pathlib.Path.unlink = unlink_then_die
from commands.cli import main
sys.exit(main(["gc", sys.argv[1]]))
"""


def test_gc_frees_what_the_policy_allows_and_a_gc_killed_at_any_point_leaves_every_run_resumable(sweep_dir, capsys,
                                                                                                  monkeypatch):
    keep_all = {**TINY, **TINY_OFFLINE_EVAL, "train.steps": 6, "checkpoint.every_steps": 2, "eval.at_steps": [2, 4],
                "checkpoint.keep_latest": 3, "eval.cache_dir": str(sweep_dir / "cache")}
    path = write_sweep(sweep_dir, name="gc", executor="debug", seeds=[0], overrides=keep_all)
    # one run is left unfinished, to be resumed after the gc
    submit_with_a_lost_node(monkeypatch, path, step=4, which=lambda cfg: cfg.model.adaln == "C")
    spec = load_sweep(path)
    folders = {run.label: spec.folder / run.run_name / "checkpoints" for run in plan_sweep(spec)}
    assert kept(folders["patch-wise"]) == {"last.pt": 6, "last.prev.pt": 4, "last.prev2.pt": 2,
                                           "step00000002.pt": 2, "step00000004.pt": 4, "step00000006.pt": 6}
    assert kept(folders["pixel-wise"]) == {"last.pt": 4, "last.prev.pt": 2, "step00000002.pt": 2,
                                           "step00000004.pt": 4}
    newest = {label: load_latest(folder / "last.pt")[0]["step"] for label, folder in folders.items()}

    # a stricter policy in the sweep file (no signature changes: runs stay done): the latest 2, the best copy by
    # fd, step 2 for good
    text = yaml.safe_load(path.read_text())
    text["overrides"].update({"checkpoint.keep_latest": 2, "checkpoint.keep_best": 1, "checkpoint.milestones": [2]})
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    before = {label: kept(folder) for label, folder in folders.items()}
    capsys.readouterr()
    assert main(["gc", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would free" in out and {label: kept(folder) for label, folder in folders.items()} == before
    # patch-wise: last.prev2 and the worse of the copies at 4 and 6; pixel-wise: nothing (2 latest, 1 copy at 4)
    assert out.rstrip().splitlines()[-1].startswith("would free ") and out.rstrip().endswith(
        "in 2 files of 2 run folders")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for kills in range(1, 3):                      # killed after its first deletion, then again after the next
        done = subprocess.run([sys.executable, "-c", KILLED_GC, str(path), "1"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == -9, done.stderr
        for label, folder in folders.items():      # every run still resumes from its newest checkpoint
            assert load_latest(folder / "last.pt")[0]["step"] == newest[label], (kills, label)
            assert "step00000002.pt" in kept(folder)
    assert main(["gc", str(path)]) == 0            # a gc run again finishes the job
    assert capsys.readouterr().out.rstrip().endswith("freed 0.0 kB in 0 files of 2 run folders")
    history = MlflowClient(store_uri(spec)).get_metric_history(states(path)[("patch-wise", 0)].mlflow_run_id, "fd")
    best = min((m.value, -m.step, m.step) for m in history if m.step in (4, 6))[2]
    assert kept(folders["patch-wise"]) == {"last.pt": 6, "last.prev.pt": 4, "step00000002.pt": 2,
                                           f"step{best:08d}.pt": best}
    assert main([str(path), "--retry"]) == 0       # the unfinished run resumes and finishes
    assert {s.state for s in states(path).values()} == {"done"}
    assert load_checkpoint(folders["pixel-wise"] / "last.pt")["step"] == 6
