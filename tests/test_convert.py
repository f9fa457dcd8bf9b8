"""Official checkpoints in and out (models/convert.py): the zoo computes the official functions.

The golden fixtures in tests/fixtures/official/ hold tiny official models with random weights, inputs and the
official code's outputs (README.md there says how they were made); no official code is needed here.
"""
import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import randomize
from mlflow.tracking import MlflowClient
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models.convert import LAYOUTS, SOURCES, convert_state_dict, export_state_dict, main, sha256
from models.families import build_model, miniature
from models.presets import model_config
from toolkit.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "official"
CASES = ["pixeldit_pre", "pixeldit_post", "jit", "dit", "diffit_latent", "sit_repa"]


def fixture_spec(name: str) -> tuple[str, str, list[str]]:
    """The converter's source, and the zoo preset and overrides of a fixture's model."""
    with safe_open(FIXTURES / f"{name}.safetensors", "pt") as handle:
        meta = handle.metadata()
    return meta["source"], meta["preset"], json.loads(meta["overrides"])


def fixture(name: str):
    """(source, cfg, official state_dict, (x, t, y), official outputs) of a golden fixture."""
    source, preset, overrides = fixture_spec(name)
    tensors = load_file(FIXTURES / f"{name}.safetensors")
    part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    inputs = part("input/")
    return source, model_config(preset, overrides), part("official/"), (inputs["x"], inputs["t"], inputs["y"]), \
        part("output/")


def converted(name: str, cfg=None):
    source, fixture_cfg, official, inputs, outputs = fixture(name)
    cfg = cfg or fixture_cfg
    model = build_model(cfg).eval()
    model.load_state_dict(convert_state_dict(official, source=source, cfg=fixture_cfg), strict=True)
    with torch.no_grad():
        return model(*inputs), outputs


@pytest.mark.parametrize("name", CASES)
def test_official_outputs_through_the_converter(name):
    ours, official = converted(name)
    assert (ours.prediction - official["prediction"]).abs().max() <= 1e-5
    if "repa" in official:                      # the REPA projector on the tapped block's tokens
        assert (ours.repa - official["repa"]).abs().max() <= 1e-5


@pytest.mark.parametrize("name, change", [
    ("pixeldit_pre", dict(rope_positions="index")), ("pixeldit_pre", dict(gelu="tanh")),
    ("pixeldit_post", dict(gelu="tanh")), ("jit", dict(rope_positions="span16")),
    ("dit", dict(gelu="exact")), ("sit_repa", dict(gelu="exact")), ("diffit_latent", dict(gelu="exact")),
])
def test_each_official_choice_matters(name, change):
    """The fixtures discriminate: the same weights under another value of a new field miss the official
    output by more than ten times the parity tolerance (GELU's tanh approximation is the subtlest)."""
    _, cfg, *_ = fixture(name)
    ours, official = converted(name, cfg.replace(**change))
    assert (ours.prediction - official["prediction"]).abs().max() > 1e-4


def test_position_table_is_column_first():
    """DiT's weights with our table transposed (row first, as the zoo had it) miss the official output."""
    source, cfg, official, inputs, outputs = fixture("dit")
    model = build_model(cfg).eval()
    model.load_state_dict(convert_state_dict(official, source, cfg))
    g, D = cfg.grid_size, cfg.hidden_size
    model.pos_embed = model.pos_embed.view(1, g, g, D).transpose(1, 2).reshape(1, g * g, D)
    with torch.no_grad():
        assert (model(*inputs).prediction - outputs["prediction"]).abs().max() > 1e-3


@pytest.mark.parametrize("source, preset, overrides", [(s, p, []) for s in SOURCES for p in LAYOUTS[s].presets]
                         + [("pixeldit", "pixeldit_xl", ["pixel_modulation=post"])])
def test_export_then_import_is_the_identity(source, preset, overrides):
    cfg = miniature(model_config(preset, overrides))
    ours = randomize(build_model(cfg)).state_dict()
    back = convert_state_dict(export_state_dict(ours, source, cfg), source, cfg)
    assert list(back) == list(ours) and all(torch.equal(back[k], ours[k]) for k in ours)


@pytest.mark.parametrize("name", CASES)
def test_import_then_export_gives_the_official_state_dict_back(name):
    source, cfg, official, *_ = fixture(name)
    exported = export_state_dict(convert_state_dict(official, source, cfg), source, cfg)
    assert set(exported) == set(official)
    for key, value in official.items():     # weights exactly; frozen tables (pos_embed, rel. index) to rounding
        assert torch.allclose(exported[key].to(value.dtype), value, atol=1e-6), key


@pytest.mark.parametrize("name, override, field", [
    ("pixeldit_pre", "adaln=B", "model.adaln"),            # same shapes, another function
    ("jit", "rope_positions=span16", "model.rope_positions"),
    ("dit", "norm=rmsnorm", "model.norm"),
    ("sit_repa", "flow_time=data_at_1", "model.flow_time"),
])
def test_refuses_a_config_the_official_code_does_not_compute(name, override, field):
    source, cfg, official, *_ = fixture(name)
    key, value = override.split("=")
    with pytest.raises(ConfigError) as err:
        convert_state_dict(official, source, cfg.replace(**{key: value}))
    assert err.value.key == field


def test_a_missing_repa_projector_is_initialised_and_an_unused_one_dropped():
    source, cfg, official, *_ = fixture("pixeldit_pre")
    without = {k: v for k, v in official.items() if not k.startswith("diffusion_trainer.")}
    first, second = convert_state_dict(without, source, cfg), convert_state_dict(without, source, cfg)
    assert torch.equal(first["repa_projector.net.0.weight"], second["repa_projector.net.0.weight"])   # seeded
    dropped = convert_state_dict(official, source, cfg.replace(repa=False))
    assert not any(k.startswith("repa_projector") for k in dropped)


# ---- the command line: files as the repositories save them ------------------------------------------

def saved_as(layout: str, official: dict, raw: dict) -> dict:
    """`official` as the EMA weights and `raw` as the trained ones, nested the way each repository saves them."""
    if layout == "raw":                                         # DiT's released checkpoints
        return official
    if layout == "dit_train":                                   # DiT / REPA train.py
        return {"model": raw, "ema": official, "opt": {}, "args": argparse.Namespace(model="DiT-XL/2")}
    if layout == "jit_train":                                   # JiT util/misc.py: its Denoiser, net.*
        net = lambda sd: {f"net.{k}": v for k, v in sd.items()}   # noqa: E731
        return {"model": net(raw), "model_ema1": net(official), "model_ema2": net(raw), "epoch": 3}
    projector = {k: v for k, v in official.items() if k.startswith("diffusion_trainer.")}
    network = lambda sd, p: {f"{p}{k}": v for k, v in sd.items() if not k.startswith("diffusion_trainer.")}  # noqa
    return {"epoch": 1, "state_dict": {**network(raw, "denoiser."), **network(official, "ema_denoiser."),
                                       **projector}}            # PixelDiT's Lightning .ckpt


@pytest.mark.parametrize("name, layout, suffix", [
    ("dit", "raw", ".pt"), ("dit", "raw", ".safetensors"), ("sit_repa", "dit_train", ".pt"),
    ("jit", "jit_train", ".pth"), ("pixeldit_pre", "lightning", ".ckpt"),
])
def test_cli_reads_the_ema_weights_of_official_files(tmp_path, name, layout, suffix):
    source, cfg, official, inputs, outputs = fixture(name)
    raw = {k: v + 1 for k, v in official.items()}
    path = tmp_path / f"official{suffix}"
    if suffix == ".safetensors":
        save_file(official, str(path))
    else:
        torch.save(saved_as(layout, official, raw), path)
    _, preset, overrides = fixture_spec(name)
    out = tmp_path / "ours.safetensors"     # CKPT --source S --preset P [key=value ...] --out OUT
    assert main([str(path), "--source", source, "--preset", preset, *overrides, "--out", str(out)]) == 0
    model = build_model(cfg).eval()
    model.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        assert (model(*inputs).prediction - outputs["prediction"]).abs().max() <= 1e-5


def test_cli_writes_the_same_bytes_every_time(tmp_path):
    """The file's sha256 is what a run records: converting the same checkpoint twice gives the same file
    (PixelDiT's missing projector is initialised from a fixed seed)."""
    _, _, official, *_ = fixture("pixeldit_pre")
    torch.save({k: v for k, v in official.items() if not k.startswith("diffusion_trainer.")}, tmp_path / "pix.pt")
    _, preset, overrides = fixture_spec("pixeldit_pre")
    outs = [tmp_path / f"ours{i}.safetensors" for i in range(2)]
    for out in outs:
        assert main([str(tmp_path / "pix.pt"), "--source", "pixeldit", "--preset", preset, *overrides,
                     "--out", str(out)]) == 0
    assert sha256(outs[0]) == sha256(outs[1])


@pytest.mark.parametrize("source, preset, small, expected", [
    # a small PixelDiT's checkpoint given to PixelDiT-XL: the first tensor whose shape differs
    ("pixeldit", "pixeldit_xl", [], "s_embedder.proj.weight: shape (32, 48) in the checkpoint, (1152, 768) for "
                                    "this config"),
    # the right preset and sizes but one: the width
    ("pixeldit", "pixeldit_xl", ["hidden_size=64"], "s_embedder.proj.weight: shape (32, 48) in the checkpoint, "
                                                    "(64, 48) for this config"),
    # another family's code
    ("jit", "jit_b16", [], "in_context_posemb: missing from the checkpoint"),
])
def test_cli_refuses_the_wrong_preset_in_one_line(tmp_path, capsys, source, preset, small, expected):
    _, _, official, *_ = fixture("pixeldit_pre")
    path, out = tmp_path / "official.pt", tmp_path / "ours.safetensors"
    torch.save(official, path)
    sizes = [o for o in fixture_spec("pixeldit_pre")[2] if not o.startswith("hidden_size")]
    overrides = sizes + small if small else []
    assert main([str(path), *overrides, "--source", source, "--preset", preset, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: ") and expected in err, err
    assert not out.exists()


# ---- training from converted weights -------------------------------------------------------------

TINY = {"model.input_size": 32, "model.patch_size": 8, "model.num_classes": 10, "model.depth": 2,
        "model.hidden_size": 32, "model.num_heads": 2, "model.pixel_depth": 1, "model.pixel_dim": 8,
        "model.repa": False}


def test_training_starts_from_converted_weights(tmp_path, capsys):
    """An official-layout file, converted by the CLI, is what a run starts from: its EMA (which evaluation
    samples) too; the file's sha256 is on the MLflow run. A file of another config is refused in one line."""
    from harness.checkpoint import load_checkpoint
    from harness.configure import resolve
    from harness.train import main as train_main
    from harness.trainer import train
    cfg = model_config("pixeldit_xl", [f"{k[6:]}={v}" for k, v in TINY.items()])
    official = export_state_dict(randomize(build_model(cfg), std=0.05).state_dict(), "pixeldit", cfg)
    torch.save({"state_dict": {f"ema_denoiser.{k}": v for k, v in official.items()}}, tmp_path / "pixeldit.ckpt")
    weights = tmp_path / "converted.safetensors"
    overrides = [f"{k[6:]}={v}" for k, v in TINY.items()]
    assert main([str(tmp_path / "pixeldit.ckpt"), *overrides, "--source", "pixeldit", "--preset", "pixeldit_xl",
                 "--out", str(weights)]) == 0

    run = ["+experiment=tiny_digits", f"run.out_dir={tmp_path / 'runs'}", "run.name=from_official", "train.steps=1",
           "train.global_batch=8", "optim.lr=0.0", "eval.metric=none", f"model.init_from={weights}",
           *[f"{k}={v}" for k, v in TINY.items()]]
    result = train(resolve(run))
    state, expected = load_checkpoint(result.run_dir / "checkpoints" / "last.pt"), load_file(weights)
    for key, value in expected.items():          # lr 0: one step leaves the converted weights as they were
        assert torch.equal(state["model"][key], value), key
        assert torch.equal(state["ema"]["0.99"][key], value), key
    client = MlflowClient(f"sqlite:///{result.run_dir / 'mlflow.db'}")
    assert client.get_run(result.run_id).data.tags["init_from_sha256"] == sha256(weights)

    wrong = [o.replace("model.hidden_size=32", "model.hidden_size=64").replace("run.name=from_official", "run.name=w")
             for o in run]
    assert train_main(wrong) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]          # after the first run's MLflow logging
    assert last.startswith("error: overrides: model.init_from=")
    assert "has shape (32, 192), this config expects (64, 192)" in last
    assert not (tmp_path / "runs" / "w").exists()


# ---- SiT's time convention in the harness ---------------------------------------------------------

def test_sit_time_convention_is_the_harness_time_reversed():
    """With flow_time=data_at_0 the network sees 1 - t and its output -v: the same training and sampling."""
    from harness.config import ObjectiveConfig
    from harness.objectives import make_objective
    cfg = model_config("sit_xl2_repa")
    sit = make_objective(ObjectiveConfig(), cfg)
    ours = make_objective(ObjectiveConfig(), cfg.replace(flow_time="data_at_1"))
    t, x, eps = torch.tensor([0.2, 0.9]), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.allclose(sit.network_time(t), 1 - t)
    x_t, v = sit.corrupt(x, eps, t), x - eps
    assert torch.equal(sit.velocity(-v, x_t, t), ours.velocity(v, x_t, t))
    assert torch.equal(sit.loss(-v, x, eps, x_t, t)["loss"], ours.loss(v, x, eps, x_t, t)["loss"])
    native = ObjectiveConfig(loss_space="native")
    assert make_objective(native, cfg).loss(eps - x, x, eps, x_t, t)["loss"] == 0


PIXELGEN_TINY = ["input_size=32", "patch_size=16", "hidden_size=32", "depth=4", "num_heads=2", "num_classes=10",
                 "in_context_tokens=3", "in_context_start=1", "repa_block=2", "repa_hidden=32", "repa_dim=24"]


def test_pixelgen_official_forward_and_its_released_checkpoint_layout(tmp_path):
    """PixelGen's tiny JiT (no bottleneck; REPA projector in its trainer) from the PixelGen loss fixture
    (tests/fixtures/official/README.md), read as its released Lightning checkpoint is saved: the official
    prediction and projected REPA features to 1e-5, and the official state dict back exactly."""
    tensors = load_file(FIXTURES / "pixelgen_loss.safetensors")
    official = {k.removeprefix("official/"): v for k, v in tensors.items() if k.startswith("official/")}
    path, out = tmp_path / "PixelGen_XL_160ep.ckpt", tmp_path / "ours.safetensors"
    torch.save(saved_as("lightning", official, {k: v + 1 for k, v in official.items()}), path)
    assert main([str(path), "--source", "pixelgen", "--preset", "pixelgen_xl", *PIXELGEN_TINY, "--out", str(out)]) == 0
    cfg = model_config("pixelgen_xl", PIXELGEN_TINY)
    model = build_model(cfg).eval()
    model.load_state_dict(load_file(out), strict=True)
    for call in ("mixed", "gated_out"):
        with torch.no_grad():
            ours = model(tensors[f"{call}/input/x_t"], tensors[f"{call}/input/t"], tensors[f"{call}/input/y"])
        assert (ours.prediction - tensors[f"{call}/output/prediction"]).abs().max() <= 1e-5
        assert (ours.repa - tensors[f"{call}/output/repa_projected"]).abs().max() <= 1e-5
    exported = export_state_dict(model.state_dict(), "pixelgen", cfg)
    assert set(exported) == set(official)
    assert all(torch.allclose(exported[k], v, atol=1e-6) for k, v in official.items())
    with pytest.raises(ConfigError) as err:                  # JiT's bottleneck is not PixelGen-XL's function
        convert_state_dict(official, "pixelgen", cfg.replace(patch_embed="bottleneck"))
    assert err.value.key == "model.patch_embed"
