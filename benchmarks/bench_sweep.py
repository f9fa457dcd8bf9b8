"""Sweep-layer timings: planning, submission and status at scale.

    python benchmarks/bench_sweep.py            # SLURM parts need SLURM_CONF (scripts/local_slurm.sh start)

1. plan a 1,000-run sweep (4 Table-4 rows x 25 grid points x 10 seeds; every config resolved and
   validated, every distinct model built on the meta device) — target under 10 s;
2. submit 100 runs to the local SLURM as one job array, held so they do not run (`--hold`), then
   cancel them — target one sbatch call, under 5 s;
3. `status` of 1,000 runs with 1,000 MLflow runs in the store and 100 live SLURM jobs — one MLflow
   query and one sacct call — target under 2 s;
4. the ablation table of the same 1,000 runs (plan read from the submission's plan cache, one MLflow
   query) — target under 2 s.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from analysis.runs import load_sweep_runs
from analysis.table import build_table
from harness.sweep.executors import Task, executor_class
from harness.sweep.jobs import TrainJob
from harness.sweep.plan import plan_sweep, write_plan_cache
from harness.sweep.spec import load_sweep
from harness.sweep.store import store_uri
from harness.sweep.sweep import Sweep


def write(folder: Path, executor: dict) -> Path:
    sweep = {"name": "bench", "experiment": "tiny_digits", "output": str(folder / "out"),
             "overrides": {"train.steps": 10, "eval.metric": "none"},
             "rows": [{"label": name, "set": {"model": name}} for name in
                      ("table4_vanilla_dit16", "table4_rope_rmsnorm", "table4_ptc", "table4_pixelwise")],
             "grid": {"optim.lr": [1e-4 * (i + 1) for i in range(5)], "objective.p_mean": [-0.8, -0.4, 0.0, 0.4, 0.8]},
             "seeds": list(range(10)), "executor": executor}
    for row in sweep["rows"]:      # toy widths, as sweeps/tiny_table4.yaml
        row["set"].update({"model.input_size": 32, "model.patch_size": 8, "model.num_classes": 10,
                           "model.depth": 4, "model.hidden_size": 64, "model.num_heads": 4,
                           "model.pixel_depth": 1, "model.pixel_dim": 8, "model.repa": False})
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def main():
    folder = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    path = write(folder, {"kind": "slurm", "additional_parameters": {"hold": True}})
    spec = load_sweep(path)
    start = time.perf_counter()
    runs = plan_sweep(spec)
    print(f"plan {len(runs)} runs: {time.perf_counter() - start:.2f} s (target < 10 s)")

    slurm = "SLURM_CONF" in os.environ and shutil.which("sbatch")
    jobs = []
    sweep = Sweep(spec)
    experiment_id = sweep.prepare_store()
    if slurm:
        start = time.perf_counter()
        tasks = [Task(run.run_name, spec.executor, TrainJob(run.overrides(spec, store_uri(spec), "bench")))
                 for run in runs[:100]]
        jobs = executor_class("slurm")(spec.folder, spec.name).submit(tasks)
        elapsed = time.perf_counter() - start
        arrays = sorted({j.job_id.split("_")[0] for j in jobs})
        queued = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i %T %r"],
                                capture_output=True, text=True).stdout.splitlines()
        print(f"submit 100 runs to SLURM: {elapsed:.2f} s as {len(arrays)} array(s) (one sbatch each); "
              f"squeue lists {len(queued)} held tasks (target one sbatch, < 5 s)")
    else:
        print("submit: skipped (no SLURM_CONF / sbatch; run scripts/local_slurm.sh start)")

    # 1,000 runs in MLflow, tagged as the jobs tag them, and a manifest of what was submitted
    client = sweep.client
    for run in runs:
        created = client.create_run(experiment_id, run_name=run.run_name,
                                    tags={"sweep": spec.name, "signature": run.signature})
        client.set_terminated(created.info.run_id, "FINISHED")
    sweep.record_submission(runs[:100], jobs, "bench", "slurm")
    start = time.perf_counter()
    states = sweep.states()
    elapsed = time.perf_counter() - start
    print(f"status of {len(states)} runs ({sum(s.state == 'done' for s in states)} done, "
          f"{len(jobs)} with SLURM jobs): {elapsed:.2f} s (target < 2 s)")
    write_plan_cache(spec, runs)                  # as a submission leaves it
    start = time.perf_counter()
    table = build_table(load_sweep_runs(Sweep.open(path)), metric="loss")
    elapsed = time.perf_counter() - start
    print(f"table of {len(runs)} runs ({len(table.frame)} table rows): {elapsed:.2f} s (target < 2 s)")
    if jobs:
        subprocess.run(["scancel", *sorted({j.job_id.split('_')[0] for j in jobs})], check=False)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
