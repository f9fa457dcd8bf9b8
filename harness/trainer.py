"""One training job, configured by hydra, resumable, tracked in MLflow.

    python -m harness.train +experiment=tiny_digits run.name=demo
    python -m harness.train +experiment=pixeldit_xl_paper data.path=/data/imagenet/train train.epochs=80
    torchrun --nproc_per_node=8 -m harness.train +experiment=pixeldit_xl_paper ...
    python -m harness.train --help            # and --cfg job, --info: the command line is harness/train.py

Order of work: resolve and validate the config; build data, objective, REPA encoder and metric (all
refusals happen here, before any MLflow run exists); resume from `<run dir>/checkpoints/last.pt` when
present (a damaged one set aside and said, on the terminal and in the `checkpoint_fallback` tag `status` shows; a
run whose every checkpoint is damaged is refused, and starts again at step 0, in its MLflow run, only when
`restart` says so: `--restart`); train; evaluate at the configured points; end the MLflow run FINISHED, FAILED
(exception or non-finite loss; the reason tagged in one line naming the cause and the file) or KILLED
(SIGTERM/SIGUSR2: checkpoint written first).
"""
from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import make_grid, save_image

from models.convert import load_weights
from models.transformer import build_model
from toolkit.errors import ConfigError, reason
from toolkit.files import atomic_write_text

from . import distributed, parallel
from .checkpoint import (
    CheckpointError,
    NoGoodCheckpoint,
    keep_copy,
    load_checkpoint,
    load_latest,
    remove_partial_writes,
    save_checkpoint,
)
from .configure import SIGNATURE_VERSION, ResolvedConfig
from .data import StepBatches, build_dataset
from .ema import EMA
from .estimates import total_steps, training_flops
from .evaluate import build_metric, generate
from .losses import training_losses
from .objectives import draw_normal, make_objective
from .optim import base_lr, build_optimizer, clip_at, lr_at
from .protocol import EvalProtocol
from .retention import best_metric, copy_name, delete, higher_is_better, removable
from .sweep.processes import start_identity
from .telemetry import Efficiency, StepTimer, device_name, system_metrics
from .tracking import NullTracker, Tracker, migrated_signatures, tracking_uri, write_json
from .vae import image_channels, is_latent


class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """SIGTERM/SIGUSR2 arrived; a checkpoint has been written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass
class RunResult:
    run_dir: Path
    run_id: str | None
    step: int
    metrics: dict = field(default_factory=dict)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The model's own randomness at a step (dropout) derives from (seed, rank, step), so resuming needs no
    generator state and is exact."""
    return (seed * 1_000_003 + rank * 7_919 + step) % (2 ** 63)


def sample_seed(seed: int, step: int, index: int) -> int:
    """The seed of one sample's draws at a step (label dropout, t, noise, hint mask): its index in the global
    batch, not its rank, so any number of ranks or accumulation micro-batches draws the same for it."""
    return (step_seed(seed, 0, step) * 1_000_003 + index) % (2 ** 63)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device", "cuda", "no CUDA device is available")
    return torch.device(name)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20      # KiB on Linux


RUN_ID_FILE = "mlflow_run_id"   # the run folder's MLflow run, kept beside its checkpoints: a run restarted at step 0
                                # (every checkpoint damaged) continues it


class RunFolderLock:
    """An exclusive lock on a run folder for the trainer's lifetime: a second trainer of the same run (a
    retry while the first still runs) is refused instead of interleaving steps into the same checkpoint and
    MLflow run. The kernel releases it when the process dies, however it dies. The lock file names its holder
    (`pid P on HOST`, then the process's start identity): what `cancel` reads to stop a trainer whose job is
    gone, and checks, so a recycled pid is never taken for it (`lock_holder`)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.handle = None

    def __enter__(self):
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = (self.handle.read().strip().splitlines() or ["another process"])[0]
            self.handle.close()
            raise ConfigError("run.name", self.path.parent.name, f"the run folder {self.path.parent} is in use by "
                              f"{holder}; wait for it to end (or cancel it) before starting the run again") from None
        self.handle.truncate(0)
        self.handle.write(f"pid {os.getpid()} on {socket.gethostname()}\nstarted {start_identity(os.getpid())}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        self.handle.close()


def lock_holder(run_dir: Path) -> tuple[int, str, str | None] | None:
    """(pid, host, start identity) the run folder's lock file names, or None (no lock file, or not one of ours)."""
    try:
        lines = (Path(run_dir) / ".lock").read_text().splitlines()
        _, pid, _, host = lines[0].split(" ", 3)
        started = lines[1].removeprefix("started ") if len(lines) > 1 else None
        return int(pid), host, started
    except (OSError, ValueError, IndexError):
        return None


class StopFlag:
    """Set by SIGTERM or SIGUSR2 (SLURM preemption / time limit); checked between steps."""

    def __init__(self):
        self.signal: int | None = None
        self.previous = {}

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, resolved: ResolvedConfig, restart: bool = False):
        self.resolved = resolved
        self.restart = restart            # start again at step 0 when every checkpoint is damaged (--restart)
        cfg = self.cfg = resolved.cfg
        self.device = pick_device(cfg.run.device)
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"

        # Everything that can refuse the config comes before any MLflow run or file is created.
        self.images = self.dataset = build_dataset(cfg.data, image_channels(cfg))
        self.vae = None
        repa_on = cfg.model.repa and cfg.repa.weight > 0
        if is_latent(cfg):      # batches of the latent cache (no VAE in the loop); the VAE decodes samples
            from .latents import open_latents
            from .vae import load_vae
            self.vae = load_vae(cfg, self.device)
            self.dataset = open_latents(cfg, self.images, with_images=repa_on, vae_digest=self.vae.weights_digest())
        if cfg.model.num_classes not in (0, self.dataset.num_classes):     # 0: unconditional, labels unused
            raise ConfigError("model.num_classes", cfg.model.num_classes, f"the dataset {cfg.data.name!r} has "
                              f"{self.dataset.num_classes} classes (or 0 for an unconditional model)")
        self.objective = make_objective(cfg.objective, cfg.model)
        self.encoder = None
        if repa_on:
            from .repa import RepaEncoder
            self.encoder = RepaEncoder(cfg.repa.encoder, cfg.repa.encoder_weights, cfg.model.grid_size,
                                       device=self.device)
            if self.encoder.dim != cfg.model.repa_dim:
                raise ConfigError("model.repa_dim", cfg.model.repa_dim, f"the encoder {cfg.repa.encoder} "
                                  f"gives {self.encoder.dim}-d features")
        self.perceptual = None                    # PixelGen's LPIPS and P-DINO (harness/perceptual.py)
        if cfg.perceptual.lpips_weight > 0 or cfg.perceptual.dino_weight > 0:
            from .perceptual import PerceptualLoss, shares_encoder
            shared = self.encoder if shares_encoder(cfg) else None      # PixelGen: one DINOv2 for both, one target
            self.perceptual = PerceptualLoss(cfg.perceptual, cfg.model, device=self.device, dino=shared)
        self.env = distributed.init(self.device)
        self.metric = build_metric(cfg, self.images, self.device) if self.env.is_main else None
        if self.metric is not None and self.metric.note:
            print(self.metric.note, flush=True)
        self.batches = StepBatches(self.dataset, cfg.train.global_batch, cfg.run.seed, self.env.rank,
                                   self.env.world_size, cfg.data.hflip, cfg.data.num_workers)
        if self.batches.local_batch % cfg.train.grad_accum:
            raise ConfigError("train.grad_accum", cfg.train.grad_accum, f"must divide each rank's batch of "
                              f"{self.batches.local_batch} (train.global_batch={cfg.train.global_batch} over "
                              f"{self.env.world_size} ranks)")
        spe = self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = total_steps(cfg.train, spe)
        # Each configured evaluation point, by the name it was asked for: the key of its metrics besides the
        # curve (`fd/epoch_80`, `fd/step_300`), so a table of "FD at epoch 80" is one MLflow query for a sweep.
        self.point_names: dict[int, list[str]] = {}
        for epoch in cfg.eval.at_epochs:
            self.point_names.setdefault(round(epoch * spe), []).append(f"epoch_{epoch:g}")
        for step in cfg.eval.at_steps:
            self.point_names.setdefault(step, []).append(f"step_{step}")
        self.eval_steps = sorted(set(self.point_names) | ({self.total_steps} if cfg.eval.at_end else set()))
        self.eval_steps = [s for s in self.eval_steps if 0 < s <= self.total_steps] if cfg.eval.metric != "none" else []
        self.milestones = set(cfg.checkpoint.milestones)
        self.best_metric = best_metric(cfg)
        self.scores: dict[int, float] = {}     # the ranking metric at each evaluation point (harness/retention.py)
        self.saved_at: int | None = None

        torch.manual_seed(cfg.run.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.init_sha256 = None        # converted official weights (models.convert), unless a checkpoint resumes
        if cfg.model.init_from and not (cfg.run.resume == "auto" and self.ckpt_path.exists()):
            self.init_sha256 = load_weights(self.model, cfg.model.init_from)
        if cfg.train.activation_checkpointing:
            parallel.checkpoint_blocks(self.model)
        self.sharded = cfg.train.parallel == "fsdp" and self.env.world_size > 1
        if self.sharded and cfg.optim.optimizer == "muon":
            raise ConfigError("optim.optimizer", "muon", "torch.optim.Muon orthogonalises whole matrices, which "
                              "train.parallel=fsdp shards over the ranks; use train.parallel=ddp")
        if self.sharded:                          # before the EMA and the optimizer: both follow the shards
            parallel.shard(self.model)
        self.ema = EMA(self.model, cfg.ema.decays)
        self.lr0 = base_lr(cfg.optim, cfg.train.global_batch)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr0, fused=self.device.type == "cuda")
        self.ddp = None
        if self.env.world_size > 1 and not self.sharded:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.env.local_rank] if self.device.type == "cuda" else None)
        net = self.ddp or self.model
        self.net = torch.compile(net) if cfg.train.compile else net
        self.efficiency = Efficiency(training_flops(cfg), device_name(self.device), cfg.train.precision)
        self.step = 0
        self.run_id = None
        self.checkpoint_note = ""         # a damaged checkpoint set aside, said on the terminal and in `status`

    # ---- state -------------------------------------------------------------------------------

    def state(self) -> dict:
        """The full state, under the same names for ddp and fsdp (see harness/parallel.py), complete on rank 0;
        under fsdp every rank must call it (the shards are gathered)."""
        return {"model": parallel.model_state(self.model), "ema": self.ema.state_dict(),
                "optimizer": parallel.optimizer_state(self.model, self.optimizer), "step": self.step,
                "epoch": self.step / self.steps_per_epoch, "mlflow_run_id": self.run_id or "",
                "signature": self.resolved.signature, "signature_version": SIGNATURE_VERSION,
                "config": self.resolved.recorded_yaml()}

    def resume(self) -> bool:
        """Continue from the newest good checkpoint of the run folder (a damaged newest one is set aside and
        said; see harness/checkpoint.py). A checkpoint written under another signature is refused, unless
        `run_sweep.py migrate` re-signed its MLflow run from that signature to this one. Rank 0 chooses the
        file (and refuses for every rank); every rank loads that file, so all resume from the same step. When
        every checkpoint is damaged the run is refused, unless `restart`: then it starts again at step 0 in the
        MLflow run the run folder records, and says so."""
        if self.cfg.run.resume != "auto":
            return False
        chosen = distributed.from_main(self._choose_checkpoint, self.env)
        if chosen is None:
            return False
        path, step, self.checkpoint_note = chosen
        if path is None:                          # restarted at step 0 in the same MLflow run
            self.run_id = self._recorded_run_id()
            if self.env.is_main:
                print(f"{self.checkpoint_note}; continuing MLflow run {self.run_id or '(none recorded: a new one)'}",
                      flush=True)
            return False
        state = load_checkpoint(path, verify=False)       # rank 0 verified it, and no rank writes it now
        if state["step"] != step:
            raise CheckpointError(f"{path}: replaced while the ranks resumed (step {state['step']} != {step})")
        parallel.load_model_state(self.model, state["model"])
        self.ema.load_state_dict(state["ema"])
        parallel.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.step = state["step"]
        self.run_id = state["mlflow_run_id"] or None
        if self.env.is_main and self.checkpoint_note:
            print(self.checkpoint_note, flush=True)
        print(f"rank {self.env.rank}: resumed from {path} at step {self.step}", flush=True)
        return True

    def _choose_checkpoint(self) -> tuple[Path | None, int, str] | None:
        """(file, step, what was set aside) to resume from; (None, 0, why) to restart at step 0 (`restart`)."""
        try:
            found = load_latest(self.ckpt_path)
        except NoGoodCheckpoint as err:
            if not self.restart:
                raise NoGoodCheckpoint(f"{err}; --restart starts the run again at step 0 (in the same MLflow run), "
                                       f"or put a good checkpoint at {self.ckpt_path}") from None
            return None, 0, f"restarted at step 0 (--restart): {err}"
        if found is None:
            return None
        state, path, problems = found
        signature = self.resolved.signature
        if state["signature"] != signature and not self._migrated(state):
            raise ConfigError("run.name", self.cfg.run.name, f"{path} holds a run of another config "
                              f"(signature {state['signature']} != {signature}); choose another "
                              f"run.name or run.resume=never")
        note = f"resumed from {path.name} at step {state['step']}: {'; '.join(problems)}" if problems else ""
        return path, state["step"], note

    def _recorded_run_id(self) -> str | None:
        path = self.run_dir / RUN_ID_FILE
        return (path.read_text().strip() or None) if path.exists() else None

    def _migrated(self, state: dict) -> bool:
        if not state.get("mlflow_run_id"):
            return False
        current, previous = migrated_signatures(self.cfg.tracking, self.run_dir, state["mlflow_run_id"])
        return current == self.resolved.signature and state["signature"] in previous

    def save(self) -> None:
        """Rank 0 writes the checkpoint (atomically: harness/checkpoint.py) once per step, then deletes what the
        checkpoint policy allows (harness/retention.py); the others wait for it, so no rank runs ahead of, or
        exits before, a checkpoint being written."""
        if self.saved_at == self.step:            # (an evaluation point on a checkpoint step: one file, not two)
            return
        if self.sharded or self.env.is_main:
            state = self.state()
            if self.env.is_main:
                save_checkpoint(state, self.ckpt_path, self.cfg.checkpoint.keep_latest)
                self.prune()
        self.saved_at = self.step
        distributed.barrier(self.env)

    def keep(self) -> None:
        """Rank 0: a copy of this step's checkpoint that the policy ranks or keeps for good, then the policy."""
        keep_copy(self.ckpt_path, copy_name(self.step))
        self.prune()

    def prune(self) -> None:
        files, _ = removable(self.ckpt_path.parent, self.cfg.checkpoint, self.scores,
                             bool(self.best_metric) and higher_is_better(self.best_metric))
        delete(files)

    # ---- one step ----------------------------------------------------------------------------

    def sample_draws(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The random draws of this rank's samples at the current step — label dropout, t, noise and the hint
        mask — each sample's from a generator seeded by (seed, step, its index in the global batch): the same
        draws whatever the number of ranks and accumulation micro-batches (tested)."""
        cfg, objective = self.cfg, self.objective
        first = self.env.rank * x.shape[0]
        draws: dict[str, list] = {"drop": [], "t": [], "eps": [], "mask": [], "posterior": []}
        generator = torch.Generator(self.device)
        for i in range(x.shape[0]):
            generator.manual_seed(sample_seed(cfg.run.seed, self.step, first + i))
            draws["drop"].append(torch.rand(1, generator=generator, device=self.device) < cfg.train.label_dropout)
            draws["t"].append(objective.sample_t(1, generator, self.device))
            draws["eps"].append(objective.sample_noise(x[i:i + 1], generator))
            if cfg.model.hint_fraction > 0:
                draws["mask"].append(torch.rand(1, 1, *x.shape[2:], generator=generator, device=self.device)
                                     < cfg.model.hint_fraction)
            if self.vae is not None:             # the VAE posterior's sample [DiT train.py: latent_dist.sample()]
                draws["posterior"].append(draw_normal(x[i:i + 1].shape, generator, self.device))
        return {key: torch.cat(values) for key, values in draws.items() if values}

    def losses(self, x, y, draws: dict[str, torch.Tensor], images=None) -> dict[str, torch.Tensor]:
        return training_losses(self.net, self.objective, self.cfg, x, y, draws, self.encoder, self.perceptual, images)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, images=None) -> dict[str, torch.Tensor]:
        """One optimizer step on this rank's batch of the current step (a latent run's x: the posterior moments of
        its cached latents, and with REPA the images beside them)."""
        cfg = self.cfg
        torch.manual_seed(step_seed(cfg.run.seed, self.env.rank, self.step))
        lr = lr_at(self.step, cfg.optim, self.lr0, self.steps_per_epoch, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if images is not None:
            images = images.to(self.device, non_blocking=True)
        if self.vae is not None:                  # draws take the latent's shape: the moments' mean half
            moments, x = x, x[:, :self.vae.channels]
        draws = self.sample_draws(x)
        if self.vae is not None:
            x = self.vae.sample(moments, draws.pop("posterior"))
        accum = cfg.train.grad_accum
        totals: dict[str, torch.Tensor] = {}
        for i in range(accum):
            last = i == accum - 1
            micro = slice(i * x.shape[0] // accum, (i + 1) * x.shape[0] // accum)
            if self.sharded:                      # reduce-scatter the gradients once, after the last micro-batch
                self.model.set_requires_gradient_sync(last)
            with (self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()):
                terms = self.losses(x[micro], y[micro], {k: v[micro] for k, v in draws.items()},
                                    None if images is None else images[micro])
                (terms["loss"] / accum).backward()
            for key, value in terms.items():
                totals[key] = totals.get(key, 0) + value.detach() / accum
        clip = clip_at(self.step, cfg.optim, self.steps_per_epoch)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        totals["grad_norm"] = parallel.full_tensor(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        totals["lr"] = torch.tensor(lr)
        return totals

    # ---- evaluation --------------------------------------------------------------------------

    def evaluate(self, tracker) -> dict[str, float]:
        cfg = self.cfg
        ema_model = self.ema.model_copy(self.model, cfg.ema.eval_decay,      # an unsharded copy on every rank
                                        into=build_model(cfg.model).to(self.device) if self.sharded else None)
        images, labels = generate(ema_model, self.objective, cfg, EvalProtocol.of(cfg), self.step, self.env,
                                  self.device, self.vae)
        metrics = self._report(images, labels, tracker) if self.env.is_main else {}
        if cfg.checkpoint.keep_at_eval:           # every rank: a sharded state is gathered, and all wait for it
            self.save()
            if self.env.is_main:
                if self.best_metric in metrics:
                    self.scores[self.step] = metrics[self.best_metric]
                self.keep()
        return metrics

    def _report(self, images, labels, tracker) -> dict[str, float]:
        """Rank 0: the metric of the gathered samples, their grid, logged."""
        cfg = self.cfg
        metrics = {k: float(v) for k, v in self.metric.evaluate(images, labels).items()} if self.metric else {}
        epoch = self.step / self.steps_per_epoch
        grid_path = self.run_dir / "samples" / f"step{self.step:08d}.png"
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid = make_grid(images[:cfg.eval.grid_samples], nrow=min(cfg.model.num_classes or 8, cfg.eval.grid_samples),
                         normalize=True, value_range=(-1, 1))
        save_image(grid, grid_path)
        tracker.log_artifact(grid_path, "samples")
        at_points = {f"{k}/{name}": v for name in self.point_names.get(self.step, []) for k, v in metrics.items()}
        tracker.log_metrics({**metrics, **at_points, "epoch": epoch}, self.step)
        return metrics

    # ---- the run -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Rank 0 holds the run folder's lock (a refusal is raised on every rank) for the whole run."""
        lock = RunFolderLock(self.run_dir)

        def acquire() -> None:
            lock.__enter__()
            remove_partial_writes(self.ckpt_path.parent)

        distributed.from_main(acquire, self.env)
        try:
            return self._run()
        finally:
            if self.env.is_main:
                lock.__exit__()

    def _run(self) -> RunResult:
        cfg = self.cfg
        resumed = self.resume()
        tags = {"experiment": cfg.experiment, "preset": self.resolved.model_preset,
                "signature": self.resolved.signature, "signature_version": str(SIGNATURE_VERSION),
                "checkpoint": str(self.ckpt_path.resolve()), "total_steps": str(self.total_steps)}
        if self.checkpoint_note:
            tags["checkpoint_fallback"] = self.checkpoint_note[:5000]
        if self.encoder is not None and self.encoder.random_weights:
            tags["repa_encoder"] = "random"
        if self.perceptual is not None and self.perceptual.random_weights:
            tags["perceptual_random"] = ",".join(self.perceptual.random_weights)
        if self.init_sha256:
            tags["init_from_sha256"] = self.init_sha256
        if self.vae is not None:
            tags["latent_cache"] = str(self.dataset.folder)
        if self.eval_steps:                       # what the numbers of its own evaluations are (harness/protocol.py)
            protocol = EvalProtocol.of(cfg)
            tags.update({"eval_protocol": protocol.signature, "eval_protocol_name": protocol.name,
                         "eval_protocol_version": str(protocol.version)})
        tags["world_size"] = str(self.env.world_size)
        tags.update(self.efficiency.tags())
        if "SLURM_JOB_ID" in os.environ:
            array = os.environ.get("SLURM_ARRAY_JOB_ID")
            tags["slurm_job_id"] = (f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array
                                    else os.environ["SLURM_JOB_ID"])
            tags["slurm_nodelist"] = os.environ.get("SLURM_JOB_NODELIST", "")   # this attempt's nodes
        tracker = NullTracker()

        def open_tracker() -> str:                # rank 0 tracks; its failure stops every rank
            nonlocal tracker
            self.run_dir.mkdir(parents=True, exist_ok=True)
            shown = {k: self.resolved.expressions.get(f"tracking.tags.{k}", v) for k, v in cfg.tracking.tags.items()}
            tracker = Tracker(replace(cfg.tracking, tags=shown), self.run_dir, cfg.tracking.run_name or cfg.run.name,
                              self.run_id, tags, self.resolved.recorded())
            if resumed and self.best_metric:     # the policy ranks the copies of the earlier attempts too
                self.scores = tracker.history(self.best_metric)
            (self.run_dir / "config.yaml").write_text(self.resolved.recorded_yaml())
            atomic_write_text(self.run_dir / RUN_ID_FILE, tracker.run_id)
            if not resumed:
                tracker.log_artifact(self.run_dir / "config.yaml")
            return tracker.run_id

        self.run_id = distributed.from_main(open_tracker, self.env)
        if self.env.is_main:
            print(self.efficiency.describe(), flush=True)
        scorer_numbers = self.metric.own_metrics() if self.metric is not None else {}    # offline: classifier_acc
        if scorer_numbers:
            tracker.log_metrics(scorer_numbers, 0)
        stop = StopFlag()
        stop.install()
        metrics: dict[str, float] = {}
        monitor = system_metrics(self.run_id, tracking_uri(cfg.tracking, self.run_dir), self.device,
                                 self.env.local_rank, self.env.world_size, resumed)
        try:
            metrics = self._loop(tracker, stop)
        except Interrupted:
            tracker.set_tags({"interrupted_at_step": str(self.step)})
            tracker.finish("KILLED")
            raise
        except BaseException as err:
            tracker.finish("FAILED", reason=reason(err))
            raise
        finally:
            stop.restore()
            if monitor is not None:
                monitor.finish()
        if self.env.is_main:
            final = {"step": self.step, "epoch": self.step / self.steps_per_epoch, **metrics}
            write_json(self.run_dir / "final_metrics.json", final)
            tracker.log_json(final, "final_metrics.json")
        tracker.finish("FINISHED")
        return RunResult(self.run_dir, self.run_id, self.step, metrics)

    def _loop(self, tracker, stop: StopFlag) -> dict[str, float]:
        cfg = self.cfg
        progress = Progress(self.total_steps, self.step, enabled=self.env.is_main)
        window: dict[str, torch.Tensor] = {}
        window_start, window_steps, paused = time.perf_counter(), 0, 0.0   # paused: checkpoints, evaluations
        timer = StepTimer(self.device)
        metrics: dict[str, float] = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        batches = self.batches.iterate(self.step)      # prefetching workers for image folders
        while self.step < self.total_steps:
            timer.fetching()
            batch = next(batches)
            timer.computing()
            totals = self.train_step(*batch)
            timer.done()
            for key, value in totals.items():
                window[key] = window.get(key, 0) + value
            window_steps += 1
            signum = distributed.agreed_signal(stop.signal, self.env)     # every rank stops after the same step
            boundary = self.step % cfg.train.log_every == 0 or self.step == self.total_steps
            milestone = self.step in self.milestones
            if boundary or self.step % cfg.checkpoint.every_steps == 0 or signum or self.step in self.eval_steps \
                    or milestone:
                if boundary and self.device.type == "cuda":
                    torch.cuda.synchronize()                  # the window's time, and its CUDA events done
                # the mean over ranks (each rank's loss is over its own samples; the gradient norm and the
                # learning rate are the same on every rank; the step's split is each rank's)
                means = distributed.mean_over_ranks({**{k: float(v) / window_steps for k, v in window.items()},
                                                     **(timer.window() if boundary else {})}, self.env)
                if not (math.isfinite(means["loss"]) and math.isfinite(means["grad_norm"])):
                    raise NonFiniteLoss(f"non-finite loss {means['loss']} or gradient norm {means['grad_norm']} "
                                        f"in the steps up to {self.step}")
                if boundary:
                    elapsed = time.perf_counter() - window_start - paused
                    means["images_per_s"] = window_steps * cfg.train.global_batch / elapsed
                    means["step_time_s"] = elapsed / window_steps
                    means.update(self.efficiency.metrics(means["images_per_s"], self.env.world_size))
                    means["peak_memory_gb"] = distributed.max_over_ranks(peak_memory_gb(self.device), self.env)
                    means["epoch"] = self.step / self.steps_per_epoch
                    # Bookkeeping, under MLflow's "system/" charts section: `status` reads a run's step and age
                    # from the latest metrics of one query.
                    means["system/step"] = self.step
                    means["system/heartbeat"] = time.time()
                    tracker.log_metrics(means, self.step)
                    progress.update(self.step, means)
                    window, window_start, window_steps, paused = {}, time.perf_counter(), 0, 0.0
            pause_start = time.perf_counter()
            if self.step % cfg.checkpoint.every_steps == 0 or self.step == self.total_steps or milestone:
                self.save()
                if milestone and self.env.is_main:
                    self.keep()
            if self.step in self.eval_steps:
                metrics = self.evaluate(tracker)
                progress.note(f"step {self.step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            paused += time.perf_counter() - pause_start
            if signum:
                self.save()
                raise Interrupted(f"signal {signum} at step {self.step}; checkpoint {self.ckpt_path}", signum)
        progress.close()
        return metrics


class Progress:
    """A tqdm bar on an interactive terminal; periodic plain lines otherwise (logs, SLURM)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.enabled, self.total = enabled, total
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, means: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{means['images_per_s']:.1f}")
        else:
            print(f"step {step}/{self.total} loss {means['loss']:.4f} grad_norm {means['grad_norm']:.3f} "
                  f"lr {means['lr']:.2e} {means['images_per_s']:.1f} img/s", flush=True)

    def note(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(resolved: ResolvedConfig, restart: bool = False) -> RunResult:
    """One run; `restart`: a run whose every checkpoint is damaged starts again at step 0 (else it is refused)."""
    trainer = Trainer(resolved, restart)
    try:
        return trainer.run()
    finally:
        distributed.shutdown()
