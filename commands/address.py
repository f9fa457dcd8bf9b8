"""Which run a user means, wherever a verb takes one (`logs`, `--dry-run --show`, `eval --label`): a row's label or
a run name as written, a row index (the first column of `table`), a signature prefix (the plan's and `status`'s
hex column, 4 characters at least), or a piece of one row's label (case-insensitive: `logs tiny.yaml muon`).
Several rows matching a piece, or nothing matching, is refused in one line that lists the rows.
"""
from __future__ import annotations

import string

from harness.sweep.plan import PlannedRun
from harness.sweep.spec import SweepSpec
from toolkit.errors import ConfigError, closest

MIN_SIGNATURE = 4


def matching_runs(spec: SweepSpec, runs: list[PlannedRun], query: str, key: str) -> list[PlannedRun]:
    """The runs `query` names, tried in this order: exact label or run name, row index, signature prefix, piece of
    one row's label; none: []."""
    exact = [r for r in runs if query in (r.label, r.run_name)]
    if exact:
        return exact
    if query.isdigit():                  # a number is a row index, never a piece of a label or signature
        return [r for r in runs if r.row == int(query)]
    if len(query) >= MIN_SIGNATURE and all(c in string.hexdigits for c in query):
        signed = [r for r in runs if r.signature.startswith(query.lower())]
        if signed:
            return signed
    piece = query.casefold()
    rows = sorted({r.row for r in runs if piece in r.label.casefold()})
    if len(rows) > 1:
        named = [f"{i} {spec.rows[i].label}" for i in rows]
        raise ConfigError(key, query, f"matches {len(rows)} rows: {named}; give more of the label or the row index")
    return [r for r in runs if r.row in rows]


def pick_row(spec: SweepSpec, runs: list[PlannedRun], query: str, key: str) -> str:
    """The label of the one row `query` names (see `matching_runs`)."""
    found = matching_runs(spec, runs, query, key)
    if not found:
        raise _nothing(spec, runs, query, key)
    rows = sorted({r.row for r in found})
    if len(rows) > 1:
        raise ConfigError(key, query, f"names runs of {len(rows)} rows: {[spec.rows[i].label for i in rows]}")
    return spec.rows[rows[0]].label


def pick_run(spec: SweepSpec, runs: list[PlannedRun], query: str, seed: int | None, key: str,
             first_seed: bool = False) -> PlannedRun:
    """The one run `query` (see `matching_runs`) and `seed` name; without a seed, the row's only one (or, with
    `first_seed`, its first). Refused in one line listing what exists, with the closest label."""
    matches = matching_runs(spec, runs, query, key)
    if not matches:
        raise _nothing(spec, runs, query, key)
    seeds = sorted({r.seed for r in matches})
    if seed is None and len(seeds) > 1 and not first_seed:
        raise ConfigError("--seed", reason=f"the row {matches[0].label!r} has runs for seeds {seeds}: pick one")
    chosen = [r for r in matches if r.seed == (seeds[0] if seed is None else seed)]
    if not chosen:
        raise ConfigError("--seed", seed, f"not a seed of the sweep; seeds are {spec.seeds}")
    if len(chosen) > 1:
        raise ConfigError(key, query, f"{len(chosen)} runs at seed {chosen[0].seed} (grid points); name one by its "
                          f"run name: {[r.run_name for r in chosen]}")
    return chosen[0]


def _nothing(spec: SweepSpec, runs: list[PlannedRun], query: str, key: str) -> ConfigError:
    labels = [row.label for row in spec.rows]
    return ConfigError(key, query, f"no row has this label; rows are {labels}",
                       suggestion=closest(query, labels + [r.run_name for r in runs]))
