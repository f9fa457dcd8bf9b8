"""One object owns a sweep: its file, folder, manifest, store, plan, executor and the states of its runs.

    sweep = Sweep.open("sweeps/tiny_table4.yaml")     # the file, parsed and validated (nothing read yet)
    sweep.plan                                        # the planned runs (the plan cache, or planned again)
    sweep.client                                      # the sweep's MLflow store, checked to be the one submitted to
    sweep.states()                                    # where every run stands: one MLflow and one scheduler query
                                                      # (called again: only what changed since is read)

A command opens the sweep once and hands it to the verbs (`commands/`), the analysis (`analysis/`) and the report
notebook; each reads the manifest and opens the store at most once, through this object (as Dora's Shepherd owns
the bookkeeping of a grid). What is read lazily is cached: a verb that only prints a log never imports MLflow, and
no read-only verb imports torch (the plan comes from its cache).
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.files import atomic_write_text

from .executors import JobRecord
from .plan import PlannedRun, load_plan, plan_sweep, write_plan_cache
from .reader import Readers
from .spec import SweepSpec, load_sweep
from .state import RunState, new_manifest, read_manifest, record_submission, sweep_states
from .store import check_submitted, open_store, prepare_store, store_uri

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MANIFEST_FILE = "manifest.json"


class Sweep:
    def __init__(self, spec: SweepSpec, full: bool = True):
        self.spec = spec
        self.full = full                  # False: a plan made again holds only the runs and their signatures

    @classmethod
    def open(cls, path: str | Path, executor: str | None = None, full: bool = True) -> "Sweep":
        """The sweep of a file (refused in one line naming the file and key when malformed); `executor` runs it
        with another kind of executor than the file's (`--executor`); not `full`: a plan made again (the code
        changed since the submission) is only the runs and their signatures (`plan.plan_sweep`), no torch."""
        spec = load_sweep(path)
        return cls(spec.with_executor(executor) if executor else spec, full)

    # ---- what the file says --------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.spec.path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def folder(self) -> Path:
        return self.spec.folder

    @property
    def store_uri(self) -> str:
        return store_uri(self.spec)

    # ---- the manifest: what was submitted, as which job -----------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_FILE

    @cached_property
    def manifest(self) -> dict | None:
        """The manifest, or None for a sweep never submitted from its folder (read once)."""
        return read_manifest(self.manifest_path)

    def record_submission(self, runs: list[PlannedRun], jobs: list[JobRecord], parent_run_id: str | None,
                          kind: str) -> None:
        record_submission(self.manifest, runs, jobs, parent_run_id, kind)
        self.save_manifest()

    def save_manifest(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=1))

    @property
    def parent_run_id(self) -> str | None:
        """The MLflow parent run of the latest submission (its table, plots and report go there)."""
        parents = [s["parent_run_id"] for s in (self.manifest or {}).get("submissions", []) if s.get("parent_run_id")]
        return parents[-1] if parents else None

    # ---- the store -------------------------------------------------------------------------------

    @cached_property
    def client(self) -> MlflowClient:
        """A client of the sweep's store, once the store is checked to be the one the sweep was submitted to;
        a sweep never submitted, or whose store or manifest is gone or replaced, is refused in one line (and
        no file is created)."""
        return open_store(self.spec, self.manifest)

    def check_submitted(self) -> None:
        """Refuse, in one line and without opening the store, a sweep never submitted from its folder or whose
        manifest or sqlite store is gone (what a verb that reads no store, `logs`, checks)."""
        check_submitted(self.spec, self.manifest)

    def check_store(self) -> None:
        """Refuse, in one line and before a verb does anything else, a sweep never submitted or whose store or
        manifest is gone or replaced."""
        _ = self.client

    def prepare_store(self) -> str:
        """Create (first submission) or check the store and its experiment before any job fans out; the
        manifest (new on a first submission) records the store's identity. Returns the experiment id."""
        if self.manifest is None:
            self.manifest = new_manifest(self.spec)
        experiment_id = prepare_store(self.spec, self.manifest)
        self.__dict__.pop("client", None)
        return experiment_id

    # ---- the plan and the states ---------------------------------------------------------------

    @cached_property
    def plan(self) -> list[PlannedRun]:
        """The planned runs: from the plan cache a submission wrote when neither the file nor the code changed
        since, else planned (and validated) again."""
        return load_plan(self.spec, self.full)

    def plan_fresh(self) -> list[PlannedRun]:
        """Every run planned and validated now, with its resolved config (what a submission needs)."""
        self.__dict__["plan"] = plan_sweep(self.spec)
        return self.plan

    @cached_property
    def evaluations(self):
        """The `evaluate:` section's plan (harness/sweep/protocols.py), None without one; it needs the runs'
        resolved configs, so a plan read from the cache is planned again."""
        from .protocols import plan_evaluations
        if self.spec.evaluate is None:
            return None
        runs = self.plan if all(run.cfg is not None for run in self.plan) else self.plan_fresh()
        return plan_evaluations(self.spec, runs)

    def write_plan_cache(self) -> None:
        write_plan_cache(self.spec, self.plan)

    @cached_property
    def readers(self) -> Readers:
        """The stores' runs as this command last read them: a poll reads only what changed since the previous one."""
        return Readers()

    def states(self, reuse: bool = True) -> list[RunState]:
        """Where every planned run stands now (one MLflow query, one scheduler query; runs finished under the
        same signature elsewhere count as done unless `reuse` is off). Called again (`--wait`, `status --watch`),
        it reads only the runs that changed since (harness/sweep/reader.py)."""
        return sweep_states(self.spec, self.plan, self.client, self.manifest, reuse=reuse, readers=self.readers)
