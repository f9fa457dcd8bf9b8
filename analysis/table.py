"""The ablation table of a sweep, like the paper's: one row per sweep row (and grid point), in file order.

Columns (ids for `--columns` in brackets): the row [row], grid values [grid], params [params], GFLOPs
[gflops]; our metric at each chosen point of training [fd, fd@step_300, ...] as mean ± the half-width
of its 95% t-interval over seeds, with n; class accuracy beside a distance when the runs logged it
[class_acc]; the difference against the baseline row [delta] and the comparison with the row above
[previous], each a paired t-test over seeds and set beside the paper's ordering of the same rows; the
paper's numbers as written [paper]; throughput [images_per_s]; the runs' states [runs]; and on request
(`--columns`) the runs' efficiency telemetry (harness/telemetry.py): MFU [mfu], the share of the step spent
waiting for data [data_wait], peak memory per device [peak_memory], each the mean over the finished seeds of
their last logged window. Statistics:
`analysis.stats` (n < 3: marked unreliable, never bold; bold only when the best beats the runner-up).

Our column is labelled with what the runs measured (their params: eval.metric, data.name,
data.resolution, eval.num_samples); the paper's with the sweep file's `paper_metric` (metric, dataset,
source). Every format — Markdown, LaTeX (booktabs, compiles with pdflatex: no raw Unicode), HTML, CSV —
carries the same caption, which names the interval, the test and its degrees of freedom.
"""
from __future__ import annotations

import html
import json
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from harness import metric_registry
from harness.metric_registry import lower_is_better
from harness.protocol import PROTOCOL_KEYS
from toolkit.errors import ConfigError, closest

from .runs import SweepRuns
from .stats import ALPHA, CONFIDENCE, MIN_N, BoldDecision, Interval, Paired, best_of, paired_t, t_interval


def default_metric(sweep: SweepRuns) -> str:
    columns = [c.removeprefix("metric.") for c in sweep.frame.columns if c.startswith("metric.")]
    return metric_registry.shown_by_default(columns)


# ---- what the numbers are ----------------------------------------------------------------------

def logged_metrics(sweep: SweepRuns) -> list[str]:
    """Metrics some run of the sweep logged (final values), e.g. ['class_acc', 'fd', 'loss', ...]."""
    return sorted({c.removeprefix("metric.") for c in sweep.frame.columns if c.startswith("metric.") and "/" not in c})


def evaluation_points(sweep: SweepRuns, metric: str) -> list[str]:
    """The points `metric` was logged at besides the end: 'step_300', 'epoch_80', ..."""
    prefix = f"metric.{metric}/"
    points = [c.removeprefix(prefix) for c in sweep.frame.columns if c.startswith(prefix)]
    return sorted(points, key=lambda p: (p.split("_")[0], float(p.split("_")[1])))


def resolve_point(sweep: SweepRuns, metric: str, point: str | None) -> str | None:
    """None (the final value) for None/'final'/'end'; else the logged point 'step_N' or 'epoch_E' it
    names (a bare number: epochs if such an evaluation exists, else steps). Refused in one line
    listing the logged points when nothing matches."""
    if point is None or point in ("final", "end"):
        return None
    logged = evaluation_points(sweep, metric)
    try:
        number = float(point)
        names = [f"epoch_{number:g}"] + ([f"step_{int(number)}"] if number.is_integer() else [])
    except ValueError:
        names = [point]
    found = next((name for name in names if name in logged), None)
    if found is None:
        options = ["final", *logged]
        raise ConfigError("--at", point, f"{metric} was not logged there; logged at {options}",
                          suggestion=closest(point, options + [p.split("_")[1] for p in logged]))
    return found


def _param_values(sweep: SweepRuns, key: str) -> list[str]:
    column = f"param.{key}"
    if column not in sweep.frame:
        return []
    return sorted({str(v) for v in sweep.frame[column].dropna()}, key=lambda v: (len(v), v))


def _count(n: str) -> str:
    """50000 -> 50K (the papers' FID-50K), 500 -> 500."""
    return f"{int(n) // 1000}K" if n.isdigit() and int(n) >= 1000 and int(n) % 1000 == 0 else n


def ours_label(sweep: SweepRuns, metric: str) -> str:
    """What our numbers are, from the runs' own params: 'FD (held-out-split classifier), mnist 16 px,
    500 samples'. Values that differ between runs are joined with '/'."""
    entry, counted = metric_registry.entry(metric), metric_registry.sample_count(metric)
    samples = [str(counted)] if counted is not None else _param_values(sweep, "eval.num_samples")
    inline = "{samples}" in entry.description             # "FID-50K": the count is part of the metric's name
    count = "-" + "/".join(_count(n) for n in samples) if samples else ""
    parts = [entry.description.format(samples=count) if inline else entry.description]
    data, resolution = "/".join(_param_values(sweep, "data.name")), "/".join(_param_values(sweep, "data.resolution"))
    if data:
        parts.append(f"{data} {resolution} px" if resolution else data)
    if samples and entry.sample_based and not inline:
        parts.append(f"{'/'.join(samples)} samples")
    classes = [int(c) for c in _param_values(sweep, "model.num_classes") if c.isdigit() and int(c) > 0]
    if entry.chance and len(classes) == 1:
        parts.append(f"chance {1 / classes[0]:.2g}")
    return ", ".join(parts)


def sampler_sentence(sweep: SweepRuns) -> str:
    """How the evaluated samples were drawn (the runs' eval.sampler and EMA), or '' without params."""
    kind, steps = _param_values(sweep, "eval.sampler.kind"), _param_values(sweep, "eval.sampler.steps")
    if not kind:
        return ""
    scale, ema = _param_values(sweep, "eval.sampler.cfg_scale"), _param_values(sweep, "ema.eval_decay")
    return (f"Samples: {'/'.join(kind)} sampler, {'/'.join(steps)} steps, guidance scale {'/'.join(scale)}"
            + (f", EMA {'/'.join(ema)}" if ema else "") + " (the runs' eval.sampler).")


WHOSE = {"training": "each run's own evaluation at the end of its training",
         "selected": "each row at the protocol its selection chose (evaluate.select), confirmed",
         "evaluate": "each run's evaluation by the sweep's evaluate: section"}


def protocol_sentences(sweep: SweepRuns) -> tuple[list[str], set[int]]:
    """(caption sentences saying which evaluation protocol the numbers are under, the indices of table rows whose
    runs were evaluated under more than one). One protocol: named once; several: the keys in which the rows'
    protocols differ, row by row (so rows evaluated at different guidance scales say so)."""
    frame = sweep.frame
    if "protocol" not in frame:
        sentence = sampler_sentence(sweep)
        return ([sentence] if sentence else []), set()
    done = frame[(frame["state"] == "done") & frame["protocol"].notna()]
    if done.empty:
        return [], set()
    whose = WHOSE.get(sweep.protocol, "one evaluation protocol")
    protocols = done.drop_duplicates("protocol")
    if len(protocols) == 1:
        first = protocols.iloc[0]
        return [f"Numbers: {whose}, under the protocol {first['protocol_name']} (signature {first['protocol']}): "
                f"{first['protocol_text']}."] + selection_sentences(sweep), set()
    keys = [k for k in PROTOCOL_KEYS if f"param.{k}" in done and done[f"param.{k}"].astype(str).nunique() > 1]
    tables = list(dict.fromkeys(zip(frame["label"], frame["grid"])))
    mixed, parts = set(), []
    for i, (label, grid) in enumerate(tables):
        rows = done[(done["label"] == label) & (done["grid"] == grid)]
        if rows.empty:
            continue
        if rows["protocol"].nunique() > 1:
            mixed.add(i)
        values = [", ".join(f"{k}={v}" for k, v in zip(keys, combo)) for combo in
                  rows[[f"param.{k}" for k in keys]].astype(str).drop_duplicates().itertuples(index=False)]
        grid_text = "" if grid in ("{}", "", None) else f" {grid}"
        parts.append(f"{label}{grid_text}: {' / '.join(values) if keys else rows['protocol_name'].iloc[0]}")
    scale = " (at different guidance scales)" if "eval.sampler.cfg_scale" in keys else ""
    sentences = [f"Numbers: {whose}. The rows were evaluated under different protocols{scale}: "
                 + ("they differ in " + ", ".join(keys) + ". " if keys else "") + "; ".join(parts) + "."]
    if mixed:
        sentences.append("‡: the row's runs were evaluated under different protocols (the CSV names each run's).")
    return sentences + selection_sentences(sweep), mixed


def selection_sentences(sweep: SweepRuns) -> list[str]:
    """How each row's protocol was selected: the proxy, the rule, the point chosen and its proxy figure."""
    if sweep.protocol != "selected" or not sweep.selection:
        return []
    first = next(iter(sweep.selection.values())).data.tags
    parts = []
    points = [json.dumps(point, sort_keys=True) for point in sweep.spec.evaluate.points]
    for title, run in sweep.selection.items():
        tags = run.data.tags
        point = json.loads(tags["selected_point"])
        figures = dict(zip(points, json.loads(tags["proxy_means"])))
        chosen = figures.get(json.dumps(point, sort_keys=True))
        parts.append(f"{title}: " + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
                     + (f" ({tags['selection_metric']} {chosen:.4g} on the proxy)" if chosen is not None else ""))
    select = sweep.spec.evaluate.select
    best = "greatest" if not lower_is_better(first["selection_metric"]) else "least"
    changes = lambda changes: ", ".join(f"{k}={v}" for k, v in changes.items())     # noqa: E731
    return [f"Selected per {select.per} (evaluate.select): the grid point of {best} {first['selection_metric']} "
            f"on the proxy ({changes(select.proxy)}" + ("; the mean over the row's runs" if select.per == "row"
                                                       else "") + f"), then confirmed with {changes(select.confirm)}: "
            + "; ".join(parts) + "."]


def paper_label(sweep: SweepRuns, key: str) -> str:
    described = sweep.spec.paper_metric.get(key)
    if described is None:
        return f"{key} (metric and dataset not stated: add paper_metric to the sweep file)"
    return str(described)


# ---- formats -----------------------------------------------------------------------------------

LATEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "→": r"$\to$",
                 "†": r"$^\dagger$", "×": r"$\times$", "–": "--", "—": "---", "≥": r"$\geq$", "≤": r"$\leq$",
                 "·": r"$\cdot$", "²": r"$^2$", "√": r"$\surd$", "…": r"\ldots{}", "α": r"$\alpha$",
                 "✓": r"$\surd$", "✗": r"$\times$"}
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
                 ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    """Text for pdflatex: specials escaped, the symbols tables use as math, other non-ASCII letters
    reduced to ASCII (é -> e) and anything left as '?' (no raw Unicode reaches pdflatex)."""
    out = []
    for char in str(text):
        if char in LATEX_SPECIAL:
            out.append(LATEX_SPECIAL[char])
        elif char in LATEX_SYMBOLS:
            out.append(LATEX_SYMBOLS[char])
        elif ord(char) < 128:
            out.append(char)
        else:
            ascii_form = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
            out.append(ascii_form or "?")
    return "".join(out)


def markdown_escape(text: str) -> str:
    """One Markdown table cell: no pipe, emphasis or line break can leak out of it."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")
    return text.replace("\n", " ").replace("\r", " ")


@dataclass(frozen=True)
class Dialect:
    """How one output format writes text (symbols included) and bold."""
    text: Callable[[str], str]
    bold: Callable[[str], str]


MARKDOWN = Dialect(markdown_escape, lambda s: f"**{s}**")
LATEX = Dialect(latex_escape, lambda s: rf"\textbf{{{s}}}")
HTML = Dialect(html.escape, lambda s: f"<strong>{s}</strong>")
PLAIN = Dialect(str, str)


# ---- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EfficiencyColumn:
    """A column of the runs' telemetry, shown only when asked for (`--columns ... mfu`)."""
    header: str
    value: Callable[[pd.DataFrame], pd.Series]     # one value per finished run (rows of `SweepRuns.frame`)
    format: Callable[[float], str]


def _logged(frame: pd.DataFrame, metric: str) -> pd.Series:
    return frame[f"metric.{metric}"] if f"metric.{metric}" in frame else pd.Series(np.nan, index=frame.index)


EFFICIENCY = {
    "mfu": EfficiencyColumn("MFU", lambda f: _logged(f, "mfu"), lambda v: f"{100 * v:.1f}%"),
    "data_wait": EfficiencyColumn("data wait (% of step)",
                                  lambda f: _logged(f, "data_wait_s") / _logged(f, "step_time_s"),
                                  lambda v: f"{100 * v:.1f}%"),
    "peak_memory": EfficiencyColumn("peak memory (GiB)", lambda f: _logged(f, "peak_memory_gb"), lambda v: f"{v:.2f}"),
}


@dataclass(frozen=True)
class MetricColumn:
    metric: str
    point: str | None             # None: the final value; else 'step_300' / 'epoch_80'
    label: str                    # what our number is (from the runs' params)

    @property
    def id(self) -> str:
        return self.metric if self.point is None else f"{self.metric}@{self.point}"

    @property
    def source(self) -> str:      # the column of `SweepRuns.frame`
        return f"metric.{self.metric}" + ("" if self.point is None else f"/{self.point}")

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)

    @property
    def arrow(self) -> str:
        return "↓" if self.lower_is_better else "↑"

    def header(self) -> str:
        at = "" if self.point is None else f", at {self.point.replace('_', ' ')}"
        return f"ours: {self.label}{at} {self.arrow}"


@dataclass
class AblationTable:
    frame: pd.DataFrame           # numbers: one row per (label, grid point), in the sweep's order; no dicts
    metric: str
    columns: list[MetricColumn]   # the chosen metric at each point, then companions (class accuracy)
    companions: list[MetricColumn]
    baseline: str
    seeds: list
    name: str
    paper_keys: list[str]
    paper_labels: dict[str, str]
    order_key: str | None         # the paper key whose ordering is set beside ours
    protocol: list = field(default_factory=list)        # caption sentences: which protocol the numbers are under
    mixed: set = field(default_factory=set)            # rows whose runs were evaluated under several protocols: ‡
    bold: dict[str, BoldDecision] = field(default_factory=dict)     # column id -> decision

    @property
    def points(self) -> list[str]:
        """Ids of the chosen metric's columns, e.g. ['fd@step_300', 'fd']."""
        return [c.id for c in self.columns]

    @property
    def primary(self) -> MetricColumn:
        return self.columns[-1]

    @property
    def lower_is_better(self) -> bool:
        return self.primary.lower_is_better

    def column_ids(self) -> list[str]:
        """The columns shown by default."""
        ids = ["row"] + (["grid"] if any(c.startswith("grid.") for c in self.frame) else [])
        ids += ["params", "gflops", *self.points, *(c.id for c in self.companions), "delta", "previous"]
        return ids + (["paper"] if self.paper_keys else []) + ["images_per_s", "runs"]

    def check_columns(self, columns: list[str] | None) -> list[str]:
        if not columns:
            return self.column_ids()
        ids = self.column_ids() + list(EFFICIENCY)
        chosen = [c.strip() for part in columns for c in part.split(",") if c.strip()]
        for column in chosen:
            if column not in ids:
                raise ConfigError("--columns", column, f"no such column; columns are {ids}",
                                  suggestion=closest(column, ids))
        return chosen

    def seed_values(self, i: int, column_id: str) -> dict:
        row = self.frame.loc[i]
        return {s: float(row[f"{column_id} seed {s}"]) for s in self.seeds if pd.notna(row[f"{column_id} seed {s}"])}

    # ---- cells -------------------------------------------------------------------------------

    def _cell(self, i: int, column: MetricColumn, d: Dialect) -> str:
        row = self.frame.loc[i]
        n = int(row[f"{column.id} n"])
        if n == 0:
            return d.text(row["missing"])
        interval = Interval(n, row[f"{column.id} mean"], row[f"{column.id} std"], row[f"{column.id} ci_low"],
                            row[f"{column.id} ci_high"])
        text = f"{interval.mean:.4g}" + (f" ± {interval.half_width:.2g}" if n > 1 else "")
        text = d.text(text)
        if self.bold.get(column.id) is not None and self.bold[column.id].bold == i:
            text = d.bold(text)
        return text + d.text(f" (n={n})" + ("" if interval.reliable else " †") + (" ‡" if i in self.mixed else ""))

    def _comparison(self, i: int, kind: str, d: Dialect) -> str:
        """`kind` 'delta' (against the baseline) or 'prev' (against the row above)."""
        row, p = self.frame.loc[i], self.primary.id
        if kind == "delta" and row["label"] == self.baseline:
            return d.text("baseline")
        if pd.isna(row[f"{p} {kind}_pairs"]):
            return d.text("first row" if kind == "prev" and row["row"] == 0 else "–")
        test = Paired(int(row[f"{p} {kind}_pairs"]), row[f"{p} {kind}_delta"], row[f"{p} {kind}_low"],
                      row[f"{p} {kind}_high"], row[f"{p} {kind}_p"], int(row[f"{p} {kind}_df"]))
        paper = row[f"{p} {kind}_paper"]
        if test.pairs == 0:
            return d.text("–")
        text = f"{test.delta:+.3g}"
        if math.isfinite(test.p):
            text += (f" [{test.low:+.2g}, {test.high:+.2g}], p={test.p:.2g}" + ("" if test.reliable else " †")
                     + f" (df={test.df})")
        verdict = test.verdict(self.lower_is_better)
        text += ": " + {"untested": "untested (fewer than 2 seed pairs, or no variance)",
                        "unreliable": f"unreliable (< {MIN_N} seed pairs)"}.get(verdict, verdict)
        if isinstance(paper, str):
            text += f"; paper: {paper}"
        return d.text(text)

    def display(self, d: Dialect = PLAIN, columns: list[str] | None = None) -> pd.DataFrame:
        """Strings for reading, one column per chosen id, headers saying what each number is."""
        f = self.frame
        chosen = self.check_columns(columns)
        out: dict[str, list[str]] = {}
        by_id = {c.id: c for c in [*self.columns, *self.companions]}
        for cid in chosen:
            if cid == "row":
                out[d.text("row")] = [d.text(v) for v in f["label"]]
            elif cid == "grid":
                for key in [c for c in f.columns if c.startswith("grid.")]:
                    out[d.text(key.removeprefix("grid."))] = [d.text(str(v)) for v in f[key]]
            elif cid == "params":
                out[d.text("params (M)")] = [f"{v / 1e6:.2f}" for v in f["params"]]
            elif cid == "gflops":
                out[d.text("GFLOPs")] = [f"{v:.2f}" for v in f["gflops"]]
            elif cid in by_id:
                out[d.text(by_id[cid].header())] = [self._cell(i, by_id[cid], d) for i in f.index]
            elif cid == "delta":
                out[d.text(f"Δ vs {self.baseline} (paired t)")] = [self._comparison(i, "delta", d) for i in f.index]
            elif cid == "previous":
                out[d.text("vs row above (paired t)")] = [self._comparison(i, "prev", d) for i in f.index]
            elif cid == "paper":
                for key in self.paper_keys:
                    header = f"paper: {self.paper_labels[key]} {'↓' if lower_is_better(key) else '↑'}"
                    out[d.text(header)] = [d.text(v) if isinstance(v, str) else "" for v in f[f"paper {key}"]]
            elif cid == "images_per_s":
                out[d.text("img/s")] = ["" if pd.isna(v) else f"{v:.1f}" for v in f["images_per_s"]]
            elif cid in EFFICIENCY:
                out[d.text(EFFICIENCY[cid].header)] = ["" if pd.isna(v) else d.text(EFFICIENCY[cid].format(v))
                                                       for v in f[cid]]
            elif cid == "runs":
                out[d.text("runs")] = [d.text(v) for v in f["runs"]]
        return pd.DataFrame(out)

    # ---- caption -----------------------------------------------------------------------------

    def caption(self) -> list[str]:
        """The sentences that say what the table's numbers are and how sure they are (plain text)."""
        c = self.primary
        sentences = [
            f"{self.name}: ours is {c.label} ({'lower' if c.lower_is_better else 'higher'} is better): "
            f"mean ± half-width of the {CONFIDENCE:.0%} t-interval over seeds (mean ± t(0.975, n-1)·s/√n), "
            f"n = finished seeds.",
            f"Δ vs {self.baseline}: mean difference with its {CONFIDENCE:.0%} interval and the paired t-test over "
            f"the seeds both rows finished (df = seed pairs - 1); vs row above: the same test against the "
            f"previous row. better/worse: p < {ALPHA}; n.s.: p ≥ {ALPHA}.",
            f"†: n < {MIN_N} (or fewer than {MIN_N} seed pairs): interval and test unreliable, never bold.",
            self._bold_sentence()]
        sentences += self.protocol
        if self.paper_keys:
            sentences.append(self._paper_sentence())
        return sentences

    def _bold_sentence(self) -> str:
        rule = (f"Bold: a column's best mean, only where the paired t-test against the runner-up has ≥ {MIN_N} "
                f"seed pairs and p < {ALPHA}.")
        labels = self.frame["label"]
        parts = []
        for cid, decision in self.bold.items():
            if decision.best is None or decision.runner_up is None:
                continue
            pair = f"best {labels[decision.best]}, runner-up {labels[decision.runner_up]}"
            verdict = "bold" if decision.bold is not None else "nothing bold"
            parts.append(f"{cid}: {verdict} ({pair}: {decision.reason})")
        return rule + (" " + "; ".join(parts) + "." if parts else "")

    def _paper_sentence(self) -> str:
        labels = "; ".join(f"paper: {self.paper_labels[k]}" for k in self.paper_keys)
        text = (f"{labels}. Compare the orderings of the rows; compare values only where ours is the same metric on "
                f"the same data at the same training length.")
        if self.order_key is None:
            return text + " (No paper ordering is set beside ours: several paper metrics and none named like ours.)"
        for kind, name in (("prev", "row above"), ("delta", "baseline")):
            verdicts = [v for v in self.frame[f"{self.primary.id} {kind}_agreement"] if isinstance(v, str)]
            if verdicts:
                text += (f" Paper's ordering vs the {name}: reproduced (significant, same direction) for "
                         f"{verdicts.count('agrees')} of {len(verdicts)} rows, contradicted for "
                         f"{verdicts.count('contradicts')}, not resolved at this scale for "
                         f"{verdicts.count('not resolved')}.")
        return text

    # ---- outputs -----------------------------------------------------------------------------

    def to_markdown(self, columns: list[str] | None = None) -> str:
        table = self.display(MARKDOWN, columns).to_markdown(index=False, disable_numparse=True)
        return table + "\n\n" + "\n\n".join(markdown_escape(s) for s in self.caption())

    def to_latex(self, columns: list[str] | None = None) -> str:
        """A booktabs `table` (needs `\\usepackage{booktabs,array}`): numbers right-aligned, text in
        ragged-right wrapping columns, footnotesize; pure ASCII."""
        chosen = self.check_columns(columns)
        shown = self.display(LATEX, chosen)
        caption = " ".join(latex_escape(s) for s in self.caption())
        widths = {"row": 2.6, "delta": 3.6, "previous": 3.6, "runs": 1.5}
        formats = ["l" if cid == "grid" else "r" if cid in ("params", "gflops", "images_per_s", *EFFICIENCY)
                   else rf">{{\raggedright\arraybackslash}}p{{{widths.get(cid, 2.2)}cm}}"
                   for cid in chosen for _ in range(self._width(cid))]
        return (shown.style.hide(axis="index")
                .set_table_styles([{"selector": "footnotesize", "props": ":;"}], overwrite=False)
                .to_latex(hrules=True, caption=caption, position="htbp", position_float="centering",
                          column_format="".join(formats)))

    def _width(self, column_id: str) -> int:
        """How many display columns one id makes (grid: one per key, paper: one per paper metric)."""
        if column_id == "grid":
            return sum(c.startswith("grid.") for c in self.frame.columns)
        return len(self.paper_keys) if column_id == "paper" else 1

    def to_html(self, columns: list[str] | None = None) -> str:
        shown = self.display(HTML, columns)
        caption = " ".join(html.escape(s) for s in self.caption())
        return shown.style.hide(axis="index").set_caption(caption).to_html()

    def to_csv(self, columns: list[str] | None = None) -> str:
        """The numbers: per metric column its mean, std, n, interval, one column per seed, and the tests;
        paper numbers as written. Only scalars (no dicts), one header line."""
        chosen = self.check_columns(columns)
        f = self.frame
        keep = []
        for cid in chosen:
            if cid == "row":
                keep += ["label", "row"]
            elif cid == "grid":
                keep += [c for c in f.columns if c.startswith("grid.")]
            elif cid in ("params", "gflops", "images_per_s", "runs", *EFFICIENCY):
                keep.append(cid)
            elif cid in ("delta", "previous"):
                kind = "delta" if cid == "delta" else "prev"
                keep += [c for c in f.columns if c.startswith(f"{self.primary.id} {kind}_")]
            elif cid == "paper":
                keep += [f"paper {k}" for k in self.paper_keys]
            else:
                keep += [c for c in f.columns if c.startswith(f"{cid} ") and not c.split(" ", 1)[1].startswith(
                    ("delta_", "prev_"))]
        return f[keep].to_csv(index=False)

    def render(self, fmt: str, columns: list[str] | None = None) -> str:
        """In full (`--wide`); `analysis.glance.render` writes the default, compact forms."""
        return {"markdown": self.to_markdown, "latex": self.to_latex, "html": self.to_html,
                "csv": self.to_csv}[fmt](columns)


# ---- building it from the runs ----------------------------------------------------------------

def build_table(sweep: SweepRuns, metric: str | None = None, at: list[str] | None = None,
                baseline: str | None = None) -> AblationTable:
    """The table of `metric` (default: fid, else fd, else loss) at the points `at` (default: the end)
    against `baseline` (default: the sweep's). A metric, point or baseline that matches nothing is
    refused in one line listing what exists."""
    logged = logged_metrics(sweep)
    metric = metric or default_metric(sweep)
    if logged and metric not in logged:
        raise ConfigError("--metric", metric, f"no run of this sweep logged it; logged: {logged}",
                          suggestion=closest(metric, logged))
    baseline = baseline or sweep.spec.baseline_label
    if baseline not in sweep.labels:
        raise ConfigError("--baseline", baseline, f"no row has this label; rows are {sweep.labels}",
                          suggestion=closest(baseline, sweep.labels))
    points = list(dict.fromkeys(resolve_point(sweep, metric, p) if logged else p for p in (at or [None])))
    columns = [MetricColumn(metric, p, ours_label(sweep, metric)) for p in points]
    last = columns[-1].point
    companions = [MetricColumn(m, last if last in evaluation_points(sweep, m) else None, ours_label(sweep, m))
                  for m in metric_registry.companions() if m != metric and m in logged]
    paper_keys = sorted({key for row in sweep.spec.rows for key in row.paper})
    order_key = metric if metric in paper_keys else paper_keys[0] if len(paper_keys) == 1 else None
    frame = _numbers(sweep, [*columns, *companions], paper_keys)
    for column in columns:
        _compare(frame, column, baseline, sweep.spec, order_key)
    sentences, mixed = protocol_sentences(sweep)
    table = AblationTable(frame, metric, columns, companions, baseline, list(sweep.spec.seeds), sweep.spec.name,
                          paper_keys, {k: paper_label(sweep, k) for k in paper_keys}, order_key, sentences, mixed)
    for column in [*columns, *companions]:
        rows = {i: table.seed_values(i, column.id) for i in frame.index}
        table.bold[column.id] = best_of(rows, column.lower_is_better)
    return table


def _numbers(sweep: SweepRuns, columns: list[MetricColumn], paper_keys: list[str]) -> pd.DataFrame:
    """One record per (label, grid point): sizes, states, and per metric column the seeds' values,
    their mean, std, n and t-interval."""
    records = []
    for (label, grid), group in sweep.frame.groupby(["label", "grid"], sort=False):
        done = group[group["state"] == "done"]
        counts = group["state"].value_counts()
        record = {"label": label, "row": int(group["row"].iloc[0]), "grid": grid,
                  **{f"grid.{k}": group[k].iloc[0] for k in sweep.grid_keys},
                  "params": int(group["params"].iloc[0]), "gflops": float(group["gflops"].iloc[0]),
                  "images_per_s": done["metric.images_per_s"].mean() if "metric.images_per_s" in done else np.nan,
                  **{cid: column.value(done).mean() for cid, column in EFFICIENCY.items()},
                  "runs": ", ".join(f"{n} {state}" for state, n in counts.items()),
                  "missing": _missing_text(counts)}
        for column in columns:
            values = done.set_index("seed")[column.source].dropna() if column.source in done else pd.Series()
            interval = t_interval(values)
            record.update({f"{column.id} mean": interval.mean, f"{column.id} std": interval.std,
                           f"{column.id} n": interval.n, f"{column.id} ci_low": interval.low,
                           f"{column.id} ci_high": interval.high,
                           f"{column.id} protocol": " / ".join(dict.fromkeys(done["protocol_name"].dropna()))
                           if "protocol_name" in done else ""})      # what the numbers are under (the CSV says)
            record.update({f"{column.id} seed {s}": float(values[s]) if s in values.index else np.nan
                           for s in sweep.spec.seeds})
        paper = sweep.spec.rows[record["row"]].paper         # as written: "3.50", not 3.5
        record.update({f"paper {key}": str(paper[key]) if key in paper else None for key in paper_keys})
        records.append(record)
    return pd.DataFrame(records).sort_values(["row"], kind="stable").reset_index(drop=True)


def _compare(frame: pd.DataFrame, column: MetricColumn, baseline: str, spec, order_key: str | None) -> None:
    """Paired tests of every row against the baseline row ('delta_*') and the row above ('prev_*') at the
    same grid point, and where the paper has both numbers, its direction and whether ours agrees."""
    cid, seeds = column.id, list(spec.seeds)

    def values(row) -> dict:
        return {s: row[f"{cid} seed {s}"] for s in seeds if pd.notna(row[f"{cid} seed {s}"])}

    for kind in ("delta", "prev"):
        results = []
        for _, row in frame.iterrows():
            same_grid = frame[frame["grid"] == row["grid"]]
            other = (same_grid[same_grid["label"] == baseline] if kind == "delta"
                     else same_grid[same_grid["row"] == row["row"] - 1])
            if other.empty or (kind == "delta" and row["label"] == baseline):
                results.append({})
                continue
            other = other.iloc[0]
            test = paired_t(values(row), values(other))
            result = {"pairs": test.pairs, "delta": test.delta, "low": test.low, "high": test.high, "p": test.p,
                      "df": test.df}
            if order_key is not None:
                ours, theirs = row.get(f"paper {order_key}"), other.get(f"paper {order_key}")
                if isinstance(ours, str) and isinstance(theirs, str):
                    direction = _paper_direction(float(ours), float(theirs), lower_is_better(order_key))
                    result["paper"] = f"{direction} ({theirs} → {ours})"
                    result["agreement"] = _agreement(test.verdict(column.lower_is_better), direction)
            results.append(result)
        for key in ("pairs", "delta", "low", "high", "p", "df", "paper", "agreement"):
            frame[f"{cid} {kind}_{key}"] = [r.get(key, np.nan) for r in results]


def _paper_direction(ours: float, theirs: float, lower: bool) -> str:
    if ours == theirs:
        return "same"
    return "better" if (ours < theirs) == lower else "worse"


def _agreement(verdict: str, paper: str) -> str:
    """Ours against the paper's direction: agrees / contradicts (both significant) / not resolved."""
    if verdict in ("better", "worse") and paper in ("better", "worse"):
        return "agrees" if verdict == paper else "contradicts"
    return "not resolved"


def _missing_text(counts: pd.Series) -> str:
    parts = [f"{state} ({n})" for state, n in counts.items() if state != "done"]
    return "no finished run: " + ", ".join(parts) if parts else "missing"
