"""sweeps/tiny_2026.yaml, three of the 2026 recipe switches on the embedded digits, planned (not run): every row
is the embedded default's run with its one switch, validated before anything is submitted."""
from conftest import ROOT

from harness.configure import flatten, resolve
from harness.sweep.plan import plan_sweep
from harness.sweep.spec import load_sweep

SWEEP = ROOT / "sweeps" / "tiny_2026.yaml"
SWITCHES = {                       # each row's label -> the keys it changes, and their values
    "tiny_mnist (AdamW, flow loss)": {},
    "+ frequency-aware loss (DeCo)": {"objective.freq_weight": 1.0},
    "+ Muon (PRX)": {"optim.optimizer": "muon"},
    "+ LPIPS, random VGG16 (PixelGen)": {"perceptual.lpips_weight": 0.1, "perceptual.t_min": 0.3,
                                         "perceptual.vgg_weights": "random"},
}


def test_each_row_is_the_embedded_default_with_its_one_switch():
    spec = load_sweep(SWEEP)
    runs = plan_sweep(spec)
    assert [(r.label, r.seed) for r in runs] == [(label, seed) for label in SWITCHES for seed in (0, 1)]
    assert spec.executor.kind == "local" and spec.experiment == "tiny_mnist"
    for run in runs:
        default = flatten(resolve(["+experiment=tiny_mnist", f"run.seed={run.seed}"]).cfg)
        ours = flatten(run.cfg)
        changed = {key: ours[key] for key in ours if ours[key] != default[key]
                   and not key.startswith(("run.", "tracking.", "experiment"))}
        assert changed == SWITCHES[run.label], run.label
        job = resolve(run.overrides(spec, "sqlite:///x.db", parent_run_id="p"))
        assert job.signature == run.signature
    assert len({r.signature for r in runs}) == len(runs)
