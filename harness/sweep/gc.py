"""`run_sweep.py gc SWEEP [--dry-run]`: delete the checkpoints of the sweep's run folders that the sweep file's
checkpoint policy does not keep (harness/retention.py), and say how much that frees.

Each planned run's folder is judged under its current config (`checkpoint.keep_latest`, `keep_best` by
`best_metric`, `milestones`): the ranking metric at each copy's step comes from the run's MLflow history, so runs
trained before a policy existed are ranked too; a copy without a logged value is kept and counted. A run whose
trainer holds its folder now (its lock) is left to that trainer, which applies the policy itself. Files go one
at a time and never one of a run's newest `keep_latest` checkpoints: a gc killed at any point leaves every run
resumable, and running it again finishes the job.
"""
from __future__ import annotations

import fcntl
from pathlib import Path

from toolkit.sizes import format_size

from ..retention import best_metric, delete, higher_is_better, removable
from .sweep import Sweep

LOCK_FILE = ".lock"                      # the trainer's run folder lock (harness/trainer.py RunFolderLock)


def trainer_of(run_dir: Path) -> str | None:
    """Who trains in the run folder now (the holder its lock names), or None."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def collect(sweep: Sweep, dry_run: bool = False, echo=print) -> int:
    sweep.check_store()
    runs = sweep.plan_fresh()
    states = {s.run.run_name: s for s in sweep.states(reuse=False)}
    freed = files = judged = 0
    busy, unranked = [], 0
    for run in runs:
        folder = sweep.folder / run.run_name / "checkpoints"
        if not folder.is_dir():
            continue
        holder = trainer_of(folder.parent)
        if holder:
            busy.append(f"{run.title} ({holder})")
            continue
        judged += 1
        policy, metric = run.cfg.checkpoint, best_metric(run.cfg)
        state = states.get(run.run_name)
        scores = {}
        if policy.keep_best is not None and state is not None and state.mlflow_run_id:
            scores = {m.step: m.value for m in sweep.client.get_metric_history(state.mlflow_run_id, metric)}
        doomed, cannot_rank = removable(folder, policy, scores, bool(metric) and higher_is_better(metric))
        unranked += len(cannot_rank)
        if not doomed:
            continue
        size = sum(path.stat().st_size for path in doomed if path.exists()) if dry_run else delete(doomed)
        freed, files = freed + size, files + len(doomed)
        echo(f"  {run.title}: {'would free' if dry_run else 'freed'} {format_size(size)} "
             f"({', '.join(path.name for path in doomed)})")
    notes = [f"{len(busy)} runs training now, left to their trainers: {'; '.join(busy)}"] if busy else []
    if unranked:
        notes.append(f"{unranked} copies kept: no {'/'.join(sorted({best_metric(r.cfg) or '?' for r in runs}))} "
                     f"logged at their step to rank them")
    echo(f"{'would free' if dry_run else 'freed'} {format_size(freed)} in {files} files of {judged} run folders"
         + "".join(f"; {note}" for note in notes))
    return 0
