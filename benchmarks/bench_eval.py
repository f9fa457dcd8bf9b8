"""Throughput of the two halves of the ADM evaluation: sampling and Inception feature extraction.

    python benchmarks/bench_eval.py --device cpu
    python benchmarks/bench_eval.py --device cuda --preset pixeldit_xl --batch 64

Inception: uint8 256x256 images -> TF resize to 299 -> pool_3, mixed_6/conv and logits (fp32, no TF32),
images/s. Sampling: the sampler's network evaluations of `--preset` at its resolution (CFG doubles the
batch inside the guidance interval), images/s of one evaluation, and the implied images/s of a whole
sample (steps x evaluations per step). With the model's forward FLOPs this gives the time of the 50K
protocol on other hardware: see BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import time

import torch

from harness.inception import load_fid_inception, resolve_inception
from models.complexity import measure
from models.presets import model_config
from models.transformer import build_model


def timed(fn, repeats: int) -> float:
    fn()                                          # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="pixeldit_xl")
    parser.add_argument("--batch", type=int, default=8, help="Inception batch")
    parser.add_argument("--sample-batch", type=int, default=1, help="sampling batch (network evaluations)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")

    net = load_fid_inception(resolve_inception("auto")).to(device)
    images = torch.randint(0, 256, (args.batch, 3, 256, 256), dtype=torch.uint8, device=device)
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        seconds = timed(lambda: net(images), args.repeats)
    print(f"inception  batch {args.batch:4d}  {seconds * 1e3:9.1f} ms  {args.batch / seconds:8.2f} img/s")

    cfg = model_config(args.preset)
    gflops = measure(cfg).gflops
    model = build_model(cfg).to(device).eval()
    b = args.sample_batch
    x = torch.randn(b, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    t, y = torch.rand(b, device=device), torch.randint(0, max(cfg.num_classes, 1), (b,), device=device)
    bf16 = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        seconds = timed(lambda: model(x, t, y), args.repeats)
    print(f"{args.preset:10s} batch {b:4d}  {seconds * 1e3:9.1f} ms per evaluation  {b / seconds:8.3f} img-evals/s  "
          f"{gflops:.1f} GFLOPs/img  {gflops * b / seconds / 1e3:.3f} TFLOP/s achieved")


if __name__ == "__main__":
    main()
