"""The paper's effect in miniature (`sweeps/table4_regime.yaml`): PixelDiT's Table 4 rows in the paper's
patch-token regime, planned (not run): rows, seeds, geometry and one recipe for every row."""

from conftest import ROOT

from harness.configure import result_delta
from harness.sweep.plan import plan_sweep
from harness.sweep.spec import load_sweep
from models.presets import model_config

SWEEP = ROOT / "sweeps" / "table4_regime.yaml"
ROWS = {"Vanilla DiT/16": "table4_vanilla_dit16", "+ RoPE, RMSNorm": "table4_rope_rmsnorm",
        "+ dual-level, patch-wise AdaLN, PTC": "table4_ptc", "+ pixel-wise AdaLN": "table4_pixelwise"}


def values_per_token(cfg) -> int:
    """What the linear patch embedding reads, and the linear unpatchify paints, per patch token: p^2 C."""
    return cfg.patch_size ** 2 * cfg.in_channels


def test_the_regime_sweep_plans_table4_with_five_seeds_and_one_recipe():
    spec = load_sweep(SWEEP)
    assert [row.label for row in spec.rows] == list(ROWS) and spec.baseline == "Vanilla DiT/16"
    assert len(set(spec.seeds)) >= 5 and spec.executor.kind == "local" and spec.executor.max_parallel == 2
    runs = plan_sweep(spec)
    assert len(runs) == len(ROWS) * len(spec.seeds)
    baseline = {run.seed: result_delta(run.cfg) for run in runs if run.row == 0}
    for run in runs:
        assert run.config_overrides[0] == f"model={ROWS[run.label]}"
        data = run.cfg.data
        assert (data.name, data.resolution, run.cfg.model.in_channels, run.cfg.eval.metric) == \
            ("fashion_mnist", 32, 1, "offline")
        delta = result_delta(run.cfg)         # a row changes its model switches and nothing of the recipe
        changed = {k for k in set(delta) | set(baseline[run.seed]) if delta.get(k) != baseline[run.seed].get(k)}
        assert all(k.startswith("model.") for k in changed), (run.label, changed)


def test_the_patch_tokens_are_in_the_papers_regime_unlike_the_embedded_demo():
    """Values per patch token over the width is PixelDiT-XL's (768 / 1152 = 2/3) in every row; the pixel
    rows compact a whole patch into one attention token (PTC) with the paper's D_pix; the demo's 16 px
    tokens carry 16 values into a width of 64 (1/4)."""
    paper = model_config("pixeldit_xl")
    paper_ratio = values_per_token(paper) / paper.hidden_size
    assert (values_per_token(paper), paper.hidden_size, paper.num_patches) == (768, 1152, 256)
    for run in plan_sweep(load_sweep(SWEEP)):
        model = run.cfg.model
        assert values_per_token(model) / model.hidden_size == paper_ratio == 2 / 3, run.label
        assert (model.patch_size, model.num_patches, values_per_token(model)) == (8, 16, 64)
        if model.pixel_pathway:
            assert model.compaction_rate == model.patch_size ** 2 and model.pixel_dim == paper.pixel_dim == 16
    demo = plan_sweep(load_sweep(ROOT / "sweeps" / "tiny_table4.yaml"))[0].cfg.model
    assert values_per_token(demo) / demo.hidden_size == 0.25
