"""Runs that span nodes, on a real multi-node SLURM cluster on this machine (scripts/multinode_slurm.sh: a
controller and 2 compute nodes, each a slurmd in a network namespace of its own, with its own address and
hostname): a sweep of two runs, each one job of 2 nodes x 1 CPU task (gloo ranks) as an element of one
array, one of them requeued mid-run with `scontrol requeue`. The fixture starts the cluster (and stops it
after) unless it already runs; without root or network namespaces the test is skipped, saying why."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import (
    SLOW,
    all_ended,
    assert_close_weights,
    children,
    release_when_requeued,
    states,
    wait_until,
    weights,
    write_sweep,
)

from commands.cli import main
from harness.configure import resolve
from harness.sweep.executors.slurm import SlurmExecutor
from harness.sweep.plan import plan_sweep
from harness.sweep.spec import load_sweep
from harness.trainer import train

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "multinode_slurm.sh"


def test_a_row_runs_on_several_nodes_and_a_batch_its_ranks_cannot_share_is_refused(sweep_dir, capsys):
    """The executor section (or one row's) asks for nodes x tasks per node; every run becomes one job of that
    many tasks, and a global batch (with its accumulation) that does not split evenly over them is refused
    before anything is submitted."""
    rows = [{"label": "one node", "set": {"model.adaln": "B"}},
            {"label": "four nodes", "set": {"model.adaln": "C"}, "executor": {"nodes": 4, "gpus_per_node": 8}}]
    path = write_sweep(sweep_dir, executor={"kind": "slurm", "gpus_per_node": 2}, rows=rows,
                       overrides={**SLOW, "train.global_batch": 64})
    runs = plan_sweep(load_sweep(path))
    assert [r.executor.world_size for r in runs] == [2, 2, 32, 32]
    sbatch = SlurmExecutor(sweep_dir, "s")._submitit(runs[2].executor)._executor._make_submission_file_text(
        "python -m x", "%j")
    assert "#SBATCH --nodes=4" in sbatch and "#SBATCH --ntasks-per-node=8" in sbatch and "--gpus-per-node=8" in sbatch

    path.write_text(path.read_text().replace("train.global_batch: 64", "train.global_batch: 48"))
    assert main([str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path}: overrides.train.global_batch=48: must be divisible by the job's 32 ranks "
        f"(executor nodes x tasks_per_node) x train.grad_accum=1")
    rows[1]["executor"]["tasks_per_node"] = 2
    path = write_sweep(sweep_dir, executor={"kind": "slurm", "gpus_per_node": 2}, rows=rows, overrides=SLOW)
    assert main([str(path), "--dry-run"]) == 2
    assert "rows[1].executor.tasks_per_node=2: one rank per GPU" in capsys.readouterr().err
    assert not (sweep_dir / "out").exists()


def cluster_answers(conf: str) -> bool:
    """Both nodes of an already running multi-node cluster answer (sinfo retries a missing conf for a minute:
    no conf, no cluster)."""
    if not os.path.isfile(conf):
        return False
    try:
        probe = subprocess.run(["sinfo", "-h", "-N", "-t", "idle,mix,alloc", "-o", "%N"], capture_output=True,
                               text=True, timeout=30, env={**os.environ, "SLURM_CONF": conf})
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0 and len(set(probe.stdout.split())) == 2


@pytest.fixture(scope="module")
def multinode_cluster():
    """The cluster's environment (SLURM_CONF, DITLAB_MULTINODE_HEAD: the head's address on the nodes' network)."""
    if os.geteuid() != 0:
        pytest.skip("the multi-node SLURM cluster needs root (network namespaces, slurmd)")
    exports = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    values = dict(item.split("=", 1) for item in exports.split()[1:])
    started = False
    if shutil.which("sinfo") is None or not cluster_answers(values["SLURM_CONF"]):
        out = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            lines = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()
            pytest.skip(f"scripts/multinode_slurm.sh start failed: {lines[-1]}")
        started = True
    yield values
    if started:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=300)


@pytest.fixture
def on_multinode(multinode_cluster, monkeypatch):
    """Client commands (sbatch through submitit, sacct, scontrol) talk to the multi-node cluster until the
    sweep's jobs are cancelled (`sweep_dir`, set up after this fixture, is torn down before it)."""
    monkeypatch.setenv("SLURM_CONF", multinode_cluster["SLURM_CONF"])
    return multinode_cluster


def test_runs_span_two_nodes_survive_a_requeue_and_end_with_one_process_weights(on_multinode, sweep_dir):
    executor = {"kind": "slurm", "nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1, "timeout_min": 20}
    path = write_sweep(sweep_dir, name="multinode", executor=executor, overrides=SLOW, seeds=[0, 1],
                       rows=[{"label": "pixel-wise", "set": {"model.adaln": "C"}}],
                       tracking={"host": on_multinode["DITLAB_MULTINODE_HEAD"]})   # the nodes log to it
    assert main([str(path)]) == 0
    spec = load_sweep(path)
    records = {s.run.seed: s for s in states(path).values()}
    array = {s.job_id.split("_")[0] for s in records.values()}
    assert len(array) == 1 and all("_" in s.job_id for s in records.values())   # one array, a 2-node job per run

    victim = records[0]
    run_dir = spec.folder / victim.run.run_name
    wait_until(lambda: (run_dir / "checkpoints" / "last.pt").exists(), timeout=600, what="the first checkpoint")
    subprocess.run(["scontrol", "requeue", victim.job_id], check=True)
    release_when_requeued(victim.job_id)
    wait_until(lambda: all_ended(path), timeout=900, what="both runs to end")
    assert {s.state for s in states(path).values()} == {"done"}

    _, _, kids = children(path)
    assert len(kids) == 2                                   # one MLflow run per run, the requeued one included
    for kid in kids:
        tags = kid.data.tags
        assert kid.info.status == "FINISHED"
        assert tags["slurm_nodelist"] == "dlnode[1-2]" and tags["world_size"] == "2"   # SLURM_JOB_NODELIST
        assert tags["host"] == "dlnode1"                    # rank 0 runs on the allocation's first node
    (requeued,) = [k for k in kids if k.data.tags["signature"] == victim.run.signature]
    stopped_at = int(requeued.data.tags["interrupted_at_step"])
    assert requeued.data.tags["resumed"] == "true" and 0 < stopped_at < SLOW["train.steps"]

    # every rank (one per node) resumed from the step rank 0 checkpointed: each task's own log says so
    log0 = Path(json.loads((spec.folder / "manifest.json").read_text())["runs"][victim.run.run_name]["stdout"])
    for task, log in enumerate([log0, log0.with_name(log0.name.replace("_0_log.out", "_1_log.out"))]):
        assert f"rank {task}: resumed from {run_dir / 'checkpoints' / 'last.pt'} at step {stopped_at}" \
            in log.read_text(), log

    # a single process on the same global batch: the same weights, up to the reduction order
    for run in plan_sweep(spec):
        single = train(resolve([*run.overrides(spec, f"sqlite:///{sweep_dir / 'single.db'}"),
                                f"run.out_dir={sweep_dir / 'single'}"]))
        # 40 steps, not the 6 of REDUCTION_ATOL's measurement: the reduction order's drift reached 1.7e-6 (a
        # different sample or a missed step moves weights by ~1e-3)
        assert_close_weights(weights(single.run_dir), weights(spec.folder / run.run_name), atol=1e-5)
