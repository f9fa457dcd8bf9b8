"""The table at a glance (analysis/glance.py): for every shipped sweep, the terminal table fits 120 columns with
its verdict first and a legend under it, numbers of a column share their decimals, FLOPs come in a unit that fits
the scale; the LaTeX presets compile with a real pdflatex without an overfull box, as wide as a page or a column.
The shipped sweeps' rows and paper numbers are real (their files); their runs' numbers are chosen, at the
sizes of the real models (675M parameters, 82,247 GFLOPs) and toy ones, with a failed row and a failed seed."""
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_table import has_pdflatex, synthetic_sweep

from analysis.glance import WIDTH, decimals, glance, render, scale
from analysis.runs import SweepRuns
from analysis.table import build_table
from harness.sweep.spec import load_sweep
from harness.sweep.sweep import Sweep

SHIPPED = sorted(Path("sweeps").glob("*.yaml"))


def shipped_table(path: Path, params: int, gflops: float):
    """The table of a shipped sweep whose runs finished with chosen numbers: the second row failed every seed, the
    last row one seed (the widest cells the table writes)."""
    spec = load_sweep(path)
    rng = np.random.default_rng(0)
    records = []
    for i, row in enumerate(spec.rows):
        for s in spec.seeds:
            failed = i == 1 or (i == len(spec.rows) - 1 and s == spec.seeds[0] and len(spec.seeds) > 1)
            records.append({"label": row.label, "row": i, "seed": s, "grid": "{}",
                            "state": "failed" if failed else "done",
                            "params": params, "gflops": gflops, "metric.fd": None if failed else 123.4 + rng.normal(),
                            "metric.class_acc": None if failed else 0.5 + rng.normal() / 10, "metric.loss": 1.0,
                            "param.data.name": "imagenet", "param.data.resolution": 256,
                            "param.eval.num_samples": 50000, "param.model.num_classes": 1000})
    return build_table(SweepRuns(Sweep.open(spec.path), pd.DataFrame(records)), metric="fd")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
@pytest.mark.parametrize("params, gflops", [(675_000_000, 82_247.0), (48_123, 0.0042)], ids=["paper", "toy"])
def test_the_default_table_of_every_shipped_sweep_fits_120_columns(path, params, gflops):
    table = shipped_table(path, params, gflops)
    text = render(table, "text")
    lines = text.splitlines()
    assert max(map(len, lines)) <= WIDTH, max(lines, key=len)
    assert len(render(table, "text", wide=True).splitlines()[0]) > WIDTH         # what --wide keeps
    header = next(i for i, line in enumerate(lines) if line.startswith("row "))
    verdict, legend = " ".join(lines[:header]), " ".join(lines[header:])
    assert "runs done" in verdict and ("significantly best" in verdict or "Best FD" in verdict)
    if table.paper_keys:
        assert verdict.startswith("Paper's ordering against the row above: reproduced for ")
    assert "FD ↓" in lines[header] and "ours, FD (held-out-split classifier), imagenet 256 px" in legend
    assert "95% t-interval" in legend and "paired t-test" in legend
    unit = "TFLOPs" if gflops > 1 else "MFLOPs"
    first_row = lines[header + 2]
    assert first_row.startswith(f"0 {table.frame['label'][0][:10]}")
    if unit in lines[header]:
        assert f"{unit}: one forward pass of one image" in legend
        assert (" 82.2 " if gflops > 1 else " 4.20 ") in first_row
    else:                                                                # left out to fit, and said so
        assert re.search(f"Left out to fit 120 columns: [^(]*{unit}", legend), legend
    assert "failed (" in lines[header + 3]                              # the failed row says why it has no number
    cut = [line for line in lines[header:] if "…" in line]
    for line in cut:                                                     # a label cut to fit is named in full
        number = line.split(" ", 1)[0]
        full = table.frame["label"][int(number)]
        assert f"{number} {full}" in legend


def test_numbers_of_a_column_share_their_decimals_and_units_fit_the_scale():
    assert decimals([12.34, 0.9]) == 1 and decimals([0.512, 0.06]) == 3 and decimals([1234.0]) == 0
    assert scale([0.0042e9]) == ("M", 1e6) and scale([82_247e9]) == ("T", 1e12) and scale([512]) == ("", 1.0)


def test_best_row_is_marked_and_named_first(tmp_path):
    sweep = synthetic_sweep(tmp_path, {"A": [10.0, 11.0, 12.0], "B": [5.0, 6.1, 7.05], "C": [20.0, 21.0, 23.0]})
    table = build_table(sweep, metric="fd")
    lines = render(table, "text").splitlines()
    assert lines[0].startswith("Best FD: 'B' (beats the runner-up: paired t, df=2")
    rows = {line.split()[1]: line for line in lines if line[:2] in ("0 ", "1 ", "2 ")}
    assert "*6.0 ± 2.5" in rows["B"] and "*" not in rows["A"] + rows["C"]        # one decimal: 21.3 is the largest
    assert "-5.0 better" in rows["B"] and "+10.3 worse" in rows["C"]       # against the baseline A
    assert rows["B"].split()[2:4] == ["1", "1.00"]                         # 1 parameter, 1 GFLOPs
    shown = glance(table)
    assert shown.headers == ["row", "params", "GFLOPs", "FD ↓", "Δ vs base", "Δ vs above"]
    markdown = render(table, "markdown")
    assert "**6.0 ± 2.5**" in markdown and markdown.startswith("Best FD")


@pytest.mark.skipif(not has_pdflatex(), reason="pdflatex or booktabs.sty missing: `bash scripts/install_debian.sh "
                    "latex` (as root) installs Debian's texlive-latex-base and texlive-latex-recommended")
@pytest.mark.parametrize("fit, documentclass", [("page", "article"), ("page", "article}\n\\twocolumn{"),
                                                 ("column", "article}\n\\twocolumn{")])
def test_latex_presets_compile_without_overfull_boxes(tmp_path, fit, documentclass):
    """Every shipped sweep's table in one document: `page` on a one-column and on a two-column page (table*),
    `column` in one column of a two-column page."""
    tables = [render(shipped_table(path, 675_000_000, 82_247.0), "latex", fit=fit) for path in SHIPPED]
    assert all(t.isascii() and r"\begin{tabularx}{\linewidth}" in t for t in tables)
    assert all((r"\begin{table*}" in t) == (fit == "page") for t in tables)
    document = ("\\documentclass{" + documentclass + "}\n\\usepackage{booktabs,array,tabularx}\n\\begin{document}\n"
                + "\n".join(tables) + "\n\\end{document}\n")
    (tmp_path / "fit.tex").write_text(document)
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "fit.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TEXMFOUTPUT": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-3000:]
    log = (tmp_path / "fit.log").read_text(errors="replace")
    assert "Output written on fit.pdf" in log
    assert "Overfull" not in log, log[log.index("Overfull"):][:1500]
