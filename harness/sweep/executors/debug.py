"""In-process, one task after another, blocking (tests, a debugger). A failing task is recorded, not pdb'd.
A task's `after` jobs ran before it was submitted (every submission blocks), so it needs no waiting."""
from __future__ import annotations

import os
from dataclasses import dataclass

import submitit

from . import Executor, ExecutorSpec, JobRecord, Task, register
from .local import Lane


@dataclass
class DebugSpec(ExecutorSpec):
    kind: str = "debug"


@register
class DebugExecutor(Executor):
    kind = "debug"
    Spec = DebugSpec
    LIVE = frozenset()

    def submit(self, tasks: list[Task]) -> list[JobRecord]:
        ex = submitit.DebugExecutor(folder=self.jobs_folder / "%j")
        records = []
        for task in tasks:
            job = ex.submit(Lane([task.fn], threads=os.cpu_count() or 1, detached=False))
            records.append(self._record(task, job, self.kind))
            job.result()
        return records

    def states(self, records: list[dict]) -> dict[str, str]:
        return {r["job_id"]: "ENDED" for r in records}

    def cancel(self, records: list[dict]) -> list[str]:
        return []
