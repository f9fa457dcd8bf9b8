"""The GPU suite: one command, under 8 minutes on one H100 or H200, for the figures the cost estimates and the
tables need. Writes `gpu_suite.json` and `gpu_suite.md` to `--out`; `--record BENCHMARKS.md` replaces the suite's
table there (between its markers), which is where the dry run reads a preset's measured MFU.

    python benchmarks/gpu_suite.py --pixeldit PIXELDIT_CHECKOUT --out runs/gpu_suite --record BENCHMARKS.md
    python benchmarks/gpu_suite.py --cpu --out /tmp/suite        # toy sizes on the CPU (CI runs this)

1. Training steps of PixelDiT-XL/16 (its recipe: REPA with DINOv2-B/14, random weights), JiT-B/16 and DiT-XL/2
   (on 4x32x32 latents, the VAE not included) at 256 px in bf16, eager and compiled: images/s, MFU against the
   GPU's dense bf16 peak (harness/accelerators.py; model FLOPs = forward x 3, harness/estimates.py), peak memory
   beside the dry run's estimate, and the largest batch that fits (eager; doubling, then bisection to 1/8 of the
   batch) beside the estimate's. A step is the trainer's: `training_losses`, backward, clipping, fused AdamW, the
   EMA update; the batch is made on the device (data loading is the trainer's telemetry's business).
2. The official PixelDiT (gcy-hub/PixelDiT at 91d45ab, `pixdit_core/pixeldit_c2i.py`, c2i/configs/pix256_xl.yaml's
   PixDiT, imported from `--pixeldit`; nothing of it is in this repository) against ours with the same layout
   (`pixeldit_xl`, no REPA projector): forward + MSE + backward + AdamW at the same batch, bf16: the step-time ratio.
3. Sampling: PixelDiT-XL/16 with its recipe's sampler (100-step AB2, CFG 3.25 on (0.1, 1)) through the evaluation's
   own `generate`; and the FID Inception (fp32, no TF32) on uint8 256 px images: images/s of each, and the hours
   of the 50K protocol (50,000 samples, 60,000 Inception images) on one GPU.

`--cpu` runs every section at toy sizes (the same code; width 64, 2 blocks, 32 px, float32, a 2-step sampler,
torch.compile's "eager" backend, the largest batch searched against `--memory-gib` with the memory estimate), so
the suite cannot rot; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.accelerators import identify  # noqa: E402
from harness.distributed import DistEnv  # noqa: E402
from harness.ema import EMA  # noqa: E402
from harness.estimates import MEASURED_BEGIN, MEASURED_END, memory_estimate, meta_encoder  # noqa: E402
from harness.estimates import training_flops as flops_of  # noqa: E402
from harness.evaluate import generate  # noqa: E402
from harness.losses import training_losses  # noqa: E402
from harness.objectives import make_objective  # noqa: E402
from harness.optim import build_optimizer  # noqa: E402
from harness.parity import case_config  # noqa: E402
from harness.protocol import EvalProtocol  # noqa: E402
from harness.telemetry import Efficiency, device_name  # noqa: E402
from models.families import build_model, miniature  # noqa: E402
from models.presets import model_config  # noqa: E402

MODELS = (("PixelDiT-XL/16", "pixeldit_xl_paper", "pixeldit_xl"),   # (name, recipe, preset)
          ("JiT-B/16", "jit_l16_paper", "jit_b16"),
          ("DiT-XL/2", "dit_xl2_paper", "dit_xl2"))
OFFICIAL_PIXELDIT_XL = dict(in_channels=3, num_groups=16, hidden_size=1152, pixel_hidden_size=16, patch_depth=26,
                            pixel_depth=4, patch_size=16, num_classes=1000)     # c2i/configs/pix256_xl.yaml
TOY = dict(hidden_size=64, depth=2, pixel_depth=1)
TOY_ENCODER = "vit_small_patch14_dinov2.lvd142m"     # REPA's encoder at toy size (random weights either way)
GIB = 2 ** 30


@dataclass
class Settings:
    device: torch.device
    cpu: bool
    batch: int
    steps: int                  # timed steps
    warmup: int
    compile_backend: str
    capacity_gib: float         # what the largest batch must fit in
    sample_batch: int
    inception_batch: int


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- 1. training steps ----------------------------------------------------------------------------

def recipe(experiment: str, preset: str, batch: int, cpu: bool):
    """The paper recipe with this preset at `batch` images per GPU, bf16, REPA's encoder with random weights (toy
    sizes in float32 on the CPU, whose bf16 is slow). No data or VAE is needed: the batch is made on the device."""
    overrides = [f"+experiment={experiment}", f"model={preset}", "repa.encoder_weights=random",
                 f"train.precision={'fp32' if cpu else 'bf16'}", f"train.global_batch={batch}", "train.grad_accum=1"]
    if cpu:
        overrides.append(f"repa.encoder={TOY_ENCODER}")
    cfg = case_config(overrides, "gpu_suite")
    if cpu:
        cfg = dataclasses.replace(cfg, model=miniature(cfg.model, **TOY))
    if cfg.model.repa and cfg.repa.weight > 0:           # the projector's width: the encoder's
        cfg = dataclasses.replace(cfg, model=cfg.model.replace(repa_dim=encoder_dim(cfg)))
    return cfg


def encoder_dim(cfg) -> int:
    return meta_encoder(cfg.repa.encoder, cfg.model.grid_size).dim


class TrainingStep:
    """What `harness.trainer.Trainer.train_step` does to a batch: the loss terms, backward, clipping, the optimizer
    (fused AdamW on a GPU) and the EMA update."""

    def __init__(self, cfg, device: torch.device, compile_backend: str | None):
        from harness.repa import RepaEncoder
        self.cfg, self.device = cfg, device
        torch.manual_seed(0)
        self.model = build_model(cfg.model).to(device).train()
        self.net = torch.compile(self.model, backend=compile_backend) if compile_backend else self.model
        self.objective = make_objective(cfg.objective, cfg.model)
        self.encoder = (RepaEncoder(cfg.repa.encoder, "random", cfg.model.grid_size, device=device)
                        if cfg.model.repa and cfg.repa.weight > 0 else None)
        self.ema = EMA(self.model, cfg.ema.decays)
        self.optimizer = build_optimizer(self.model, cfg.optim, 1e-4, fused=device.type == "cuda")

    def batch(self, size: int):
        m, device = self.cfg.model, self.device
        x = torch.rand(size, m.in_channels, m.input_size, m.input_size, device=device) * 2 - 1
        y = torch.randint(0, max(m.num_classes, 1), (size,), device=device)
        draws = {"drop": torch.rand(size, device=device) < self.cfg.train.label_dropout,
                 "t": self.objective.sample_t(size, None, device), "eps": self.objective.sample_noise(x, None)}
        if m.hint_fraction > 0:
            draws["mask"] = torch.rand(size, 1, m.input_size, m.input_size, device=device) < m.hint_fraction
        return x, y, draws

    def __call__(self, x, y, draws) -> None:
        terms = training_losses(self.net, self.objective, self.cfg, x, y, draws, self.encoder)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)


def seconds_per_step(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step after `warmup` steps, seconds of the warm-up: compilation included)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps, warm


def largest_batch(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest batch `fits` accepts: doubling from `start` until it fails (or passes `limit`), then bisection
    to 1/8 of the last batch that fitted; 0 when `start` does not fit."""
    low, high = 0, start
    while high <= limit and fits(high):
        low, high = high, 2 * high
    while high - low > max(1, low // 8):
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def gpu_fits(step: TrainingStep) -> Callable[[int], bool]:
    """One eager training step at that batch runs without running out of GPU memory."""
    def attempt(size: int) -> None:
        step(*step.batch(size))
        sync(step.device)

    def fits(size: int) -> bool:
        try:
            attempt(size)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            step.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
    return fits


def estimated_memory(cfg) -> Callable[[int], float]:
    """The dry run's memory estimate (GiB) at any batch, from two traces: state plus activations linear in the
    batch."""
    at = {b: memory_estimate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, global_batch=b))).total
          for b in (cfg.train.global_batch, 2 * cfg.train.global_batch)}
    b = cfg.train.global_batch
    per_image = (at[2 * b] - at[b]) / b
    return lambda size: (at[b] + (size - b) * per_image) / GIB


def train_section(name: str, experiment: str, preset: str, s: Settings) -> list[dict]:
    cfg = recipe(experiment, preset, s.batch, s.cpu)
    efficiency = Efficiency(flops_of(cfg), device_name(s.device), cfg.train.precision)
    estimate = estimated_memory(cfg)
    rows = []
    for mode in ("eager", "compiled"):
        started = time.perf_counter()
        step = TrainingStep(cfg, s.device, s.compile_backend if mode == "compiled" else None)
        x, y, draws = step.batch(s.batch)
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, warm = seconds_per_step(lambda: step(x, y, draws), s.device, s.warmup, s.steps)
        images_per_s = s.batch / seconds
        measured = torch.cuda.max_memory_allocated() / GIB if s.device.type == "cuda" else None
        row = {"model": name, "preset": preset, "recipe": experiment, "mode": mode, "batch": s.batch,
               "seconds_per_step": seconds, "warmup_s": warm, "images_per_s": images_per_s,
               **efficiency.metrics(images_per_s, 1), "peak_memory_gib": measured,
               "estimated_memory_gib": estimate(s.batch), "params": sum(p.numel() for p in step.model.parameters()),
               "flops_model_per_image": efficiency.flops.model_per_image,
               "flops_repa_encoder_per_image": efficiency.flops.encoder_per_image}
        if mode == "eager":
            del x, y, draws
            fits = gpu_fits(step) if s.device.type == "cuda" else (lambda size: estimate(size) <= s.capacity_gib)
            row["largest_batch"] = largest_batch(fits, s.batch, 4096)
            row["largest_batch_estimate"] = largest_batch(lambda size: estimate(size) <= s.capacity_gib, s.batch, 4096)
        row["section_s"] = time.perf_counter() - started
        rows.append(row)
        print(f"  {name:15s} {mode:8s} batch {s.batch:4d}  {images_per_s:9.1f} img/s  "
              + (f"MFU {100 * row['mfu']:5.1f}%  " if "mfu" in row else "")
              + (f"peak {measured:6.2f} GiB  " if measured is not None else "")
              + f"estimate {row['estimated_memory_gib']:6.2f} GiB  ({row['section_s']:.0f} s)", flush=True)
        step = None                                    # its memory back before the next mode
        gc.collect()
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---- 2. the official PixelDiT -----------------------------------------------------------------------

def model_step(model, x, t, y, optimizer, device) -> None:
    """Forward + MSE + backward + AdamW of a bare network (ours returns a ModelOutput, the official a tensor)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(x, t, y)
    prediction = out.prediction if hasattr(out, "prediction") else out
    prediction.float().square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def official_section(path: Path, s: Settings) -> dict:
    from bench_official import fixtures_module  # benchmarks/: the fixtures' loader of official files
    module = fixtures_module().load_module(path.resolve(), "pixdit_core/pixeldit_c2i.py", "official_pixeldit")
    kwargs = (dict(OFFICIAL_PIXELDIT_XL, hidden_size=TOY["hidden_size"], num_groups=4, patch_depth=TOY["depth"],
                   pixel_depth=TOY["pixel_depth"], patch_size=8, num_classes=10) if s.cpu else OFFICIAL_PIXELDIT_XL)
    ours_cfg = model_config("pixeldit_xl", ["repa=false"])
    if s.cpu:
        ours_cfg = miniature(ours_cfg, **TOY)
    torch.manual_seed(0)
    models = {"ours": build_model(ours_cfg).to(s.device).train(), "official": module.PixDiT(**kwargs).to(s.device)}
    size = ours_cfg.input_size
    x = torch.randn(s.batch, 3, size, size, device=s.device)
    t, y = torch.rand(s.batch, device=s.device), torch.randint(0, ours_cfg.num_classes, (s.batch,), device=s.device)
    result = {"batch": s.batch, "official_code": {"repository": "gcy-hub/PixelDiT", "kwargs": kwargs,
                                                  "commit": "91d45ab0b22b13b95a77442969cbdb737e72caa2"}}
    for which, model in models.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=s.device.type == "cuda")
        seconds, _ = seconds_per_step(lambda: model_step(model, x, t, y, optimizer, s.device), s.device, s.warmup,
                                      s.steps)
        result[which] = {"seconds_per_step": seconds, "params": sum(p.numel() for p in model.parameters())}
    result["ours_over_official"] = result["ours"]["seconds_per_step"] / result["official"]["seconds_per_step"]
    result["same_params"] = result["ours"]["params"] == result["official"]["params"]
    print(f"  PixelDiT-XL/16 step, ours / official: {result['ours_over_official']:.3f} "
          f"({1e3 * result['ours']['seconds_per_step']:.1f} / {1e3 * result['official']['seconds_per_step']:.1f} ms)")
    return result


# ---- 3. sampling and Inception ----------------------------------------------------------------------

def sampling_section(s: Settings) -> dict:
    cfg = recipe("pixeldit_xl_paper", "pixeldit_xl", s.batch, s.cpu)
    cfg = dataclasses.replace(cfg, model=cfg.model.replace(repa=False), eval=dataclasses.replace(
        cfg.eval, batch_size=s.sample_batch, sampler=dataclasses.replace(
            cfg.eval.sampler, steps=2 if s.cpu else cfg.eval.sampler.steps)))
    model = build_model(cfg.model).to(s.device).eval()
    objective = make_objective(cfg.objective, cfg.model)
    m, b = cfg.model, s.sample_batch
    with torch.no_grad(), torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.device.type == "cuda"):
        model(torch.randn(b, m.in_channels, m.input_size, m.input_size, device=s.device),      # warm-up
              torch.rand(b, device=s.device), torch.zeros(b, dtype=torch.long, device=s.device))
    sync(s.device)
    start = time.perf_counter()
    protocol = EvalProtocol.of(cfg).with_changes({"eval.num_samples": s.sample_batch, "eval.seed": 0})
    generate(model, objective, cfg, protocol, 0, DistEnv(), s.device)
    sync(s.device)
    seconds = time.perf_counter() - start
    sampler = cfg.eval.sampler
    rate = s.sample_batch / seconds
    result = {"batch": s.sample_batch, "sampler": dataclasses.asdict(sampler), "samples_per_s": rate,
              "hours_50k_one_gpu": 50_000 / rate / 3600}
    print(f"  sampling PixelDiT-XL/16 ({sampler.kind}, {sampler.steps} steps, CFG {sampler.cfg_scale}): "
          f"{result['samples_per_s']:.2f} samples/s, 50K on one GPU: {result['hours_50k_one_gpu']:.2f} h")
    return result


def inception_section(s: Settings) -> dict:
    from harness.inception import FIDInceptionV3, load_fid_inception, resolve_inception
    try:
        net, weights = load_fid_inception(resolve_inception("auto")), "auto"
    except Exception as err:                          # throughput does not depend on the weights
        net, weights = FIDInceptionV3(), f"random ({str(err).splitlines()[0][:80]})"
    net = net.to(s.device)
    images = torch.randint(0, 256, (s.inception_batch, 3, 256, 256), dtype=torch.uint8, device=s.device)
    with torch.inference_mode(), torch.autocast(s.device.type, enabled=False), \
            torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        seconds, _ = seconds_per_step(lambda: net(images), s.device, 0 if s.cpu else 1, max(1, s.steps // 2))
    result = {"batch": s.inception_batch, "weights": weights, "images_per_s": s.inception_batch / seconds,
              "hours_60k_one_gpu": 60_000 / (s.inception_batch / seconds) / 3600}
    print(f"  Inception (fp32, no TF32): {result['images_per_s']:.1f} img/s, 60K on one GPU: "
          f"{60 * result['hours_60k_one_gpu']:.1f} min")
    return result


# ---- the report -------------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    """The suite's table (what BENCHMARKS.md records between its markers and the dry run reads) and the rest."""
    device = result["device"]
    lines = [f"{MEASURED_BEGIN} by `python benchmarks/gpu_suite.py` on {device['name']}, torch {result['torch']}, "
             f"{result['date']}; the dry run reads the MFU of a preset's rows (device, mode) -->",
             "| model | preset | device | mode | batch/GPU | img/s | MFU | model TFLOP/s | peak GiB | estimate GiB "
             "| largest batch | largest batch (estimate) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["training"]:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "–"
        peak = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "–"
        lines.append(f"| {r['model']} | {r['preset']} | {device['key']} | {r['mode']} | {r['batch']} | "
                     f"{r['images_per_s']:.1f} | {mfu} | {r['model_tflops']:.1f} | {peak} | "
                     f"{r['estimated_memory_gib']:.2f} | {r.get('largest_batch', '')} | "
                     f"{r.get('largest_batch_estimate', '')} |")
    lines.append(MEASURED_END)
    official, sampling, inception = result.get("official"), result["sampling"], result["inception"]
    lines.append("")
    lines.append(f"PixelDiT-XL/16 step (forward + MSE + backward + AdamW, bf16, batch {result['settings']['batch']}), "
                 + (f"ours / official: {official['ours_over_official']:.3f} "
                    f"({1e3 * official['ours']['seconds_per_step']:.1f} / "
                    f"{1e3 * official['official']['seconds_per_step']:.1f} ms)" if official else
                    "the official code: not measured (no --pixeldit checkout)."))
    lines.append(f"Sampling, PixelDiT-XL/16 with its recipe's sampler at batch {sampling['batch']}: "
                 f"{sampling['samples_per_s']:.2f} samples/s; 50K samples on one GPU: "
                 f"{sampling['hours_50k_one_gpu']:.2f} h. Inception (fp32, weights {inception['weights']}): "
                 f"{inception['images_per_s']:.1f} img/s; 60K images: {60 * inception['hours_60k_one_gpu']:.1f} min.")
    lines.append(f"Wall time: {result['wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def record(path: Path, table: str) -> None:
    """Replace the suite's block in `path` (from its begin marker to its end marker) with `table`'s."""
    text = path.read_text()
    block = table.split(MEASURED_END)[0] + MEASURED_END
    if MEASURED_BEGIN not in text:
        raise SystemExit(f"{path}: no '{MEASURED_BEGIN}' block to replace")
    before, rest = text.split(MEASURED_BEGIN, 1)
    path.write_text(before + block + rest.split(MEASURED_END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="toy sizes on the CPU (CI)")
    parser.add_argument("--pixeldit", type=Path, help="a checkout of gcy-hub/PixelDiT at 91d45ab (section 2)")
    parser.add_argument("--out", type=Path, default=Path("gpu_suite"), help="folder of gpu_suite.json and .md")
    parser.add_argument("--record", type=Path, help="replace the suite's table in this file (BENCHMARKS.md)")
    parser.add_argument("--batch", type=int, help="training batch per GPU (default 32; --cpu 4)")
    parser.add_argument("--steps", type=int, help="timed steps (default 10; --cpu 2)")
    parser.add_argument("--memory-gib", type=float, default=1.0, help="--cpu: the memory the largest batch fits in")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or --cpu for the toy sizes")
    device = torch.device("cpu" if args.cpu else "cuda")
    s = Settings(device=device, cpu=args.cpu, batch=args.batch or (4 if args.cpu else 32),
                 steps=args.steps or (2 if args.cpu else 10), warmup=1 if args.cpu else 3,
                 compile_backend="eager" if args.cpu else "inductor",
                 capacity_gib=args.memory_gib if args.cpu else torch.cuda.get_device_properties(0).total_memory / GIB,
                 sample_batch=2 if args.cpu else 64, inception_batch=1 if args.cpu else 250)
    name = device_name(device)
    known = identify(name) if device.type == "cuda" else None
    started = time.perf_counter()
    print(f"GPU suite on {name} ({'toy sizes' if s.cpu else '256 px, bf16'}), torch {torch.__version__}", flush=True)
    result = {"device": {"name": name, "key": known.key if known else name}, "torch": torch.__version__,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
              "settings": {k: str(v) if isinstance(v, torch.device) else v for k, v in dataclasses.asdict(s).items()},
              "training": []}
    for model_name, experiment, preset in MODELS:
        result["training"] += train_section(model_name, experiment, preset, s)
    result["official"] = official_section(args.pixeldit, s) if args.pixeldit else None
    result["sampling"] = sampling_section(s)
    result["inception"] = inception_section(s)
    result["wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_suite.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "gpu_suite.md").write_text(table)
    if args.record:
        record(args.record, table)
    print(table)
    print(f"wrote {args.out / 'gpu_suite.json'} and {args.out / 'gpu_suite.md'} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
