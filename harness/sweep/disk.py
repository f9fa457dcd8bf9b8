"""The disk a sweep's checkpoints take at most — each run's under its checkpoint policy (harness/retention.py),
summed — against the sweep's `disk_budget`: refused at planning, in one line, before anything is created."""
from __future__ import annotations

from toolkit.sizes import format_size, parse_size

from .plan import PlannedRun
from .spec import SweepError, SweepSpec


def total(runs: list[PlannedRun]) -> int:
    return sum(run.disk.bytes for run in runs)


def estimate(runs: list[PlannedRun]) -> str:
    """`up to 765.58 GB of checkpoints for 12 runs (the largest run: 5 files of 12.76 GB: 2 latest + 3 at
    evaluation points)`."""
    largest = max(runs, key=lambda run: run.disk.bytes)
    runs_text = f"{len(runs)} runs (the largest run: " if len(runs) > 1 else "1 run ("
    return f"up to {format_size(total(runs))} of checkpoints for {runs_text}{largest.disk.describe()})"


def summary(spec: SweepSpec, runs: list[PlannedRun]) -> str:
    budget = f"; disk_budget {format_size(parse_size(spec.disk_budget))}" if spec.disk_budget is not None else ""
    return f"disk: {estimate(runs)}{budget}"


def check_budget(spec: SweepSpec, runs: list[PlannedRun]) -> None:
    if spec.disk_budget is None or total(runs) <= parse_size(spec.disk_budget):
        return
    raise SweepError("disk_budget", spec.disk_budget, f"the plan keeps {estimate(runs)}; keep fewer "
                     f"(checkpoint.keep_latest >= 2, keep_best, keep_at_eval=false) or raise disk_budget",
                     source=str(spec.path))
