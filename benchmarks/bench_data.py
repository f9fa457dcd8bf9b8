"""Data throughput per CPU core: decoding + ADM centre crop of ImageNet-like JPEGs (the `imagefolder` path),
against reading the same images from a packed folder (`python -m harness.packed prepare`), and how many
cores a GPU training PixelDiT-XL would need fed by each.

    python benchmarks/bench_data.py [--images 256] [--resolutions 256 512] [--mfu 0.4]

The JPEGs are real photographs (scikit-learn's two sample images, 640x427) cut into 500x375 windows, the
typical ImageNet training image, saved at quality 90. One process, one thread: figures are per core.
The GPU rate is an estimate, not a measurement: training costs 3x the forward FLOPs per image (forward +
backward, counted on the meta device by models.complexity), at `--mfu` of an H100's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.data import StepBatches, load_image, load_packed
from harness.packed import prepare
from models.complexity import measure, with_resolution
from models.presets import model_config

H100_BF16_PEAK = 989e12          # dense bf16 FLOP/s (NVIDIA's H100 SXM figure)


def photo_folder(root: Path, count: int) -> Path:
    """`count` 500x375 JPEGs (quality 90) cut from real photographs, in 4 class folders."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - 375 + 1), rng.integers(0, photo.shape[1] - 500 + 1)
        window = photo[y:y + 375, x:x + 500]
        (root / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(window[:, ::-1] if i % 2 else window).save(root / f"c{i % 4}" / f"{i:05d}.JPEG", quality=90)
    return root


def rate(fn, count: int) -> float:
    fn(min(count, 8))                             # warm-up (imports, caches)
    start = time.perf_counter()
    fn(count)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--mfu", type=float, default=0.4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "jpeg", args.images)
        files = sorted(str(p) for p in folder.rglob("*.JPEG"))
        print(f"torch={torch.__version__} threads=1 images={len(files)} (500x375 JPEG q90 from real photos)")
        print(f"{'res':>5} {'decode+crop img/s/core':>23} {'packed img/s/core':>18} {'GFLOPs/img':>11} "
              f"{'GPU img/s (est.)':>17} {'cores/GPU jpeg':>15} {'cores/GPU packed':>17}")
        for res in args.resolutions:
            decode = rate(lambda n: [load_image(f, res) for f in files[:n]], len(files))
            packed = load_packed(prepare(folder, Path(tmp) / f"packed{res}", res, workers=1), res)
            batches = StepBatches(packed, global_batch=32, seed=0)
            steps = len(files) // 32
            read = rate(lambda n: [batches.batch(s) for s in range(max(1, n // 32))], steps * 32)
            gflops = measure(with_resolution(model_config("pixeldit_xl"), res)).gflops
            gpu = args.mfu * H100_BF16_PEAK / (3 * gflops * 1e9)
            print(f"{res:>5} {decode:>23.1f} {read:>18.1f} {gflops:>11.1f} {gpu:>17.1f} {gpu / decode:>15.2f} "
                  f"{gpu / read:>17.3f}")


if __name__ == "__main__":
    main()
