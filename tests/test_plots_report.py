"""Plots and the report notebook of a real (tiny) sweep, run once in-process with the debug executor:
three rows that finish (with an evaluation at step 2 and at the end; one without a pixel pathway, its
label starting with "+") and one whose learning rate makes every run diverge, so the figures and the
report have a failed row to show."""
import re
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import run_evaluated_sweep
from matplotlib.colors import to_rgb

import harness.sampling
from analysis.plots import build_figures, log_plots, make_plots, progress_notes, row_colours
from analysis.report import (
    config_differences,
    failed_runs,
    link_report,
    recipe_markdown,
    shared_recipe,
    write_report,
)
from analysis.runs import load_sweep_runs, metric_history
from analysis.samples import GRID_SEED, sample_grids
from harness.sweep.sweep import Sweep

LABELS = ["patch-wise", "pixel-wise", "diverges", "+ no pixel pathway"]
FINISHED = ["patch-wise", "pixel-wise", "+ no pixel pathway"]


@pytest.fixture(scope="module")
def sweep_path(tmp_path_factory) -> Path:
    return run_evaluated_sweep(tmp_path_factory.mktemp("report"), "rep", steps=4, eval_step=2,
                               paper={"patch-wise": {"fd": 1.0}})


@pytest.fixture(scope="module")
def sweep(sweep_path):
    runs = load_sweep_runs(Sweep.open(sweep_path))
    states = dict(zip(zip(runs.frame["label"], runs.frame["seed"]), runs.frame["state"]))
    assert states == {(label, seed): "failed" if label == "diverges" else "done" for label in LABELS
                      for seed in (0, 1)}, states
    return runs


@pytest.fixture(scope="module")
def report(sweep_path, sweep):
    return write_report(Sweep.open(sweep_path))


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
    assert stems == {"loss", "fd_during_training", "fd_per_row", "fd_vs_cost", "efficiency"}
    for stem in stems:
        png, pdf = tmp_path / "plots" / f"{stem}.png", tmp_path / "plots" / f"{stem}.pdf"
        assert png in paths and pdf in paths
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, png
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000, pdf


def test_each_row_has_one_colour_in_every_figure(sweep):
    colours = row_colours(sweep.labels)
    assert list(colours) == LABELS and len(set(colours.values())) == len(LABELS)
    assert colours == row_colours(load_sweep_runs(Sweep.open(sweep.spec.path)).labels)            # fixed, not random
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
    colours = row_colours(sweep.labels)
    for tick in ax.get_xticklabels():
        assert to_rgb(tick.get_color()) == pytest.approx(to_rgb(colours[tick.get_text()]))
    bars = [p for p in ax.patches if p.get_gid() in colours]
    assert [b.get_gid() for b in bars] == FINISHED
    for bar in bars:
        assert bar.get_height() == pytest.approx(final_mean(sweep, bar.get_gid()))
    assert any("failed" in t.get_text() for t in ax.texts)                          # marked, not blank


def test_progress_plots_need_two_evaluation_points(sweep_path, sweep):
    """The runs evaluated fd at steps 2 and 4: a progress plot. With the history cut to its last point
    (as a sweep evaluated only at the end logs it), the figure is left out and one sentence says why."""
    assert progress_notes(sweep, "fd") == []
    once = load_sweep_runs(Sweep.open(sweep_path))
    history = metric_history(once, "fd")
    assert sorted(set(history["step"])) == [2, 4]
    once.histories["fd"] = history[history["step"] == 4]
    figures = build_figures(once, "fd")
    assert "fd_during_training" not in figures and {"loss", "fd_per_row", "fd_vs_cost"} <= set(figures)
    assert progress_notes(once, "fd") == ["fd was logged once (step 4): no progress plot (it needs two "
                                          "evaluation points or more)."]


def test_log_plots_to_the_parent_run(sweep, tmp_path):
    paths = make_plots(sweep, tmp_path / "logged", "loss")
    assert {p.stem for p in paths} == {"loss", "loss_per_row", "loss_vs_cost", "efficiency"}   # no second loss curve
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
    # adaln (C here, B in the baseline) does nothing without a pixel pathway: not listed as a difference
    assert by_row["+ no pixel pathway"] == {"model.pixel_pathway": ("True", "False")}
    above = {label: dict(zip(g["key"], zip(g["baseline"], g["value"])))
             for label, g in config_differences(sweep, "previous").groupby("label")}
    assert set(above) == {"pixel-wise", "diverges", "+ no pixel pathway"}          # each against the row above
    assert above["pixel-wise"] == by_row["pixel-wise"]                              # the row above is the baseline
    assert above["+ no pixel pathway"]["optim.lr"] == ("1000000000000.0", "0.001")
    assert above["+ no pixel pathway"]["model.pixel_pathway"] == ("True", "False")
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
    assert "ours: class accuracy (held-out-split classifier)" in text                      # beside the distance
    assert "interval and test unreliable, never bold" in text                        # the table's caption
    differences = text[text.index("Baseline row: **patch-wise**"):]
    section = differences[differences.index("**pixel-wise**"):]
    assert "`model.adaln` | B | C" in section[:section.index("**diverges**")]
    failures = text[text.index("planned runs did not finish"):]
    for reason in sweep.frame[sweep.frame["state"] == "failed"]["failure_reason"]:
        assert reason.split(" or ")[0] in failures                                  # the reason, per run
    assert "diverges-s0-" in failures and "diverges-s1-" in failures
    # the kernel was this interpreter, and the runs' git commit is reported
    interpreter = text.split("| interpreter | ")[1].split(" |")[0]                # relative to the sweep folder
    assert (sweep.spec.folder / interpreter).resolve() == Path(sys.executable).resolve()
    commit = sweep.client.get_run(sweep.frame["mlflow_run_id"].iloc[0]).data.tags["git_commit"]
    assert f"| runs' git commit | {commit}" in text
    # the figures are embedded, so the notebook and the HTML stand alone: 5 plots (the runs' efficiency among them)
    # and the sample grids side by side
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) == 5 + 1
    html = html_path.read_text()
    assert html_path.suffix == ".html" and "data:image/png;base64" in html
    assert "Ablation report: rep" in html and "NonFiniteLoss" in html and "model.adaln" in html
    for name in ("table.md", "table.tex", "table.csv"):
        assert (notebook_path.parent / name).read_text().startswith(("|", "\\begin{table*}", "label,"))


def sections(nb) -> dict[str, list[dict]]:
    """The executed notebook's outputs under each `##` heading (`###` belong to their `##`)."""
    out, heading = {}, None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("## "):
                    heading = line[3:]
                    out[heading] = []
        elif heading is not None:
            out[heading] += cell.get("outputs", [])
    return out


def test_report_opens_with_question_answer_table_and_samples_then_the_shared_recipe(report, sweep):
    """The first section answers: the sweep's question, the table's verdict, the table at a glance and every
    row's samples side by side, then the recipe every row shares; nowhere an absolute path of this machine."""
    nb = nbformat.read(report[0], as_version=4)
    found = sections(nb)
    assert list(found) == ["Summary", "What each row changes", "Details"]
    summary = found["Summary"]
    texts = [o["data"]["text/markdown"] for o in summary if "text/markdown" in o.get("data", {})]
    answer = texts[0]
    assert answer.startswith("**Question.** How does each row change FD") and "**Answer.**" in answer
    assert "No row is significantly best on FD" in answer or "Best FD" in answer                # the verdict
    assert answer.index("**Answer.**") < answer.index("| row") and "FD ↓" in answer              # then the table
    assert [i for i, o in enumerate(summary) if "image/png" in o.get("data", {})] == [1]        # then the grids
    side_by_side = sweep.spec.folder / "report" / "samples" / "side_by_side.png"
    assert side_by_side.exists() and f"seed {GRID_SEED}" in texts[1] and "samples/side_by_side.png" in texts[1]
    recipe = texts[2]
    assert recipe == recipe_markdown(sweep) and recipe.startswith("> **The recipe every row shares**")
    shared = shared_recipe(sweep)
    assert shared["train.steps"] == "4" and shared["data.name"] == "digits"
    assert "model.adaln" not in shared and "optim.lr" not in shared and "run.seed" not in shared
    assert "`model.adaln`, " in recipe.split("*Varied between rows*")[1]
    html = report[1].read_text()
    for absolute in (str(sweep.spec.folder.resolve()), str(Path.cwd()), str(Path(sys.executable).parent)):
        assert absolute not in outputs_text(nb) and absolute not in html, absolute


def test_report_names_every_difference_against_the_baseline_and_the_row_above(report):
    text = outputs_text(nbformat.read(report[0], as_version=4))
    last = text[text.index("**\\+ no pixel pathway**"):]
    assert last.startswith("**\\+ no pixel pathway**: 1 key differs from the baseline, 3 keys differ")
    assert "| key | baseline | row above | this row |" in last
    assert "| `optim.lr` | = | 1000000000000\\.0 | 0\\.001 |" in last                 # same as the baseline's
    assert "| `model.pixel_pathway` | True | True | False |" in last


def test_report_says_which_run_each_sample_grid_shows(report, sweep):
    """One caption per row under Details: the finished rows' run (seed, step, its distance and class accuracy,
    the grid's file); the failed row says why it has none."""
    nb = nbformat.read(report[0], as_version=4)
    texts = [o["data"]["text/markdown"] for o in sections(nb)["Details"] if "text/markdown" in o.get("data", {})]
    captions = [t for t in texts if t.startswith("**") and ("seed 0, step" in t or "no grid" in t)]
    assert len(captions) == len(LABELS)
    for label, caption in zip(FINISHED, [c for c in captions if "no grid" not in c]):    # the file's order
        run = sweep.frame[(sweep.frame["label"] == label) & (sweep.frame["seed"] == 0)].iloc[0]
        assert label.lstrip("+ ") in caption and "seed 0, step 4" in caption and "(`report/samples/" in caption
        assert f"fd {run['metric.fd']:.4g}" in caption and f"class_acc {run['metric.class_acc']:.4g}" in caption
    assert "**diverges**: no grid (no finished run)." in captions


def test_sample_grids_use_the_same_noise_and_labels_in_every_row(sweep, tmp_path, monkeypatch):
    """The initial noise each row's sampler draws (recorded where the sampler draws it) is one and the
    same tensor, the labels too; the images differ, because the models do."""
    drawn = []
    original = harness.sampling.draw_normal

    def recording(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(harness.sampling, "draw_normal", recording)
    grids = sample_grids(sweep, tmp_path)
    made = [g for g in grids if g.path is not None]
    assert [g.label for g in made] == FINISHED and [g.label for g in grids if g.path is None] == ["diverges"]
    assert len(drawn) == len(made)                      # the flow sampler draws once per grid: its noise
    assert all(torch.equal(d, drawn[0]) for d in drawn[1:])
    assert all(g.labels == made[0].labels for g in made) and made[0].labels == list(range(10)) * 2
    pictures = [g.path.read_bytes() for g in made]
    assert len(set(pictures)) == len(pictures)


def test_report_html_hides_code_and_shows_plus_labels_as_text(report):
    notebook_path, html_path = report
    nb = nbformat.read(notebook_path, as_version=4)
    html = html_path.read_text()
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    loading = "load_sweep_runs(Sweep.open(sweep_path))"
    assert any(loading in source for source in code)                   # the notebook keeps it
    assert loading not in html and "hl-ipython3" not in html           # the HTML does not show it
    # "+ no pixel pathway" is a label, not a bullet list: as text in the rows list and in bold captions
    assert "<li>no pixel pathway</li>" not in html
    assert "<li>+ no pixel pathway</li>" in html
    assert re.search(r"<strong>\+ no pixel pathway</strong>", html)


def test_report_is_logged_to_the_parent_run(report, sweep):
    notebook_path, html_path = report
    logged = {Path(a.path).name for a in sweep.client.list_artifacts(sweep.parent_run_id, "report")}
    assert {notebook_path.name, html_path.name} <= logged
    plots = {Path(a.path).name for a in sweep.client.list_artifacts(sweep.parent_run_id, "plots")}
    assert {"fd_per_row.png", "fd_per_row.pdf", "fd_vs_cost.png", "loss.pdf"} <= plots
    samples = {Path(a.path).name for a in sweep.client.list_artifacts(sweep.parent_run_id, "samples")}
    assert "side_by_side.png" in samples
    assert {"table.md", "table.tex", "table.csv", "table_glance.md"} <= logged
    # the parent run's description links to them and shows the table at a glance, rounded (in the UI:
    # tests/test_ui.py), once however often it is written
    glance = (html_path.parent / "table_glance.md").read_text().strip()
    assert "FD ↓" in glance and re.search(r"\d ± \d", glance) and "| 3 + no pixel pathway |" in glance
    for _ in range(2):
        note = sweep.client.get_run(sweep.parent_run_id).data.tags["mlflow.note.content"]
        assert note.count("**The report:**") == 1 and note.count(glance) == 1
        assert f"artifactPath/report/{html_path.name}?workflowType=machine_learning)" in note
        assert f"get-artifact?path=samples%2Fside_by_side.png&run_uuid={sweep.parent_run_id})" in note
        link_report(sweep.client, sweep.parent_run_id, html_path.name, True, glance)
    # a table too long for a run's description (MLflow keeps 8,000 characters) is left to the links
    link_report(sweep.client, sweep.parent_run_id, html_path.name, True, "| a |\n" * 2000)
    note = sweep.client.get_run(sweep.parent_run_id).data.tags["mlflow.note.content"]
    assert "| a |" not in note and glance not in note and "**The report:**" in note and "side_by_side" in note


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
