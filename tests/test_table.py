"""The ablation table of a sweep of real tiny runs (2 seeds: every interval and test unreliable), checked
cell by cell against the runs themselves and against scipy; the bold rule on 3-seed tables; the labels of
ours and the paper's numbers; refusals of unknown metrics, points, baselines and columns; LaTeX compiled
by a real pdflatex."""
import json
import math
import os
import re
import shutil
import statistics
import subprocess
from io import StringIO

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_counting_imports, run_evaluated_sweep
from scipy import stats

from analysis.runs import SweepRuns, load_sweep_runs
from analysis.stats import paired_t, t_interval
from analysis.table import build_table, latex_escape
from commands.cli import main
from harness.sweep.spec import load_sweep
from harness.sweep.sweep import Sweep
from models.complexity import measure
from models.presets import model_config

PAPER_METRIC = {"fid": {"metric": "gFID-50K", "dataset": "ImageNet 256x256", "source": "PixelDiT Table 4"}}
FINISHED = ["patch-wise", "pixel-wise", "+ no pixel pathway"]


@pytest.fixture(scope="module")
def sweep_path(tmp_path_factory):
    """4 rows x 2 seeds with offline evaluation at step 3 and at the end; one row fails (lr 1e12). The
    file is then rewritten with the paper's numbers as the paper prints them (3.50), which changes no run."""
    path = run_evaluated_sweep(tmp_path_factory.mktemp("table"), "tab", steps=6, eval_step=3,
                               paper={"patch-wise": {"fid": 3.5}, "pixel-wise": {"fid": 2.36}}, baseline="pixel-wise",
                               paper_metric=PAPER_METRIC)
    text = path.read_text()
    assert "fid: 3.5\n" in text
    path.write_text(text.replace("fid: 3.5\n", "fid: 3.50\n"))
    return path


@pytest.fixture(scope="module")
def sweep(sweep_path):
    return load_sweep_runs(Sweep.open(sweep_path))


def final_metrics(sweep, label):
    """Per-seed final metrics straight from the run folders (written by the trainer, not MLflow)."""
    rows = sweep.frame[sweep.frame["label"] == label]
    return {r.seed: json.loads((sweep.spec.folder / r.run_name / "final_metrics.json").read_text())
            for r in rows.itertuples() if (sweep.spec.folder / r.run_name / "final_metrics.json").exists()}


# ---- the numbers ---------------------------------------------------------------------------------

def test_table_cells_equal_the_runs_numbers_and_scipy(sweep):
    table = build_table(sweep, metric="fd")
    frame = table.frame.set_index("label")
    assert list(table.frame["label"]) == ["patch-wise", "pixel-wise", "diverges", "+ no pixel pathway"]   # file order
    per_seed = {label: {s: m["fd"] for s, m in final_metrics(sweep, label).items()} for label in FINISHED}
    for label in FINISHED:
        values = list(per_seed[label].values())
        assert len(values) == 2
        assert frame.loc[label, "fd mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
        assert frame.loc[label, "fd std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert frame.loc[label, "fd n"] == 2
        low, high = stats.t.interval(0.95, 1, loc=np.mean(values), scale=stats.sem(values))
        interval = (frame.loc[label, "fd ci_low"], frame.loc[label, "fd ci_high"])
        assert interval == (pytest.approx(low), pytest.approx(high))
        assert [frame.loc[label, f"fd seed {s}"] for s in (0, 1)] == pytest.approx([per_seed[label][s] for s in (0, 1)])
    a, b = [per_seed["patch-wise"][s] for s in (0, 1)], [per_seed["pixel-wise"][s] for s in (0, 1)]
    reference = stats.ttest_rel(a, b)
    assert frame.loc["patch-wise", "fd delta_delta"] == pytest.approx(np.mean(a) - np.mean(b))
    assert frame.loc["patch-wise", "fd delta_p"] == pytest.approx(reference.pvalue)
    assert frame.loc["patch-wise", "fd delta_df"] == 1
    assert pd.isna(frame.loc["pixel-wise", "fd delta_p"])                                # the baseline itself
    assert frame.loc["pixel-wise", "fd prev_p"] == pytest.approx(reference.pvalue)      # the row above: patch-wise
    cfg = model_config("pixeldit_xl", ["input_size=32", "patch_size=8", "num_classes=10", "depth=2",
                                        "hidden_size=32", "num_heads=2", "pixel_depth=1", "pixel_dim=8",
                                        "repa=false", "adaln=B"])
    assert frame.loc["patch-wise", "params"] == measure(cfg).params


def test_interval_and_paired_test_equal_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 8):
        v = rng.normal(10, 2, n)
        interval = t_interval(v)
        reference = stats.ttest_1samp(v, 0.0).confidence_interval(0.95)
        assert (interval.low, interval.high) == (pytest.approx(reference.low), pytest.approx(reference.high))
        assert interval.reliable == (n >= 3)
        w = v + rng.normal(0.5, 1, n)
        test = paired_t(dict(enumerate(v)), dict(enumerate(w)))
        reference = stats.ttest_rel(v, w)
        ci = reference.confidence_interval(0.95)
        assert (test.p, test.low, test.high, test.df) == (pytest.approx(reference.pvalue), pytest.approx(ci.low),
                                                          pytest.approx(ci.high), n - 1)
        assert test.reliable == (n >= 3)
    v, w = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 1.5 + 1e-9, 2.5 - 1e-9, 3.5])  # near-identical differences
    test, reference = paired_t(dict(enumerate(v)), dict(enumerate(w))), stats.ttest_rel(v, w)
    assert (test.p, test.low) == (pytest.approx(reference.pvalue, abs=1e-300), pytest.approx(
        reference.confidence_interval(0.95).low))
    assert t_interval([4.0]).n == 1 and math.isnan(t_interval([4.0]).low)
    assert paired_t({0: 1.0, 1: 2.0, 7: 3.0}, {1: 1.5, 7: 2.0}).pairs == 2     # only the seeds both finished


def test_n2_marks_interval_and_test_unreliable_and_bolds_nothing(sweep):
    """A table over 2 seeds: every interval and test is marked †, no verdict is a win, nothing is bold."""
    table = build_table(sweep, metric="fd")
    shown = table.display().set_index("row")
    ours = next(c for c in shown.columns if c.startswith("ours: FD"))
    for label in FINISHED:
        assert shown.loc[label, ours].endswith("(n=2) †"), shown.loc[label, ours]
    delta = next(c for c in shown.columns if c.startswith("Δ vs pixel-wise"))
    for label in ("patch-wise", "+ no pixel pathway"):
        assert "†" in shown.loc[label, delta] and "(df=1): unreliable (< 3 seed pairs)" in shown.loc[label, delta]
        verdict = shown.loc[label, delta].split(";")[0]
        assert "better" not in verdict and "worse" not in verdict
    decisions = table.bold.values()
    assert "pixel-wise" not in {d.bold for d in decisions} and all(d.bold is None for d in decisions)
    markdown, latex, html = table.to_markdown(), table.to_latex(), table.to_html()
    assert "**" not in markdown and r"\textbf" not in latex and "<strong>" not in html
    assert "†: n < 3 (or fewer than 3 seed pairs): interval and test unreliable, never bold." in markdown
    assert "fd: nothing bold (best" in markdown and "only 2 seed pair(s), fewer than 3: unreliable" in markdown
    assert "paired t-test" in markdown and "df = seed pairs - 1" in markdown


def test_failed_runs_show_as_failed_not_as_gaps(sweep):
    table = build_table(sweep, metric="fd")
    shown = table.display().set_index("row")
    ours = next(c for c in shown.columns if c.startswith("ours: FD"))
    assert shown.loc["diverges", ours] == "no finished run: failed (2)"
    assert shown.loc["diverges", "runs"] == "2 failed"
    delta = next(c for c in shown.columns if c.startswith("Δ"))
    assert shown.loc["pixel-wise", delta] == "baseline" and shown.loc["diverges", delta] == "–"
    assert shown.loc["patch-wise", "vs row above (paired t)"] == "first row"


def test_metric_at_an_evaluation_point(sweep):
    table = build_table(sweep, metric="fd", at=["3", "final"])
    assert table.points == ["fd@step_3", "fd"]
    frame = table.frame.set_index("label")
    for label in ("patch-wise", "pixel-wise"):
        runs = sweep.frame[(sweep.frame["label"] == label)]
        at_3 = [sweep.client.get_metric_history(r, "fd")[0] for r in runs["mlflow_run_id"]]
        assert [m.step for m in at_3] == [3, 3]
        assert frame.loc[label, "fd@step_3 mean"] == pytest.approx(statistics.mean(m.value for m in at_3))
    assert build_table(sweep, metric="fd", at=["step_3"]).points == ["fd@step_3"]


# ---- the bold rule, on 3-seed tables --------------------------------------------------------------

def synthetic_sweep(tmp_path, values: dict, metric: str = "fd") -> SweepRuns:
    """A real sweep spec whose runs' final `metric` are `values` (label -> [seed 0, 1, 2], None: failed):
    the statistics of the table on chosen numbers."""
    path = tmp_path / "syn.yaml"
    path.write_text(yaml.safe_dump({"name": "syn", "experiment": "tiny_digits", "seeds": [0, 1, 2],
                                    "rows": [{"label": label} for label in values]}))
    records = [{"label": label, "row": i, "seed": s, "grid": "{}", "state": "done" if v is not None else "failed",
                "params": 1, "gflops": 1.0, f"metric.{metric}": v, "metric.loss": 1.0}
               for i, (label, seeds) in enumerate(values.items()) for s, v in enumerate(seeds)]
    return SweepRuns(Sweep.open(path), pd.DataFrame(records))


def bold_rows(markdown: str) -> list[str]:
    return [line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("|") and "**" in line]


def test_bold_only_when_the_best_beats_the_runner_up(tmp_path):
    clear = synthetic_sweep(tmp_path, {"A": [10.0, 11.0, 12.0], "B": [5.0, 6.1, 7.05], "C": [20.0, 21.0, 23.0]})
    table = build_table(clear, metric="fd")
    assert bold_rows(table.to_markdown()) == ["B"]
    assert table.bold["fd"].reason.startswith("beats the runner-up: paired t, df=2")
    p = stats.ttest_rel([5.0, 6.1, 7.05], [10.0, 11.0, 12.0]).pvalue
    assert f"p={p:.2g}" in table.bold["fd"].reason
    assert table.to_latex().count(r"\textbf{") == 1
    shown = table.display().set_index("row")
    assert shown.loc["B", "Δ vs A (paired t)"].endswith(": better")       # vs the baseline A, 3 pairs, p < 0.05

    noisy = synthetic_sweep(tmp_path, {"A": [10.0, 11.0, 12.0], "B": [9.0, 12.5, 11.0], "C": [20.0, 21.0, 23.0]})
    table = build_table(noisy, metric="fd")            # B's mean is lowest, but within noise of A's
    assert bold_rows(table.to_markdown()) == []
    assert stats.ttest_rel([9.0, 12.5, 11.0], [10.0, 11.0, 12.0]).pvalue >= 0.05
    assert "within noise" in table.bold["fd"].reason and "fd: nothing bold (best B, runner-up A" in table.to_markdown()

    failed_seed = synthetic_sweep(tmp_path, {"A": [10.0, 11.0, None], "B": [5.0, 6.1, 7.05]})
    table = build_table(failed_seed, metric="fd")      # the runner-up has n = 2: no win can be claimed
    assert bold_rows(table.to_markdown()) == []
    assert "(n=2) †" in table.to_markdown() and "only 2 seed pair(s)" in table.bold["fd"].reason


def test_a_metric_added_by_its_registry_entry_is_labelled_directed_and_bolded(tmp_path, registered_metric):
    """The registry entry alone (tests/conftest.py) makes the table choose the metric by default, label it with its
    words, point it up and bold the highest mean; the same numbers under a name the registry does not know read
    as lower-is-better and are labelled by the name."""
    values = {"A": [0.50, 0.51, 0.52], "B": [0.80, 0.82, 0.81], "C": [0.10, 0.12, 0.11]}
    table = build_table(synthetic_sweep(tmp_path, values, metric="sharpness"))         # no --metric
    assert table.metric == "sharpness"
    shown = table.display().set_index("row")
    assert "ours: sharpness (edge energy of samples) ↑" in shown.columns
    assert bold_rows(table.to_markdown()) == ["B"] and "(higher is better)" in table.to_markdown()
    assert shown.loc["B", "Δ vs A (paired t)"].endswith(": better")
    assert shown.loc["C", "Δ vs A (paired t)"].endswith(": worse")

    unknown = build_table(synthetic_sweep(tmp_path, values, metric="unlisted"), metric="unlisted")
    assert "ours: unlisted ↓" in unknown.display().columns
    assert bold_rows(unknown.to_markdown()) == ["C"] and "(lower is better)" in unknown.to_markdown()


# ---- what the numbers are -----------------------------------------------------------------------

def test_ours_and_the_papers_columns_say_what_they_are(sweep):
    table = build_table(sweep, metric="fd")
    params = sweep.frame[sweep.frame["state"] == "done"].iloc[0]
    dataset, resolution = params["param.data.name"], params["param.data.resolution"]
    samples = params["param.eval.num_samples"]
    ours = f"ours: FD (held-out-split classifier), {dataset} {resolution} px, {samples} samples ↓"
    paper = "paper: gFID-50K, ImageNet 256x256 (PixelDiT Table 4) ↓"
    shown = table.display()
    assert ours in shown.columns and paper in shown.columns
    assert "ours: class accuracy (held-out-split classifier)" in " ".join(shown.columns)           # beside the distance
    assert list(shown.set_index("row")[paper]) == ["3.50", "2.36", "", ""]                 # as written
    assert "3.50" in table.to_latex() and "3.50" in table.to_csv() and "3.50" in table.to_html()
    # the paper's ordering beside ours, never claimed where the test cannot support it
    previous = shown.set_index("row")["vs row above (paired t)"]
    assert previous["pixel-wise"].endswith("unreliable (< 3 seed pairs); paper: better (3.50 → 2.36)")
    assert "not resolved at this scale for 1" in table.to_markdown()
    assert "reproduced (significant, same direction) for 0 of 1" in table.to_markdown()


def test_paper_numbers_are_validated_where_the_file_is_read(tmp_path):
    base = {"name": "p", "experiment": "tiny_digits", "rows": [{"label": "a", "paper": {"fid": 9.84}}]}

    def refused(**changes) -> str:
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({**base, **changes}))
        with pytest.raises(Exception) as err:
            load_sweep(path)
        message = str(err.value)
        assert message.startswith(str(path)) and "\n" not in message
        return message

    not_a_number = refused(rows=[{"label": "a", "paper": {"fid": "n/a"}}])
    assert "rows[0].paper.fid='n/a': expected the paper's number" in not_a_number
    unused = refused(paper_metric={"fd": {"metric": "x", "dataset": "y"}})
    assert "paper_metric.fd: no row has a paper.fd number" in unused
    assert "(did you mean dataset?)" in refused(paper_metric={"fid": {"metric": "FID", "datset": "y"}})
    assert "paper_metric.fid.dataset: required" in refused(paper_metric={"fid": {"metric": "FID"}})
    assert "rows[0].paper.fid: paper_metric has no entry" in refused(
        rows=[{"label": "a", "paper": {"fid": 9.84}}, {"label": "b", "paper": {"is": 200}}],
        paper_metric={"is": {"metric": "IS", "dataset": "ImageNet"}})
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\nexperiment: tiny_digits\nrows:\n  - {label: a, paper: {fid: 3.50}}\n")
    spec = load_sweep(path)
    assert str(spec.rows[0].paper["fid"]) == "3.50" and spec.rows[0].paper["fid"] == 3.5
    assert spec.paper_metric == {}                    # allowed; the tables then say it is not stated


def test_shipped_sweeps_say_what_their_paper_numbers_are():
    for name, text in (("pixeldit_table4", "gFID-50K, ImageNet 256x256"), ("tiny_diffit", "FID, CIFAR-10 32x32")):
        spec = load_sweep(f"sweeps/{name}.yaml")
        assert str(spec.paper_metric["fid"]).startswith(text), spec.paper_metric
    assert [str(r.paper.get("fid")) for r in load_sweep("sweeps/pixeldit_table4.yaml").rows] == \
        ["9.84", "8.53", "None", "3.50", "2.36"]


# ---- refusals and selections --------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--metric", "fdd"], "--metric='fdd': no run of this sweep logged it; logged: ['class_acc', "),
    (["--metric", "fd", "--at", "30"], "--at='30': fd was not logged there; logged at ['final', "),
    (["--baseline", "pixelwise"], "--baseline='pixelwise': no row has this label; rows are ['patch-wise', "),
    (["--columns", "row", "papr"], "--columns='papr': no such column; columns are ['row', 'params', "),
])
def test_what_matches_nothing_is_refused_in_one_line(sweep_path, capsys, args, expected):
    assert main(["table", str(sweep_path), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {sweep_path}: {expected}") and err.count("\n") == 1, err
    assert "(did you mean " in err
    suggestion = {"fdd": "fd", "30": "3", "pixelwise": "pixel-wise", "papr": "paper"}[args[-1]]
    assert err.rstrip().endswith(f"(did you mean {suggestion}?)")


def test_columns_select_in_every_format(sweep_path, capsys):
    chosen = ["row", "fd", "paper"]
    for fmt in ("markdown", "latex", "html", "csv"):
        assert main(["table", str(sweep_path), "--metric", "fd", "--format", fmt, "--wide", "--columns", *chosen]) == 0
        out = capsys.readouterr().out
        if fmt == "markdown":
            header = out.splitlines()[0]
            assert header.count("|") == 4 and "ours: FD" in header and "paper: gFID-50K" in header
        elif fmt == "latex":
            assert re.search(r"\\begin\{tabular\}\{(>\{\\raggedright\\arraybackslash\}p\{[\d.]+cm\}|[lr]){3}\}", out)
        elif fmt == "html":
            assert out.count("<th ") == 3
        else:
            columns = pd.read_csv(StringIO(out)).columns
            assert {c.split(" ")[0] for c in columns} == {"label", "row", "fd", "paper"}


def test_the_default_table_reads_at_a_glance_and_wide_keeps_everything(sweep_path, capsys):
    """`table` prints the verdict, a table of short headers within 120 columns and its legend; `--wide` the full
    table; `--columns` chooses in both; `--format latex` fits the page (analysis/glance.py, tests/test_glance.py)."""
    assert main(["table", str(sweep_path), "--metric", "fd"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 120
    assert lines[0].startswith("Paper's ordering against the row above: reproduced for 0 of 1 rows")
    header = next(line for line in lines if line.startswith("row "))
    assert header.split("  ")[0] == "row" and "FD ↓" in header and "Δ vs base" in header and "ours:" not in header
    assert any(line.startswith("2 diverges") and "failed (2)" in line for line in lines)
    assert any(line.startswith("FD ↓: ours, FD (held-out-split classifier)") for line in lines)
    assert main(["table", str(sweep_path), "--metric", "fd", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert "ours: FD (held-out-split classifier)" in wide.splitlines()[0] and len(wide.splitlines()[0]) > 120
    assert main(["table", str(sweep_path), "--metric", "fd", "--columns", "row", "fd"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("row "))
    assert header.split() == ["row", "FD", "↓"]
    assert main(["table", str(sweep_path), "--format", "latex", "--fit", "column"]) == 0
    assert r"\begin{tabularx}{\linewidth}" in capsys.readouterr().out


def test_csv_holds_numbers_not_dicts(sweep):
    table = build_table(sweep, metric="fd", at=["3", "final"])
    csv = pd.read_csv(StringIO(table.to_csv()))
    assert not any(isinstance(v, str) and v.lstrip().startswith(("{", "[")) for v in csv.to_numpy().ravel())
    per_seed = {s: m["fd"] for s, m in final_metrics(sweep, "patch-wise").items()}
    row = csv.set_index("label").loc["patch-wise"]
    assert [row[f"fd seed {s}"] for s in (0, 1)] == pytest.approx([per_seed[0], per_seed[1]])
    assert str(row["paper fid"]) == "3.5"      # pandas reads it back as a number; the file holds "3.50"
    assert "3.50" in table.to_csv()


# ---- LaTeX ---------------------------------------------------------------------------------------

def has_pdflatex() -> bool:
    if shutil.which("pdflatex") is None or shutil.which("kpsewhich") is None:
        return False
    return subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True).returncode == 0


@pytest.mark.skipif(not has_pdflatex(), reason="pdflatex or booktabs.sty missing: `bash scripts/install_debian.sh "
                    "latex` (as root) installs Debian's texlive-latex-base and texlive-latex-recommended")
def test_latex_compiles_with_pdflatex(sweep, tmp_path):
    table = build_table(sweep, metric="fd", at=["3", "final"])
    latex = table.to_latex()
    assert latex.isascii()                                             # no raw Unicode reaches pdflatex
    for needed in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"$\downarrow$", r"$\uparrow$",
                   r"$\pm$", r"$\Delta$", r"$^\dagger$", "3.50"):
        assert needed in latex, needed
    selected = table.to_latex(columns=["row", "fd", "paper"])
    awkward = latex_escape("+ Δ & 50% ± é_1 #2 ~ ^ \\ {x} <y> ✓")
    document = ("\\documentclass{article}\n\\usepackage{booktabs,array}\n\\begin{document}\n" + latex + "\n" + selected
                + "\n" + awkward + "\n\\end{document}\n")
    (tmp_path / "table.tex").write_text(document)
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TEXMFOUTPUT": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "table.pdf").read_bytes()[:5] == b"%PDF-"
    log = (tmp_path / "table.log").read_text(errors="replace")
    assert "Output written on table.pdf" in log, log[-2000:]
    assert "Undefined control sequence" not in log and "Missing $ inserted" not in log


def test_efficiency_columns_show_the_runs_telemetry_when_asked_for(sweep, sweep_path, capsys):
    table = build_table(sweep, metric="fd")
    assert not {"mfu", "data_wait", "peak_memory"} & set(table.column_ids())          # not shown by default
    shown = table.display(columns=["row", "data_wait", "peak_memory", "mfu"])
    done = sweep.frame[sweep.frame["state"] == "done"]
    for i, label in enumerate(table.frame["label"]):
        runs = done[done["label"] == label]
        row = shown.iloc[i]
        if runs.empty:                                                                 # the failed row
            assert [row["data wait (% of step)"], row["peak memory (GiB)"], row["MFU"]] == ["", "", ""]
            continue
        share = (runs["metric.data_wait_s"] / runs["metric.step_time_s"]).mean()
        assert row["data wait (% of step)"] == f"{100 * share:.1f}%"
        assert row["peak memory (GiB)"] == f"{runs['metric.peak_memory_gb'].mean():.2f}"
        assert row["MFU"] == ""                                                        # CPU runs: no MFU
    assert main(["table", str(sweep_path), "--metric", "fd", "--format", "csv", "--columns", "row", "data_wait"]) == 0
    csv = pd.read_csv(StringIO(capsys.readouterr().out))
    assert list(csv.columns) == ["label", "row", "data_wait"] and csv["data_wait"].dropna().between(0, 1).all()


# ---- the read-only verbs, as a user types them --------------------------------------------------------

def test_read_only_verbs_never_import_torch_and_logs_reads_no_store(sweep_path, tmp_path):
    """status, table, logs (by a piece of a label) and errors about the file read the plan cache and the store,
    never torch; logs reads a text file, so it imports no MLflow either. (The fixture edited its file after the
    submission: its plan is cached again first, as a submission leaves it.)"""
    sweep = Sweep.open(sweep_path)
    sweep.plan_fresh()
    sweep.write_plan_cache()
    status, imported = run_counting_imports("run_sweep.py", "status", str(sweep_path))
    assert status.returncode == 0 and "done=6" in status.stdout and "torch" not in imported, status.stderr[-2000:]
    table, imported = run_counting_imports("run_sweep.py", "table", str(sweep_path))
    assert table.returncode == 0 and "patch-wise" in table.stdout and "torch" not in imported, table.stderr[-2000:]
    logs, imported = run_counting_imports("run_sweep.py", "logs", str(sweep_path), "PIXEL-W", "--seed", "1")
    assert logs.returncode == 0 and logs.stdout.startswith("==> pixel-wise · seed 1 ("), logs.stderr[-2000:]
    assert "torch" not in imported and "mlflow" not in imported
    # after an upgrade of ditlab the cache is another code's: status and logs plan the runs again, still without torch
    cache = sweep.folder / "plan.json"
    written = cache.read_text()
    entry = json.loads(written)
    entry["code"], entry["key"] = "0" * 16, entry["key"][:16] + "0" * 16
    cache.write_text(json.dumps(entry))
    try:
        upgraded, imported = run_counting_imports("run_sweep.py", "status", str(sweep_path))
        assert upgraded.stdout == status.stdout and "torch" not in imported, upgraded.stderr[-2000:]
        logs, imported = run_counting_imports("run_sweep.py", "logs", str(sweep_path), "PIXEL-W", "--seed", "1")
        assert logs.returncode == 0 and "torch" not in imported and "mlflow" not in imported, logs.stderr[-2000:]
    finally:
        cache.write_text(written)
    text = sweep_path.read_text()
    for typo, where in ((text.replace("seeds:", "sedes:"), "sedes"),
                        (text.replace("model.adaln: B", "model.adaln: Z"), "model.adaln")):
        bad = sweep_path.with_name("bad.yaml")
        bad.write_text(typo)
        error, imported = run_counting_imports("run_sweep.py", "status", str(bad))
        (line,) = error.stderr.splitlines()[:-1]                 # one line, then the probe's
        assert error.returncode == 2 and line.startswith(f"error: {bad}") and where in line, error.stderr
        assert "torch" not in imported
