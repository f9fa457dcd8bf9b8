"""Every preset reproduces its paper's size; every preset trains at toy size; the inspect command works."""
import json
import subprocess
import sys

import pytest
import torch

from models.complexity import count_flops, measure, with_resolution
from models.families import build_model
from models.presets import PRESETS, PUBLISHED, miniature, model_config
from models.transformer import DiffusionTransformer


@pytest.mark.parametrize("name", [n for n in PUBLISHED if "params" in PUBLISHED[n]])
def test_parameter_count_matches_the_paper(name):
    paper = PUBLISHED[name]
    params = measure(model_config(name)).params
    assert params == pytest.approx(paper["params"], rel=paper["params_tol"])


@pytest.mark.parametrize("name", [n for n in PUBLISHED if "official" in PUBLISHED[n]])
def test_parameter_count_equals_the_official_code_exactly(name):
    assert measure(model_config(name)).params == PUBLISHED[name]["official"]


@pytest.mark.parametrize("name", [n for n in PUBLISHED if "flops_tol" in PUBLISHED[n]])
def test_forward_cost_matches_the_paper_in_its_own_unit(name):
    paper, flops = PUBLISHED[name], count_flops(model_config(name))
    if "gflops" in paper:    # PixelDiT: FLOPs = 2 x MACs
        assert flops / 1e9 == pytest.approx(paper["gflops"], rel=paper["flops_tol"])
    else:                    # DiT, JiT: "Gflops" that are multiply-accumulates
        assert flops / 2e9 == pytest.approx(paper["gmacs"], rel=paper["flops_tol"])


def test_table4_rows_differ_only_in_their_named_switches():
    ptc, pixelwise = model_config("table4_ptc"), model_config("table4_pixelwise")
    nocompact = model_config("table4_dual_patchwise_nocompact")
    assert ptc == pixelwise.replace(adaln="B")
    assert nocompact == ptc.replace(compaction=1)
    vanilla, rope = model_config("table4_vanilla_dit16"), model_config("table4_rope_rmsnorm")
    assert rope == vanilla.replace(pos_embed="rope", norm="rmsnorm", norm_affine=True)    # PixelDiT's RMSNorm
    assert not vanilla.pixel_pathway and vanilla.patch_size == 16 and vanilla.in_channels == 3


def test_jitmask_is_the_seeds_code_before_its_fixes():
    cfg = model_config("jitmask")
    assert (cfg.adaln, cfg.s_cond_timestep, cfg.compaction, cfg.pixel_attn_dim) == ("B", False, 16, 16)
    assert (cfg.prediction, cfg.repa, cfg.in_context_tokens, cfg.hint_fraction) == ("image", False, 32, 0.25)
    assert (cfg.patch_embed, cfg.ffn, cfg.depth, cfg.pixel_depth) == ("bottleneck", "swiglu", 12, 3)


def test_flops_count_at_1024_on_meta_tensors():
    cfg = with_resolution(model_config("pixeldit_xl"), 1024)
    at_256 = count_flops(model_config("pixeldit_xl"))
    at_1024 = count_flops(cfg)
    assert 16 * at_256 < at_1024 < 32 * at_256      # 16x the tokens, plus attention's quadratic part


def test_overrides_change_exactly_the_named_fields():
    base = model_config("pixeldit_xl")
    assert model_config("pixeldit_xl", ["adaln=B", "compaction=16"]) == base.replace(adaln="B", compaction=16)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_forward_and_backward_at_toy_size(name):
    cfg = miniature(model_config(name))
    model = build_model(cfg)
    x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
    hints = (x, torch.rand_like(x[:, :1]) < cfg.hint_fraction) if cfg.hint_fraction else (None, None)
    out = model(x, torch.rand(2), torch.tensor([0, cfg.num_classes]), *hints)     # one dropped label
    loss = out.prediction.square().mean() + (out.repa.square().mean() if out.repa is not None else 0)
    loss.backward()
    assert out.prediction.shape == (2, cfg.out_channels, cfg.input_size, cfg.input_size)
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", ["pixeldit_xl", "jit_b16", "dit_xl2", "jitmask"])
def test_compiles_without_graph_breaks(name):
    cfg = miniature(model_config(name))
    model = DiffusionTransformer(cfg)
    x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
    explanation = torch._dynamo.explain(model)(x, torch.rand(2), torch.tensor([1, 2]))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def run_inspect(*args):
    return subprocess.run([sys.executable, "-m", "models.inspect", *args], capture_output=True, text=True)


def test_inspect_json_reports_params_gmacs_gflops():
    result = run_inspect("pixeldit_xl", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["params"] == measure(model_config("pixeldit_xl")).params
    assert report["gflops"] == pytest.approx(2 * report["gmacs"])
    assert report["gflops"] == pytest.approx(311, rel=0.03)


def test_inspect_compares_several_presets_and_refuses_bad_overrides():
    table = run_inspect("pixeldit_b", "dit_xl2")
    assert table.returncode == 0 and "pixeldit_b" in table.stdout and "dit_xl2" in table.stdout
    bad = run_inspect("pixeldit_xl", "compaction=7")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: command line: model.compaction=7: the compaction rate must divide patch_size^2=256")
