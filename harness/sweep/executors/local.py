"""This machine: detached jobs, at most `max_parallel` at once (each a lane of runs, one after another).

Each job is submitit's local controller and the task it starts, in a session (process group) of their own:
`cancel` stops the whole group (SIGTERM, then SIGKILL after a grace period, for a trainer stuck in a
network call), and a task whose controller dies is sent SIGTERM by the kernel (`prctl(PR_SET_PDEATHSIG)`,
set by the task), so no trainer outlives its job. Jobs do not inherit the submitting command's standard
streams: `run_sweep.py ... | tail -1` returns when the submission does, not when the jobs end.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from ..processes import process_alive, stop_groups
from . import Executor, ExecutorSpec, JobRecord, Task, count, register

CANCEL_GRACE_S = 30.0           # a trainer checkpoints at its next step after SIGTERM; then SIGKILL
WAIT_POLL_S = 2.0               # how often a lane waiting for other jobs looks whether they ended


@dataclass
class LocalSpec(ExecutorSpec):
    kind: str = "local"
    max_parallel: int = count(2)          # jobs at once; the cores are split between them


class Lane:
    """Several tasks one after another in one job; a failing task is recorded and the next one runs.
    `detached`: the job runs under a controller process whose death must end it. `after`: local jobs (their
    controllers' pids) that must have ended before the first task starts."""

    def __init__(self, fns: list, threads: int, detached: bool = True, after: tuple[int, ...] = ()):
        self.fns, self.threads, self.detached, self.after = fns, threads, detached, after

    def __call__(self) -> list:
        import torch
        if self.detached:
            die_with_parent()
        while any(process_alive(pid, "submitit") for pid in self.after):
            time.sleep(WAIT_POLL_S)
        torch.set_num_threads(self.threads)       # lanes share the cores instead of oversubscribing them
        results = []
        for fn in self.fns:
            try:
                results.append(fn())
            except Exception as err:             # the run is FAILED in MLflow; go on with the next
                results.append({"error": f"{type(err).__name__}: {err}"})
        return results


def die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this process when its parent (the job's controller) dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG = 1


class _DetachedExecutor(submitit.LocalExecutor):
    """submitit's local executor whose job controllers start in a session of their own, with standard
    streams in a log file instead of the submitting command's (submitit's controller protocol: the
    SUBMITIT_LOCAL_* environment read by `submitit.local._local`)."""

    def _submit_command(self, command: str):
        timeout_s = int(60 * self.parameters.get("timeout_min", 240))
        env = {**os.environ, "SUBMITIT_LOCAL_NTASKS": "1", "SUBMITIT_LOCAL_COMMAND": command,
               "SUBMITIT_LOCAL_TIMEOUT_S": str(timeout_s), "SUBMITIT_LOCAL_SIGNAL_DELAY_S": "30",
               "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_STDERR_TO_STDOUT": "",
               "SUBMITIT_EXECUTOR": "local", "CUDA_VISIBLE_DEVICES": "", "SUBMITIT_LOCAL_WITH_SHELL": ""}
        log_path = Path(str(self.folder).replace("%j", "controllers.log"))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "submitit.local._local", str(self.folder)], env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        return submitit.local.local.LocalJob(folder=self.folder, job_id=str(process.pid), process=process,
                                             tasks=[0])

    @property
    def _submitit_command_str(self) -> str:
        return " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(self.folder))])


@register
class LocalExecutor(Executor):
    kind = "local"
    Spec = LocalSpec
    LIVE = frozenset({"RUNNING"})

    def submit(self, tasks: list[Task]) -> list[JobRecord]:
        spec = tasks[0].spec
        lanes = max(1, min(spec.max_parallel, len(tasks)))
        threads = max(1, (os.cpu_count() or 1) // lanes)
        ex = _DetachedExecutor(folder=self.jobs_folder / "%j")
        records = []
        for lane in range(lanes):
            members = tasks[lane::lanes]
            after = tuple(sorted({int(job) for task in members for job in task.after}))
            ex.update_parameters(timeout_min=spec.timeout_min * len(members))
            job = ex.submit(Lane([task.fn for task in members], threads, after=after))
            records += [self._record(task, job, self.kind) for task in members]
        return records

    @classmethod
    def states(cls, records: list[dict]) -> dict[str, str]:
        return {r["job_id"]: "RUNNING" if process_alive(int(r["job_id"]), "submitit") else "ENDED" for r in records}

    @classmethod
    def cancel(cls, records: list[dict]) -> list[str]:
        states = cls.states(records)
        live = sorted({r["job_id"] for r in records if states[r["job_id"]] in cls.LIVE})
        stop_groups([int(job) for job in live], CANCEL_GRACE_S)
        return live
