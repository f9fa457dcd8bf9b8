"""The latent cache: a dataset encoded once by a latent run's VAE, so that no VAE runs in the training loop.

    python -m harness.latents prepare +experiment=dit_xl2_paper data.path=/data/imagenet-256 \\
        data.latents=/data/latents/in256-sd-ema [--shards 8 [--shard I]] [--device cuda]
    python -m harness.latents info /data/latents/in256-sd-ema

`prepare` takes the training run's own command line (the same data, VAE and model: the same key) and encodes
every training image once, as the official pre-extraction scripts do [fast-DiT extract_features.py; REPA
preprocessing/dataset_tools.py `encode`], keeping what training needs to sample the posterior as the official
training codes do [DiT train.py `latent_dist.sample()`; REPA train.py `sample_posterior`]: the posterior's mean
and std (unscaled), of the image and, when the run flips (`data.hflip`, DiT), of its mirror image [DiT train.py:
`RandomHorizontalFlip` before the encoder]. Fast-DiT measured DiT-XL/2 at 0.56 -> 0.84 it/s on an A100 by
reading latents instead of encoding in the loop.

A cache is a folder like a packed one (harness/packed.py): `moments.npy` (N, F, 2C, h, w) float32 read
memory-mapped (F = 2 with flips: [image, mirror]; channels [mean | std]), `labels.npy`, and `latents.json`
(format, key, what made it, per-channel statistics of the posterior means), written last: the folder is
complete when it is there. It is built beside its place as `.<name>.partial` and renamed into place.

Sharding and resuming: the images are cut into chunks of CHUNK, encoded in batches of BATCH (fixed, so the
cache is the same bytes however it is sharded); shard i of K takes a contiguous run of chunks (a SLURM array
task, a local process or a sweep's stage job), and each finished chunk leaves a marker. A killed shard resumes
at its first chunk without one; the shard that finds every chunk done writes `latents.json` and renames the
folder into place.

Identity: the key is a hash of the data as configured (name, resolution, path and crop of an image folder,
flips), the VAE (the sha256 of its files, or its architecture and recipe) and the format: it enters the run's
signature (the cache's place does not), and a cache of another key is refused naming both. The VAE weights
that encoded it are recorded (sha256 of the state dict) and must be those that decode the run's samples.

REPA on latents aligns to encoder features of the clean images, computed in the training step from the images
beside the latents, as the official code does (its dataset returns the raw image with the latent, and DINOv2
runs on the image in `train.py`): the cache holds latents only, the run reads the images from `data.path` (a
packed folder reads fast) at the same indices and flips.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from toolkit.errors import ConfigError
from toolkit.files import atomic_write_text

from .vae import CACHE_FORMAT as FORMAT
from .vae import CACHE_VERSION as VERSION
from .vae import latent_key, latent_key_parts

if TYPE_CHECKING:

    from .config import TrainConfig

META = "latents.json"
PARTIAL_META = "partial.json"
CHUNK = 256                # images per unit of work and resume
BATCH = 32                 # images per encoder forward: fixed, so the bytes do not depend on the sharding
DONE = "chunks"            # the partial folder's markers, one per finished chunk


# ---------------------------------------------------------------------------------------------
# what a run needs: its key and its folder
# ---------------------------------------------------------------------------------------------
def cache_folder(cfg: TrainConfig, key: str | None = None) -> Path:
    if cfg.data.latents:
        return Path(cfg.data.latents).expanduser().resolve()
    from .metrics import run_cache_dir
    return run_cache_dir(cfg) / "latents" / f"{cfg.data.name}-r{cfg.data.resolution}-{key or latent_key(cfg)}"


def partial_folder(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.partial"


@dataclass
class CacheState:
    folder: Path
    key: str
    state: str                 # ready | partial | missing
    done: int = 0              # chunks finished (partial)
    chunks: int = 0

    def describe(self) -> str:
        if self.state == "partial":
            return f"partial ({self.done} of {self.chunks} chunks)"
        return self.state


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError("data.latents", str(path.parent), f"unreadable {path.name} ({err})") from None


def _check_key(found: dict, key: str, parts: dict, where: Path) -> None:
    if found.get("format") != FORMAT or found.get("version") != VERSION:
        raise ConfigError("data.latents", str(where), f"not a {FORMAT} v{VERSION} cache")
    if found.get("key") != key:
        theirs = found.get("parts", {})
        differ = [k for k in parts if theirs.get(k) != parts[k]]
        raise ConfigError("data.latents", str(where), f"holds latents of key {found.get('key')} and this run needs "
                          f"key {key} (they differ in {', '.join(differ) or 'their parts'}: "
                          + "; ".join(f"{k} {theirs.get(k)} there, {parts[k]} here" for k in differ)
                          + "); prepare the run's cache in another folder (data.latents)")


def cache_state(cfg: TrainConfig) -> CacheState:
    """Where the run's cache stands; a cache (or partial one) of another key is refused naming both."""
    key, parts = latent_key(cfg), latent_key_parts(cfg)
    folder = cache_folder(cfg, key)
    if (folder / META).is_file():
        _check_key(_read_json(folder / META), key, parts, folder)
        return CacheState(folder, key, "ready")
    if folder.exists():
        raise ConfigError("data.latents", str(folder), f"exists and is not a latent cache (no {META})")
    partial = partial_folder(folder)
    if (partial / PARTIAL_META).is_file():
        meta = _read_json(partial / PARTIAL_META)
        _check_key(meta, key, parts, partial)
        done = len(list((partial / DONE).glob("*.json")))
        return CacheState(folder, key, "partial", done, meta["chunks"])
    return CacheState(folder, key, "missing")


def prepare_command(overrides: list[str]) -> str:
    return "python -m harness.latents prepare " + " ".join(overrides)


# ---------------------------------------------------------------------------------------------
# making it
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock beside the cache folder: creating it, and finishing it, happen once."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create(cfg: TrainConfig, partial: Path, images, vae, key: str, flips: int, digest: str) -> dict:
    """The partial folder with its (sparse) arrays and description."""
    import torch
    resolution = cfg.data.resolution
    probe = vae.moments(torch.zeros(1, 3, resolution, resolution))
    shape = (len(images), flips, *probe.shape[1:])
    work = partial.parent / f"{partial.name}.new"
    shutil.rmtree(work, ignore_errors=True)
    (work / DONE).mkdir(parents=True)
    np.lib.format.open_memmap(work / "moments.npy", mode="w+", dtype=np.float32, shape=shape).flush()
    np.save(work / "labels.npy", images.labels.numpy().astype(np.int64))
    meta = {"format": FORMAT, "version": VERSION, "key": key, "parts": latent_key_parts(cfg), "count": len(images),
            "shape": list(shape), "flips": flips, "chunk": CHUNK, "batch": BATCH,
            "chunks": -(-len(images) // CHUNK), "vae_weights_sha256": digest,
            "classes": getattr(images, "classes", None) or [str(c) for c in range(images.num_classes)]}
    (work / PARTIAL_META).write_text(json.dumps(meta, indent=1))
    os.replace(work, partial)
    return meta


def _encode_chunk(chunk: int, meta: dict, images, vae, moments: np.ndarray, partial: Path) -> None:
    import torch
    start, end = chunk * CHUNK, min((chunk + 1) * CHUNK, meta["count"])
    index = torch.arange(start, end)
    sums = np.zeros((2, meta["shape"][2] // 2))
    for flip in range(meta["flips"]):
        x, _ = images.get(index, torch.full((len(index),), bool(flip)))
        out = torch.cat([vae.moments(part) for part in x.split(BATCH)]).cpu().numpy()
        moments[start:end, flip] = out
        mean = out[:, :out.shape[1] // 2].astype(np.float64)
        sums += np.stack([mean.sum(axis=(0, 2, 3)), (mean ** 2).sum(axis=(0, 2, 3))])
    moments.flush()
    count = (end - start) * meta["flips"] * int(np.prod(meta["shape"][3:]))
    atomic_write_text(partial / DONE / f"{chunk:07d}.json", json.dumps({"sum": sums[0].tolist(),
                                                                        "sumsq": sums[1].tolist(), "n": count}))


def _finish(folder: Path, partial: Path, meta: dict) -> bool:
    """Write the description and move the folder into place when every chunk is done; True when it is."""
    markers = sorted((partial / DONE).glob("*.json"))
    if len(markers) < meta["chunks"]:
        return False
    stats = [json.loads(m.read_text()) for m in markers]
    n = sum(s["n"] for s in stats)
    mean = np.sum([s["sum"] for s in stats], axis=0) / n
    std = np.sqrt(np.maximum(np.sum([s["sumsq"] for s in stats], axis=0) / n - mean ** 2, 0))
    final = {k: v for k, v in meta.items() if k != "chunks"}
    final.update(posterior_mean_mean=mean.tolist(), posterior_mean_std=std.tolist(), finished=time.time())
    shutil.rmtree(partial / DONE)
    os.remove(partial / PARTIAL_META)
    (partial / META).write_text(json.dumps(final, indent=1))
    os.replace(partial, folder)
    return True


def prepare_shard(cfg: TrainConfig, shard: int = 0, shards: int = 1, device=None, echo=print) -> CacheState:
    """Encode this shard's chunks of the run's cache (those not done yet); the shard that completes it moves it
    into place. Idempotent: a ready cache returns at once, a killed shard resumes."""
    import torch

    from .data import build_dataset
    from .vae import image_channels, is_latent, load_vae
    if not is_latent(cfg):
        raise ConfigError("model.latent_downsample", cfg.model.latent_downsample, "a pixel-space model has no "
                          "latents to prepare")
    if not 0 <= shard < shards:
        raise ConfigError("--shard", shard, f"must be in [0, --shards={shards})")
    state = cache_state(cfg)
    if state.state == "ready":
        echo(f"latent cache {state.folder} is ready (key {state.key})")
        return state
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images = build_dataset(cfg.data, image_channels(cfg))
    vae = load_vae(cfg, device)
    digest = vae.weights_digest()
    folder, partial = state.folder, partial_folder(state.folder)
    with _locked(folder):
        state = cache_state(cfg)
        if state.state == "ready":
            return state
        meta = (_read_json(partial / PARTIAL_META) if state.state == "partial" else
                _create(cfg, partial, images, vae, state.key, 2 if cfg.data.hflip else 1, digest))
    if meta["vae_weights_sha256"] != digest:
        raise ConfigError("vae.source", cfg.vae.source, f"its weights (sha256 {digest[:12]}) are not those that "
                          f"began the cache {partial} ({meta['vae_weights_sha256'][:12]}); remove that folder")
    if meta["count"] != len(images):
        raise ConfigError("data.path", cfg.data.path, f"{len(images)} images, where the cache {partial} was begun "
                          f"with {meta['count']}: the data changed; remove that folder")
    chunks = meta["chunks"]
    mine = range(shard * chunks // shards, (shard + 1) * chunks // shards)
    todo = [c for c in mine if not (partial / DONE / f"{c:07d}.json").exists()]
    echo(f"latent cache {folder} (key {state.key}): shard {shard} of {shards}, {len(todo)} of {len(mine)} chunks to "
         f"encode on {device}")
    moments = np.load(partial / "moments.npy", mmap_mode="r+")
    started = time.time()
    for chunk in todo:
        _encode_chunk(chunk, meta, images, vae, moments, partial)
    del moments
    encoded = sum(min(CHUNK, meta["count"] - c * CHUNK) for c in todo) * meta["flips"]
    echo(f"encoded {encoded} images in {time.time() - started:.1f} s")
    with _locked(folder):
        if (folder / META).is_file() or _finish(folder, partial, meta):
            echo(f"latent cache {folder} is ready: {meta['count']} images, latents {meta['shape'][2:]}")
            return CacheState(folder, state.key, "ready")
    done = len(list((partial / DONE).glob("*.json")))
    return CacheState(folder, state.key, "partial", done, chunks)


def _prepare_local(overrides: list[str], shard: int, shards: int, device: Optional[str], threads: int) -> str:
    """One local process's shard (`prepare --shards K` without --shard)."""
    import torch

    from .configure import resolve
    torch.set_num_threads(threads)
    return prepare_shard(resolve(overrides).cfg, shard, shards, device).state


def prepare(overrides: list[str], shards: int = 1, shard: Optional[int] = None, device: Optional[str] = None,
            echo=print) -> CacheState:
    """The run's cache: one shard (`shard`), or every shard of `shards` in as many local processes."""
    from .configure import resolve
    cfg = resolve(overrides).cfg
    if shards < 1:
        raise ConfigError("--shards", shards, "must be positive")
    if shard is not None or shards == 1:
        return prepare_shard(cfg, shard or 0, shards, device, echo)
    state = cache_state(cfg)                        # refusals before any process starts
    if state.state == "ready":
        echo(f"latent cache {state.folder} is ready (key {state.key})")
        return state
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    threads = max(1, (os.cpu_count() or 1) // shards)
    with ProcessPoolExecutor(shards, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_prepare_local, [overrides] * shards, range(shards), [shards] * shards, [device] * shards,
                      [threads] * shards))
    return cache_state(cfg)


# ---------------------------------------------------------------------------------------------
# reading it
# ---------------------------------------------------------------------------------------------
def open_latents(cfg: TrainConfig, images, with_images: bool = False, vae_digest: Optional[str] = None):
    """The run's cache as a dataset of posterior moments (refused in one line when missing, incomplete, of another
    key, of other images or of other VAE weights); `with_images`: batches carry the images too (REPA)."""
    state = cache_state(cfg)
    if state.state != "ready":
        raise ConfigError("data.latents", str(state.folder), f"the run's latent cache (key {state.key}) is "
                          f"{state.describe()}: prepare it with `python -m harness.latents prepare <the run's "
                          f"overrides>`, or declare a `latents:` stage in the sweep")
    meta = _read_json(state.folder / META)
    if vae_digest is not None and meta["vae_weights_sha256"] != vae_digest:
        raise ConfigError("vae.source", cfg.vae.source, f"its weights (sha256 {vae_digest[:12]}) are not those that "
                          f"encoded {state.folder} ({meta['vae_weights_sha256'][:12]}): decoding would not invert the "
                          f"encoding; prepare the cache again with these weights")
    return LatentDataset(state.folder, meta, images if with_images else None,
                         reference_labels=None if images is None else images.labels)


class LatentDataset:
    """Posterior moments (N, 2C, h, w) float32 of the cache, with the flipped image's where a flip is asked, and
    labels; with `images`, each batch also carries the images (N, 3, R, R) of the same indices and flips."""

    def __init__(self, folder: Path, meta: dict, images=None, reference_labels=None):
        import torch
        self.folder, self.meta, self.images = Path(folder), meta, images
        self.moments = np.load(self.folder / "moments.npy", mmap_mode="r")
        self.labels = torch.from_numpy(np.load(self.folder / "labels.npy"))
        if reference_labels is not None and not torch.equal(self.labels, reference_labels.long()):
            raise ConfigError("data.latents", str(folder), f"its {len(self.labels)} labels are not those of the "
                              f"dataset ({len(reference_labels)} images): the data changed since it was prepared")
        self.classes = meta["classes"]
        self.num_classes = len(self.classes)
        self.channels = int(meta["shape"][2]) // 2
        self.flips = int(meta["flips"])
        self.lazy = images is not None and images.lazy     # image files to decode: DataLoader workers

    def __len__(self) -> int:
        return int(self.labels.numel())

    def _moments(self, indices, flips):
        import torch
        indices = torch.as_tensor(indices, dtype=torch.long).flatten()
        flips = torch.as_tensor(flips, dtype=torch.bool).flatten()
        if flips.any() and self.flips == 1:
            raise ValueError(f"{self.folder} holds no mirrored latents (prepared with data.hflip=false)")
        rows = indices.numpy()
        out = self.moments[rows, flips.long().numpy()] if self.flips == 2 else self.moments[rows, 0]
        return torch.from_numpy(np.ascontiguousarray(out)), self.labels.index_select(0, indices)

    def get(self, indices, flips):
        """(moments, labels), or (moments, labels, images) for a dataset with images."""
        moments, labels = self._moments(indices, flips)
        if self.images is None:
            return moments, labels
        return moments, labels, self.images.get(indices, flips)[0]

    def load(self, index: int, flip: bool):
        """One sample, as a DataLoader worker reads it (lazy: with images)."""
        moments, labels, images = self.get([index], [flip])
        return moments[0], int(labels[0]), images[0]


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from toolkit.cli import COMMAND_LINE, ArgumentParser, add_verbose, quiet, run
    parser = ArgumentParser(prog="python -m harness.latents", description=__doc__.split("\n\n")[0],
                            epilog="See the module's docstring (harness/latents.py) and docs/training.md, "
                                   "'Latent models'.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="encode a latent run's training images once (its data, VAE and key)")
    p.add_argument("overrides", nargs="+", metavar="KEY=VALUE", help="the training run's overrides: "
                   "+experiment=NAME, data.path=..., data.latents=..., vae.source=...")
    p.add_argument("--shards", type=int, default=1, help="shards of the work (default 1); without --shard, as many "
                   "local processes")
    p.add_argument("--shard", type=int, help="only this shard (a SLURM array task: --shard $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when there is one)")
    add_verbose(p)
    p = sub.add_parser("info", help="what a cache holds and what made it")
    p.add_argument("folder")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def go() -> int:
        if args.command == "info":
            folder = Path(args.folder).expanduser().resolve()
            found = [path for path in (folder / META, partial_folder(folder) / PARTIAL_META) if path.is_file()]
            if not found:
                raise ConfigError("folder", args.folder, f"no latent cache here (no {META}, and no partial one)")
            print(json.dumps(_read_json(found[0]), indent=1))
            return 0
        quiet(args.verbose)
        try:
            state = prepare(args.overrides, args.shards, args.shard, args.device)
        except ConfigError as err:
            raise err if err.source else err.at(source="overrides" if err.key and "." in err.key else COMMAND_LINE)
        print(f"{state.folder}: {state.describe()} (key {state.key})")
        return 0 if state.state == "ready" or args.shard is not None else 1

    return run(go)


if __name__ == "__main__":
    sys.exit(main())
