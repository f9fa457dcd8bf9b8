"""Latent models (DiT, SiT/REPA, latent DiffiT): the VAE (harness/vae.py), the latent cache (harness/latents.py),
training on cached latents, decoding for every metric and grid, and the sweep's cache stage.

The VAEs here are diffusers' AutoencoderKL with random weights at toy width, or trained by the project on its own
digits (`vae.source=train`): the SD-VAE weights come from a hub these machines cannot reach.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import EXECUTORS, ROOT, assert_close_weights, states, wait_until, weights, write_sweep

from harness.configure import config_signature, resolve
from harness.latents import CHUNK, cache_state, open_latents, prepare
from harness.protocol import EvalProtocol
from harness.vae import TINY_VAE, load_vae
from toolkit.errors import ConfigError

# A small DiT on 4x4x4 latents of 16 px shapes (600 images: 3 chunks of the cache), the tiny VAE at random weights.
SHAPES = 600
LATENT = {"model.input_size": 4, "model.in_channels": 4, "model.latent_downsample": 4, "model.patch_size": 1,
          "model.depth": 2, "model.hidden_size": 32, "model.num_heads": 2, "model.repa": "false",
          "data.name": "shapes", "data.resolution": 16, "data.shapes_size": SHAPES, "data.hflip": "true",
          "vae.source": "random", "vae.architecture": "tiny", "train.global_batch": 16, "train.log_every": 2,
          "eval.metric": "none", "checkpoint.every_steps": 3}


def latent_overrides(tmp_path: Path, cache: str = "cache", **extra) -> list[str]:
    items = {**LATENT, "data.latents": str(tmp_path / cache), "eval.cache_dir": str(tmp_path / "metric-cache"),
             "run.out_dir": str(tmp_path / "runs"), **extra}
    return ["+experiment=tiny_digits", "model=dit_xl16", *[f"{k}={v}" for k, v in items.items()]]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """(folder, overrides) of a cache made by one in-process shard."""
    folder = tmp_path_factory.mktemp("latents")
    overrides = latent_overrides(folder)
    assert prepare(overrides).state == "ready"
    return folder / "cache", overrides


def _key(cfg) -> str:
    from harness.latents import latent_key
    return latent_key(cfg)


def moments_of(folder: Path) -> np.ndarray:
    return np.load(folder / "moments.npy")


# ---- the VAE ------------------------------------------------------------------------------------------

def test_the_vae_path_equals_diffusers_own_encode_and_decode(tmp_path):
    """A folder in diffusers' layout and a weights file load the same weights as AutoencoderKL.from_pretrained;
    the cached moments are its posterior's mean and std; the model's latents are DiT's z * 0.18215 and decode as
    `vae.decode(latents / 0.18215).sample` [DiT sample.py]; per-channel mean/std scaling inverts exactly."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    torch.manual_seed(1)
    reference = AutoencoderKL(**TINY_VAE).eval()
    reference.save_pretrained(tmp_path / "folder")
    save_file(dict(reference.state_dict()), tmp_path / "vae.safetensors")
    official = AutoencoderKL.from_pretrained(tmp_path / "folder", low_cpu_mem_usage=False).eval()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior = official.encode(images).latent_dist
        z = posterior.sample(torch.Generator().manual_seed(0))
        latents = z * 0.18215                                     # DiT train.py: latent_dist.sample().mul_(0.18215)
        decoded = official.decode(latents / 0.18215).sample       # DiT sample.py
    digests = set()
    for source in (tmp_path / "folder", tmp_path / "vae.safetensors"):
        cfg = resolve(latent_overrides(tmp_path, **{"vae.source": str(source)})).cfg
        vae = load_vae(cfg)
        digests.add(vae.weights_digest())
        moments = vae.moments(images)
        assert torch.equal(moments, torch.cat([posterior.mean, posterior.std], dim=1))
        assert vae.scaling_factor == 0.18215
        assert torch.equal(vae.to_model(z), latents)
        assert torch.equal(vae.decode(latents), decoded.clamp(-1, 1))
    assert len(digests) == 1
    cfg = resolve(latent_overrides(tmp_path, **{"vae.latents_mean": "[1,2,3,4]", "vae.latents_std": "[2,2,4,4]",
                                                "vae.scaling_factor": 0.5})).cfg
    vae = load_vae(cfg)
    expected = (z - torch.tensor([1., 2, 3, 4]).view(1, 4, 1, 1)) / torch.tensor([2., 2, 4, 4]).view(1, 4, 1, 1) * 0.5
    torch.testing.assert_close(vae.to_model(z), expected)
    torch.testing.assert_close(vae.from_model(vae.to_model(z)), z)


# ---- the cache ---------------------------------------------------------------------------------------

def test_the_cache_holds_the_posterior_of_every_image_and_its_mirror(cache):
    folder, overrides = cache
    cfg = resolve(overrides).cfg
    meta = json.loads((folder / "latents.json").read_text())
    assert meta["count"] == SHAPES and meta["flips"] == 2 and meta["shape"] == [SHAPES, 2, 8, 4, 4]
    assert -(-SHAPES // CHUNK) >= 3 and not list(folder.parent.glob(".cache.partial*"))
    from harness.data import build_dataset
    images = build_dataset(cfg.data, 3)
    index = torch.tensor([0, 257, SHAPES - 1])
    vae = load_vae(cfg)
    stored = moments_of(folder)[index.numpy()]
    for flip in (0, 1):
        x, _ = images.get(index, torch.full((3,), bool(flip)))
        np.testing.assert_allclose(stored[:, flip], vae.moments(x).numpy(), rtol=0, atol=1e-6)
    dataset = open_latents(cfg, images)
    got, labels = dataset.get(index, torch.tensor([False, True, False]))
    assert torch.equal(got[1], torch.from_numpy(stored[1, 1])) and torch.equal(labels, images.labels[index])


def test_the_cache_is_the_same_made_in_one_or_two_shards(cache, tmp_path):
    folder, _ = cache
    overrides = latent_overrides(tmp_path, "two")
    assert prepare(overrides, shards=2).state == "ready"          # two local processes
    assert np.array_equal(moments_of(folder), moments_of(tmp_path / "two"))
    assert np.array_equal(np.load(folder / "labels.npy"), np.load(tmp_path / "two" / "labels.npy"))
    one, two = (json.loads((f / "latents.json").read_text()) for f in (folder, tmp_path / "two"))
    assert {k: v for k, v in one.items() if k != "finished"} == {k: v for k, v in two.items() if k != "finished"}


def test_a_killed_prepare_resumes_and_ends_with_the_same_cache(cache, tmp_path):
    folder, _ = cache
    overrides = latent_overrides(tmp_path, "killed")
    command = [sys.executable, "-m", "harness.latents", "prepare", *overrides, "--device", "cpu"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})    # one core: ~0.1 s a chunk to catch
    markers = tmp_path / ".killed.partial" / "chunks"
    wait_until(lambda: proc.poll() is not None or len(list(markers.glob("*.json"))) >= 1, timeout=300, every=0.002,
               what="a first chunk")
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGKILL)                               # a real kill: no handler, no cleanup
    proc.wait()
    assert not (tmp_path / "killed").exists()
    done = len(list(markers.glob("*.json")))
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{3 - done} of 3 chunks to encode" in resumed.stdout
    assert np.array_equal(moments_of(folder), moments_of(tmp_path / "killed"))


def test_a_cache_of_another_vae_or_resolution_is_refused_naming_both_keys(cache, tmp_path):
    folder, overrides = cache
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    made = cache_state(resolve(overrides).cfg).key
    torch.manual_seed(5)
    save_file(dict(AutoencoderKL(**TINY_VAE).state_dict()), tmp_path / "other.safetensors")
    for change, part in ((f"vae.source={tmp_path / 'other.safetensors'}", "vae"),
                         ("data.resolution=32", "data"), ("data.hflip=false", "flips")):
        cfg = resolve(overrides + (["model.input_size=8"] if "resolution" in change else []) + [change]).cfg
        with pytest.raises(ConfigError) as err:
            open_latents(cfg, None)
        text = str(err.value)
        assert text.startswith(f"data.latents='{folder}': holds latents of key {made} and this run needs key ")
        assert f"differ in {part}" in text and "\n" not in text
        assert f"this run needs key {_key(cfg)} " in text and _key(cfg) != made


def test_a_cache_of_other_weights_under_the_same_key_is_refused(cache, tmp_path):
    """The key names a trained VAE by its recipe; the weights that encoded the cache are checked too."""
    folder, overrides = cache
    cfg = resolve(overrides).cfg
    with pytest.raises(ConfigError, match=r"^vae\.source='random': its weights \(sha256 \w+\) are not those that "
                                          r"encoded"):
        open_latents(cfg, None, vae_digest="0" * 64)


# ---- training ----------------------------------------------------------------------------------------

def test_a_latent_run_trains_resumes_exactly_and_its_samples_decode(cache, tmp_path, monkeypatch):
    from analysis.samples import sample_row
    from harness.sweep.evaluation import Shard, ShardJob
    from harness.trainer import Trainer, train
    _, overrides = cache
    evaluated = [*overrides, "train.steps=6", "eval.metric=offline", "eval.num_samples=20", "eval.batch_size=10",
                 "eval.sampler.steps=3", "eval.grid_samples=10"]
    straight = train(resolve([*evaluated, "run.name=straight"]))
    assert set(straight.metrics) == {"fd", "class_acc"}

    original = Trainer.train_step

    def crash_at_4(self, *batch):
        if self.step == 4:
            raise RuntimeError("killed at step 4")
        return original(self, *batch)

    monkeypatch.setattr(Trainer, "train_step", crash_at_4)
    with pytest.raises(RuntimeError, match="killed at step 4"):
        train(resolve([*evaluated, "run.name=resumed"]))
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = train(resolve([*evaluated, "run.name=resumed"]))
    assert weights(resumed.run_dir)["step"] == 6
    assert_close_weights(weights(straight.run_dir), weights(resumed.run_dir), atol=0)
    assert resumed.metrics == straight.metrics

    from PIL import Image
    grid = Image.open(straight.run_dir / "samples" / "step00000006.png")
    assert grid.mode == "RGB" and grid.size[1] == 2 + 18           # one line of 16 px decoded images
    checkpoint = straight.run_dir / "checkpoints" / "last.pt"
    images, labels, cfg, step = sample_row(checkpoint, torch.device("cpu"))
    assert images.shape == (20, 3, 16, 16) and step == 6 and images.abs().max() <= 1
    shard = Shard(0, 0, 4, str(tmp_path / "shard.npz"))
    protocol = EvalProtocol.of(cfg).with_changes({"eval.sampler.kind": "ab2", "eval.sampler.steps": 3,
                                                 "eval.num_samples": 4, "eval.batch_size": 4, "eval.seed": 0})
    ShardJob()(str(checkpoint), protocol.values_json, [shard])
    with np.load(shard.path) as data:
        assert data["arr_0"].shape == (4, 16, 16, 3) and data["arr_0"].dtype == np.uint8


def test_repa_on_latents_aligns_against_the_clean_images_features(cache, monkeypatch):
    """REPA's targets are the encoder's features of the clean images at the batch's indices and flips (REPA
    train.py: DINOv2 on `raw_image`, beside the latents), never of latents or decoded samples."""
    from harness.data import build_dataset
    from harness.trainer import Trainer
    _, overrides = cache
    resolved = resolve([*overrides, "model.repa=true", "model.repa_block=1", "model.repa_hidden=32",
                        "model.repa_dim=384", "repa.weight=0.5", "repa.encoder=vit_small_patch14_dinov2.lvd142m",
                        "repa.encoder_weights=random", "train.steps=2", "run.name=repa"])
    trainer = Trainer(resolved)
    seen = []
    forward = trainer.encoder.forward
    monkeypatch.setattr(trainer.encoder, "forward", lambda images: seen.append(images) or forward(images))
    moments, labels, images = trainer.batches.batch(0)
    terms = trainer.train_step(moments, labels, images)
    index, flips = trainer.batches.local_indices(0)
    clean, _ = build_dataset(resolved.cfg.data, 3).get(index, flips)
    assert flips.any() and len(seen) == 1
    assert torch.equal(seen[0].cpu(), clean) and seen[0].shape[1:] == (3, 16, 16)
    assert torch.isfinite(terms["repa"]) and 0 < float(terms["repa"]) <= 2


def test_a_converted_official_dit_samples_through_the_vae(tmp_path):
    """The official DiT (a tiny golden fixture, converted) samples latents (its DDPM sampler with the learned
    variance) that decode as DiT's sample.py decodes them: `vae.decode(samples / 0.18215).sample`."""
    from safetensors.torch import save_file
    from test_convert import fixture

    from harness.distributed import DistEnv
    from harness.evaluate import generate, to_uint8
    from harness.objectives import make_objective
    from harness.sampling import sample
    from models.convert import convert_state_dict, load_weights
    from models.families import build_model
    source, model_cfg, official, _, _ = fixture("dit")
    path = tmp_path / "dit.safetensors"
    save_file(convert_state_dict(official, source=source, cfg=model_cfg), path)
    cfg = resolve(["+experiment=dit_xl2_paper", "data.name=shapes", "data.resolution=32", "model.input_size=8",
                   "model.depth=2", "model.hidden_size=32", "model.num_heads=2", "model.num_classes=10",
                   "model.latent_downsample=4", "vae.source=random", "vae.architecture=tiny",
                   f"model.init_from={path}", "eval.sampler.steps=5", "eval.batch_size=4", "eval.num_samples=4",
                   "eval.seed=3"]).cfg
    model = build_model(cfg.model).eval()
    load_weights(model, path)
    objective, vae = make_objective(cfg.objective, cfg.model), load_vae(cfg)
    env = DistEnv(rank=0, world_size=1, local_rank=0)
    images, labels = generate(model, objective, cfg, EvalProtocol.of(cfg), 0, env, torch.device("cpu"), vae)
    generator = torch.Generator().manual_seed(3 * 1_000_003)          # batch 0 of the protocol's seed
    latents = sample(lambda x, t, y: model(x, t, y).prediction, objective, cfg.eval.sampler, labels, (4, 8, 8),
                     generator, 10)
    assert latents.shape == (4, 4, 8, 8) and cfg.model.out_channels == 8    # eps and the learned variance
    with torch.no_grad():
        expected = vae.autoencoder.decode(latents / 0.18215).sample.clamp(-1, 1)
    expected = to_uint8(expected).float().div(127.5).sub(1)           # scored as 8-bit images, as written to a shard
    assert images.shape == (4, 3, 32, 32)
    assert torch.equal(images, expected)


# ---- identity ------------------------------------------------------------------------------------------

def test_the_caches_key_counts_in_the_signature_and_its_place_does_not(tmp_path):
    base = resolve(latent_overrides(tmp_path)).cfg
    moved = resolve(latent_overrides(tmp_path, "elsewhere")).cfg
    assert config_signature(base) == config_signature(moved)
    for key, value in (("data.hflip", "false"), ("vae.scaling_factor", 0.5), ("data.shapes_size", 300)):
        other = resolve(latent_overrides(tmp_path, **{key: value})).cfg
        assert config_signature(other) != config_signature(base), key
    pixel = resolve(["+experiment=tiny_digits"]).cfg
    pixel_vae = resolve(["+experiment=tiny_digits", "vae.source=random", "data.latents=/x"]).cfg
    assert config_signature(pixel) == config_signature(pixel_vae)   # no effect on a pixel model


# ---- refusals before anything runs ----------------------------------------------------------------------

def test_missing_vae_weights_give_one_line_before_any_job_starts(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from commands.cli import main as sweep_main
    from harness.latents import main as latents_main
    from harness.train import main as train_main
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    overrides = latent_overrides(tmp_path, **{"vae.source": "stabilityai/sd-vae-ft-ema"})
    expected = ("vae.source='stabilityai/sd-vae-ft-ema': not a local file or folder, and not in the local hub "
                "cache")
    for main in (train_main, lambda args: latents_main(["prepare", *args])):
        assert main(overrides) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: overrides: {expected}") and "\n" not in err, err
    rows = [{"label": "latent", "set": {k: v for k, v in LATENT.items() if not k.startswith("model.repa")}}]
    rows[0]["set"]["vae.source"] = "stabilityai/sd-vae-ft-ema"
    path = write_sweep(tmp_path, "missing", rows=rows, overrides={"train.steps": 2, "eval.metric": "none"},
                       latents={"shards": 1})
    assert sweep_main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "rows[0].set.vae.source='stabilityai/sd-vae-ft-ema'" in err and expected.split(": ", 1)[1] in err
    assert "\n" not in err and not (tmp_path / "out" / "missing").exists()


@pytest.mark.parametrize("latents, message", [
    ({"shards": 0}, "latents.shards=0: expected a positive integer"),
    ({"shard": 2}, "latents.shard: unknown key (did you mean shards?)"),
    ({"executor": {"partition": "gpu"}}, "latents.executor.partition: a slurm executor field"),
])
def test_a_malformed_latents_stage_is_refused_in_one_line(tmp_path, capsys, latents, message):
    from commands.cli import main as sweep_main
    path = write_sweep(tmp_path, "bad", latents=latents)
    assert sweep_main([str(path), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_cache_without_a_stage_is_refused_before_anything_is_created(tmp_path, capsys):
    from commands.cli import main as sweep_main
    path = write_sweep(tmp_path, "nostage", rows=[{"label": "latent", "set": LATENT}],
                       overrides={"train.steps": 2, "data.latents": str(tmp_path / "none")})
    assert sweep_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.latents=" in err and "is missing: declare the stage" in err and "harness.latents prepare" in err
    assert not (tmp_path / "out" / "nostage").exists()


# ---- the sweep's stage ----------------------------------------------------------------------------------

@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_sweep_makes_the_cache_as_a_stage_its_runs_wait_for_and_reuses_it(sweep_dir, capsys, executor):
    rows = [{"label": "pixels", "set": {"data.name": "shapes", "data.resolution": 16, "data.shapes_size": SHAPES,
                                        "model.input_size": 16, "model.patch_size": 4}},
            {"label": "latents", "set": {k: v for k, v in LATENT.items() if not k.startswith(("train.", "eval."))}}]
    overrides = {"train.steps": 4, "train.global_batch": 16, "model.depth": 2, "model.hidden_size": 32,
                 "model.num_heads": 2, "eval.metric": "none", "checkpoint.every_steps": 2,
                 "data.latents": str(sweep_dir / "latents"), "eval.cache_dir": str(sweep_dir / "metric-cache")}
    path = write_sweep(sweep_dir, f"stage_{executor}", rows=rows, overrides=overrides, latents={"shards": 2},
                       seeds=[0])
    from commands.cli import main as sweep_main
    assert sweep_main([str(path), "--wait"]) == 0
    out = capsys.readouterr().out
    assert "2 shard job(s)" in out and "1 runs wait for them" in out
    assert all(s.state == "done" for s in states(path).values())
    assert (sweep_dir / "latents" / "latents.json").is_file()
    manifest = json.loads((sweep_dir / "out" / f"stage_{executor}" / "manifest.json").read_text())
    stage, = manifest["stages"]
    assert len(stage["jobs"]) == 2 and stage["cache"] == str(sweep_dir / "latents")
    # the latent run started after the stage: a trainer refuses a cache that is not complete.
    # A run submitted later (another seed) reads the cache already made: no stage
    spec = yaml.safe_load(path.read_text())
    spec.update(seeds=[1], rows=rows[1:])
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_main([str(path), "--wait"]) == 0
    out = capsys.readouterr().out
    assert "shard job" not in out and "1 of 1 runs to submit" in out
    manifest = json.loads((sweep_dir / "out" / f"stage_{executor}" / "manifest.json").read_text())
    assert len(manifest["stages"]) == 1
    assert all(s.state == "done" for s in states(path).values())


# ---- the CPU demo ------------------------------------------------------------------------------------------

@pytest.mark.slow          # a couple of minutes on 2 cores: the VAE, the cache and both rows (BENCHMARKS.md)
def test_the_tiny_latent_sweep_compares_a_pixel_and_a_latent_row_end_to_end(tmp_path):
    from PIL import Image

    from analysis.runs import load_sweep_runs
    from analysis.samples import sample_grids
    from analysis.table import build_table
    from commands.cli import main as sweep_main
    from harness.sweep.sweep import Sweep
    sweep = yaml.safe_load((ROOT / "sweeps" / "tiny_latent.yaml").read_text())
    path = tmp_path / "tiny_latent.yaml"
    path.write_text(yaml.safe_dump({**sweep, "output": str(tmp_path / "runs")}, sort_keys=False))
    started = time.time()
    assert sweep_main([str(path), "--wait"]) == 0
    print(f"tiny_latent: {time.time() - started:.0f} s")
    runs = load_sweep_runs(Sweep.open(path))
    frame = runs.frame
    assert (frame["state"] == "done").all() and len(frame) == 2
    accuracy = frame.set_index("label")["metric.class_acc"]
    assert accuracy["DiT/1, latents (toy VAE)"] >= 0.5, accuracy.to_dict()
    table = build_table(runs, "fd").to_markdown()
    assert "DiT/4, pixels" in table and "DiT/1, latents (toy VAE)" in table and "class accuracy" in table
    pixels, latents = sample_grids(runs, tmp_path / "grids", torch.device("cpu"))     # the report's sample grids
    for grid in (pixels, latents):
        assert grid.path is not None and Image.open(grid.path).size == Image.open(pixels.path).size, grid.reason
