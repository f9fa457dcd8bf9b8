"""Submission of planned runs: SLURM job arrays (submitit), local subprocesses, or in-process (debug).

A job is `TrainJob(overrides)`: the training entry point, resumable from its run folder. On SIGUSR2
(SLURM's warning before the time limit, or `scancel --signal=USR2`) the trainer writes a checkpoint at
the next step boundary and stops; the job then hands the signal to submitit, whose handler requeues
it. On SIGTERM (`scontrol requeue`, preemption, scancel) it checkpoints and exits, and SLURM requeues
or cancels it. Either way the next attempt resumes from the checkpoint into the same MLflow run:
the state is on disk, not in the pickle.
"""
from __future__ import annotations

import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

import submitit

from .plan import PlannedRun
from .spec import ExecutorSpec, SweepSpec


@dataclass
class JobRecord:
    run_name: str
    job_id: str
    stdout: str
    stderr: str
    executor: str


def _distributed_env() -> None:
    """torch.distributed variables from submitit's view of a multi-task SLURM job."""
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks),
                          LOCAL_RANK=str(env.local_rank), MASTER_ADDR=env.hostnames[0],
                          MASTER_PORT=str(20000 + int(str(env.job_id).split("_")[0]) % 20000))


class TrainJob(submitit.helpers.Checkpointable):
    """One sweep run as a checkpointable submitit job; `checkpoint()` resubmits the same call."""

    def __call__(self, overrides: list[str]) -> dict:
        from ..configure import resolve
        from ..train import Interrupted, train
        if "SLURM_JOB_ID" in os.environ:
            _distributed_env()
        try:
            result = train(resolve(overrides))
        except Interrupted as err:
            if err.signum == signal.SIGUSR2:       # the trainer restored submitit's handler: let it requeue
                signal.raise_signal(signal.SIGUSR2)
            raise
        return {"run_id": result.run_id, "step": result.step, **result.metrics}


class RunQueue:
    """Several runs one after another in one local job (bounded local parallelism)."""

    def __call__(self, batch: list[list[str]], threads: int) -> list[dict]:
        import torch
        torch.set_num_threads(threads)            # lanes share the machine's cores instead of oversubscribing
        results = []
        for overrides in batch:
            try:
                results.append(TrainJob()(overrides))
            except Exception as err:              # the run is FAILED in MLflow; go on with the next
                results.append({"error": f"{type(err).__name__}: {err}"})
        return results


def torch_threads(lanes: int = 1) -> int:
    return max(1, (os.cpu_count() or 1) // lanes)


def slurm_executor(spec: SweepSpec, executor: ExecutorSpec) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=spec.folder / "submitit" / "%j", cluster="slurm",
                               slurm_max_num_timeout=executor.max_num_timeout)
    params = dict(name=spec.name, timeout_min=executor.timeout_min, nodes=executor.nodes,
                  tasks_per_node=max(1, executor.gpus_per_node), slurm_array_parallelism=executor.array_parallelism,
                  slurm_setup=list(executor.setup),
                  slurm_additional_parameters=dict(executor.additional_parameters))
    if executor.gpus_per_node:
        params["gpus_per_node"] = executor.gpus_per_node
    optional = dict(slurm_partition=executor.partition, cpus_per_task=executor.cpus_per_task,
                    mem_gb=executor.mem_gb, slurm_account=executor.account, slurm_qos=executor.qos,
                    slurm_constraint=executor.constraint)
    params.update({k: v for k, v in optional.items() if v is not None})
    ex.update_parameters(**params)
    return ex


def submit(spec: SweepSpec, runs: list[PlannedRun], kind: str, tracking_uri: str,
           parent_run_id: str) -> list[JobRecord]:
    """Submit the runs; SLURM gets one job array per distinct executor setting (usually one)."""
    if not runs:
        return []
    commands = {run.run_name: run.overrides(spec, tracking_uri, parent_run_id) for run in runs}
    records: list[JobRecord] = []
    if kind == "slurm":
        groups: dict[str, list[PlannedRun]] = {}
        for run in runs:
            groups.setdefault(repr(asdict(run.executor)), []).append(run)
        for members in groups.values():
            ex = slurm_executor(spec, members[0].executor)
            with ex.batch():
                jobs = [ex.submit(TrainJob(), commands[run.run_name]) for run in members]
            records += [_record(run.run_name, job, kind) for run, job in zip(members, jobs)]
    elif kind == "local":
        ex = submitit.LocalExecutor(folder=spec.folder / "submitit" / "%j")
        ex.update_parameters(timeout_min=spec.executor.timeout_min)
        lanes = max(1, min(spec.executor.max_parallel, len(runs)))
        for lane in range(lanes):
            members = runs[lane::lanes]
            job = ex.submit(RunQueue(), [commands[run.run_name] for run in members], torch_threads(lanes))
            records += [_record(run.run_name, job, kind) for run in members]
    else:                                         # debug: in-process, one after another, blocking
        ex = submitit.DebugExecutor(folder=spec.folder / "submitit" / "%j")
        for run in runs:                          # through RunQueue: a failing run is recorded, not pdb'd
            job = ex.submit(RunQueue(), [commands[run.run_name]], torch_threads())
            records.append(_record(run.run_name, job, kind))
            job.result()
    return records


def _record(run_name: str, job, kind: str) -> JobRecord:
    paths = job.paths
    return JobRecord(run_name, str(job.job_id), str(Path(paths.stdout)), str(Path(paths.stderr)), kind)
