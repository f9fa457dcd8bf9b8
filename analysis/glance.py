"""The ablation table made to read at a glance: the verdict first, short headers (the metric's name and its
arrow), one number format per column, units that fit the scale, a legend under it that says what every
header and mark means; fitted to a 120-column terminal, or to a LaTeX column or page.

The numbers and tests are those of `analysis.table.AblationTable` (built once, shown twice): this module only
chooses how they are written. `--wide` (AblationTable.to_markdown) keeps the self-describing full table.
"""
from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, replace

import pandas as pd

from harness import metric_registry

from .stats import ALPHA, CONFIDENCE, MIN_N, Interval, Paired
from .table import LATEX, MARKDOWN, AblationTable, Dialect, MetricColumn, latex_escape, markdown_escape

WIDTH = 120                          # the terminal the default table fits
GAP = "  "
SHORT_LABEL = 28                     # row labels are cut to this before columns are left out to fit,
MIN_LABEL = 16                       # and never cut shorter than this
BEST = "*"                           # the text table's mark of a significantly best cell (bold elsewhere)
AGREEMENT = {"agrees": "✓", "contradicts": "✗", "not resolved": "?"}
VERDICT = {"better": "better", "worse": "worse", "n.s.": "n.s.", "unreliable": "†", "untested": "untested"}
PREFIXES = (("", 1.0), ("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12))
LATEX_FITS = ("page", "column")
UNBROKEN = ("params", "gflops", "paper", "images_per_s", "runs")        # LaTeX columns that never wrap
DROPPED_FIRST = ("runs", "images_per_s", "gflops", "companion", "params", "previous")   # when labels cut to fit
                                                                                         # are not enough


def short_header(column: MetricColumn) -> str:
    """'FD ↓', 'FD@step 3 ↓', 'class accuracy ↑': the registry's name of the metric (its full description
    is in the legend)."""
    at = "" if column.point is None else f"@{column.point.replace('_', ' ')}"
    return f"{metric_registry.entry(column.metric).label}{at} {column.arrow}"


def decimals(values, significant: int = 3) -> int:
    """Decimals that give the column's largest magnitude `significant` digits (12.3, 0.512, 1234)."""
    finite = [abs(float(v)) for v in values if pd.notna(v) and math.isfinite(float(v)) and v != 0]
    if not finite:
        return 2
    return max(0, significant - 1 - math.floor(math.log10(max(finite))))


def scale(values) -> tuple[str, float]:
    """The SI prefix (and its divisor) under which the largest value reads 1-999: 0.004 GFLOPs -> MFLOPs."""
    finite = [abs(float(v)) for v in values if pd.notna(v) and math.isfinite(float(v))]
    top = max(finite, default=0.0)
    return next(((p, d) for p, d in reversed(PREFIXES) if top >= d), PREFIXES[0])


@dataclass
class Glance:
    """Plain strings (no format's escaping yet): the verdict sentences, one header and one cell per shown
    column, which cells are the significantly best, and the legend's sentences."""
    verdict: list[str]
    headers: list[str]
    right: list[bool]                # right-aligned (numbers)
    rows: list[list[str]]
    best: set[tuple[int, int]]       # (row, column) of bold cells
    legend: list[str]
    labels: list[str]                # the full row labels, in the table's order
    label_column: int | None         # where the row label is, so that it can be shortened to fit
    ids: list[str]                   # the column id each header shows (`AblationTable.column_ids`)

    # ---- formats -------------------------------------------------------------------------------

    def _cells(self, d: Dialect, best_mark: str | None = None) -> list[list[str]]:
        def cell(i, j, text):
            if (i, j) not in self.best:
                return d.text(text)
            return d.text(best_mark + text) if best_mark else d.bold(d.text(text))
        return [[cell(i, j, text) for j, text in enumerate(row)] for i, row in enumerate(self.rows)]

    def text_lines(self, width: int = WIDTH) -> list[str]:
        """The terminal table: verdict, aligned columns under a rule, legend; every line <= `width` (labels
        cut with '…' where needed, named in full in the legend)."""
        shown = self._fitted(width)
        cells = shown._cells(Dialect(str, str), best_mark=BEST)
        widths = [max([len(h), *(len(r[j]) for r in cells)]) for j, h in enumerate(shown.headers)]

        def line(values):
            return GAP.join(v.rjust(w) if right else v.ljust(w)
                            for v, w, right in zip(values, widths, shown.right)).rstrip()
        body = [line(shown.headers), GAP.join("─" * w for w in widths), *map(line, cells)]
        wrap = lambda s: textwrap.wrap(s, width, subsequent_indent="  ", break_on_hyphens=False)  # noqa: E731
        return ([out for s in shown.verdict for out in wrap(s)] + [""] + body + [""]
                + [out for s in shown.legend for out in wrap(s)])

    def text(self, width: int = WIDTH) -> str:
        return "\n".join(self.text_lines(width)) + "\n"

    def _width(self) -> int:
        widths = [max([len(h), *(len(r[k]) for r in self.rows)]) for k, h in enumerate(self.headers)]
        return sum(widths) + len(GAP) * (len(widths) - 1)

    def _fitted(self, width: int) -> Glance:
        """A copy at most `width` wide: row labels cut to SHORT_LABEL characters, then the columns of
        DROPPED_FIRST left out in that order, then labels cut to MIN_LABEL (the legend names what was cut)."""
        shown, dropped = self._cut(width, SHORT_LABEL), []
        for kind in DROPPED_FIRST:
            while shown._width() > width and kind in shown.ids:
                k = shown.ids.index(kind)
                dropped.append(shown.headers[k])
                shown = shown._without(k)
        shown = shown._cut(width, MIN_LABEL)
        j = shown.label_column                      # its cells read "<row index> <label>"
        cut = list(dict.fromkeys(f"{row[j].split(' ', 1)[0]} {label}" for label, row in zip(self.labels, shown.rows)
                                 if j is not None and row[j].endswith("…")))
        legend = shown.legend + (["Rows in full: " + "; ".join(cut) + "."] if cut else [])
        if dropped:
            legend.append(f"Left out to fit {width} columns: {', '.join(dropped)} (`--wide` or `--columns` "
                          "shows them).")
        return replace(shown, legend=legend)

    def _cut(self, width: int, shortest: int) -> Glance:
        j, excess = self.label_column, self._width() - width
        if excess <= 0 or j is None:
            return self
        keep = max(shortest, max([len(r[j]) for r in self.rows], default=0) - excess, len(self.headers[j]))
        rows = [[*row[:j], row[j] if len(row[j]) <= keep else row[j][:keep - 1].rstrip() + "…", *row[j + 1:]]
                for row in self.rows]
        return replace(self, rows=rows)

    def _without(self, k: int) -> Glance:
        drop = lambda values: [v for i, v in enumerate(values) if i != k]  # noqa: E731
        legend = [s for s in self.legend if not s.startswith(self.headers[k] + ":")]
        label = self.label_column if self.label_column is None or self.label_column < k else self.label_column - 1
        return replace(self, headers=drop(self.headers), right=drop(self.right), ids=drop(self.ids),
                       rows=[drop(r) for r in self.rows], legend=legend, label_column=label,
                       best={(i, j - (j > k)) for i, j in self.best if j != k})

    def markdown(self) -> str:
        table = pd.DataFrame(self._cells(MARKDOWN), columns=[markdown_escape(h) for h in self.headers])
        return ("\n\n".join(markdown_escape(s) for s in self.verdict) + "\n\n"
                + table.to_markdown(index=False, disable_numparse=True,
                                    colalign=["right" if r else "left" for r in self.right])
                + "\n\n" + "\n".join(f"- {markdown_escape(s)}" for s in self.legend) + "\n")

    def latex(self, fit: str = "page") -> str:
        """A booktabs `tabularx` as wide as the text (`fit='page'`: `table*`, spanning both columns of a
        two-column paper) or as one column (`fit='column'`: `table`); needs
        `\\usepackage{booktabs,array,tabularx}`; pure ASCII. Labels and comparisons wrap, numbers don't."""
        if fit not in LATEX_FITS:
            raise ValueError(f"fit must be one of {LATEX_FITS}")
        frame = pd.DataFrame(self._cells(LATEX), columns=[latex_escape(h) for h in self.headers])
        column_format = "".join("r" if cid in UNBROKEN else
                                rf">{{\ragged{'left' if right else 'right'}\arraybackslash}}X"
                                for cid, right in zip(self.ids, self.right))
        caption = " ".join(latex_escape(s) for s in [*self.verdict, *self.legend])
        size = "scriptsize" if fit == "column" else "footnotesize"
        latex = (frame.style.hide(axis="index")
                 .set_table_styles([{"selector": size, "props": ":;"}], overwrite=False)
                 .to_latex(hrules=True, caption=caption, position="htbp", position_float="centering",
                           column_format=column_format, environment="table*" if fit == "page" else None))
        return (latex.replace(r"\begin{tabular}{", "\\setlength{\\tabcolsep}{3pt}\n\\begin{tabularx}{\\linewidth}{")
                .replace(r"\end{tabular}", r"\end{tabularx}"))


def render(table: AblationTable, fmt: str, columns: list[str] | None = None, wide: bool = False,
           fit: str = "page") -> str:
    """`fmt` text (the terminal's), markdown, latex, html or csv. Text, Markdown and LaTeX at a glance (LaTeX
    fitted to a `fit` 'page' or 'column') unless `wide`: then every header and cell says all it can
    (`AblationTable.render`), as the HTML and CSV always do."""
    if fmt == "text":
        return table.to_markdown(columns) + "\n" if wide else glance(table, columns).text()
    if fmt in ("markdown", "latex") and not wide:
        shown = glance(table, columns, fit if fmt == "latex" else None)
        return shown.markdown() if fmt == "markdown" else shown.latex(fit)
    return table.render(fmt, columns)


# ---- from the table's numbers --------------------------------------------------------------------

def default_columns(table: AblationTable, fit: str | None = None) -> list[str]:
    """What a glance shows unless `--columns` says otherwise: the row, its grid point, size, the metric's
    columns, the two comparisons and the paper; throughput only in the wide table; the runs' states only
    when some run is not done. A LaTeX column holds the row, the metric, the baseline comparison and the
    paper."""
    ids = table.column_ids()
    if fit == "column":
        keep = {"row", "grid", table.primary.id, "delta", "paper"}
        return [c for c in ids if c in keep]
    all_done = all(text.endswith(" done") and "," not in text for text in table.frame["runs"])
    return [c for c in ids if c != "images_per_s" and not (c == "runs" and (all_done or fit))]


def glance(table: AblationTable, columns: list[str] | None = None, fit: str | None = None) -> Glance:
    """The compact form of `table` with the chosen column ids (default: `default_columns`)."""
    chosen = table.check_columns(columns) if columns else default_columns(table, fit)
    f = table.frame
    by_id = {c.id: c for c in [*table.columns, *table.companions]}
    headers, right, cells, best, legend, ids = [], [], [], set(), [], []
    label_column = None

    def add(header: str, values: list[str], numeric: bool, bold_row: int | None = None):
        ids.append("companion" if cid in {c.id for c in table.companions} else cid)
        if bold_row is not None:
            best.add((bold_row, len(headers)))
        headers.append(header)
        right.append(numeric)
        cells.append(values)

    for cid in chosen:
        if cid == "row":
            label_column = len(headers)
            add("row", [f"{r} {label}" + (" ‡" if i in table.mixed else "")
                        for i, (r, label) in enumerate(zip(f["row"], f["label"]))], False)
        elif cid == "grid":
            for key in [c for c in f.columns if c.startswith("grid.")]:
                add(key.removeprefix("grid."), [str(v) for v in f[key]], False)
        elif cid == "params":
            prefix, divisor = scale(f["params"])
            values = f["params"] / divisor
            add(f"params ({prefix})" if prefix else "params", _numbers(values, decimals(values) if prefix else 0), True)
        elif cid == "gflops":
            prefix, divisor = scale(f["gflops"] * 1e9)
            values = f["gflops"] * 1e9 / divisor
            add(f"{prefix}FLOPs", _numbers(values, decimals(values)), True)
            legend.append(f"{prefix}FLOPs: one forward pass of one image (2 x multiply-accumulates; "
                          "models/complexity.py).")
        elif cid in by_id:
            column = by_id[cid]
            decision = table.bold.get(cid)
            add(short_header(column), _metric_cells(table, column), True,
                decision.bold if decision is not None else None)
            at = "" if column.point is None else f", at {column.point.replace('_', ' ')}"
            legend.append(f"{short_header(column)}: ours, {column.label}{at}.")
        elif cid in ("delta", "previous"):
            kind = "delta" if cid == "delta" else "prev"
            add("Δ vs base" if kind == "delta" else "Δ vs above",
                _comparison_cells(table, kind), False)
        elif cid == "paper":
            for key in table.paper_keys:
                arrow = "↓" if metric_registry.lower_is_better(key) else "↑"
                header = f"paper {metric_registry.entry(key).label} {arrow}"
                add(header, [v if isinstance(v, str) else "" for v in f[f"paper {key}"]], True)
                legend.append(f"{header}: {table.paper_labels[key]}, as the paper prints it.")
        elif cid == "images_per_s":
            values = f["images_per_s"]
            add("img/s", _numbers(values, decimals(values)), True)
        elif cid == "runs":
            add("runs done", [_runs_cell(text) for text in f["runs"]], True)
            legend.append("runs done: finished of planned (`status` says where the others are).")
    legend[:0] = _statistics_legend(table, chosen)
    rows = [list(row) for row in zip(*cells)] if cells else []
    return Glance(_verdict(table), headers, right, rows, best, legend, list(f["label"]), label_column, ids)


def _runs_cell(states: str) -> str:
    """'2 done, 1 failed' -> '2/3'."""
    counts = {state: int(n) for n, state in re.findall(r"(\d+) (\w+)", states)}
    return f"{counts.get('done', 0)}/{sum(counts.values())}"


def _numbers(values, places: int) -> list[str]:
    return ["" if pd.isna(v) else f"{v:.{places}f}" for v in values]


def _metric_cells(table: AblationTable, column: MetricColumn) -> list[str]:
    """'12.3 ± 0.4' with one number of decimals for the column; '†' where n < MIN_N; the seed count only
    where it is not the sweep's; why a row has no number where it has none."""
    f, cid = table.frame, column.id
    places = decimals(f[f"{cid} mean"])
    out = []
    for i in f.index:
        row = f.loc[i]
        n = int(row[f"{cid} n"])
        if n == 0:
            out.append(str(row["missing"]).removeprefix("no finished run: "))
            continue
        interval = Interval(n, row[f"{cid} mean"], row[f"{cid} std"], row[f"{cid} ci_low"], row[f"{cid} ci_high"])
        text = f"{interval.mean:.{places}f}"
        if n > 1:
            text += f" ± {interval.half_width:.{places}f}"
        if n != len(table.seeds):
            text += f" (n={n})"
        out.append(text + ("" if interval.reliable else "†"))
    return out


def _comparison_cells(table: AblationTable, kind: str) -> list[str]:
    """'+1.2 n.s. ✓': the paired difference of the primary metric, its verdict, and whether it reproduces the
    paper's ordering of the same two rows."""
    f, p = table.frame, table.primary.id
    places = max(decimals(f[f"{p} mean"]), decimals(f[f"{p} {kind}_delta"], significant=2))
    out = []
    for i in f.index:
        row = f.loc[i]
        if kind == "delta" and row["label"] == table.baseline:
            out.append("baseline")
            continue
        if pd.isna(row[f"{p} {kind}_pairs"]) or int(row[f"{p} {kind}_pairs"]) == 0:
            out.append("–")
            continue
        test = Paired(int(row[f"{p} {kind}_pairs"]), row[f"{p} {kind}_delta"], row[f"{p} {kind}_low"],
                      row[f"{p} {kind}_high"], row[f"{p} {kind}_p"], int(row[f"{p} {kind}_df"]))
        text = f"{test.delta:+.{places}f} {VERDICT[test.verdict(table.lower_is_better)]}"
        agreement = row[f"{p} {kind}_agreement"]
        out.append(text + (f" {AGREEMENT[agreement]}" if isinstance(agreement, str) else ""))
    return out


def _statistics_legend(table: AblationTable, chosen: list[str]) -> list[str]:
    n = len(table.seeds)
    sentences = [f"Numbers: mean ± half-width of the {CONFIDENCE:.0%} t-interval over {n} seed{'s' * (n != 1)} "
                 f"(n=k: only k finished); †: fewer than {MIN_N} seeds or seed pairs, unreliable; "
                 + (f"{BEST} (bold): best, beating the runner-up in a paired t-test (p < {ALPHA})."
                    if any(d.bold is not None for d in table.bold.values()) else "nothing is significantly best.")]
    if "delta" in chosen or "previous" in chosen:
        sentences.append(f"Δ: difference in {metric_registry.entry(table.metric).label} against the baseline row "
                         f"{table.baseline!r} and against the row above, paired t-test over seeds: better/worse at "
                         f"p < {ALPHA}, else n.s."
                         + ("; against the paper's ordering of the same rows: ✓ reproduced, ✗ contradicted, "
                            "? not resolved at this scale." if table.order_key else "."))
    sentences.extend(table.protocol)           # which evaluation protocol the numbers are under (‡: mixed)
    return sentences


def _verdict(table: AblationTable) -> list[str]:
    """The answer before the table: does the paper's ordering hold, and which row is best."""
    f, c = table.frame, table.primary
    sentences = []
    if table.order_key is not None:
        for kind, name in (("prev", "the row above"), ("delta", f"the baseline {table.baseline!r}")):
            verdicts = [v for v in f[f"{c.id} {kind}_agreement"] if isinstance(v, str)]
            if verdicts:
                sentences.append(f"Paper's ordering against {name}: reproduced for {verdicts.count('agrees')} of "
                                 f"{len(verdicts)} rows, contradicted for {verdicts.count('contradicts')}, not "
                                 f"resolved at this scale for {verdicts.count('not resolved')}.")
    decision = table.bold.get(c.id)
    name = short_header(c)[:-2]
    if decision is None or decision.best is None:
        sentences.append(f"{name}: no row has a number yet.")
    elif decision.bold is not None:
        sentences.append(f"Best {name}: {f['label'][decision.bold]!r} ({decision.reason}).")
    else:
        leading = "lowest" if c.lower_is_better else "highest"
        sentences.append(f"No row is significantly best on {name}: {f['label'][decision.best]!r} is {leading}"
                         + (f", runner-up {f['label'][decision.runner_up]!r}: {decision.reason}."
                            if decision.runner_up is not None else "."))
    done = sum(int(m[1]) for text in table.frame["runs"] if (m := re.search(r"(\d+) done", text)))
    sentences[-1] += f" {table.name}: {done} of {len(table.seeds) * len(f)} runs done."
    return sentences
