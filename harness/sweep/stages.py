"""The latent-cache stage of a sweep: the caches its latent runs read (harness/latents.py), made by shard jobs
that the runs' training jobs wait for, so that one command encodes, trains and evaluates.

```yaml
latents: {shards: 8, executor: {gpus_per_node: 1, timeout_min: 120}}    # in the sweep file
```

At submission each cache the runs to submit need is looked at once: ready (the same key) — used as it is, no
job; missing or partial — `shards` jobs of `LatentShardJob` (a SLURM array of one-device tasks, local processes,
or in-process), and every training job that reads it waits for them (`Task.after`: SLURM's afterok, so a failed
stage never starts the runs; a local lane starts when they ended, and the trainer refuses an incomplete cache in
one line). A killed stage resumes where its chunks stopped when the sweep is submitted again (`--retry` for the
runs it failed). A cache missing from a sweep that declares no stage, or a folder holding another key, is
refused before anything is submitted.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from toolkit.errors import ConfigError

from ..latents import CacheState, cache_state, prepare_command
from ..vae import is_latent
from .executors import ExecutorSpec, Task, executor_class
from .plan import PlannedRun
from .spec import SweepError, SweepSpec


class LatentShardJob:
    """One shard of a run's latent cache (idempotent: a ready cache or finished chunk is not encoded again)."""

    def __init__(self, overrides: list[str], shard: int, shards: int):
        self.overrides, self.shard, self.shards = overrides, shard, shards

    def __call__(self) -> str:
        from ..configure import resolve
        from ..latents import prepare_shard
        return prepare_shard(resolve(self.overrides).cfg, self.shard, self.shards).state


@dataclass
class CacheNeed:
    """One latent cache and the planned runs that read it."""
    state: CacheState
    overrides: list[str]                  # a reading run's config overrides: what a shard job resolves
    executor: ExecutorSpec                # the stage's jobs: one device each, the runs' kind
    runs: list[PlannedRun] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.state.state == "ready"


def cache_needs(spec: SweepSpec, runs: list[PlannedRun]) -> list[CacheNeed]:
    """The latent caches of planned runs (their configs resolved), one per folder; a folder asked to hold two
    keys, or holding another key, is refused in one line naming the file and the row."""
    from .evaluation import _one_device
    needs: dict[Path, CacheNeed] = {}
    for run in runs:
        if not is_latent(run.cfg):
            continue
        try:
            state = cache_state(run.cfg)
        except ConfigError as err:
            raise SweepError(f"rows[{run.row}] ({run.label!r}): {err.key}", err.value, err.reason,
                             source=str(spec.path)) from None
        need = needs.get(state.folder)
        if need is None:
            base = spec.latents.executor if spec.latents and spec.latents.executor else run.executor
            if base.kind != run.executor.kind:
                raise SweepError("latents.executor.kind", base.kind, f"the stage's jobs must be of the kind of the "
                                 f"runs that wait for them ({run.executor.kind})", source=str(spec.path))
            executor = _one_device(dataclasses.replace(spec, executor=base))     # one device per job
            need = needs[state.folder] = CacheNeed(state, [f"+experiment={spec.experiment}", *run.config_overrides],
                                                   executor)
        elif need.state.key != state.key:
            raise SweepError(f"rows[{run.row}] ({run.label!r}): data.latents", str(state.folder), f"this run needs "
                             f"key {state.key} there, and {need.runs[0].label!r} key {need.state.key}: give the "
                             f"rows different data.latents folders", source=str(spec.path))
        elif need.executor.kind != run.executor.kind:
            raise SweepError(f"rows[{run.row}] ({run.label!r}): executor.kind", run.executor.kind, f"the runs "
                             f"reading one latent cache wait for the same stage: they share an executor kind "
                             f"({need.executor.kind})", source=str(spec.path))
        need.runs.append(run)
    return list(needs.values())


def check_stage(spec: SweepSpec, needs: list[CacheNeed]) -> None:
    """A cache still to make needs a declared stage (else: how to make it, in one line)."""
    if spec.latents is not None:
        return
    for need in needs:
        if not need.ready:
            run = need.runs[0]
            raise SweepError(f"rows[{run.row}] ({run.label!r}): data.latents", str(need.state.folder),
                             f"the latent cache (key {need.state.key}) is {need.state.describe()}: declare the stage "
                             f"(`latents: {{shards: 1}}` in the sweep) or make it first: "
                             f"{prepare_command(need.overrides)}", source=str(spec.path))


def describe(needs: list[CacheNeed], spec: SweepSpec) -> list[str]:
    """One line per cache, for the plan."""
    shards = spec.latents.shards if spec.latents else 0
    lines = []
    for need in needs:
        todo = f"to make in {shards} shard job(s) before its runs" if shards else "missing, and no `latents:` stage"
        lines.append(f"latent cache {need.state.folder} (key {need.state.key}, {len(need.runs)} runs): "
                     + ("ready" if need.ready else f"{need.state.describe()}, {todo}"))
    return lines


def submit_stage(spec: SweepSpec, needs: list[CacheNeed], manifest: dict,
                 echo: Callable[[str], None] = print) -> dict[str, tuple[str, ...]]:
    """Submit the shard jobs of every cache not ready; returns run name -> the job ids its training waits for.
    The jobs are recorded in the manifest's `stages` (the caller saves it)."""
    after: dict[str, tuple[str, ...]] = {}
    for need in needs:
        if need.ready:
            continue
        shards = spec.latents.shards
        tasks = [Task(f"latents-{need.state.key}/shard{i}", need.executor, LatentShardJob(need.overrides, i, shards))
                 for i in range(shards)]
        records = executor_class(need.executor.kind)(spec.folder, f"{spec.name}-latents").submit(tasks)
        jobs = tuple(record.job_id for record in records)
        manifest.setdefault("stages", []).append({"stage": "latents", "cache": str(need.state.folder),
                                                  "key": need.state.key, "submitted": time.time(),
                                                  "jobs": [dataclasses.asdict(r) for r in records]})
        echo(f"latent cache {need.state.folder}: {shards} shard job(s) {', '.join(sorted(set(jobs)))}; "
             f"{len(need.runs)} runs wait for them")
        for run in need.runs:
            after[run.run_name] = jobs
    return after
