"""Runs addressed the ways a user has at hand (commands/address.py): a row's label or a piece of it, the row index
that `table` prints, a signature prefix that the plan and `status` print, a run name; on the real plan of a
shipped sweep (4 rows x 2 seeds)."""
import pytest

from commands.address import pick_row, pick_run
from harness.sweep.sweep import Sweep
from toolkit.errors import ConfigError


@pytest.fixture(scope="module")
def plan():
    sweep = Sweep.open("sweeps/tiny_2026.yaml")
    return sweep.spec, sweep.plan


def test_a_run_is_found_by_label_piece_row_index_signature_prefix_or_run_name(plan):
    spec, runs = plan
    muon = [r for r in runs if r.label == "+ Muon (PRX)"]
    assert [r.row for r in muon] == [2, 2] and [r.seed for r in muon] == [0, 1]
    for query in ("+ Muon (PRX)", "muon", "MUON (prx", "2", muon[1].signature[:6], muon[1].run_name):
        assert pick_run(spec, runs, query, 1, "label") is muon[1], query
    assert pick_run(spec, runs, muon[0].signature[:8], None, "label") is muon[0]   # the prefix names the seed too
    assert pick_run(spec, runs, "muon", None, "--show", first_seed=True) is muon[0]
    assert pick_row(spec, runs, "deco", "--label") == "+ frequency-aware loss (DeCo)"
    assert pick_row(spec, runs, "0", "--label") == spec.rows[0].label


@pytest.mark.parametrize("query, message", [
    ("loss", "label='loss': matches 2 rows: ['0 tiny_mnist (AdamW, flow loss)', '1 + frequency-aware loss (DeCo)']; "
             "give more of the label or the row index"),
    ("muonn", "label='muonn': no row has this label; rows are ['tiny_mnist (AdamW, flow loss)', "),
    ("7", "label='7': no row has this label"),
])
def test_what_names_several_rows_or_nothing_is_refused_in_one_line(plan, query, message):
    spec, runs = plan
    with pytest.raises(ConfigError) as err:
        pick_run(spec, runs, query, 0, "label")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_row_with_several_seeds_still_asks_for_one(plan):
    spec, runs = plan
    with pytest.raises(ConfigError, match=r"--seed: the row '\+ Muon \(PRX\)' has runs for seeds \[0, 1\]: pick one"):
        pick_run(spec, runs, "muon", None, "label")
