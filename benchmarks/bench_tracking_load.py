"""Load on one tracking server: many runs starting together and logging every step through it, as a sweep's jobs do.

    python benchmarks/bench_tracking_load.py --backend sqlite        # the sweep's default store (its sqlite file)
    python benchmarks/bench_tracking_load.py --backend postgresql    # needs DITLAB_POSTGRES_URI and PGPASSFILE:
                                                                     # eval "$(scripts/local_postgres.sh env)"
        [--runs 64] [--steps 200] [--auth] [--step-s 0]

The server is the sweep's own (`harness/sweep/server.py`: `mlflow server`, one worker; `--auth`: MLflow's basic-auth
app with a sweep's credentials, as a server beyond the loopback runs). Each run is a process that logs through the
trainer's own `Tracker` (`harness/tracking.py`), all released at once: create the run with its ~190 params (a
resolved config), then at every step one batch of the trainer's per-step metrics (loss, grad_norm, lr, images_per_s,
peak_memory_gb, epoch, system/step, system/heartbeat), `--step-s` apart (0: as fast as the server answers), then
FINISHED; on an error it ends the run FAILED, as the trainer does. Read back from the store itself afterwards:
points logged against expected (and duplicates), runs lost (missing from the store, or whose client failed), runs
left RUNNING, and each request's latency as the clients saw it (the server's, over the loopback).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from harness.config import TrackingConfig, TrainConfig
from harness.configure import flatten
from harness.sweep.auth import exported, sweep_credentials
from harness.sweep.jobs import JOB_ENVIRONMENT
from harness.sweep.processes import stop_groups
from harness.sweep.server import launch_mlflow_server
from harness.tracking import Tracker, ensure_experiment, mlflow_client
from toolkit.cli import quiet

EXPERIMENT = "load"
KEYS = ("loss", "grad_norm", "lr", "images_per_s", "peak_memory_gb", "epoch", "system/step", "system/heartbeat")


def one_run(index: int, url: str, folder: Path, steps: int, step_s: float, start, results) -> None:
    """A job: its run through the trainer's Tracker; (index, error, run start seconds, log latencies) to `results`."""
    latencies, tracker, error, opened = [], None, None, 0.0
    start.wait()
    try:
        began = time.perf_counter()
        tracker = Tracker(TrackingConfig(uri=url, experiment=EXPERIMENT), folder / f"run{index}", f"run {index}",
                          None, {"bench": "load", "index": str(index)}, flatten(TrainConfig()))
        opened = time.perf_counter() - began
        for step in range(1, steps + 1):
            values = {key: 1.0 / step + index for key in KEYS}
            values.update({"system/step": step, "system/heartbeat": time.time()})
            began = time.perf_counter()
            tracker.log_metrics(values, step)
            latencies.append(time.perf_counter() - began)
            if step_s:
                time.sleep(step_s)
        tracker.finish("FINISHED")
    except Exception as err:                      # the trainer ends its run FAILED with the reason
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if tracker is not None and tracker.run_id:
            tracker._try_finish("FAILED", error)
    results.put((index, error, opened, latencies))


def postgres_database(name: str, drop: bool = False) -> str:
    import psycopg
    admin = os.environ["DITLAB_POSTGRES_URI"]
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if not drop:
            connection.execute(f"CREATE DATABASE {name}")
    return f"{admin.rsplit('/', 1)[0]}/{name}"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--step-s", type=float, default=0.0, help="seconds between two steps of a run")
    parser.add_argument("--auth", action="store_true", help="MLflow's basic-auth app, as beyond the loopback")
    args = parser.parse_args()
    quiet()                                       # no "View run" line per run
    folder = Path(tempfile.mkdtemp(prefix="bench_load_"))
    database = f"bench_load_{os.getpid()}"
    backend = postgres_database(database) if args.backend == "postgresql" else f"sqlite:///{folder / 'mlflow.db'}"
    ensure_experiment(mlflow_client(backend), EXPERIMENT, folder / "mlartifacts")   # as a sweep prepares its store
    credentials = sweep_credentials(folder, "bench") if args.auth else None
    proc, url = launch_mlflow_server(backend, folder / "mlartifacts", folder / "server.log", timeout=300,
                                     auth=credentials)
    _ = mlflow_client(url)._tracking_client.store   # the REST client's modules, imported once before the fork
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    with exported({**JOB_ENVIRONMENT, **(credentials.job_environment() if credentials else {})}):   # as jobs run
        workers = [context.Process(target=one_run, args=(i, url, folder, args.steps, args.step_s, start, results))
                   for i in range(args.runs)]
        for worker in workers:
            worker.start()
    time.sleep(2)                                 # every process forked and waiting: they start together
    began = time.perf_counter()
    start.set()
    reports = [results.get() for _ in workers]
    wall = time.perf_counter() - began
    for worker in workers:
        worker.join()
    stop_groups([proc.pid])

    client = mlflow_client(backend)               # read back from the store itself, not through the server
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], max_results=50000)
    points = duplicates = 0
    for run in runs:
        for key in KEYS:
            history = client.get_metric_history(run.info.run_id, key)
            points += len(history)
            duplicates += len(history) - len({m.step for m in history})
    indices = {run.data.tags.get("index") for run in runs}
    failed = [(i, error) for i, error, _, _ in reports if error]
    lost = sorted({i for i, _ in failed} | {i for i in range(args.runs) if str(i) not in indices})
    running = sum(run.info.status == "RUNNING" for run in runs)
    latencies = [x for _, _, _, values in reports for x in values]
    opened = [seconds for _, error, seconds, _ in reports if not error]
    expected = args.runs * args.steps * len(KEYS)
    print(f"backend {args.backend}, {args.runs} runs x {args.steps} steps x {len(KEYS)} metrics through one server "
          f"(1 worker{', basic-auth' if args.auth else ''}), all started together"
          + (f", {args.step_s} s between steps" if args.step_s else ", each step as soon as the last was stored"))
    print(f"  points logged {points} of {expected} expected ({duplicates} duplicates); runs lost {len(lost)}; "
          f"runs left RUNNING {running}; {len(runs)} runs in the store")
    if latencies:
        print(f"  log_batch latency: p50 {1000 * percentile(latencies, 50):.0f} ms, p95 "
              f"{1000 * percentile(latencies, 95):.0f} ms, max {1000 * max(latencies):.0f} ms; run start (create + "
              f"params): p50 {percentile(opened, 50):.2f} s, max {max(opened):.2f} s; {len(latencies) / wall:.0f} "
              f"batches/s over {wall:.0f} s")
    log = (folder / "server.log").read_text(errors="replace")
    answered = [line for line in log.splitlines() if '" 5' in line and "HTTP/1.1" in line]
    print(f"  server: {len(answered)} requests answered 5xx (the clients retry them), "
          f"{log.count('database is locked')} 'database is locked' in its log")
    for index, error in failed[:5]:
        print(f"  run {index} failed: {error}")
    if os.environ.get("BENCH_KEEP"):
        print(f"  kept {folder}")
        return
    if args.backend == "postgresql":
        postgres_database(database, drop=True)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
