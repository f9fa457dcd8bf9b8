"""`run_sweep.py eval` on a real tiny sweep (debug executor, real MLflow store, real checkpoints): class-
balanced ADM shards, resumption at the first missing shard, metrics and protocol on the runs and in the table."""
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
    targets, skipped = plan_evaluation(Sweep(spec), "pixel-wise", 12, 3, None, [], 0)
    assert skipped == [] and len(targets) == 1
    target = targets[0]
    assert [(s.start, s.count) for s in target.shards] == [(0, 4), (4, 4), (8, 4)]
    ShardJob()(str(target.checkpoint), target.sampler, 0, target.shards[:1], 250)
    first = os.stat(target.shards[0].path).st_mtime_ns
    (target.folder / ".shard_00001.npz.abc.tmp").write_bytes(b"partial")

    filled = []
    real_call = ShardJob.__call__
    monkeypatch.setattr(ShardJob, "__call__",
                        lambda self, *a, **k: filled.append(real_call(self, *a, **k)) or filled[-1])
    cache = tmp_path / "cache"
    code = main(["eval", str(path), "--label", "pixel-wise", "--num", "12", "--shards", "3", "--metrics",
                 "fid,sfid,precision,recall", "--cache-dir", str(cache)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 shards to fill" in out and "first missing: " + target.shards[1].path in out
    assert filled == [[target.shards[1].path], [target.shards[2].path]]      # resumed at the first missing shard
    assert os.stat(target.shards[0].path).st_mtime_ns == first               # the finished shard was not redone

    # ADM's sample format, class-balanced labels (image i: class i mod 10), noise fixed by (seed, shard)
    labels = np.concatenate([np.load(s.path)["arr_1"] for s in target.shards])
    assert labels.tolist() == [i % 10 for i in range(12)]
    images = np.load(target.shards[1].path)["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 3)
    again = Shard(1, 4, 4, str(tmp_path / "again.npz"))
    ShardJob()(str(target.checkpoint), target.sampler, 0, [again], 250)
    np.testing.assert_array_equal(np.load(again.path)["arr_0"], images)

    # metrics and protocol on the run, at the checkpoint's step; the other row was not evaluated
    run = client.get_run(target.mlflow_run_id)
    values = {k: v for k, v in run.data.metrics.items() if k.endswith("12")}
    assert set(values) == {"fid12", "sfid12", "precision12", "recall12"} and values["fid12"] > 0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fid12")] == [4]
    params = run.data.params
    assert params["eval12.num"] == "12" and params["eval12.shards"] == "3" and params["eval12.seed"] == "0"
    assert params["eval12.batch_size"] == "250"
    assert params["eval12.sampler.steps"] == "2" and params["eval12.sampler.cfg_scale"] == "1.0"
    assert params["eval12.sampler.cfg_interval"] == "[0.0, 1.0]" and params["eval12.sampler.kind"] == "ab2"
    assert params["eval12.reference"] == str((tmp_path / "ref.npz").resolve())
    assert params["eval12.labels"].startswith("class-balanced")
    assert params["eval12.ema_decay"] == params["ema.eval_decay"] == "0.99"      # tiny_digits' EMA
    assert run.data.tags["eval12.samples"] == str(target.folder)

    from analysis.runs import load_sweep_runs
    from analysis.table import build_table
    table = build_table(load_sweep_runs(Sweep.open(path)), metric="fid12").frame.set_index("label")
    assert table.loc["pixel-wise", "fid12 mean"] == pytest.approx(values["fid12"])
    assert table.loc["pixel-wise", "fid12 n"] == 1 and table.loc["patch-wise", "fid12 n"] == 0

    # another protocol at the same N is refused before any sampling (MLflow params never change)
    filled.clear()
    code = main(["eval", str(path), "--label", "pixel-wise", "--num", "12", "--shards", "3",
                 "--set", "eval.sampler.cfg_scale=2.0", "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert code == 2 and filled == []
    assert f"error: {path}: eval12.sampler.cfg_scale='2.0': run pixel-wise-s0-" in err
    assert "was evaluated at this N" in err


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
        evaluation.sampler_with({"steps": 2}, ["eval.sampler.stpes=3"])
    assert str(err.value) == ("--set='eval.sampler.stpes=3': expected eval.sampler.FIELD=VALUE with FIELD one of "
                              "['cfg_interval', 'cfg_scale', 'kind', 'rho', 'sigma_max', 'sigma_min', 'steps', "
                              "'time_shift'] (did you mean eval.sampler.steps?)")


@pytest.mark.slow          # ~90 s: sbatch round trips on the local cluster
@pytest.mark.skipif(SLURM_SKIP is not None, reason=str(SLURM_SKIP))
def test_eval_shards_as_a_slurm_array(tmp_path, capsys):
    """The shards as array tasks of the real local SLURM (scripts/local_slurm.sh), then the metrics job."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    path = tiny_sweep(tmp_path, tmp_path / "ref.npz")
    code = main(["eval", str(path), "--label", "patch-wise", "--num", "8", "--shards", "2", "--executor", "slurm",
                 "--metrics", "fid,recall", "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0, out
    spec = load_sweep(path)
    from mlflow.tracking import MlflowClient
    client = MlflowClient(store_uri(spec))
    target = plan_evaluation(Sweep(spec), "patch-wise", 8, 2, None, [], 0)[0][0]
    assert not target.missing()
    run = client.get_run(target.mlflow_run_id)
    assert {"fid8", "recall8"} <= set(run.data.metrics)
    logs = list((spec.folder / "submitit").rglob("*_0_log.out"))
    assert any("_" in p.name.split("_0_log")[0] for p in logs)        # array task ids: <job>_<task>
