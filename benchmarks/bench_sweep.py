"""Sweep-layer timings: planning, submission and status at scale.

    python benchmarks/bench_sweep.py            # SLURM parts need SLURM_CONF (scripts/local_slurm.sh start)

1. plan a 1,000-run sweep (4 Table-4 rows x 25 grid points x 10 seeds; every config resolved and
   validated, every distinct model built on the meta device) — target under 10 s;
2. submit 100 runs to the local SLURM as one job array, held so they do not run (`--hold`), then
   cancel them — target one sbatch call, under 5 s;
3. `status` of 1,000 runs with 1,000 MLflow runs in the store and 100 live SLURM jobs — one MLflow
   query and one sacct call — target under 2 s;
4. the ablation table of the same 1,000 runs (plan read from the submission's plan cache, one MLflow
   query) — target under 2 s;
5. the live case (`--live`; needs DITLAB_POSTGRES_URI and PGPASSFILE: `eval "$(scripts/local_postgres.sh env)"`):
   the same 1,000-run sweep on a PostgreSQL store holding 1,000 runs with their ~190 params each — 900 finished,
   100 running and logging (every 10 s each, from another process, as jobs do) — and two reuse stores of 1,000
   finished runs each; the live view (`--wait`, `status --watch`: a poll every 10 s, or further apart when a poll
   costs more than 5% of a core over that time; the table redrawn to a 50-line terminal) for a minute — targets:
   a refresh under 2 s, the watcher under 5% of a core. The same minute re-reading every store
   at every poll (as before harness/sweep/reader.py) is printed beside it.

    python benchmarks/bench_sweep.py [--live]
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from bench_tracking_load import postgres_database
from mlflow.entities import Metric, Param
from rich.console import Console

from analysis.runs import load_sweep_runs
from analysis.table import build_table
from harness.config import TrainConfig
from harness.configure import flatten
from harness.sweep import progress
from harness.sweep.executors import Task, executor_class
from harness.sweep.jobs import TrainJob
from harness.sweep.plan import plan_sweep, write_plan_cache
from harness.sweep.reader import Readers
from harness.sweep.spec import load_sweep
from harness.sweep.store import store_uri
from harness.sweep.sweep import Sweep
from harness.tracking import mlflow_client


def write(folder: Path, executor: dict, **more) -> Path:
    sweep = {"name": "bench", "experiment": "tiny_digits", "output": str(folder / "out"),
             "overrides": {"train.steps": 10, "eval.metric": "none"},
             "rows": [{"label": name, "set": {"model": name}} for name in
                      ("table4_vanilla_dit16", "table4_rope_rmsnorm", "table4_ptc", "table4_pixelwise")],
             "grid": {"optim.lr": [1e-4 * (i + 1) for i in range(5)], "objective.p_mean": [-0.8, -0.4, 0.0, 0.4, 0.8]},
             "seeds": list(range(10)), "executor": executor, **more}
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


# ---- 5. the live case ------------------------------------------------------------------------------

PARAMS = [Param(k, str(v)[:6000]) for k, v in flatten(TrainConfig()).items()]     # a run's logged config
LIVE_KEYS = ("loss", "grad_norm", "lr", "images_per_s", "epoch", "system/step", "system/heartbeat")


def fill(uri: str, experiment_id: str, runs: list[tuple[str, str]], running: int) -> list[str]:
    """Runs (sweep, signature) as a trainer leaves them: tags, params, metrics; all FINISHED but the last
    `running`. Returns the ids of the running ones. Their start and end times are stamped an hour back, as a
    sweep's runs are when someone watches it (filled seconds ago, every run would look just started: a poll
    re-reads what started or ended within harness/sweep/reader.py's clock margin)."""
    client = mlflow_client(uri)
    hour_ago = int(time.time() * 1000) - 3600 * 1000

    def one(item):
        index, (sweep, signature) = item
        run = client.create_run(experiment_id, start_time=hour_ago, tags={"sweep": sweep, "signature": signature,
                                                                          "total_steps": "1000"}).info.run_id
        for start in range(0, len(PARAMS), 100):
            client.log_batch(run, params=PARAMS[start:start + 100])
        now = int(time.time() * 1000)
        client.log_batch(run, metrics=[Metric(k, 0.5, now, 500) for k in LIVE_KEYS])
        if index < len(runs) - running:
            client.set_terminated(run, "FINISHED", end_time=hour_ago + 60 * 1000)
        return run

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, enumerate(runs)))
    return ids[len(runs) - running:]


def log_on(uri: str, run_ids: list[str], every_s: float, stop) -> None:
    """The running jobs: each logs its step's metrics every `every_s` seconds."""
    client = mlflow_client(uri)
    step = 500
    while not stop.is_set():
        started = time.time()
        step += 1
        for run in run_ids:
            client.log_batch(run, metrics=[Metric(k, 1.0 / step, int(time.time() * 1000), step) for k in LIVE_KEYS])
        stop.wait(max(0.0, every_s - (time.time() - started)))


def watch(sweep: Sweep, seconds: float, every_s: float, incremental: bool) -> tuple[list[float], list[float], float]:
    """The live view for `seconds`, the table redrawn to a 50-line terminal in memory; paced as `progress.follow`
    paces it (a poll every `every_s` s, or further apart when one costs more than its share of a core), except
    when every store is re-read at every poll (the view before harness/sweep/reader.py: every `every_s` s).
    Returns (each refresh's seconds, each refresh's CPU seconds, CPU seconds of this process)."""
    console = Console(file=io.StringIO(), force_terminal=True, width=200, height=50)
    refreshes, costs, cpu, began = [], [], time.process_time(), time.perf_counter()
    while time.perf_counter() - began < seconds:
        tick, poll_cpu = time.perf_counter(), time.process_time()
        if not incremental:
            sweep.__dict__["readers"] = Readers()          # every store read in full, as before
        states = sweep.states()
        console.print(progress.table(states, rows=console.height - 6))
        refreshes.append(time.perf_counter() - tick)
        costs.append(time.process_time() - poll_cpu)
        time.sleep(progress.pause(every_s, costs[-1]) if incremental else every_s)
    return refreshes, costs, time.process_time() - cpu


def live(minutes: float = 1.0) -> None:
    if "DITLAB_POSTGRES_URI" not in os.environ:
        print("live case: skipped (no DITLAB_POSTGRES_URI; eval \"$(scripts/local_postgres.sh env)\")")
        return
    folder = Path(tempfile.mkdtemp(prefix="bench_live_"))
    tag = uuid.uuid4().hex[:8]
    store, reuse = postgres_database(f"live_{tag}"), [postgres_database(f"live_{tag}_reuse{i}") for i in range(2)]
    path = write(folder, {"kind": "local"}, tracking={"uri": store}, reuse_from=reuse)
    spec = load_sweep(path)
    runs = plan_sweep(spec)
    sweep = Sweep(spec)
    experiment_id = sweep.prepare_store()
    sweep.save_manifest()
    write_plan_cache(spec, runs)
    started = time.perf_counter()
    running = fill(store, experiment_id, [(spec.name, r.signature) for r in runs], running=100)
    for i, uri in enumerate(reuse):                    # other sweeps' finished runs, none of this plan's signatures
        other = mlflow_client(uri).create_experiment(f"other{i}")
        fill(uri, other, [(f"other{i}", uuid.uuid4().hex[:16]) for _ in runs], running=0)
    print(f"live case: {len(runs)} planned runs on PostgreSQL (900 finished, 100 running), 2 reuse stores of "
          f"{len(runs)} finished runs, {len(PARAMS)} params a run (filled in {time.perf_counter() - started:.0f} s)")
    stop = multiprocessing.get_context("spawn").Event()
    logger = multiprocessing.get_context("spawn").Process(target=log_on, args=(store, running, 10.0, stop))
    logger.start()
    try:
        for incremental in (True, False):
            watcher = Sweep.open(path)                   # a new command: `status --watch`
            first = time.perf_counter()
            states = watcher.states()
            first = time.perf_counter() - first
            refreshes, costs, cpu = watch(watcher, 60 * minutes, 10.0, incremental)
            later, costs = sorted(refreshes), sorted(costs)
            label = "reads what changed, paced (harness/sweep/reader.py, progress.pause)" if incremental else \
                "re-reads every store every 10 s (before)"
            print(f"  live view, {label}: first poll {first:.2f} s ({sum(s.state == 'running' for s in states)} "
                  f"running); {len(later)} polls in {minutes:g} min (one every {60 * minutes / len(later):.1f} s): "
                  f"refresh median {later[len(later) // 2]:.2f} s, max {later[-1]:.2f} s (target < 2 s), CPU a poll "
                  f"median {costs[len(costs) // 2]:.2f} s; watcher CPU {cpu:.1f} s in {minutes:g} min = "
                  f"{100 * cpu / (60 * minutes):.1f}% of a core (target < 5%)")
    finally:
        stop.set()
        logger.join()
    for name in (f"live_{tag}", f"live_{tag}_reuse0", f"live_{tag}_reuse1"):
        postgres_database(name, drop=True)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--live", action="store_true", help="only the live case (5.)")
    if not parser.parse_args().live:
        main()
    live()
