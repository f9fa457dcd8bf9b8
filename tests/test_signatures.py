"""The run signatures of the shipped sweeps, held in a golden file.

A signature is what makes a finished run "done" (never retrained) and what a requeued job checks its
checkpoint against, so it must change only on purpose. This test fails when a code change alters any
shipped run's signature; its message says what to do.

    DITLAB_UPDATE_GOLDEN=1 python -m pytest tests/test_signatures.py     # rewrite the golden file
"""
import json
import os
from pathlib import Path

from conftest import ROOT

from harness.sweep.plan import plan_sweep
from harness.sweep.spec import load_sweep

GOLDEN = Path(__file__).parent / "golden" / "signatures.json"
ADVICE = """the signatures of shipped runs changed:
{changes}
Every finished run of these sweeps in users' stores now reads "new" and would be retrained.
- If you added a field: give it a default that keeps the old behaviour (then no signature changes).
- If you changed a default, a preset or an experiment on purpose: rewrite the golden file
  (DITLAB_UPDATE_GOLDEN=1 python -m pytest tests/test_signatures.py), say so in the change, and tell users
  to run `python run_sweep.py migrate SWEEP` on their stores so finished runs are re-signed, not retrained."""


def shipped_signatures(full: bool = True) -> dict[str, dict[str, str]]:
    out = {}
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        runs = plan_sweep(load_sweep(path), full)
        out[f"sweeps/{path.name}"] = {f"{r.label} | seed {r.seed}" + (f" | {json.dumps(r.grid, sort_keys=True)}"
                                                                        if r.grid else ""): r.signature for r in runs}
    return out


def test_shipped_sweeps_keep_their_signatures():
    current = shipped_signatures()
    if os.environ.get("DITLAB_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    changes = [f"  {sweep}: {run}: {golden.get(sweep, {}).get(run, 'absent')} -> {signature}"
               for sweep, runs in current.items() for run, signature in runs.items()
               if golden.get(sweep, {}).get(run) != signature]
    changes += [f"  {sweep}: {run}: no longer planned" for sweep, runs in golden.items() for run in runs
                if run not in current.get(sweep, {})]
    assert not changes, ADVICE.format(changes="\n".join(changes))


def test_a_plan_for_reading_has_the_full_plans_runs_and_signatures():
    """What `status`, `logs` and `cancel` plan after an upgrade (resolved, not validated, no model built) finds
    the same runs: validation never changes a config."""
    assert shipped_signatures(full=False) == json.loads(GOLDEN.read_text())
