"""Plots and the report notebook of a real (tiny) sweep, run once in-process with the debug executor:
two rows that finish (with an evaluation at step 2 and at the end) and one whose learning rate makes
every run diverge, so the figures and the report have a failed row to show."""
import sys
from pathlib import Path

import nbformat
import pytest
from matplotlib.colors import to_rgb

from analysis.plots import build_figures, log_plots, make_plots, row_colours
from analysis.report import config_differences, failed_runs, write_report
from analysis.runs import load_sweep_runs
from conftest import run_evaluated_sweep

LABELS = ["patch-wise", "pixel-wise", "diverges"]
FINISHED = LABELS[:2]


@pytest.fixture(scope="module")
def sweep_path(tmp_path_factory) -> Path:
    return run_evaluated_sweep(tmp_path_factory.mktemp("report"), "rep", steps=4, eval_step=2,
                               paper={"patch-wise": {"fd": 1.0}})


@pytest.fixture(scope="module")
def sweep(sweep_path):
    runs = load_sweep_runs(sweep_path)
    states = dict(zip(zip(runs.frame["label"], runs.frame["seed"]), runs.frame["state"]))
    assert states == {(label, seed): "failed" if label == "diverges" else "done" for label in LABELS
                      for seed in (0, 1)}, states
    return runs


@pytest.fixture(scope="module")
def report(sweep_path, sweep):
    return write_report(sweep_path)


def outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts += [v for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def final_mean(sweep, label: str) -> float:
    frame = sweep.frame
    return float(frame[(frame["label"] == label) & (frame["state"] == "done")]["metric.fd"].mean())


# ---- plots ---------------------------------------------------------------------------------------

def test_every_plot_is_written_as_png_and_pdf(sweep, tmp_path):
    paths = make_plots(sweep, tmp_path / "plots", "fd")
    stems = {p.stem for p in paths}
    assert stems == {"loss", "fd_during_training", "fd_per_row", "fd_vs_cost"}
    for stem in stems:
        png, pdf = tmp_path / "plots" / f"{stem}.png", tmp_path / "plots" / f"{stem}.pdf"
        assert png in paths and pdf in paths
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, png
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000, pdf


def test_each_row_has_one_colour_in_every_figure(sweep):
    colours = row_colours(sweep)
    assert list(colours) == LABELS and len(set(colours.values())) == len(LABELS)
    assert colours == row_colours(load_sweep_runs(sweep.spec.path))            # fixed, not random
    figures = build_figures(sweep, "fd")
    for name, fig in figures.items():
        seen = set()
        for artist in fig.findobj(lambda a: a.get_gid() in colours):
            label = artist.get_gid()
            if hasattr(artist, "get_color") and not hasattr(artist, "get_facecolors"):
                colour = artist.get_color()                       # lines
            elif hasattr(artist, "get_facecolors"):
                colour = artist.get_facecolors()[0]               # bands, scatter points
            else:
                colour = artist.get_facecolor()                   # bars
            assert to_rgb(colour) == pytest.approx(to_rgb(colours[label])), (name, label)
            seen.add(label)
        # the finished rows are drawn everywhere; the failed row in none of the curves or points
        assert seen == set(FINISHED), (name, seen)
        legend_texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        if legend_texts:                                           # one legend, every row, in file order
            assert len(fig.legends) == 1
            assert [t.split(":")[0] for t in legend_texts] == LABELS, legend_texts


def test_bar_chart_keeps_a_slot_for_the_failed_row(sweep):
    fig = build_figures(sweep, "fd")["fd_per_row"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS                  # the file's order
    colours = row_colours(sweep)
    for tick in ax.get_xticklabels():
        assert to_rgb(tick.get_color()) == pytest.approx(to_rgb(colours[tick.get_text()]))
    bars = [p for p in ax.patches if p.get_gid() in colours]
    assert [b.get_gid() for b in bars] == FINISHED
    for bar in bars:
        assert bar.get_height() == pytest.approx(final_mean(sweep, bar.get_gid()))
    assert any("failed" in t.get_text() for t in ax.texts)                          # marked, not blank


def test_log_plots_to_the_parent_run(sweep, tmp_path):
    paths = make_plots(sweep, tmp_path / "logged", "loss")
    assert {p.stem for p in paths} == {"loss", "loss_per_row", "loss_vs_cost"}      # no duplicate loss curve
    assert log_plots(sweep, paths) == len(paths)
    logged = {Path(a.path).name for a in sweep.client.list_artifacts(sweep.parent_run_id, "plots")}
    assert {p.name for p in paths} <= logged


# ---- report --------------------------------------------------------------------------------------

def test_config_differences_and_failed_runs(sweep):
    diffs = config_differences(sweep)
    assert "patch-wise" not in set(diffs["label"])                                   # the baseline
    by_row = {label: dict(zip(g["key"], zip(g["baseline"], g["value"]))) for label, g in diffs.groupby("label")}
    assert by_row["pixel-wise"] == {"model.adaln": ("B", "C")}                     # nothing but the change
    assert by_row["diverges"]["optim.lr"] == ("0.001", "1000000000000.0")
    failed = failed_runs(sweep)
    assert list(zip(failed["label"], failed["seed"])) == [("diverges", 0), ("diverges", 1)]
    assert all(r.startswith("NonFiniteLoss") for r in failed["reason"])


def test_report_executes_and_shows_table_diffs_failures(report, sweep):
    notebook_path, html_path = report
    assert notebook_path.parent == sweep.spec.folder / "report"
    nb = nbformat.read(notebook_path, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert repr(str(sweep.spec.path.resolve())) in params.source                    # absolute sweep file
    text = outputs_text(nb)
    for label in LABELS:
        assert label in text
    for label in FINISHED:                                                           # the table's numbers
        assert f"{final_mean(sweep, label):.4g}" in text, label
    assert "no finished run: failed (2)" in text
    section = text[text.index("**pixel-wise**"):]
    assert "`model.adaln` | B | C" in section[:section.index("**diverges**")]
    failures = text[text.index("planned runs did not finish"):]
    for reason in sweep.frame[sweep.frame["state"] == "failed"]["failure_reason"]:
        assert reason.split(" or ")[0] in failures                                  # the reason, per run
    assert "diverges-s0-" in failures and "diverges-s1-" in failures
    # the kernel was this interpreter, and the runs' git commit is reported
    interpreter = text.split("| interpreter | ")[1].split(" |")[0]
    assert Path(interpreter).resolve() == Path(sys.executable).resolve()
    commit = sweep.client.get_run(sweep.frame["mlflow_run_id"].iloc[0]).data.tags["git_commit"]
    assert f"| runs' git commit | {commit}" in text
    # the figures are embedded, so the notebook and the HTML stand alone
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) == 4
    html = html_path.read_text()
    assert html_path.suffix == ".html" and "data:image/png;base64" in html
    assert "Ablation report: rep" in html and "NonFiniteLoss" in html and "model.adaln" in html


def test_report_is_logged_to_the_parent_run(report, sweep):
    notebook_path, html_path = report
    logged = {Path(a.path).name for a in sweep.client.list_artifacts(sweep.parent_run_id, "report")}
    assert {notebook_path.name, html_path.name} <= logged
    plots = {Path(a.path).name for a in sweep.client.list_artifacts(sweep.parent_run_id, "plots")}
    assert {"fd_per_row.png", "fd_per_row.pdf", "fd_vs_cost.png", "loss.pdf"} <= plots


def test_report_notebook_reruns_on_its_own(report, sweep, tmp_path, monkeypatch):
    """The saved notebook's own code (its parameters cell, not papermill's injected one), run again
    from elsewhere: it finds the sweep through the file path and MLflow, not through anything the
    first execution left in memory."""
    nb = nbformat.read(report[0], as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    assert "parameters" in cells[0].metadata["tags"]
    monkeypatch.chdir(tmp_path)                    # the notebook changes directory itself; restored after
    namespace: dict = {}
    for cell in cells:
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
        exec(compile(source, "<report cell>", "exec"), namespace)
    assert list(namespace["table"].frame["label"]) == LABELS
    assert namespace["metric"] == "fd"
    assert all(p.exists() for p in namespace["plot_paths"])
