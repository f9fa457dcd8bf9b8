"""What a sweep's job runs: one training run, resumable from its run folder.

From its first line a job makes sure a failure is explained, in one line naming the cause and the file
(`toolkit.errors.reason`): the trainer ends its MLflow run FAILED with the reason, and every failure, also one
before the run reaches MLflow (a config that no longer resolves after an upgrade, a store that is gone, every
checkpoint damaged), is written to `<run folder>/job_failure.json`, which `status` shows. Every job of every
verb does the same in its own folder (`explained`): `run_sweep.py eval` prints its shard and scoring jobs'
reasons from there.

A run's output also goes to `<run folder>/job.log` (every attempt appended, a failure's traceback included),
so `run_sweep.py logs` shows one run's lines even when one job runs several runs (a local lane).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import submitit

from toolkit.errors import reason
from toolkit.files import atomic_write_text

JOB_FAILURE_FILE = "job_failure.json"
RUN_LOG_FILE = "job.log"
JOB_ENVIRONMENT = {
    "MLFLOW_DISABLE_TELEMETRY": "true",   # MLflow's telemetry thread mutates os.environ while a request is built
}


REQUEUE_GRACE_S = 120          # how long ranks other than 0 wait, after a SIGUSR2 checkpoint, for rank 0's requeue


def rendezvous_port(job_id: str) -> int:
    """A port for the job's rendezvous, from its own SLURM job id (an array's tasks each have one; two tasks
    of an array sharing a first node must not share a port), the same on every node and every attempt."""
    return 20000 + int(job_id) % 20000


def _distributed_env() -> None:
    """torch.distributed variables from submitit's view of a SLURM job of several tasks, on one node or many:
    every task's rank, and the rendezvous (torch's TCPStore, then gloo/NCCL) on the allocation's first node.
    A task's CPU threads are its SLURM CPUs (`cpus_per_task`), not the whole node's."""
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks),
                          LOCAL_RANK=str(env.local_rank), LOCAL_WORLD_SIZE=str(env.num_tasks // env.num_nodes),
                          MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(rendezvous_port(os.environ["SLURM_JOB_ID"])))
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        import torch
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))


def run_folder(overrides: list[str]) -> Path | None:
    """<run.out_dir>/<run.name> as the overrides set them (JSON-quoted values, as the plan writes them)."""
    values = dict(item.split("=", 1) for item in overrides if item.startswith(("run.name=", "run.out_dir=")))
    if len(values) != 2:
        return None
    unquote = lambda text: json.loads(text) if text.startswith('"') else text     # noqa: E731
    return Path(unquote(values["run.out_dir"])) / unquote(values["run.name"])


class Tee:
    """A text stream that writes to `stream` and to `copy`; everything else is `stream`'s."""

    def __init__(self, stream, copy):
        self.stream, self.copy = stream, copy

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.copy.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def run_log(folder: Path | None):
    """Copy this process's stdout and stderr to `<folder>/job.log` while the block runs; yields the log file."""
    if folder is None:
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / RUN_LOG_FILE, "a", buffering=1, encoding="utf-8") as log:
        try:
            job = submitit.JobEnvironment().job_id
        except RuntimeError:                      # called outside a submitit job (tests): no job id
            job = None
        log.write(f"==> {folder.name}: attempt at {time.strftime('%Y-%m-%d %H:%M:%S')}, pid {os.getpid()}"
                  + (f", job {job}" if job else "") + "\n")
        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(streams[0], log), Tee(streams[1], log)
        try:
            yield log
        finally:
            sys.stdout, sys.stderr = streams


@contextlib.contextmanager
def explained(folder: Path | None, fresh: bool = True):
    """Write why the block failed, one line (`reason`), to `<folder>/job_failure.json` (not for a job stopped by
    a signal: that is no failure of its own). `fresh`: an earlier attempt's reason is removed first (a folder of
    one job; the folder of several jobs is cleared by the command that submits them)."""
    if folder is not None and fresh:
        (folder / JOB_FAILURE_FILE).unlink(missing_ok=True)
    try:
        yield
    except Exception as err:
        if folder is not None and type(err).__name__ != "Interrupted":
            atomic_write_text(folder / JOB_FAILURE_FILE, json.dumps({"reason": reason(err), "time": time.time()}))
        raise


def job_failure(folder: Path) -> str | None:
    """Why the latest job working in `folder` failed, as it wrote it (`explained`), or None."""
    try:
        return json.loads((Path(folder) / JOB_FAILURE_FILE).read_text()).get("reason")
    except (OSError, ValueError):
        return None


class TrainJob(submitit.helpers.Checkpointable):
    """One sweep run as a checkpointable submitit job; `checkpoint()` resubmits the same call. `restart`: a run whose
    every checkpoint is damaged starts again at step 0 (`--restart`) instead of being refused."""

    def __init__(self, overrides: list[str], restart: bool = False):
        self.overrides, self.restart = overrides, restart

    def __call__(self) -> dict:
        os.environ.update(JOB_ENVIRONMENT)
        folder = run_folder(self.overrides)
        with run_log(folder) as log, explained(folder):
            try:
                from ..configure import resolve
                from ..trainer import Interrupted, train
                if "SLURM_JOB_ID" in os.environ:
                    _distributed_env()
                try:
                    result = train(resolve(self.overrides), restart=self.restart)
                except Interrupted as err:
                    if err.signum == signal.SIGUSR2:   # the trainer restored submitit's handler: let it requeue
                        signal.raise_signal(signal.SIGUSR2)
                        if int(os.environ.get("SLURM_PROCID", 0)) > 0:
                            # submitit requeues from rank 0 only; exiting first could end the whole job (srun
                            # --kill-on-bad-exit) before it does. The requeue stops this task.
                            time.sleep(REQUEUE_GRACE_S)
                    raise
            except Exception:
                if log is not None:               # the job's own log gets it from submitit
                    traceback.print_exc(file=log)
                raise
        return {"run_id": result.run_id, "step": result.step, **result.metrics}
