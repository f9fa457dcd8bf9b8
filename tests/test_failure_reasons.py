"""Every failure names its cause, in one line: the file and the cause of a checkpoint that could not be written (a
really full disk: a small tmpfs, or a real file-size limit), of an image that does not decode (through real
DataLoader workers), of damaged checkpoints (on the terminal, in `status`); a run whose every checkpoint is damaged
is refused on every attempt and starts again at step 0, in its MLflow run, only with `--restart`; `run_sweep.py
eval` prints its jobs' reasons and scores a grey (one-channel) model's samples."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, states, tiny_overrides, write_sweep
from mlflow.tracking import MlflowClient

from commands.cli import main
from harness.checkpoint import load_checkpoint, previous_path
from harness.configure import resolve
from harness.sweep.plan import plan_sweep
from harness.sweep.spec import load_sweep
from harness.sweep.store import store_uri
from harness.train import main as train_main
from harness.trainer import Trainer, train
from toolkit.errors import ConfigError, reason, reason_line
from toolkit.files import WriteError


def status_lines(capsys, path: Path) -> list[str]:
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    return capsys.readouterr().out.splitlines()


# ---- the one mechanism ------------------------------------------------------------------------------------

def test_a_reason_is_one_line_naming_the_cause():
    assert reason(ConfigError("data.path", "/x", "does not exist")) == "data.path='/x': does not exist"
    assert reason(FileNotFoundError(2, "No such file or directory", "/data/a.png")) == \
        "No such file or directory (ENOENT): /data/a.png"
    assert reason(KeyError("model")) == "KeyError: 'model'"
    # what torch's DataLoader raises in the trainer for an error in a worker: the worker's traceback as the message
    relayed = OSError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                      '  File "x.py", line 1, in <module>\nOSError: image file is truncated (3 bytes not processed)')
    assert reason(relayed) == "OSError: image file is truncated (3 bytes not processed)"
    assert reason_line("RuntimeError: a\nTraceback (most recent call last):\n  ...\nValueError: b") == "ValueError: b"
    assert reason_line("first line\nsecond line") == "first line"


# ---- a full disk --------------------------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 64 KiB tmpfs (root only); unmounted afterwards."""
    folder = tmp_path / "runs" / "full" / "checkpoints"
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root and CAP_SYS_ADMIN needed): {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_fails_the_run_naming_the_checkpoint_the_cause_and_the_free_space(tmp_path, small_tmpfs):
    with pytest.raises(WriteError) as err:
        train(resolve(tiny_overrides(tmp_path, "full")))
    message = str(err.value)
    assert message == f"{small_tmpfs / 'last.pt'}: not written: disk full (ENOSPC; 0 B free on {small_tmpfs})"
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'full' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ditlab").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == message
    assert not list(small_tmpfs.iterdir())                        # the partial write was removed


def test_a_file_size_limit_names_the_cause(tmp_path):
    """A real RLIMIT_FSIZE (SIGXFSZ ignored, so the write fails with EFBIG), in a process of its own."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        from harness.checkpoint import save_checkpoint
        from toolkit.cli import run
        sys.exit(run(lambda: save_checkpoint({{"model": {{"w": torch.ones(1 << 18)}}, "step": 1}},
                                             {str(tmp_path / "last.pt")!r})))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: {tmp_path / 'last.pt'}: not written: file size limit exceeded (EFBIG; ")
    assert done.stderr.count("\n") == 1 and " free on " in done.stderr
    assert not list(tmp_path.glob(".*.tmp"))


# ---- an image that does not decode ---------------------------------------------------------------------------

def test_a_corrupt_training_image_fails_the_run_with_one_line_naming_it(sweep_dir, capsys):
    from PIL import Image
    data = sweep_dir / "images"
    rng = np.random.default_rng(0)
    for i in range(16):
        (data / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / f"c{i % 2}" / f"{i}.png")
    bad = data / "c1" / "7.png"
    bad.write_bytes(bad.read_bytes()[:60])                          # a truncated download
    path = write_sweep(sweep_dir, "images", executor="debug", seeds=[0], rows=[{"label": "b", "set": {}}],
                       overrides={**TINY, "model.num_classes": 2, "data.name": "imagefolder", "data.path": str(data),
                                  "data.num_workers": 1})           # decoded in a DataLoader worker process
    assert main([str(path)]) == 0
    failed = states(path)[("b", 0)]
    expected = f"{bad}: cannot decode the image ("
    assert failed.state == "failed" and failed.reason.startswith(expected) and "\n" not in failed.reason
    assert failed.mlflow_run.data.tags["failure_reason"] == failed.reason
    (line,) = [line for line in status_lines(capsys, path) if " failed " in line]
    assert line.endswith(failed.reason)


# ---- damaged checkpoints ---------------------------------------------------------------------------------------

def test_a_damaged_checkpoint_is_said_on_the_terminal_and_in_status(sweep_dir, capsys, monkeypatch):
    path = write_sweep(sweep_dir, "fallback", executor="debug", seeds=[0], rows=[{"label": "b", "set": {}}],
                       overrides={**TINY, "train.steps": 6})
    crash_at(monkeypatch, 5)
    assert main([str(path)]) == 0
    monkeypatch.undo()
    (run,) = plan_sweep(load_sweep(path))
    last = load_sweep(path).folder / run.run_name / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    capsys.readouterr()
    assert main([str(path), "--retry"]) == 0
    said = f"resumed from last.prev.pt at step 2: {last}: unreadable checkpoint ("
    assert said in capsys.readouterr().out
    (line,) = [line for line in status_lines(capsys, path) if line.lstrip().startswith("b ")]
    assert " done " in line and said in line


def crash_at(monkeypatch, step: int) -> None:
    """The first attempt dies at `step` (after its checkpoints at steps 2 and 4, with TINY)."""
    original = Trainer.train_step

    def crash(self, x, y):
        if self.step == step - 1:
            raise RuntimeError("node lost")
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", crash)


def test_a_run_whose_every_checkpoint_is_damaged_is_refused_twice_and_restarts_only_with_restart(sweep_dir, capsys,
                                                                                                 monkeypatch):
    path = write_sweep(sweep_dir, "damaged", executor="debug", seeds=[0], rows=[{"label": "b", "set": {}}],
                       overrides={**TINY, "train.steps": 6})
    crash_at(monkeypatch, 5)
    assert main([str(path)]) == 0
    monkeypatch.undo()
    spec = load_sweep(path)
    (run,) = plan_sweep(spec)
    last = spec.folder / run.run_name / "checkpoints" / "last.pt"
    first = states(path)[("b", 0)].mlflow_run_id
    last.write_bytes(b"")
    previous_path(last).write_bytes(previous_path(last).read_bytes()[:200])

    assert main([str(path), "--retry"]) == 0                     # refused: the job says why
    refused = states(path)[("b", 0)]
    assert refused.state == "failed" and refused.reason.startswith(
        f"{last}: empty checkpoint (0 bytes) (kept as last.pt.corrupt); {previous_path(last)}: unreadable checkpoint (")
    assert refused.reason.endswith(
        "(kept as last.prev.pt.corrupt); no good checkpoint to resume from; --restart starts the run again at step 0 "
        f"(in the same MLflow run), or put a good checkpoint at {last}")
    (line,) = [line for line in status_lines(capsys, path) if " failed " in line]
    assert line.endswith(refused.reason)

    assert train_main(run.overrides(spec, store_uri(spec))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {last}.corrupt: empty checkpoint (0 bytes) (set aside by "
                                                   f"an earlier attempt); {previous_path(last)}.corrupt: unreadable")
    assert "no good checkpoint to resume from; --restart starts the run again at step 0" in err
    assert not last.exists()

    assert main([str(path), "--restart"]) == 0                   # starts again at step 0, in the same MLflow run
    out = capsys.readouterr().out
    assert f"restarted at step 0 (--restart): {last}.corrupt: empty checkpoint" in out
    assert f"; continuing MLflow run {first}" in out
    done = states(path)[("b", 0)]
    assert done.state == "done" and done.mlflow_run_id == first
    assert done.mlflow_run.data.tags["checkpoint_fallback"].startswith("restarted at step 0 (--restart)")
    client = MlflowClient(store_uri(spec))
    assert [m.step for m in client.get_metric_history(first, "loss")] == [2, 4, 6]     # each step logged once
    assert load_checkpoint(last)["step"] == 6
    (line,) = [line for line in status_lines(capsys, path) if " done " in line]
    assert "restarted at step 0 (--restart)" in line


# ---- run_sweep.py eval ---------------------------------------------------------------------------------------

@pytest.mark.slow          # ~1 min on 2 cores: a tiny training, two scorings with the Inception network
def test_eval_of_a_grey_model_scores_and_a_failing_job_prints_its_reason(sweep_dir, capsys):
    """The demo's shape (tiny_mnist: one grey channel at 16 px) against a folder of grey reference images. A shard
    as the grey demo used to write it, (N, H, W, 1), makes the scoring job fail: the command prints that job's
    reason (it is in no log line); without it the shards are written with the grey replicated, and scored."""
    from PIL import Image

    from harness.data import build_dataset
    from harness.sweep.evaluation import find_evaluation, plan_evaluation
    from harness.sweep.sweep import Sweep
    reference = sweep_dir / "reference"
    reference.mkdir()
    cfg = resolve(["+experiment=tiny_mnist"]).cfg
    images, _ = build_dataset(cfg.data, 1, "held_out").all_images(8)
    for i, image in enumerate(((images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()):
        Image.fromarray(image).save(reference / f"{i}.png")
    path = write_sweep(sweep_dir, "grey", executor="debug", seeds=[0], rows=[{"label": "b", "set": {}}],
                       overrides={**TINY, "eval.sampler.steps": 2, "eval.reference": str(reference)})
    path.write_text(path.read_text().replace("experiment: tiny_digits", "experiment: tiny_mnist"))
    assert main([str(path)]) == 0
    (target,), _ = plan_evaluation(Sweep.open(path), None, 8, 2, None, [], 0, batch_size=4)
    target.folder.mkdir(parents=True)
    np.savez(target.shards[0].path, arr_0=np.zeros((4, 16, 16, 1), np.uint8), arr_1=np.zeros(4, np.int64))
    args = ["eval", str(path), "--num", "8", "--shards", "2", "--batch-size", "4", "--metrics", "fid,precision,recall",
            "--cache-dir", str(sweep_dir / "cache")]
    capsys.readouterr()
    assert main(args) == 1
    out = capsys.readouterr().out
    assert (f"  b seed 0: scoring failed: SAMPLES {target.shards[0].path}: arr_0: expected uint8 images (N, H, W, 3) "
            f"in C order, got uint8 (4, 16, 16, 1)\n") in out and "see the" not in out

    os.unlink(target.shards[0].path)
    assert main(args) == 0, capsys.readouterr().out
    shard = np.load(target.shards[0].path)["arr_0"]
    assert shard.shape == (4, 16, 16, 3) and (shard == shard[..., :1]).all() and shard.std() > 0
    client = MlflowClient(store_uri(load_sweep(path)))
    run = find_evaluation(target.training_run, target.protocol, [(client, target.training_run.info.experiment_id)])
    assert {"fid", "precision", "recall"} <= set(run.data.metrics)          # the evaluation's child run
    assert json.loads((target.folder / "metrics.json").read_text())["fid"] == run.data.metrics["fid"]
