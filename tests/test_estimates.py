"""Cost and memory before submission (harness/estimates.py, harness/sweep/costs.py): the memory estimate against
the measured peak memory of real training steps on the CPU, the dry run's GPU-hours and memory columns, the MFU
measured in BENCHMARKS.md, the state a checkpoint holds."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, TINY, tiny_overrides

from harness import estimates
from harness.accelerators import by_key
from harness.configure import resolve
from harness.data import build_dataset, train_size
from harness.parity import case_config
from harness.trainer import train
from models.complexity import count_flops

# One training step's peak memory, measured: a fresh process builds what the trainer builds (model, EMA, the
# optimizer, PixelGen's perceptual losses) and runs three steps of `training_losses`, backward, the optimizer and the
# EMA update. Its peak RSS (the kernel's VmHWM of its own memory: ru_maxrss would start from the RSS of the pytest
# process it was forked from, which Linux carries across exec) less its
# RSS before building them, after a warm-up step at batch 1 has paged in the code those steps run. glibc is told to
# give large blocks back to the system at once (MALLOC_MMAP_THRESHOLD_): otherwise it keeps freed memory in its heap
# and the RSS says more about the allocator than about the tensors the estimate counts.
MEASURE = """
import gc, json, re, sys
import psutil, torch
from harness.configure import resolve
from harness.ema import EMA
from harness.losses import training_losses
from harness.objectives import make_objective
from harness.optim import build_optimizer
from harness.perceptual import PerceptualLoss, active
from harness import parallel
from models.families import build_model

cfg = resolve(json.loads(sys.argv[1])).cfg
objective = make_objective(cfg.objective, cfg.model)
m = cfg.model

def build():
    model = build_model(m)
    if cfg.train.activation_checkpointing:
        parallel.checkpoint_blocks(model)
    perceptual = PerceptualLoss(cfg.perceptual, m) if active(cfg.perceptual) else None
    return model, EMA(model, cfg.ema.decays), build_optimizer(model, cfg.optim, 1e-4, fused=False), perceptual

def step(model, ema, optimizer, perceptual, b):
    x = torch.rand(b, m.in_channels, m.input_size, m.input_size) * 2 - 1
    draws = {"drop": torch.zeros(b, dtype=torch.bool), "t": objective.sample_t(b, None, "cpu"),
             "eps": torch.randn_like(x)}
    training_losses(model, objective, cfg, x, torch.zeros(b, dtype=torch.long), draws, None,
                    perceptual)["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model)

warm = build()
step(*warm, 1)
del warm
gc.collect()
before = psutil.Process().memory_info().rss
parts = build()
for _ in range(3):
    step(*parts, cfg.train.global_batch)
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024
print(json.dumps(peak - before))
"""

CONFIGS = {   # small CPU configurations, each about 0.2-0.6 GB at its peak
    "PixelDiT, float32, batch 64": ["+experiment=tiny_digits", "model.hidden_size=256", "model.depth=4",
                                    "train.global_batch=64"],
    "JiT, bf16 autocast, activation checkpointing, batch 64": [
        "+experiment=tiny_digits", "model=jit_b16", "model.input_size=32", "model.patch_size=4",
        "model.num_classes=10", "model.depth=6", "model.hidden_size=192", "model.num_heads=4",
        "model.in_context_start=2", "train.precision=bf16", "train.activation_checkpointing=true",
        "train.global_batch=64"],
    "PixelDiT, Muon, PixelGen's LPIPS, batch 64": ["+experiment=tiny_digits", "model.hidden_size=256",
                                                   "model.depth=4", "optim.optimizer=muon",
                                                   "perceptual.lpips_weight=1", "perceptual.vgg_weights=random",
                                                   "train.global_batch=64"],
}


def measured_peak(overrides: list[str]) -> int:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(overrides)], cwd=ROOT, env=env, text=True,
                         capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_memory_estimate_is_within_30_percent_of_the_measured_peak_on_the_cpu(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path))           # trace anew, not from a cache
    cfg = resolve(CONFIGS[name]).cfg
    estimate = estimates.memory_estimate(cfg, world_size=1)
    measured = measured_peak(CONFIGS[name])
    assert measured > 150e6                                     # large enough to be more than noise
    assert abs(estimate.total - measured) <= 0.3 * measured, (estimate.parts(), estimate.total, measured)
    assert estimate.activations > estimate.parameters           # both configs are activation-bound
    assert list((tmp_path / "estimates").glob("*.json"))         # the trace is cached on disk


def test_sharding_checkpointing_and_data_parallel_change_the_estimate_as_they_should(tmp_path, monkeypatch):
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path))
    base = CONFIGS["PixelDiT, float32, batch 64"]
    one = estimates.memory_estimate(resolve(base).cfg, 1)
    ddp = estimates.memory_estimate(resolve(base).cfg, 4)                 # batch 16 per rank, DDP's buckets
    fsdp = estimates.memory_estimate(resolve([*base, "train.parallel=fsdp"]).cfg, 4)
    checkpointed = estimates.memory_estimate(resolve([*base, "train.activation_checkpointing=true"]).cfg, 1)
    assert (ddp.micro_batch, fsdp.micro_batch) == (16, 16) and ddp.communication == one.gradients
    assert fsdp.optimizer == one.optimizer // 4 and fsdp.ema == one.ema // 4 and fsdp.sharded
    assert one.activations / 4 < ddp.activations < one.activations / 2    # a quarter of the batch, plus what
                                                                         # does not scale with it (weight gradients)
    assert checkpointed.activations < 0.6 * one.activations
    state = estimates.state_bytes(resolve(base).cfg)
    assert one.parameters + one.gradients + one.optimizer + one.ema == 5 * state.parameters     # 1 + 1 + 2 + 1 EMA


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_checkpoint_holds_the_state_bytes_the_estimate_counts(tmp_path, optimizer):
    settings = {"ema.decays": "[0.99,0.9]", "optim.optimizer": optimizer}
    result = train(resolve(tiny_overrides(tmp_path, steps=2, **settings)))
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=False)

    def tensors(tree) -> int:
        return sum(v.numel() * v.element_size() for v in _leaves(tree) if torch.is_tensor(v) and v.ndim)

    held = tensors(state["model"]) + tensors(state["ema"]) + tensors(state["optimizer"]["state"])
    expected = estimates.state_bytes(resolve(tiny_overrides(tmp_path, **settings)).cfg)
    assert expected.ema == 2 * expected.parameters
    # AdamW: two moments per parameter; Muon: one momentum per block matrix, AdamW's two for the rest
    assert (expected.optimizer == 2 * expected.parameters) == (optimizer == "adamw")
    buffers = tensors(state["model"]) - expected.parameters             # the model's buffers (tables) besides
    assert held - buffers == expected.checkpoint


def test_the_frozen_networks_are_counted_once_each():
    base = ["+experiment=tiny_digits", "model.patch_size=16", "model.repa=true", "model.repa_block=2",
            "repa.weight=0.5", "repa.encoder=vit_small_patch14_dinov2.lvd142m", "repa.encoder_weights=random"]
    lpips = resolve([*base, "repa.weight=0", "perceptual.lpips_weight=1", "perceptual.vgg_weights=random"]).cfg
    assert estimates.state_bytes(lpips).frozen == 4 * 14_716_160      # VGG16's 13 convolutions + LPIPS's 5 heads
    pdino = [*base, "perceptual.dino_weight=1", "perceptual.encoder=vit_small_patch14_dinov2.lvd142m",
             "perceptual.encoder_weights=random"]
    encoder = estimates.encoder_params("vit_small_patch14_dinov2.lvd142m", 2)
    assert estimates.state_bytes(resolve(pdino).cfg).frozen == 4 * encoder                 # P-DINO reads REPA's
    apart = resolve([*pdino, "model.patch_size=8"]).cfg                                     # REPA on another grid
    assert estimates.state_bytes(apart).frozen == 4 * (estimates.encoder_params(
        "vit_small_patch14_dinov2.lvd142m", 4) + encoder)


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


def test_the_training_split_sizes_are_those_of_the_built_datasets():
    from harness.config import DataConfig
    for name in ("digits", "mnist", "shapes"):
        cfg = DataConfig(name=name, resolution=16, shapes_size=300)
        assert train_size(cfg) == len(build_dataset(cfg, channels=3)), name
    assert train_size(DataConfig(name="imagefolder", path="/nowhere")) is None


def test_the_mfu_measured_in_benchmarks_md_is_used_for_its_preset_device_and_mode(tmp_path):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text(f"# Benchmarks\n\n{estimates.MEASURED_BEGIN} by the suite -->\n"
                          "| model | preset | device | mode | batch/GPU | img/s | MFU |\n"
                          "| --- | --- | --- | --- | --- | --- | --- |\n"
                          "| JiT-B/16 | jit_b16 | h100_sxm | eager | 32 | 3000.0 | 35.0% |\n"
                          f"{estimates.MEASURED_END}\n")
    h100, a100 = by_key("h100_sxm"), by_key("a100_80gb")
    cfg = case_config(["+experiment=jit_l16_paper", "model=jit_b16"], "test")
    assert estimates.measured_mfu(cfg, h100, benchmarks=benchmarks) == (
        0.35, "measured for jit_b16 on H100 SXM, eager (BENCHMARKS.md, GPU suite)")
    assert estimates.measured_mfu(cfg, a100, benchmarks=benchmarks) is None                 # another GPU
    compiled = case_config(["+experiment=jit_l16_paper", "model=jit_b16", "train.compile=true"], "test")
    assert estimates.measured_mfu(compiled, h100, benchmarks=benchmarks) is None             # another mode
    other = case_config(["+experiment=jit_l16_paper", "model=jit_b16", "model.depth=6"], "test")
    assert estimates.measured_mfu(other, h100, benchmarks=benchmarks) is None                # another model
    assert estimates.measured_rows(ROOT / "BENCHMARKS.md") == []          # nothing measured on a GPU yet


def _dry_run(sweep, *extra) -> str:
    out = subprocess.run([sys.executable, "run_sweep.py", str(sweep), "--dry-run", *extra], cwd=ROOT, text=True,
                         capture_output=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_dry_run_shows_gpu_hours_and_memory_per_run_and_for_the_sweep(tmp_path):
    rows = [{"label": "small", "set": {"train.steps": 500}},
            {"label": "wide and big", "set": {"train.steps": 500, "data.name": "shapes", "data.resolution": 64,
                                              "data.shapes_size": 16384, "model.input_size": 64,
                                              "model.hidden_size": 256, "train.global_batch": 8192}}]
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "experiment": "tiny_digits", "output": str(tmp_path / "out"),
                                     "overrides": {**TINY, "train.precision": "bf16"}, "rows": rows, "seeds": [0, 1],
                                     "executor": {"kind": "local"}}))
    out = _dry_run(sweep, "--gpu", "a100_40gb")
    lines = out.splitlines()
    runs = [line for line in lines if " seed " in line]
    assert len(runs) == 4 and all("GPU-h" in line and "GiB/GPU" in line for line in runs)
    # GPU-hours: the model's training FLOPs (forward x 3) x images seen / (A100's dense bf16 peak x 40% assumed)
    small = resolve(["+experiment=tiny_digits", *[f"{k}={v}" for k, v in TINY.items()], "train.precision=bf16",
                     "train.steps=500"]).cfg
    big = resolve(["+experiment=tiny_digits", *[f"{k}={v}" for k, v in TINY.items()], "train.precision=bf16",
                   "train.steps=500", "data.name=shapes", "data.resolution=64", "data.shapes_size=16384",
                   "model.input_size=64", "model.hidden_size=256", "train.global_batch=8192"]).cfg
    hours = [3 * count_flops(c.model, training=True) * 500 * c.train.global_batch / (312e12 * 0.4) / 3600
             for c in (small, big)]
    total = 2 * sum(hours)
    assert f"cost on A100 40GB: {total:.3g} GPU-hours for the sweep's 4 runs" in out
    assert "MFU 40% (assumed: none measured for this model on A100 40GB in BENCHMARKS.md)" in " ".join(out.split())
    small_gib, big_gib = (estimates.memory_estimate(c, 1).total / 2 ** 30 for c in (small, big))
    assert [f"{small_gib:7.2f} GiB/GPU " in line for line in runs] == [True, True, False, False]
    assert [f"{big_gib:7.2f} GiB/GPU!" in line for line in runs] == [False, False, True, True]
    assert big_gib > 40 > small_gib
    assert any(line.startswith("warning: wide and big:") and "exceeds the A100 40GB's 40 GB" in line for line in lines)
    assert not any(line.startswith("warning: small") for line in lines)
    text = " ".join(out.split())                               # the summary's lines are wrapped
    assert f"small (batch 16/GPU, 1 rank): {small_gib:.3g} = parameters" in text
    assert f"wide and big (batch 8192/GPU, 1 rank): {big_gib:.3g} = parameters" in text
    assert not (tmp_path / "out").exists()                      # a dry run creates nothing
