"""What a run will cost before it is submitted: FLOPs per training image, the state it holds, memory per GPU and
GPU-hours. The trainer's telemetry (MFU) and the dry run (`run_sweep.py SWEEP --dry-run`) read the same numbers.

FLOPs (`training_flops`) come from the model's own counter (`models.complexity`, torch.utils.flop_counter on the
meta device): the network's forward x 3 per training image (forward + backward), REPA projector included; REPA's
frozen encoder (forward only, per image) and the EMA update (a lerp, 3 FLOPs per parameter and decay, per step)
are stated apart and are not in the model FLOPs that MFU divides.

State (`state_bytes`): float32 parameters, gradients, the optimizer's state (AdamW: two moments; Muon: one
momentum for the block matrices it trains, AdamW's two for the rest) and one copy per EMA decay (what a checkpoint
holds besides the gradients), and the frozen networks: REPA's encoder, PixelGen's LPIPS VGG16 and P-DINO encoder
(unless P-DINO reads REPA's).

Memory per GPU (`memory_estimate`): the state above, plus the peak of one forward + backward at the per-GPU
micro-batch, traced on fake tensors (torch's FakeTensorMode: shapes and dtypes, no memory, no compute) by
counting every tensor storage alive at each operation; with the run's precision (bf16 as autocast makes it,
traced with the CPU's autocast and CPU kernels: attention as a fused kernel that keeps no N x N matrix, as
flash attention on a GPU), activation checkpointing (only block inputs kept, one block recomputed at a time)
and the frozen networks (REPA's encoder, PixelGen's perceptual losses). FSDP divides parameters, gradients, the
optimizer's state and the EMA bank by the world size and adds two gathered blocks; DDP adds its gradient buckets
(a second copy of the gradients). torch.compile fuses kernels and usually keeps less: the estimate is eager's.
The caching allocator's fragmentation on a GPU comes on top (typically a few percent).

GPU-hours (`cost_estimate`): training FLOPs (model, forward x 3) x images seen / (dense peak x MFU), with the MFU
measured for the model's preset on that GPU in BENCHMARKS.md (the GPU suite writes it), else `ASSUMED_MFU`,
printed as assumed. A measured MFU already pays for REPA's encoder, the EMA and the data in its time; PixelGen's
perceptual networks (forward and backward to the image) are not in the model FLOPs either.
Evaluation during training is not included.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from models.config import ModelConfig
from toolkit.files import atomic_write_text, default_cache_dir

from .accelerators import Accelerator
from .config import TrainConfig, TrainLoopConfig

ASSUMED_MFU = 0.40            # bf16 training of a DiT-class model at batch 32 per GPU, when none is measured
BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
MEASURED_BEGIN, MEASURED_END = "<!-- gpu suite: measured", "<!-- end gpu suite -->"
IMAGENET_TRAIN_IMAGES = 1_281_167     # ImageNet-1k's training set: an image folder's size in a dry run
FLOAT32 = 4


# ---- FLOPs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingFlops:
    model_per_image: int          # the network's forward x 3 (forward + backward), REPA projector included
    encoder_per_image: int        # REPA's frozen encoder, forward only (0 without REPA)
    ema_per_step: int             # the EMA update: a lerp (3 FLOPs) per parameter and decay


def training_flops(cfg: TrainConfig) -> TrainingFlops:
    from models.complexity import count_flops  # torch: only when a plan is costed, not when the sweep is read
    encoder = _encoder_of(cfg)
    return TrainingFlops(_by_model("flops", cfg.model, lambda m: 3 * count_flops(m, training=True)),
                         encoder_flops(encoder, cfg.model.grid_size) if encoder else 0,
                         3 * trainable_params(cfg.model) * len(cfg.ema.decays))


_model_numbers: dict[tuple[str, str], int] = {}


def _by_model(what: str, model: ModelConfig, compute) -> int:
    """`compute(model)`, once per distinct model config (configs are not hashable: keyed by their repr)."""
    key = (what, repr(model))
    if key not in _model_numbers:
        _model_numbers[key] = compute(model)
    return _model_numbers[key]


def _encoder_of(cfg: TrainConfig) -> str | None:
    """REPA's encoder when the run uses one (as the trainer decides)."""
    return cfg.repa.encoder if cfg.model.repa and cfg.repa.weight > 0 else None


@lru_cache(maxsize=16)
def encoder_flops(name: str, grid_size: int) -> int:
    """Forward FLOPs of REPA's frozen encoder on one image (its input resized to the model's patch grid)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    encoder = meta_encoder(name, grid_size)
    with FlopCounterMode(display=False) as counter:
        encoder(torch.empty(1, 3, encoder.image_size, encoder.image_size, device="meta"))
    return counter.get_total_flops()


def meta_encoder(name: str, grid_size: int):
    """REPA's encoder built on the meta device (random weights: nothing allocated, nothing read)."""
    import torch

    from .repa import RepaEncoder
    with torch.device("meta"):
        return RepaEncoder(name, "random", grid_size)


# ---- state ---------------------------------------------------------------------------------------

def trainable_params(model: ModelConfig) -> int:
    """Parameters the optimizer trains (the REPA projector included), counted on the meta device."""
    from models.families import build_model
    return _by_model("params", model, lambda m: sum(p.numel() for p in build_model(m, device="meta").parameters()
                                                    if p.requires_grad))


@lru_cache(maxsize=16)
def encoder_params(name: str, grid_size: int) -> int:
    return sum(p.numel() for p in meta_encoder(name, grid_size).parameters())


@dataclass(frozen=True)
class StateBytes:
    """The float32 state of a run, whole (not sharded)."""
    parameters: int
    gradients: int
    optimizer: int                # AdamW: two moments per parameter; Muon: one momentum per block matrix
    ema: int                      # one copy of the parameters per decay
    frozen: int                   # the frozen networks: REPA's encoder, PixelGen's LPIPS and P-DINO (0 without)

    @property
    def checkpoint(self) -> int:
        """What a checkpoint file holds: parameters, EMA bank and the optimizer's state (harness/trainer.py
        `state`)."""
        return self.parameters + self.ema + self.optimizer


def state_bytes(cfg: TrainConfig) -> StateBytes:
    params = trainable_params(cfg.model)
    encoder = _encoder_of(cfg)
    moments = 2 * params - (muon_params(cfg.model) if cfg.optim.optimizer == "muon" else 0)
    return StateBytes(parameters=FLOAT32 * params, gradients=FLOAT32 * params, optimizer=FLOAT32 * moments,
                      ema=FLOAT32 * params * len(cfg.ema.decays),
                      frozen=FLOAT32 * ((encoder_params(encoder, cfg.model.grid_size) if encoder else 0)
                                        + perceptual_params(cfg)))


def muon_params(model: ModelConfig) -> int:
    """Parameters Muon trains (one momentum each) when `optim.optimizer=muon` (harness/optim.py's rule)."""
    from models.families import build_model

    from .optim import is_muon_matrix
    return _by_model("muon", model, lambda m: sum(p.numel() for name, p in build_model(m, device="meta")
                                                  .named_parameters() if p.requires_grad and is_muon_matrix(name, p)))


def meta_perceptual(cfg: TrainConfig, repa_encoder=None):
    """PixelGen's perceptual losses as the trainer builds them (harness/trainer.py), on the meta device with
    random weights (nothing read); P-DINO reads `repa_encoder` when the trainer would share it. None when off."""
    import dataclasses

    import torch

    from .perceptual import PerceptualLoss, active, shares_encoder
    if not active(cfg.perceptual):
        return None
    random = dataclasses.replace(cfg.perceptual, vgg_weights="random", encoder_weights="random")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*meta parameter.*")     # lpips loads its heads: a no-op here
        return PerceptualLoss(random, cfg.model, dino=repa_encoder if shares_encoder(cfg) else None)


def perceptual_params(cfg: TrainConfig) -> int:
    """Parameters of PixelGen's frozen LPIPS VGG16 and P-DINO encoder (P-DINO's counted under REPA when shared)."""
    from .perceptual import active, shares_encoder
    if not active(cfg.perceptual):
        return 0
    key = (repr(cfg.perceptual), cfg.model.image_size, shares_encoder(cfg))
    if key not in _perceptual_counts:
        shared = meta_encoder(cfg.repa.encoder, cfg.model.grid_size) if shares_encoder(cfg) else None
        loss = meta_perceptual(cfg, repa_encoder=shared)
        _perceptual_counts[key] = sum(p.numel() for name, p in loss.named_parameters()
                                      if shared is None or not name.startswith("dino."))
    return _perceptual_counts[key]


_perceptual_counts: dict[tuple, int] = {}


# ---- memory per GPU ------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryEstimate:
    micro_batch: int              # images per GPU per forward (global batch / ranks / accumulation)
    world_size: int
    sharded: bool                 # FSDP over more than one rank
    parameters: int               # bytes per GPU, each
    gradients: int
    optimizer: int
    ema: int
    frozen: int                   # REPA's encoder, PixelGen's LPIPS and P-DINO: not sharded, no gradients
    activations: int              # the traced forward + backward peak, gradients at that moment excluded
    traced_peak: int              # the traced peak itself: activations + the gradients alive then
    communication: int            # DDP's gradient buckets, or FSDP's two gathered blocks

    @property
    def total(self) -> int:
        """The step's peak: what stays resident, plus the backward's peak (activations with the gradients alive
        then) or, if larger, all gradients at the optimizer step; under FSDP the activations beside all of this
        rank's gradient shards."""
        resident = self.parameters + self.optimizer + self.ema + self.frozen + self.communication
        if self.sharded:
            return resident + self.activations + self.gradients
        return resident + max(self.traced_peak, self.gradients)

    def parts(self) -> dict[str, int]:
        return {"parameters": self.parameters, "gradients": self.gradients, "optimizer": self.optimizer,
                "EMA": self.ema, "frozen networks": self.frozen, "activations": self.activations,
                **({"FSDP gather" if self.sharded else "DDP buckets": self.communication}
                   if self.communication else {})}


def memory_estimate(cfg: TrainConfig, world_size: int = 1) -> MemoryEstimate:
    """Memory per GPU of one training step of `cfg` on `world_size` ranks (see the module's docstring)."""
    micro = micro_batch(cfg.train, world_size)
    state = state_bytes(cfg)
    trace = traced_step(cfg, micro)
    sharded = cfg.train.parallel == "fsdp" and world_size > 1
    share = world_size if sharded else 1
    if sharded:
        communication = 2 * FLOAT32 * largest_block_params(cfg.model)
    else:
        communication = state.gradients if world_size > 1 else 0       # DDP's buckets: gradient_as_bucket_view=False
    return MemoryEstimate(micro, world_size, sharded, state.parameters // share, state.gradients // share,
                          state.optimizer // share, state.ema // share, state.frozen,
                          trace["peak"] - trace["gradients_at_peak"], trace["peak"], communication)


def micro_batch(train: TrainLoopConfig, world_size: int) -> int:
    return max(1, train.global_batch // max(1, world_size) // max(1, train.grad_accum))


def largest_block_params(model: ModelConfig) -> int:
    """Parameters of the largest block (FSDP's unit): what one all-gather materialises."""
    from models.families import build_model

    from .parallel import blocks
    return _by_model("block", model, lambda m: max((sum(p.numel() for p in block.parameters())
                                                    for block in blocks(build_model(m, device="meta"))), default=0))


def traced_step(cfg: TrainConfig, micro: int) -> dict[str, int]:
    """{"peak", "gradients_at_peak"}: bytes of one forward + backward at batch `micro`, traced on fake tensors;
    cached on disk ($DITLAB_CACHE/estimates) by what decides it and the code that computes it."""
    key = _trace_key(cfg, micro)
    path = default_cache_dir() / "estimates" / f"{key}.json"
    if key in _traces:
        return _traces[key]
    if path.exists():
        _traces[key] = json.loads(path.read_text())
        return _traces[key]
    _traces[key] = _trace(cfg, micro)
    atomic_write_text(path, json.dumps(_traces[key]))
    return _traces[key]


_traces: dict[str, dict[str, int]] = {}


def _trace_key(cfg: TrainConfig, micro: int) -> str:
    import torch

    from .perceptual import active
    decided_by = [repr(cfg.model.replace(init_from=None)), repr(cfg.objective), cfg.train.precision,
                  cfg.train.activation_checkpointing, _encoder_of(cfg), micro, torch.__version__, _code_hash(),
                  repr(cfg.perceptual) if active(cfg.perceptual) else None]
    return hashlib.sha256(json.dumps(decided_by, default=str).encode()).hexdigest()[:24]


@lru_cache(maxsize=1)
def _code_hash() -> str:
    """The sources a trace runs: the models and the training step's loss terms."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("models/*.py"), *(root / "harness" / name for name in (
            "estimates.py", "losses.py", "objectives.py", "repa.py", "parallel.py", "perceptual.py"))]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class LiveStorages:
    """A dispatch mode counting the bytes of the tensor storages alive after every operation, and their peak.
    Each storage is counted once (views share it) and uncounted when the last tensor using it is gone."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.live: dict[int, tuple[int, int]] = {}       # storage id -> (bytes, index of its allocation)
                self.freed: dict[int, tuple[int, int, int]] = {}  # storage id -> (bytes, allocated at, freed at)
                self.events = self.current = self.peak = self.peak_at = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch
                from torch.utils._pytree import tree_flatten
                out = func(*args, **(kwargs or {}))
                for tensor in tree_flatten(out)[0]:
                    if isinstance(tensor, torch.Tensor):
                        self._count(tensor.untyped_storage())
                return out

            def _count(self, storage) -> None:
                key = storage._cdata
                if key in self.live:
                    return
                self.events += 1
                self.live[key] = (storage.nbytes(), self.events)
                self.current += storage.nbytes()
                if self.current > self.peak:
                    self.peak, self.peak_at = self.current, self.events
                weakref.finalize(storage, self._release, key)

            def _release(self, key: int) -> None:
                self.events += 1
                size, born = self.live.pop(key)
                self.current -= size
                self.freed[key] = (size, born, self.events)

            def alive_at_peak(self, key: int) -> int:
                """Bytes of storage `key` alive at the peak (0 when it was not)."""
                size, born, died = self.live[key] + (math.inf,) if key in self.live else self.freed.get(key, (0, 0, 0))
                return size if born <= self.peak_at < died else 0

        return Mode()


def _trace(cfg: TrainConfig, micro: int) -> dict[str, int]:
    """Build the network (and the frozen networks) on the meta device, make it fake CPU tensors, and count the storages
    of one forward (the real `training_losses`) and backward."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from models.families import build_model

    from . import parallel
    from .losses import training_losses
    from .objectives import make_objective
    m = cfg.model
    model = build_model(m, device="meta").train()
    if cfg.train.activation_checkpointing:
        parallel.checkpoint_blocks(model)
    encoder = meta_encoder(_encoder_of(cfg), m.grid_size) if _encoder_of(cfg) else None
    perceptual = meta_perceptual(cfg, encoder)
    objective = make_objective(cfg.objective, m)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        for frozen in (encoder, perceptual):
            if frozen is not None:
                _empty_on_cpu(frozen)
        x = torch.empty(micro, m.in_channels, m.input_size, m.input_size)
        y = torch.zeros(micro, dtype=torch.long)
        draws = {"drop": torch.zeros(micro, dtype=torch.bool), "t": objective.sample_t(micro, None, "cpu"),
                 "eps": torch.empty_like(x)}
        if m.hint_fraction > 0:
            draws["mask"] = torch.zeros(micro, 1, m.input_size, m.input_size, dtype=torch.bool)
        with LiveStorages() as live, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")   # CPU kernels
            training_losses(model, objective, cfg, x, y, draws, encoder, perceptual)["loss"].backward()
            grads = {p.grad.untyped_storage()._cdata for p in model.parameters() if p.grad is not None}
            gradients_at_peak = sum(live.alive_at_peak(key) for key in grads)
    return {"peak": live.peak, "gradients_at_peak": gradients_at_peak}


def _empty_on_cpu(module) -> None:
    """`module.to_empty(device="cpu")` for a module that reaches a submodule by two paths (LPIPS's heads are both
    `lin0`... and `lins[0]`...; to_empty would convert them twice): each module's own tensors, once."""
    import torch
    for sub in module.modules():                         # each module once
        for name, param in sub._parameters.items():
            if param is not None:
                sub._parameters[name] = torch.nn.Parameter(torch.empty_like(param, device="cpu"),
                                                           requires_grad=param.requires_grad)
        for name, buffer in sub._buffers.items():
            if buffer is not None:
                sub._buffers[name] = torch.empty_like(buffer, device="cpu")


# ---- GPU-hours -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostEstimate:
    images: int                   # images seen: optimizer steps x global batch
    images_note: str | None       # how the dataset size was taken when it was not known (assumed)
    flops: TrainingFlops
    peak_tflops: float            # the target's dense peak at the run's precision
    mfu: float
    mfu_source: str | None        # where a measured MFU comes from; None: ASSUMED_MFU

    @property
    def gpu_hours(self) -> float:
        return self.flops.model_per_image * self.images / (self.peak_tflops * 1e12 * self.mfu) / 3600


def training_images(cfg: TrainConfig) -> tuple[int, str | None]:
    """(images seen by the run, a note when the dataset's size had to be assumed)."""
    from .data import train_size
    size, note = train_size(cfg.data), None
    if size is None:
        size, note = IMAGENET_TRAIN_IMAGES, (f"data.name=imagefolder: ImageNet-1k's {IMAGENET_TRAIN_IMAGES:,} "
                                             f"training images assumed (a dry run does not read data.path)")
    return total_steps(cfg.train, size // cfg.train.global_batch) * cfg.train.global_batch, note


def total_steps(train: TrainLoopConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of a run: `train.steps`, else its epochs at `steps_per_epoch` (rounded up)."""
    return train.steps or math.ceil(train.epochs * steps_per_epoch)


def cost_estimate(cfg: TrainConfig, target: Accelerator, preset_of=None) -> CostEstimate:
    """GPU-hours of `cfg` on `target`. `preset_of(model) -> name | None` names the preset a model is (for the
    measured MFU; default: `models.presets`)."""
    from .accelerators import matmul_precision
    images, note = training_images(cfg)
    precision = matmul_precision(cfg.train.precision, "highest")
    measured = measured_mfu(cfg, target, preset_of)
    mfu, source = measured if measured else (ASSUMED_MFU, None)
    return CostEstimate(images, note, training_flops(cfg), target.peak_tflops(precision), mfu, source)


def measured_mfu(cfg: TrainConfig, target: Accelerator, preset_of=None,
                 benchmarks: Path | None = None) -> tuple[float, str] | None:
    """(MFU, where from) measured by the GPU suite for this run's model, precision and compile mode on `target`,
    as BENCHMARKS.md records it; None when it has no such line."""
    if cfg.train.precision != "bf16":
        return None
    preset = (preset_of or preset_name)(cfg.model)
    mode = "compiled" if cfg.train.compile else "eager"
    for row in measured_rows(benchmarks or BENCHMARKS):
        if (row.get("preset"), row.get("device"), row.get("mode")) == (preset, target.key, mode):
            return float(row["MFU"].rstrip("%")) / 100, f"measured for {preset} on {target.name}, {mode} " \
                                                        f"(BENCHMARKS.md, GPU suite)"
    return None


def preset_name(model: ModelConfig) -> str | None:
    """The preset `model` is (its weights file aside), or None."""
    return _presets_by_config().get(repr(model.replace(init_from=None)))


@lru_cache(maxsize=1)
def _presets_by_config() -> dict[str, str]:
    from models.presets import PRESETS, model_config
    return {repr(model_config(name)): name for name in reversed(PRESETS)}     # the first name of equal presets


def measured_rows(path: Path) -> list[dict[str, str]]:
    """The rows of the GPU suite's table in BENCHMARKS.md (between its markers), by column header."""
    if not path.is_file():
        return []
    text = path.read_text()
    if MEASURED_BEGIN not in text:
        return []
    block = text.split(MEASURED_BEGIN, 1)[1].split(MEASURED_END, 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return []
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    header = cells[0]
    return [dict(zip(header, row)) for row in cells[2:] if not re.fullmatch(r"[-: ]*", "".join(row))]
