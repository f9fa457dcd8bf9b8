"""The embedded default, the README's main command: PixelDiT's Table 4 in miniature on real MNIST digits."""

import pytest
import yaml
from conftest import ROOT

from harness.configure import result_delta
from harness.sweep.plan import plan_sweep
from harness.sweep.spec import load_sweep
from harness.sweep.sweep import Sweep

DEMO = ROOT / "sweeps" / "tiny_table4.yaml"
TABLE4_PRESETS = ["table4_vanilla_dit16", "table4_rope_rmsnorm", "table4_ptc", "table4_pixelwise"]


def test_the_demo_is_table4_on_mnist_with_three_seeds_and_one_recipe():
    spec = load_sweep(DEMO)
    assert [row.label for row in spec.rows] == ["Vanilla DiT/16", "+ RoPE, RMSNorm",
                                                "+ dual-level, patch-wise AdaLN, PTC", "+ pixel-wise AdaLN"]
    assert len(spec.seeds) >= 3 and spec.paper_metric["fid"].dataset == "ImageNet 256x256"
    runs = plan_sweep(spec)
    assert len(runs) == 4 * len(spec.seeds)
    for run in runs:
        cfg = run.cfg
        shown = (cfg.data.name, cfg.data.resolution, cfg.model.in_channels, cfg.eval.metric)
        assert shown == ("mnist", 16, 1, "offline")
    baseline = {run.seed: result_delta(run.cfg) for run in runs if run.row == 0}
    for run in runs:                      # a row changes its model switches and nothing of the recipe
        delta = result_delta(run.cfg)
        changed = {k for k in set(delta) | set(baseline[run.seed]) if delta.get(k) != baseline[run.seed].get(k)}
        assert all(k.startswith("model.") for k in changed), (run.label, changed)
        assert run.config_overrides[0] == f"model={TABLE4_PRESETS[run.row]}"


@pytest.mark.slow          # ~9 min on 2 cores: the README main command's sweep itself
def test_the_demo_learns_real_digits_in_every_row(tmp_path):
    """Every row's samples are digits the held-out classifier recognises (class accuracy >= 0.5; the best
    row >= 0.9), and the table marks its intervals, test and paper column for what they are."""
    from analysis.runs import load_sweep_runs
    from analysis.table import build_table
    from commands.cli import main
    sweep = yaml.safe_load(DEMO.read_text())
    path = tmp_path / "tiny_table4.yaml"
    path.write_text(yaml.safe_dump({**sweep, "output": str(tmp_path / "runs")}, sort_keys=False))
    assert main([str(path), "--wait"]) == 0
    frame = load_sweep_runs(Sweep.open(path)).frame
    assert (frame["state"] == "done").all() and len(frame) == 12
    accuracy = frame.groupby("label")["metric.class_acc"].mean()
    assert accuracy.min() >= 0.5 and accuracy.max() >= 0.9, accuracy.to_dict()
    assert (frame["metric.classifier_acc"] > 0.93).all()          # the judge itself reads real digits (0.949)
    table = build_table(load_sweep_runs(Sweep.open(path)), "fd").to_markdown()
    assert "paper: gFID-50K, ImageNet 256x256" in table and "95%" in table and "paired t" in table
