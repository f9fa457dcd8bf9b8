"""SLURM through submitit: one job array per submission and distinct executor setting.

A run is one job of `nodes` x `tasks_per_node` tasks (one rank each; on GPUs one per GPU), an element of
the array; its tasks initialise torch.distributed from SLURM's environment with the rendezvous on the
first node of the allocation (`jobs.py`).

Preemption and time limits: on SIGUSR2 (SLURM's warning before the limit, or `scancel --signal=USR2`) the
trainer checkpoints and hands the signal to submitit, which requeues the job; on SIGTERM (`scontrol
requeue`, preemption) it checkpoints and exits and SLURM requeues it. The next attempt resumes from the
checkpoint: the state is on disk, not in the pickle.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import submitit

from toolkit.errors import ConfigError

from . import GONE, Executor, ExecutorSpec, JobRecord, Task, count, register

ACCOUNTING_LAG_S = 600          # sacct may not list a just-submitted job yet


@dataclass
class SlurmSpec(ExecutorSpec):
    kind: str = "slurm"
    partition: Optional[str] = None
    gpus_per_node: int = count(0, 0)      # GPUs per node, one rank (task) each; 0: CPU tasks
    tasks_per_node: Optional[int] = field(default=None, metadata={"min": 1})
                                          # ranks per node; default gpus_per_node (GPUs), else 1 (CPU ranks: gloo)
    nodes: int = count(1)                 # nodes per run: one job spans them (world size = nodes x tasks_per_node)
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    array_parallelism: int = count(64)    # array tasks running at once
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    setup: list = field(default_factory=list)                    # shell lines run before each job
    additional_parameters: dict = field(default_factory=dict)    # any other sbatch option
    max_num_timeout: int = count(3, 0)    # requeues after a time-out before giving up (preemptions are free)

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    def check(self, where: str) -> None:
        for i, line in enumerate(self.setup):     # lines of the job script, each one line of text
            if not isinstance(line, str):
                raise ConfigError(f"{where}.setup[{i}]", line, "expected a shell line (text)")
        for key, value in self.additional_parameters.items():
            if isinstance(value, (list, dict)) or value is None:
                raise ConfigError(f"{where}.additional_parameters.{key}", value, "expected one sbatch option "
                                  "value (text or a number)")
        if self.gpus_per_node and self.tasks_per_node not in (None, self.gpus_per_node):
            raise ConfigError(f"{where}.tasks_per_node", self.tasks_per_node, f"one rank per GPU: leave it out or "
                              f"set it to gpus_per_node={self.gpus_per_node}")


@register
class SlurmExecutor(Executor):
    kind = "slurm"
    Spec = SlurmSpec
    JOB_ID = r"\d+(_\d+)?"                # a job, or a task of an array
    LIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                      "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "PREEMPTED", "STOPPED"})

    def _submitit(self, spec: SlurmSpec, after: tuple[str, ...] = ()) -> submitit.AutoExecutor:
        ex = submitit.AutoExecutor(folder=self.jobs_folder / "%j", cluster="slurm",
                                   slurm_max_num_timeout=spec.max_num_timeout)
        sbatch = dict(spec.additional_parameters)
        if after:                                 # start when every job waited for succeeded; never, if one failed
            sbatch.update(dependency="afterok:" + ":".join(sorted(after)), kill_on_invalid_dep="yes")
        params = dict(name=self.name, timeout_min=spec.timeout_min, nodes=spec.nodes,
                      tasks_per_node=spec.ranks_per_node, slurm_array_parallelism=spec.array_parallelism,
                      slurm_setup=list(spec.setup), slurm_additional_parameters=sbatch)
        if spec.gpus_per_node:
            params["gpus_per_node"] = spec.gpus_per_node
        optional = dict(slurm_partition=spec.partition, cpus_per_task=spec.cpus_per_task, mem_gb=spec.mem_gb,
                        slurm_account=spec.account, slurm_qos=spec.qos, slurm_constraint=spec.constraint)
        params.update({k: v for k, v in optional.items() if v is not None})
        ex.update_parameters(**params)
        return ex

    def submit(self, tasks: list[Task]) -> list[JobRecord]:
        groups: dict[str, list[Task]] = {}
        for task in tasks:                        # one array per executor setting and set of jobs waited for
            groups.setdefault(repr((asdict(task.spec), sorted(task.after))), []).append(task)
        records = []
        for members in groups.values():
            ex = self._submitit(members[0].spec, members[0].after)
            with ex.batch():
                jobs = [ex.submit(task.fn) for task in members]
            records += [self._record(task, job, self.kind) for task, job in zip(members, jobs)]
        return records

    def states(self, records: list[dict]) -> dict[str, str]:
        """One `sacct` call for every job; a pending array shows as one line `123_[0-3]`. A job whose submission
        (sacct's SubmitLine: `sbatch <jobs folder>/.submission_file_...`) does not name this sweep's job folder is
        another's under a reused id: GONE."""
        ids = sorted({r["job_id"] for r in records})
        if not ids:
            return {}
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,SubmitLine", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=60)
        states: dict[str, str] = {}
        for line in out.stdout.splitlines():
            job_id, _, rest = line.partition("|")
            state, _, submit_line = rest.partition("|")
            ours = not submit_line or f"{self.jobs_folder}/" in submit_line     # (no SubmitLine: SLURM < 20.11)
            states[job_id] = (state.split()[0] if state else "UNKNOWN") if ours else GONE
        for line_id in [i for i in states if "_[" in i]:
            base = line_id.split("_[")[0]
            for r in records:
                if r["job_id"].startswith(base + "_") and r["job_id"] not in states:
                    states[r["job_id"]] = states[line_id]
        now = time.time()
        for r in records:
            if r["job_id"] not in states and now - r.get("submitted", 0) < ACCOUNTING_LAG_S:
                states[r["job_id"]] = "PENDING"
        return states

    def cancel(self, records: list[dict]) -> list[str]:
        states = self.states(records)
        live = sorted({r["job_id"] for r in records if states.get(r["job_id"]) in self.LIVE})
        if live:
            subprocess.run(["scancel", *live], check=False)
        return live
