"""This machine: detached jobs, at most `max_parallel` at once (each a lane of runs, one after another).

Each job is submitit's local controller and the task it starts, in a session (process group) of their own:
`cancel` stops the whole group (SIGTERM, then SIGKILL after a grace period, for a trainer stuck in a
network call), and a task whose controller dies is sent SIGTERM by the kernel (`prctl(PR_SET_PDEATHSIG)`,
set by the task), so no trainer outlives its job; a lane whose run was stopped by a signal, or whose
controller is gone, starts no further run. Jobs do not inherit the submitting command's standard
streams: `run_sweep.py ... | tail -1` returns when the submission does, not when the jobs end.

A job is its controller's pid, recorded with the controller's start identity (also in `<job folder>/process.json`)
and only taken for this sweep's while the process with that pid names this sweep's job folder and started then
(harness/sweep/processes.py): a stale manifest's pid that now belongs to another sweep's job is GONE to `status`
and left alone by `cancel`. `cancel` also stops a trainer whose job is gone (its controller killed while the
trainer was stuck, or stopped): the pid its run folder's lock names, under the same checks.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from toolkit.errors import reason
from toolkit.files import atomic_write_text

from ..processes import OwnedProcess, pid_alive, start_identity, stop_groups
from . import GONE, Executor, ExecutorSpec, JobRecord, Task, count, register

PROCESS_FILE = "process.json"   # in a job's folder: its controller's pid and start identity
CANCEL_GRACE_S = 30.0           # a trainer checkpoints at its next step after SIGTERM; then SIGKILL
WAIT_POLL_S = 2.0               # how often a lane waiting for other jobs looks whether they ended


@dataclass
class LocalSpec(ExecutorSpec):
    kind: str = "local"
    max_parallel: int = count(2)          # jobs at once; the cores are split between them


class Lane:
    """Several tasks one after another in one job; a failing task is recorded (its one-line reason) and the next
    one runs, unless a signal stopped it (cancel, preemption) or the job's controller is gone: then the lane ends.
    `detached`: the job runs under a controller process whose death must end it. `after`: local jobs (their
    controllers) that must have ended before the first task starts."""

    def __init__(self, fns: list, threads: int, detached: bool = True, after: tuple[OwnedProcess, ...] = ()):
        self.fns, self.threads, self.detached, self.after = fns, threads, detached, after

    def __call__(self) -> list:
        import torch

        from ...trainer import Interrupted
        controller = os.getppid()
        if self.detached:
            die_with_parent()
        while any(job.alive() for job in self.after):
            time.sleep(WAIT_POLL_S)
        torch.set_num_threads(self.threads)       # lanes share the cores instead of oversubscribing them
        results = []
        for fn in self.fns:
            if self.detached and os.getppid() != controller:
                break                             # the controller died: nothing may start without it
            try:
                results.append(fn())
            except Interrupted as err:            # stopped by a signal meant for the whole job
                results.append({"error": reason(err)})
                break
            except Exception as err:             # the run is FAILED in MLflow; go on with the next
                results.append({"error": reason(err)})
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
    SUBMITIT_LOCAL_* environment read by `submitit.local._local`); `started`: each controller's start identity."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started: dict[str, str | None] = {}

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
        self.started[str(process.pid)] = start_identity(process.pid)     # our child: not reaped, not recycled
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
            after = tuple(self.job({"job_id": job}) for job in sorted({job for task in members for job in task.after}))
            ex.update_parameters(timeout_min=spec.timeout_min * len(members))
            job = ex.submit(Lane([task.fn for task in members], threads, after=after))
            started = ex.started[job.job_id]
            atomic_write_text(Path(job.paths.folder) / PROCESS_FILE, json.dumps({"pid": int(job.job_id),
                                                                                  "started": started}))
            records += [self._record(task, job, self.kind, started) for task in members]
        return records

    def job(self, record: dict) -> OwnedProcess:
        """A job's controller as recorded (a record without its start identity: the one its job folder keeps, or,
        for a job submitted in this command, the live one)."""
        pid = int(record["job_id"])
        started = record.get("started") or self.recorded_start(self.jobs_folder / record["job_id"])
        return OwnedProcess(pid, str(self.jobs_folder), started)

    def recorded_start(self, job_folder: Path) -> str | None:
        try:
            return json.loads((job_folder / PROCESS_FILE).read_text()).get("started")
        except (OSError, ValueError):
            return None

    def states(self, records: list[dict]) -> dict[str, str]:
        return {r["job_id"]: "RUNNING" if self.job(r).alive() else GONE if pid_alive(int(r["job_id"])) else "ENDED"
                for r in records}

    def cancel(self, records: list[dict]) -> list[str]:
        states = self.states(records)
        live = sorted({r["job_id"] for r in records if states[r["job_id"]] in self.LIVE})
        stop_groups([int(job) for job in live], CANCEL_GRACE_S)
        return live

    def stop_orphans(self) -> list[str]:
        """Trainers still holding a run folder of this sweep whose job is gone (run after `cancel`, which stops
        the live jobs with their trainers): the lock's pid, on this machine, naming this sweep's job folder and
        started when the lock says. Their process groups (the job's session: data workers too) are stopped."""
        from ...trainer import lock_holder
        here, orphans = socket.gethostname(), {}
        for lock in sorted(self.folder.glob("*/.lock")):
            holder = lock_holder(lock.parent)
            if holder is None or holder[1] != here or holder[2] is None:
                continue
            trainer = OwnedProcess(holder[0], str(self.jobs_folder), holder[2])
            try:
                if trainer.alive():
                    orphans[os.getpgid(trainer.pid)] = f"trainer pid {trainer.pid} ({lock.parent.name})"
            except ProcessLookupError:            # ended meanwhile
                continue
        stop_groups(sorted(orphans), CANCEL_GRACE_S)
        return list(orphans.values())
