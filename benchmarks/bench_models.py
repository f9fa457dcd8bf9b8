"""Forward+backward throughput of the model zoo.

CPU (any machine): every preset at its own depth but reduced width and resolution
(`models.presets.miniature`: width 128, 32 px, patch 8), images/s.
    python benchmarks/bench_models.py --device cpu
GPU: full-size presets in bf16 autocast, images/s, peak memory and model FLOPs utilisation (MFU)
against the GPU's dense bf16 peak; add --compile for torch.compile.
    python benchmarks/bench_models.py --device cuda --presets pixeldit_xl --batch 32 [--compile]

MFU counts a training step as 3x the forward FLOPs (forward + backward), REPA projector excluded.
"""
from __future__ import annotations

import argparse
import time

import torch

from models.complexity import count_flops
from models.presets import PRESETS, miniature, model_config
from models.transformer import build_model

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def gpu_peak_tflops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def time_steps(model, cfg, batch, device, steps, warmup, bf16):
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    t = torch.rand(batch, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, t, y).prediction.float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", nargs="*", default=None)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 32 on GPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--width", type=int, default=128, help="CPU: hidden size of the reduced presets")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model overrides for every preset")
    args = parser.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    batch = args.batch or (8 if cpu else 32)
    steps = args.steps or (5 if cpu else 20)
    names = args.presets or ([n for n in PRESETS if not n.startswith("table4_")] if cpu else ["pixeldit_xl"])
    if cpu:
        torch.set_num_threads(torch.get_num_threads())
    print(f"device={device} {'' if cpu else torch.cuda.get_device_name()} batch={batch} "
          f"bf16={not cpu} compile={args.compile} torch={torch.__version__}")
    header = f"{'preset':24s} {'res':>5s} {'params(M)':>10s} {'GFLOPs/img':>11s} {'ms/step':>9s} {'img/s':>8s}"
    print(header + ("" if cpu else f" {'peak GiB':>9s} {'MFU':>6s}"))
    for name in names:
        cfg = model_config(name, args.set)
        if cpu:
            cfg = miniature(cfg, hidden_size=args.width, depth=cfg.depth, pixel_depth=cfg.pixel_depth)
        torch.manual_seed(0)
        model = build_model(cfg, device).train()
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops(cfg)
        runner = torch.compile(model) if args.compile else model
        seconds = time_steps(runner, cfg, batch, device, steps, warmup=2 if cpu else 5, bf16=not cpu)
        line = (f"{name:24s} {cfg.image_size:5d} {params / 1e6:10.2f} {flops / 1e9:11.2f} "
                f"{seconds * 1e3:9.1f} {batch / seconds:8.1f}")
        if not cpu:
            peak = gpu_peak_tflops()
            mfu = 3 * flops * batch / seconds / (peak * 1e12) if peak else float("nan")
            line += f" {torch.cuda.max_memory_allocated() / 2**30:9.2f} {100 * mfu:5.1f}%"
        print(line, flush=True)
        del model, runner


if __name__ == "__main__":
    main()
