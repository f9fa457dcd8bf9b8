"""The metric registry (harness/metric_registry.py): logged names with their suffixes find their entry, every
`eval.metric` value builds its scorer through it, and a metric or scorer added there reaches every view."""
import importlib
from types import SimpleNamespace

import pytest

from analysis.ui import view_state
from harness import evaluate, metric_registry
from harness.adm_metrics import parse_metrics
from harness.config import EvalConfig
from harness.metric_registry import entry, lower_is_better, sample_count
from harness.metrics import SampleScorer
from toolkit.fields import choices_of


@pytest.mark.parametrize("logged, lower", [
    ("fd", True), ("fd/step_300", True), ("fd@step_300", True), ("fd/epoch_80", True), ("fid50k", True),
    ("sfid40", True), ("loss", True), ("class_acc", False), ("class_acc/step_3", False), ("class_acc@step_3", False),
    ("is50k", False), ("precision12", False), ("recall10k", False), ("images_per_s", False),
    ("classifier_acc", False), ("inception_score", False), ("acc", False),        # aliases: a sweep's paper keys
    ("grad_norm", True), ("something_new", True)])                                   # unknown: lower is better
def test_lower_is_better_of_logged_names_with_their_suffixes(logged, lower):
    assert lower_is_better(logged) is lower


def test_a_name_finds_its_entry_and_its_sample_count():
    assert entry("fid50k").name == "fid" and sample_count("fid50k") == 50000
    assert entry("precision12").name == "precision" and sample_count("precision12") == 12
    assert entry("fd@step_300").name == "fd" and sample_count("fd@step_300") is None
    assert entry("inception_score").name == "is"
    unknown = entry("grad_norm")                        # a default: labelled by its name, lower is better
    assert (unknown.name, unknown.description, unknown.higher_is_better) == ("grad_norm", "grad_norm", False)
    assert entry("loss5").name == "loss5"               # only sample-based metrics carry a sample count


def test_every_eval_metric_choice_has_a_scorer():
    """eval.metric's values are the registry's scorers that build during training, plus none; the default (in
    every run's signature) stays fid; each scorer's class builds itself from a run's config and logs metrics the
    registry describes."""
    choices = choices_of(EvalConfig, "metric")
    assert choices == ("fid", "offline", "none") and EvalConfig().metric == "fid"
    for choice in choices[:-1]:
        module, _, name = metric_registry.scorer(choice).builds.partition(":")
        scorer = getattr(importlib.import_module(module), name)
        assert issubclass(scorer, SampleScorer) and not getattr(scorer.from_config, "__isabstractmethod__", False)
        assert metric_registry.scored_by(choice), f"{choice} logs no metric the registry describes"


class Sharpness(SampleScorer):
    """A scorer that exists only here: built from the config it is given."""

    def __init__(self, cfg, dataset, device):
        self.built_with = (cfg, dataset, device)

    @classmethod
    def from_config(cls, cfg, dataset, device):
        return cls(cfg, dataset, device)

    def evaluate(self, images, labels=None):
        return {"sharpness": float(images.diff(dim=-1).abs().mean())}


def test_a_scorer_added_to_the_registry_is_what_build_metric_builds(monkeypatch, registered_metric):
    scorer = metric_registry.Scorer("sharpness", f"{__name__}:Sharpness")
    monkeypatch.setattr(metric_registry, "SCORERS", (*metric_registry.SCORERS, scorer))
    cfg, dataset = SimpleNamespace(eval=SimpleNamespace(metric="sharpness")), object()
    built = evaluate.build_metric(cfg, dataset, "cpu")
    assert isinstance(built, Sharpness) and built.built_with == (cfg, dataset, "cpu")
    assert evaluate.build_metric(SimpleNamespace(eval=SimpleNamespace(metric="none")), dataset, "cpu") is None


def ui_runs(**metrics) -> list:
    """Two finished runs as the MLflow client returns them, with `metrics` logged."""
    return [SimpleNamespace(data=SimpleNamespace(tags={"label": label}, params={"model.adaln": label},
                                                 metrics={"loss": 0.5, **metrics})) for label in ("B", "C")]


def test_the_ui_view_opens_on_the_logged_metric_of_highest_display_priority(registered_metric):
    spec = SimpleNamespace(name="s")
    columns = [view_state(spec, ui_runs(**metrics))["selectedColumns"] for metrics in (
        {"fd": 3.0, "fid": 9.0}, {"fd": 3.0}, {}, {"fd": 3.0, "sharpness": 0.7})]
    assert {tuple(c[:1]) for c in columns} == {("tags.`seed`",)}          # the seed first: run names cut it off
    assert [c[1] for c in columns] == ["metrics.`fid`", "metrics.`fd`", "metrics.`loss`", "metrics.`sharpness`"]


def test_the_adm_suite_reads_its_names_and_aliases_from_the_registry():
    assert parse_metrics("FID, isc,inception_score , precision") == ["fid", "is", "precision"]
