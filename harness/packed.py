"""A pre-packed image folder: every image decoded and centre-cropped (ADM's `center_crop_arr`) once, kept as
uint8 pixels, so training reads arrays instead of decoding JPEGs (BENCHMARKS.md, "Data": decoding and
cropping ImageNet JPEGs runs at about 100 images/s per CPU core, an H100 trains PixelDiT-XL at an estimated
400 at 256 px; a packed folder is read at about 800 per core).

    python -m harness.packed prepare /data/imagenet/train /data/imagenet-256 --resolution 256 [--workers 16]

then train with `data.path=/data/imagenet-256` (still `data.name=imagefolder`): a packed folder is
recognised by its `packed.json`, and its batches are exactly those of the image folder it was made from
(same images in the same order, the same crop, the same float conversion; tested), so the run is the same
run (same signature: paths do not count).

A packed folder holds `images.npy` (N, R, R, 3) uint8, read memory-mapped (ImageNet at 256 px: 252 GB;
pages come from the OS cache), `labels.npy` (N,) int64, `files.txt` (the source files, in order) and
`packed.json` (format, resolution, count, classes, source), written last: a folder without it is
incomplete. `prepare` builds it beside the destination and renames it into place when complete.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from toolkit.errors import ConfigError

from .data import FORMAT, META, VERSION, ImageFolderDataset, center_crop_arr, packed_meta

CHUNK = 256                      # images per task of a preparing worker


def _pack_chunk(task: tuple[str, list[str], int, int]) -> int:
    """Decode and crop images[start:start + len(files)] into the (already created) array file."""
    from PIL import Image
    array_path, files, start, resolution = task
    pixels = np.load(array_path, mmap_mode="r+")
    for offset, file in enumerate(files):
        with Image.open(file) as image:
            pixels[start + offset] = center_crop_arr(image.convert("RGB"), resolution)
    pixels.flush()
    return len(files)


def prepare(source: str | Path, dest: str | Path, resolution: int, workers: int = 1) -> Path:
    """Pack the image folder `source` (ImageNet layout, or a flat folder) at `resolution` into `dest`."""
    from tqdm import tqdm
    dest = Path(dest)
    if dest.exists():
        raise ConfigError("dest", str(dest), "exists; remove it or choose another folder")
    if resolution <= 0:
        raise ConfigError("--resolution", resolution, "must be a positive integer")
    if not Path(source).is_dir():
        raise ConfigError("source", str(source), "not a folder of images")
    folder = ImageFolderDataset(str(source), resolution)       # the same classes, files and order as training
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        array_path = work / "images.npy"
        np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8,
                                  shape=(len(folder), resolution, resolution, 3)).flush()
        tasks = [(str(array_path), folder.files[i:i + CHUNK], i, resolution) for i in range(0, len(folder), CHUNK)]
        with ProcessPoolExecutor(max(1, workers)) as pool, tqdm(total=len(folder), unit="img") as bar:
            for done in pool.map(_pack_chunk, tasks):
                bar.update(done)
        np.save(work / "labels.npy", folder.labels.numpy().astype(np.int64))
        root = os.path.abspath(source)
        (work / "files.txt").write_text("".join(os.path.relpath(f, root) + "\n" for f in folder.files))
        (work / META).write_text(json.dumps({"format": FORMAT, "version": VERSION, "resolution": resolution,
                                             "count": len(folder), "classes": folder.classes, "source": root,
                                             "crop": "ADM center_crop_arr"}, indent=1))
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.packed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="decode and crop an image folder once into a packed folder")
    p.add_argument("source", help="the image folder (class folders of images, or images)")
    p.add_argument("dest", help="the packed folder to create")
    p.add_argument("--resolution", type=int, required=True, help="the training resolution (data.resolution)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        dest = prepare(args.source, args.dest, args.resolution, args.workers)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"packed {packed_meta(dest)['count']} images at {args.resolution} px into {dest}; "
          f"train with data.path={dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
