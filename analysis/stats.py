"""How sure a table is: t-intervals over seeds, paired t-tests between rows, and when a row may be bold.

- A cell is the mean over the finished seeds with the 95% t-interval, mean ± t(0.975, n-1) · s / sqrt(n)
  (s: the sample standard deviation; what scipy's `stats.t.interval` gives).
- Two rows are compared with the paired t-test over the seeds both finished (what scipy's `ttest_rel` gives:
  t = mean difference / (s / sqrt(pairs)), df = pairs - 1, two-sided p), with the 95% interval of the mean
  difference. The t distribution's quantile and CDF are scipy's `special.stdtrit` and `stdtr`, which
  `stats.t` computes with: `scipy.stats` itself takes 0.5 s to import, an eighth of `run_sweep.py table`
  (tests/test_table.py checks both against `scipy.stats`). Seeds pair up because a seed fixes
  a run's data order, noise and initialisation (`harness.train`), whatever the row.
- Fewer than MIN_N values (or seed pairs) make an interval or a test unreliable: it is shown, marked,
  and never counts as a win.
- A column's best row is bold only when it beats the runner-up: the paired test against it has at
  least MIN_N pairs and p < ALPHA. Otherwise the best is "within noise" of the runner-up and nothing is bold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

CONFIDENCE = 0.95
ALPHA = 0.05          # a paired test with p below this is significant
MIN_N = 3             # fewer seeds (or seed pairs) than this: interval and test unreliable

NAN = math.nan


@dataclass(frozen=True)
class Interval:
    """Mean and 95% t-interval of one row's values over its seeds (low/high NaN with n < 2)."""
    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def reliable(self) -> bool:
        return self.n >= MIN_N


def t_interval(values) -> Interval:
    v = np.asarray(list(values), dtype=float)
    n = len(v)
    if n == 0:
        return Interval(0, NAN, NAN, NAN, NAN)
    mean = float(v.mean())
    if n < 2:
        return Interval(1, mean, NAN, NAN, NAN)
    std = float(v.std(ddof=1))
    if std == 0:
        return Interval(n, mean, 0.0, mean, mean)
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def t_quantile(df: int) -> float:
    """The two-sided CONFIDENCE quantile of Student's t with `df` degrees of freedom."""
    return float(special.stdtrit(df, (1 + CONFIDENCE) / 2))


@dataclass(frozen=True)
class Paired:
    """A row against another over the seeds both finished: mean difference (row - other), its 95%
    interval, and the paired t-test's p-value and degrees of freedom (NaN where undefined)."""
    pairs: int
    delta: float
    low: float
    high: float
    p: float
    df: int

    @property
    def reliable(self) -> bool:
        return self.pairs >= MIN_N and math.isfinite(self.p)

    def verdict(self, lower_is_better: bool) -> str:
        """better / worse (significant at ALPHA with >= MIN_N pairs), n.s., unreliable (< MIN_N pairs),
        untested (no pairs, or no variance to test against)."""
        if self.pairs < 2 or not math.isfinite(self.p):
            return "untested"
        if self.pairs < MIN_N:
            return "unreliable"
        if self.p >= ALPHA:
            return "n.s."
        return "better" if (self.delta < 0) == lower_is_better else "worse"


def paired_t(values: dict, other: dict) -> Paired:
    """`values` and `other` map seed -> value."""
    seeds = sorted(set(values) & set(other))
    a = np.array([values[s] for s in seeds], dtype=float)
    b = np.array([other[s] for s in seeds], dtype=float)
    if not seeds:
        return Paired(0, NAN, NAN, NAN, NAN, 0)
    delta = float((a - b).mean())
    if len(seeds) < 2 or np.ptp(a - b) == 0:       # no variance of the differences: no t-test
        return Paired(len(seeds), delta, NAN, NAN, NAN, len(seeds) - 1)
    df = len(seeds) - 1
    se = float((a - b).std(ddof=1)) / math.sqrt(len(seeds))
    p = 2 * float(special.stdtr(df, -abs(delta) / se))
    half = t_quantile(df) * se
    return Paired(len(seeds), delta, delta - half, delta + half, p, df)


def better(a: float, b: float, lower_is_better: bool) -> bool:
    return a < b if lower_is_better else a > b


@dataclass(frozen=True)
class BoldDecision:
    """Which row of a column is bold (`bold` None: none), the best and runner-up rows, and why."""
    bold: object | None
    best: object | None
    runner_up: object | None
    reason: str


def best_of(rows: dict, lower_is_better: bool) -> BoldDecision:
    """Among `rows` (key -> {seed: value}): bold the best mean only if it beats the runner-up's, by the
    paired t-test with >= MIN_N seed pairs and p < ALPHA."""
    means = {key: float(np.mean(list(v.values()))) for key, v in rows.items() if v}
    if len(means) < 2:
        return BoldDecision(None, next(iter(means), None), None, "fewer than two rows have a value")
    order = sorted(means, key=lambda k: means[k], reverse=not lower_is_better)
    best, runner_up = order[0], order[1]
    test = paired_t(rows[best], rows[runner_up])
    if test.pairs < MIN_N:
        return BoldDecision(None, best, runner_up, f"only {test.pairs} seed pair(s), fewer than {MIN_N}: "
                            f"unreliable")
    if not math.isfinite(test.p):
        return BoldDecision(None, best, runner_up, "their differences have no variance to test")
    if test.p >= ALPHA or not better(means[best], means[runner_up], lower_is_better):
        return BoldDecision(None, best, runner_up, f"within noise: paired t, df={test.df}, p={test.p:.2g} ≥ {ALPHA}")
    return BoldDecision(best, best, runner_up, f"beats the runner-up: paired t, df={test.df}, p={test.p:.2g} < {ALPHA}")
