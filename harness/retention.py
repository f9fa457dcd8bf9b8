"""Which checkpoints a run keeps, and how much disk that is (`checkpoint.*` in harness/config.py).

A run folder's `checkpoints/` holds:

- the rolling checkpoints, newest first: `last.pt`, `last.prev.pt`, `last.prev2.pt`, ... — the newest
  `keep_latest` are kept, at least 2: the newest may be the one a dying job was writing (torchtitan's
  `keep_latest_k` refuses 1 for the same reason), and resume takes the newest good one (harness/checkpoint.py);
- copies at evaluation points (`keep_at_eval`), `step<N>.pt`: every one, or only the best `keep_best` by
  `best_metric` (Lightning's `save_top_k`; which way is better: harness/metric_registry.py);
- copies at `milestones` steps, `step<N>.pt` as well: never deleted.

The trainer applies the policy as it writes (`removable` after each copy); `run_sweep.py gc` applies the sweep
file's policy to the run folders afterwards. Either deletes one file at a time, never one of the newest
`keep_latest` rolling checkpoints, so a kill at any point leaves every run resumable.

The disk a run needs (`footprint`, the dry run's disk column) follows from the parameter count: weights, each
EMA copy and AdamW's two moments, 4 bytes a value (PixelDiT-XL: 797M x 4 B x 4 = 12.8 GB a checkpoint).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ConfigError, closest
from toolkit.sizes import format_size

from .config import CheckpointConfig, TrainConfig
from .metric_registry import lower_is_better, preferred, scored_by

ROLLING = "last.pt"
COPY = re.compile(r"step(\d+)\.pt")
BYTES_PER_VALUE = 4          # float32 master weights, EMA and optimizer state (bf16 is autocast, not storage)
ADAMW_SLOTS = 2              # exp_avg and exp_avg_sq


def copy_name(step: int) -> str:
    return f"step{step:08d}.pt"


def copies(folder: Path) -> dict[int, Path]:
    """step -> the copy kept at that step."""
    return {int(m[1]): p for p in Path(folder).glob("step*.pt") if (m := COPY.fullmatch(p.name))}


def best_metric(cfg: TrainConfig) -> str | None:
    """What ranks the evaluation copies: `checkpoint.best_metric`, else the evaluation's headline metric."""
    return cfg.checkpoint.best_metric or preferred(m.name for m in scored_by(cfg.eval.metric))


def validate_policy(cfg: TrainConfig) -> None:
    policy = cfg.checkpoint
    if policy.keep_latest < 2:
        raise ConfigError("checkpoint.keep_latest", policy.keep_latest, "at least 2: the newest checkpoint may be "
                          "the one a dying job was writing, and resuming needs the one before")
    if policy.keep_best is not None:
        if policy.keep_best < 1:
            raise ConfigError("checkpoint.keep_best", policy.keep_best, "at least 1 (checkpoint.keep_at_eval=false "
                              "keeps no copy at evaluation points)")
        names = [m.name for m in scored_by(cfg.eval.metric)] if cfg.eval.metric != "none" else []
        if not names:
            raise ConfigError("checkpoint.keep_best", policy.keep_best, "ranks the copies at evaluation points by "
                              "a metric, and eval.metric=none evaluates nothing")
        if best_metric(cfg) not in names:
            raise ConfigError("checkpoint.best_metric", policy.best_metric, f"not logged at evaluation by "
                              f"eval.metric={cfg.eval.metric}; one of {names}",
                              suggestion=closest(policy.best_metric, names))
    for step in policy.milestones:
        if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
            raise ConfigError("checkpoint.milestones", list(policy.milestones), "expected positive step numbers")


def removable(folder: Path, policy: CheckpointConfig, scores: dict[int, float], higher_is_better: bool
              ) -> tuple[list[Path], list[int]]:
    """(files the policy allows deleting, copy steps it cannot rank). `scores`: the ranking metric at each step.

    Rolling checkpoints beyond the newest `keep_latest` go (only while `keep_latest` newer ones are there);
    evaluation copies go when `keep_best` ranks them out, never milestones; a copy without a score is kept."""
    from .checkpoint import rolling  # torch: the read-only verbs plan disk footprints without it
    out = rolling(Path(folder) / ROLLING)[policy.keep_latest:]
    unranked: list[int] = []
    if policy.keep_best is not None:
        found = copies(folder)
        kept = set(policy.milestones)
        ranked = []
        for step in sorted(found):
            value = scores.get(step)
            if value is None:
                unranked.append(step)
            elif step not in kept:
                bad = math.isnan(value)
                ranked.append(((bad, -value if higher_is_better else value, -step), step))   # ties: the later
        best = {step for _, step in sorted(ranked)[:policy.keep_best]}
        out += [found[step] for _, step in ranked if step not in best]
    return out, [s for s in unranked if s not in policy.milestones]


def delete(paths: list[Path]) -> int:
    """Delete files one by one (each unlink is atomic); the bytes freed."""
    freed = 0
    for path in paths:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:             # deleted meanwhile (by the trainer, or another gc)
            continue
        freed += size
    return freed


def higher_is_better(metric: str) -> bool:
    return not lower_is_better(metric)


@dataclass(frozen=True)
class Footprint:
    """A run's checkpoints on disk, at most: `files` of `file_bytes` each."""
    file_bytes: int
    files: int
    rolling: int
    at_evaluation: int
    milestones: int

    @property
    def bytes(self) -> int:
        return self.file_bytes * self.files

    def describe(self) -> str:
        parts = [f"{self.rolling} latest"] + [f"{n} {what if n == 1 else plural}" for n, what, plural in (
            (self.at_evaluation, "at an evaluation point", "at evaluation points"),
            (self.milestones, "milestone", "milestones")) if n]
        return f"{self.files} files of {format_size(self.file_bytes)}: " + " + ".join(parts)


def evaluation_points(cfg: TrainConfig) -> int:
    """How many evaluation points a run has, at most (epoch and step points both counted: the epoch length is the
    dataset's, not read at planning; a point at the very end counted once, points past it not at all)."""
    if cfg.eval.metric == "none":
        return 0
    train = cfg.train
    epochs = {e for e in cfg.eval.at_epochs if train.steps is not None or e <= train.epochs}
    steps = {s for s in cfg.eval.at_steps if train.steps is None or s <= train.steps}
    end = cfg.eval.at_end or (train.steps is None and train.epochs in epochs) or train.steps in steps
    return len(epochs - {train.epochs if train.steps is None else None}) + len(steps - {train.steps}) + int(end)


def footprint(cfg: TrainConfig, trainable_params: int) -> Footprint:
    """The most disk a run's checkpoints take under its policy: a checkpoint holds the weights, each EMA copy
    and AdamW's two moments (harness/trainer.py `state`), 4 bytes a value."""
    policy = cfg.checkpoint
    file_bytes = trainable_params * BYTES_PER_VALUE * (1 + len(cfg.ema.decays) + ADAMW_SLOTS)
    points = evaluation_points(cfg) if policy.keep_at_eval else 0
    at_evaluation = points if policy.keep_best is None else min(points, policy.keep_best)
    milestones = len(set(policy.milestones))
    return Footprint(file_bytes, policy.keep_latest + at_evaluation + milestones, policy.keep_latest,
                     at_evaluation, milestones)
