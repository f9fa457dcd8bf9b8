"""The ablation table of a sweep of real tiny runs, checked cell by cell against the runs themselves."""
import json
import re
import statistics

import pytest

from analysis.runs import load_sweep_runs
from conftest import run_evaluated_sweep
from analysis.table import build_table
from harness.sweep.cli import main
from models.complexity import measure
from models.presets import model_config


@pytest.fixture(scope="module")
def sweep_path(tmp_path_factory):
    """3 rows x 2 seeds with offline evaluation at step 3 and at the end; one row fails (lr 1e12)."""
    return run_evaluated_sweep(tmp_path_factory.mktemp("table"), "tab", steps=6, eval_step=3,
                               paper={"patch-wise": {"fd": 3.5}, "pixel-wise": {"fd": 2.36}}, baseline="pixel-wise")


def final_metrics(sweep, label):
    """Per-seed final metrics straight from the run folders (written by the trainer, not MLflow)."""
    rows = sweep.frame[sweep.frame["label"] == label]
    return {r.seed: json.loads((sweep.spec.folder / r.run_name / "final_metrics.json").read_text())
            for r in rows.itertuples() if (sweep.spec.folder / r.run_name / "final_metrics.json").exists()}


def test_table_cells_equal_the_runs_numbers(sweep_path):
    sweep = load_sweep_runs(sweep_path)
    table = build_table(sweep, metric="fd")
    frame = table.frame.set_index("label")
    assert list(table.frame["label"]) == ["patch-wise", "pixel-wise", "diverges"]     # the file's order
    for label in ("patch-wise", "pixel-wise"):
        values = [m["fd"] for m in final_metrics(sweep, label).values()]
        assert len(values) == 2
        assert frame.loc[label, "fd mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
        assert frame.loc[label, "fd std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert frame.loc[label, "fd n"] == 2
    base = statistics.mean(m["fd"] for m in final_metrics(sweep, "pixel-wise").values())
    assert frame.loc["patch-wise", "fd delta"] == pytest.approx(frame.loc["patch-wise", "fd mean"] - base)
    cfg = model_config("pixeldit_xl", ["input_size=32", "patch_size=8", "num_classes=10", "depth=2",
                                        "hidden_size=32", "num_heads=2", "pixel_depth=1", "pixel_dim=8",
                                        "repa=false", "adaln=B"])
    assert frame.loc["patch-wise", "params"] == measure(cfg).params
    assert frame.loc["patch-wise", "paper fd"] == 3.5


def test_metric_at_an_evaluation_point(sweep_path):
    sweep = load_sweep_runs(sweep_path)
    table = build_table(sweep, metric="fd", at=["3", "final"])
    assert table.points == ["fd @ step 3", "fd"]
    frame = table.frame.set_index("label")
    for label in ("patch-wise", "pixel-wise"):
        runs = sweep.frame[(sweep.frame["label"] == label)]
        at_3 = [sweep.client.get_metric_history(r, "fd")[0] for r in runs["mlflow_run_id"]]
        assert [m.step for m in at_3] == [3, 3]
        assert frame.loc[label, "fd @ step 3 mean"] == pytest.approx(statistics.mean(m.value for m in at_3))


def test_failed_runs_show_as_failed_not_as_gaps(sweep_path):
    table = build_table(load_sweep_runs(sweep_path), metric="fd")
    shown = table.display().set_index("row")
    assert shown.loc["diverges", "fd"] == "no finished run: failed (2)"
    assert shown.loc["diverges", "runs"] == "2 failed"
    assert shown.loc["pixel-wise", "Δ fd"] == "baseline"
    assert "p=" in shown.loc["patch-wise", "Δ fd"]


def test_best_value_is_bold_and_formats_render(sweep_path):
    table = build_table(load_sweep_runs(sweep_path), metric="fd")
    best = table.frame.loc[table.frame["fd mean"].idxmin(), "label"]
    markdown = table.to_markdown()
    assert re.search(rf"\| {re.escape(best)} .*\*\*", markdown)
    assert markdown.count("**") == 2
    html = table.to_html()
    assert "font-weight: bold" in html and "<table" in html
    csv = table.to_csv()
    assert csv.splitlines()[0].startswith("label,")


def test_latex_is_structurally_sound_booktabs(sweep_path):
    latex = build_table(load_sweep_runs(sweep_path), metric="fd").to_latex()
    assert latex.count("{") == latex.count("}")
    assert latex.index(r"\begin{tabular}") < latex.index(r"\toprule") < latex.index(r"\midrule") \
        < latex.index(r"\bottomrule") < latex.index(r"\end{tabular}")
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", latex).group(1)
    body = latex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    header = latex.split(r"\toprule")[1].split(r"\midrule")[0].strip()
    for line in [header, *body]:
        assert line.endswith(r"\\") and line.count(" & ") == len(spec) - 1, line
    assert r"\textbf{" in latex


def test_table_command_prints_the_requested_format(sweep_path, capsys):
    assert main(["table", str(sweep_path), "--metric", "fd", "--format", "latex"]) == 0
    assert r"\toprule" in capsys.readouterr().out
    assert main(["table", str(sweep_path), "--metric", "fd", "--baseline", "nope"]) == 2
