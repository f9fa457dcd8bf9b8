"""`run_sweep.py eval` on a real tiny sweep (debug executor, real MLflow store, real checkpoints): class-
balanced ADM shards, resumption at the first missing shard, each evaluation an MLflow child run of the training run
named by its protocol, two protocols at the same N kept side by side, in the table."""
import os

import numpy as np
import pytest
import yaml
from conftest import SLURM_SKIP, TINY, write_sweep

from commands.cli import main
from harness.sweep import evaluation
from harness.sweep.evaluation import Shard, ShardJob, count_tag, plan_evaluation
from harness.sweep.server import store_uri
from harness.sweep.spec import load_sweep
from harness.sweep.sweep import Sweep


def tiny_sweep(folder, reference):
    path = write_sweep(folder, "evalsweep", executor="debug", seeds=[0],
                       overrides={**TINY, "eval.sampler.steps": 2, "eval.reference": str(reference)})
    assert main([str(path)]) == 0
    return path


def test_count_tag():
    assert [count_tag(n) for n in (50000, 10000, 40, 1500)] == ["50k", "10k", "40", "1500"]


@pytest.mark.slow          # ~30 s on 2 cores: two tiny trainings, 16 images through the Inception
def test_eval_fills_missing_shards_logs_metrics_and_the_table_shows_them(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    path = tiny_sweep(tmp_path, tmp_path / "ref.npz")
    spec = load_sweep(path)
    from mlflow.tracking import MlflowClient
    client = MlflowClient(store_uri(spec))

    # a killed evaluation: shard 0 done, shard 1 half-written (a temporary file), shard 2 never started
    targets, skipped = plan_evaluation(Sweep(spec), "pixel-wise", 12, 3, None, [], 0, batch_size=4)
    assert skipped == [] and len(targets) == 1
    target = targets[0]
    assert [(s.start, s.count) for s in target.shards] == [(0, 4), (4, 4), (8, 4)]
    ShardJob()(str(target.checkpoint), target.protocol.values_json, target.shards[:1])
    first = os.stat(target.shards[0].path).st_mtime_ns
    (target.folder / ".shard_00001.npz.abc.tmp").write_bytes(b"partial")

    filled = []
    real_call = ShardJob.__call__
    monkeypatch.setattr(ShardJob, "__call__",
                        lambda self, *a, **k: filled.append(real_call(self, *a, **k)) or filled[-1])
    cache = tmp_path / "cache"
    args = ["--label", "pixel-wise", "--num", "12", "--shards", "3", "--batch-size", "4", "--metrics",
            "fid,sfid,precision,recall", "--cache-dir", str(cache)]
    code = main(["eval", str(path), *args])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 shards to fill" in out and "first missing: " + target.shards[1].path in out
    assert filled == [[target.shards[1].path], [target.shards[2].path]]      # resumed at the first missing shard
    assert os.stat(target.shards[0].path).st_mtime_ns == first               # the finished shard was not redone

    # ADM's sample format, class-balanced labels (image i: class i mod 10), noise fixed by (seed, batch)
    labels = np.concatenate([np.load(s.path)["arr_1"] for s in target.shards])
    assert labels.tolist() == [i % 10 for i in range(12)]
    images = np.load(target.shards[1].path)["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 3)
    again = Shard(1, 4, 4, str(tmp_path / "again.npz"))
    ShardJob()(str(target.checkpoint), target.protocol.values_json, [again])
    np.testing.assert_array_equal(np.load(again.path)["arr_0"], images)

    # the numbers: an MLflow run nested under the training run, named by the protocol, whose params are the
    # protocol; at the checkpoint's step; the other row was not evaluated
    (child,) = client.search_runs([run_experiment(client, spec)], f"tags.training_run_id = '{target.mlflow_run_id}'")
    assert child.data.tags["mlflow.parentRunId"] == target.mlflow_run_id
    assert child.info.run_name == target.protocol.name == "adm12-ab2x2-cfg1-ema0.99-seed0"
    values = child.data.metrics
    assert set(values) == {"fid", "sfid", "precision", "recall"} and values["fid"] > 0
    assert [m.step for m in client.get_metric_history(child.info.run_id, "fid")] == [4]
    params = child.data.params
    assert params["eval.num_samples"] == "12" and params["eval.seed"] == "0" and params["eval.batch_size"] == "4"
    assert params["eval.sampler.steps"] == "2" and params["eval.sampler.cfg_scale"] == "1.0"
    assert params["eval.sampler.cfg_interval"] == "[0.0, 1.0]" and params["eval.sampler.kind"] == "ab2"
    assert params["eval.reference"] == str((tmp_path / "ref.npz").resolve())
    assert params["eval.labels"] == "balanced" and params["eval.metric"] == "adm"
    assert params["ema.eval_decay"] == "0.99"                                # tiny_digits' EMA
    assert child.data.tags["eval_samples"] == str(target.folder)
    training = client.get_run(target.mlflow_run_id)
    assert not any(k.startswith("fid") for k in training.data.metrics)       # the training run is untouched

    from analysis.runs import load_sweep_runs
    from analysis.table import build_table
    table = build_table(load_sweep_runs(Sweep.open(path), protocol="adm12"), metric="fid").frame.set_index("label")
    assert table.loc["pixel-wise", "fid mean"] == pytest.approx(values["fid"])
    assert table.loc["pixel-wise", "fid n"] == 1 and table.loc["patch-wise", "fid n"] == 0

    # the same protocol again: nothing sampled; another protocol at the same N: kept beside the first
    filled.clear()
    assert main(["eval", str(path), *args]) == 0
    assert "already evaluated under adm12-ab2x2-cfg1-ema0.99-seed0" in capsys.readouterr().out and filled == []
    assert main(["eval", str(path), *args, "--set", "eval.sampler.cfg_scale=2.0"]) == 0
    runs = client.search_runs([run_experiment(client, spec)], f"tags.training_run_id = '{target.mlflow_run_id}'")
    assert sorted(r.info.run_name for r in runs) == ["adm12-ab2x2-cfg1-ema0.99-seed0", "adm12-ab2x2-cfg2-ema0.99-seed0"]
    for name in ("cfg1", "cfg2"):
        assert main(["table", str(path), "--protocol", name, "--metric", "fid"]) == 0
        assert f"adm12-ab2x2-{name}-ema0.99-seed0" in capsys.readouterr().out


def run_experiment(client, spec) -> str:
    return client.get_experiment_by_name(spec.experiment_name).experiment_id


def test_eval_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "experiment": "tiny_digits", "output": str(tmp_path / "out"),
                                    "rows": [{"label": "only", "set": {}}], "executor": {"kind": "debug"}}))
    cases = [(["--label", "onyl"], f"error: {path}: --label='onyl': no row has this label; rows are ['only'] "
                                   "(did you mean only?)"),
             (["--shards", "0", "--num", "10"], f"error: {path}: --shards=0: must be in [1, --num=10]"),
             (["--num", "0"], f"error: {path}: --num=0: must be positive"),
             ([], f"error: {path}: nothing submitted for bad under {tmp_path / 'out' / 'bad'} (no manifest.json)")]
    for args, expected in cases:
        assert main(["eval", str(path), *args]) == 2
        assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "out").exists()                   # refused before anything was created
    with pytest.raises(Exception) as err:
        evaluation.protocol_changes(["eval.sampler.stpes=3"])
    assert str(err.value).startswith("--set='eval.sampler.stpes=3': expected KEY=VALUE with KEY an evaluation "
                                     "protocol key (eval.metric, eval.num_samples, eval.sampler.kind, ")
    assert str(err.value).endswith("(did you mean eval.sampler.steps?)")


@pytest.mark.slow          # ~90 s: sbatch round trips on the local cluster
@pytest.mark.skipif(SLURM_SKIP is not None, reason=str(SLURM_SKIP))
def test_eval_shards_as_a_slurm_array(tmp_path, capsys):
    """The shards as array tasks of the real local SLURM (scripts/local_slurm.sh), then the metrics job."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    path = tiny_sweep(tmp_path, tmp_path / "ref.npz")
    code = main(["eval", str(path), "--label", "patch-wise", "--num", "8", "--shards", "2", "--batch-size", "4",
                 "--executor", "slurm",
                 "--metrics", "fid,recall", "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0, out
    spec = load_sweep(path)
    from mlflow.tracking import MlflowClient
    client = MlflowClient(store_uri(spec))
    target = plan_evaluation(Sweep(spec), "patch-wise", 8, 2, None, [], 0, batch_size=4)[0][0]
    assert not target.missing()
    (child,) = client.search_runs([run_experiment(client, spec)], f"tags.training_run_id = '{target.mlflow_run_id}'")
    assert {"fid", "recall"} <= set(child.data.metrics)
    logs = list((spec.folder / "submitit").rglob("*_0_log.out"))
    assert any("_" in p.name.split("_0_log")[0] for p in logs)        # array task ids: <job>_<task>
