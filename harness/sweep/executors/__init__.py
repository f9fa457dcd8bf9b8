"""Where a sweep's jobs run. One class per kind, each in its own module of this package, owns its spec
(the `executor:` fields a sweep may set for it), `submit`, `states` and `cancel`; adding a kind is adding
one module here (every module of the package is imported, and each registers its class).

    kind    module    jobs
    slurm   slurm.py  submitit job arrays on a SLURM cluster
    local   local.py  detached process groups on this machine, at most `max_parallel` at once
    debug   debug.py  in-process, one after another (for tests and pdb)

A task is one picklable callable (a training run, an evaluation shard); its job's log files and
submitit's bookkeeping live under `<sweep folder>/submitit/<kind>/<job id>/`, which is also how
`cancel` finds a sweep's jobs when its manifest is gone. A job id is only ever taken for this sweep's job when
the scheduler or the process says so (its submission or command line names that folder, and a local process
started when it was recorded): `states` shows another sweep's job under a reused id as GONE, and `cancel`
never stops it.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from toolkit.errors import ConfigError, closest, from_omegaconf, unknown


def count(default: int, minimum: int = 1):
    """An integer field of a spec with its smallest allowed value."""
    return dataclasses.field(default=default, metadata={"min": minimum})


@dataclass
class ExecutorSpec:
    """The fields every kind takes; each kind's spec adds its own."""
    kind: str = "local"
    timeout_min: int = count(240)         # a job's time limit in minutes (SLURM: --time; local: then killed)

    @property
    def world_size(self) -> int:
        """The ranks of each run's job (its data-parallel processes)."""
        return 1

    def check(self, where: str) -> None:
        """Refuse combinations of fields (ConfigError naming the key); single fields are typed by OmegaConf."""


@dataclass
class Task:
    name: str                             # the run (or shard) it computes: its row in the manifest
    spec: ExecutorSpec                    # the executor settings of its row
    fn: Callable[[], Any]                 # picklable, idempotent: a requeued or retried task resumes
    after: tuple[str, ...] = ()           # ids of jobs of the same executor this task waits for (a stage's: the
                                          # training runs an evaluation scores); SLURM starts it only when they all
                                          # succeeded (afterok) and drops it when one failed; a local lane starts
                                          # when they ended, and the task checks what it needs


GONE = "GONE"                   # the job's id now names another job or process (ids are reused): this one ended


@dataclass
class JobRecord:
    run_name: str
    job_id: str
    stdout: str
    stderr: str
    executor: str
    started: Optional[str] = None         # a local job's process as it started (processes.start_identity)


class Executor:
    """One kind of executor. `folder` is the sweep's folder; `name` names its jobs (the sweep)."""

    kind: ClassVar[str]
    Spec: ClassVar[type[ExecutorSpec]]
    LIVE: ClassVar[frozenset[str]]        # scheduler states in which a job may still run or start
    JOB_ID: ClassVar[str] = r"\d+"         # what its job ids look like (the names of their folders)

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = Path(folder), name
        self.jobs_folder = self.folder / "submitit" / self.kind

    def submit(self, tasks: list[Task]) -> list[JobRecord]:
        raise NotImplementedError

    def states(self, records: list[dict]) -> dict[str, str]:
        """job id -> the scheduler's state of each job (GONE: its id names another sweep's job now)."""
        raise NotImplementedError

    def cancel(self, records: list[dict]) -> list[str]:
        """Stop every job of `records` that is live and this sweep's; returns their ids."""
        raise NotImplementedError

    def stop_orphans(self) -> list[str]:
        """Stop the trainers of this sweep whose job is gone; returns what was stopped."""
        return []

    def discover(self) -> list[dict]:
        """Records of every job ever submitted from this folder (no run names): what `cancel` uses when the
        manifest is gone."""
        if not self.jobs_folder.is_dir():
            return []
        return [{"run_name": None, "job_id": path.name, "executor": self.kind, "submitted": path.stat().st_mtime,
                 "started": self.recorded_start(path)}
                for path in sorted(self.jobs_folder.iterdir())
                if path.is_dir() and re.fullmatch(self.JOB_ID, path.name)]

    def recorded_start(self, job_folder: Path) -> str | None:
        """A job's process start identity as its folder records it (executors whose jobs are processes)."""
        return None

    @staticmethod
    def _record(task: Task, job, kind: str, started: str | None = None) -> JobRecord:
        paths = job.paths
        return JobRecord(task.name, str(job.job_id), str(Path(paths.stdout)), str(Path(paths.stderr)), kind, started)


EXECUTORS: dict[str, type[Executor]] = {}


def register(cls: type[Executor]) -> type[Executor]:
    EXECUTORS[cls.kind] = cls
    return cls


def executor_class(kind: str) -> type[Executor]:
    return EXECUTORS[kind]


def parse_spec(values: dict, where: str, base: ExecutorSpec | None = None) -> ExecutorSpec:
    """An `executor:` section (or a row's override of it) as its kind's spec, typed by OmegaConf: unknown
    fields (another kind's, too), wrong types, booleans for counts and counts below their minimum are refused."""
    if not isinstance(values, dict):
        raise ConfigError(where, reason="expected a mapping")
    kind = values.get("kind", base.kind if base else ExecutorSpec.kind)
    if kind not in EXECUTORS:
        raise unknown(f"{where}.kind", kind, sorted(EXECUTORS), "executor")
    cls = EXECUTORS[kind].Spec
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            owner = next((k for k, e in EXECUTORS.items() if key in {f.name for f in dataclasses.fields(e.Spec)}), None)
            if owner is None:
                suggestion = closest(key, fields)
                raise ConfigError(f"{where}.{key}", reason="unknown executor field" + (
                    "" if suggestion else f", expected one of {sorted(fields)}"), suggestion=suggestion)
            raise ConfigError(f"{where}.{key}", reason=f"a {owner} executor field; the {kind} executor takes "
                                                       f"{sorted(fields)}")
    inherited = {}
    if base is not None:                          # a row switching kind keeps only the common fields
        common = fields if type(base) is cls else {f.name for f in dataclasses.fields(ExecutorSpec)}
        inherited = {name: getattr(base, name) for name in common}
    try:
        spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls(**inherited)), {**values, "kind": kind}))
    except OmegaConfBaseException as err:
        raise from_omegaconf(err, None, prefix=f"{where}.") from None
    for name, f in fields.items():
        low = f.metadata.get("min")
        if low is not None and getattr(spec, name) is not None and getattr(spec, name) < low:
            raise ConfigError(f"{where}.{name}", getattr(spec, name), f"must be >= {low}")
    spec.check(where)
    return spec


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
