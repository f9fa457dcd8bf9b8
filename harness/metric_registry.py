"""Every metric the project logs and every scorer that computes them, declared once (no torch, mlflow or
hydra: read-only commands such as `status` and `table` read it).

A metric's entry says what its number is (label words), which way is better, whether it is computed on
generated samples (then its sample count belongs in its label), which one a view shows by default, whether it
is shown beside the chosen one, and what computes it. The tables (`analysis.table`), plots, report, `status`
(`harness.sweep.progress`), the MLflow UI view (`analysis.ui`), `eval.metric`'s allowed values
(`harness.config`), the scorer built for training (`harness.evaluate.build_metric`) and the ADM suite's names and
labels (`harness.adm_metrics`) read it.

Adding a metric to an existing scorer: one line in the scorer's `evaluate()` and one entry in METRICS. Adding a
scorer: its class (`from_config(cfg, dataset, device)`, `evaluate(images, labels)`, see
`harness.metrics.SampleScorer`), one entry in SCORERS and the entries of its metrics.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Scorer:
    """What computes metrics. One that `builds` a class scores the samples of each evaluation during training and
    is an `eval.metric` value; the others compute theirs elsewhere."""
    name: str
    builds: str | None = None      # "module:Class" with `from_config(cfg, dataset, device)`: an `eval.metric` value


SCORERS = (    # the first is eval.metric's default: its value is in every run's signature, keep it first
    Scorer("fid", "harness.metrics:InceptionFID"),      # FID by ADM's protocol, the TF FID Inception
    Scorer("offline", "harness.metrics:OfflineMetric"),   # a classifier fitted on an embedded dataset's held-out split
    Scorer("adm"),            # ADM's suite (harness.adm_metrics) by `run_sweep.py eval`: names get the count (fid50k)
    Scorer("training"),       # the training loop (harness.trainer)
)
EVAL_METRIC_CHOICES = (*(s.name for s in SCORERS if s.builds), "none")   # eval.metric: a scorer, or no evaluation


@dataclass(frozen=True)
class Metric:
    name: str                       # as logged (the ADM suite appends its sample count: fid50k)
    label: str                      # its name in print: "FID"
    scorers: tuple[str, ...]        # what computes it (SCORERS)
    words: str = ""                 # what the number is, in table headers ("": the label); "{samples}" marks where
                                    # its sample count goes ("-50K"), else a sample-based one says "N samples"
    higher_is_better: bool = False
    sample_based: bool = False      # computed on generated samples: its sample count belongs in its label
    priority: int | None = None     # which logged metric a view (table, status, UI) shows by default: lowest first
                                    # (spaced, so that a new one fits between)
    companion: bool = False         # shown beside the table's chosen metric when the runs logged it
    chance: bool = False            # an accuracy over the classes: its chance level (1 / classes) is in its label
    aliases: tuple[str, ...] = ()   # other names for it: a sweep's `paper:` keys, `--metrics`

    @property
    def description(self) -> str:
        return self.words or self.label


METRICS = (    # in display order: the ADM suite's metrics are computed and printed in this order
    Metric("fid", "FID", ("fid", "adm"), "FID{samples} (Inception)", sample_based=True, priority=10),
    Metric("fd", "FD", ("offline",), "FD (held-out-split classifier)", sample_based=True, priority=20),
    Metric("class_acc", "class accuracy", ("offline",), "class accuracy (held-out-split classifier)",
           higher_is_better=True, sample_based=True, companion=True, chance=True, aliases=("acc",)),
    Metric("sfid", "sFID", ("adm",), sample_based=True),
    Metric("is", "Inception Score", ("adm",), higher_is_better=True, sample_based=True,
           aliases=("inception_score", "isc")),
    Metric("precision", "Precision", ("adm",), higher_is_better=True, sample_based=True),
    Metric("recall", "Recall", ("adm",), higher_is_better=True, sample_based=True),
    Metric("loss", "training loss", ("training",), priority=90),
    Metric("moe_routing", "MoE routing loss", ("training",),
           "ProMoE's routing contrastive loss (summed over the MoE blocks, unweighted)"),
    Metric("images_per_s", "training images/s", ("training",), higher_is_better=True),
    Metric("peak_memory_gb", "peak GPU memory (GB)", ("training",)),
    Metric("classifier_acc", "held-out-split classifier's accuracy on training images", ("offline",),
           higher_is_better=True),
)


def _by_name() -> dict[str, Metric]:
    return {name: m for m in METRICS for name in (m.name, *m.aliases)}


def _split(logged: str) -> tuple[Metric | None, int | None]:
    """(entry, sample count in the name) of a logged name: 'fd/step_300', 'fd@step_300' -> (fd, None);
    'fid50k' -> (fid, 50000), 'precision12' -> (precision, 12); unknown -> (None, None)."""
    name = re.split(r"[/@]", logged)[0]
    by_name = _by_name()
    if name in by_name:
        return by_name[name], None
    counted = re.fullmatch(r"(.+?)(\d+)(k?)", name)
    if counted and counted[1] in by_name and by_name[counted[1]].sample_based:
        return by_name[counted[1]], int(counted[2]) * (1000 if counted[3] else 1)
    return None, None


def entry(logged: str) -> Metric:
    """The entry of a logged name, with its suffixes (fid50k, fd/step_300, fd@step_300, precision12) or an
    alias; a name the registry does not know gets a default: lower is better, labelled by its name."""
    found, _ = _split(logged)
    return found if found is not None else Metric(logged, logged, ())


def sample_count(logged: str) -> int | None:
    """The sample count a name carries (the ADM suite's fid50k: 50000), None for the others."""
    return _split(logged)[1]


def count_tag(num: int) -> str:
    """50000 -> "50k", 40 -> "40": what the ADM suite appends to its metrics' names and params' prefix."""
    return f"{num // 1000}k" if num % 1000 == 0 else str(num)


def lower_is_better(logged: str) -> bool:
    """FID, FD and losses go down; accuracies, IS, precision/recall and throughput go up (suffixes included)."""
    return not entry(logged).higher_is_better


def preferred(logged: Iterable[str]) -> str | None:
    """Of the `logged` names, the one a view shows by default (fid before fd before the loss); None when none
    has a display priority."""
    names = set(logged)
    ranked = [m for m in METRICS if m.priority is not None and m.name in names]
    return min(ranked, key=lambda m: m.priority).name if ranked else None


def shown_by_default(logged: Iterable[str]) -> str:
    """The metric a table or the UI shows when none is asked for: the preferred logged one, else the loss."""
    return preferred(logged) or "loss"


def companions() -> list[str]:
    return [m.name for m in METRICS if m.companion]


def scored_by(*scorers: str) -> list[Metric]:
    """The metrics any of `scorers` computes, in display order."""
    return [m for m in METRICS if set(m.scorers) & set(scorers)]


def scorer(name: str) -> Scorer:
    return next(s for s in SCORERS if s.name == name)


def sample_metrics_of_training() -> list[str]:
    """The sample-based metrics the `eval.metric` scorers log during training, in display order."""
    return [m.name for m in scored_by(*(s.name for s in SCORERS if s.builds)) if m.sample_based]
