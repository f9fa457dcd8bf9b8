"""One training job, configured by hydra, resumable, tracked in MLflow.

    python -m harness.train +experiment=tiny_digits run.name=demo
    python -m harness.train +experiment=pixeldit_xl_paper data.path=/data/imagenet/train train.epochs=80
    torchrun --nproc_per_node=8 -m harness.train +experiment=pixeldit_xl_paper ...

Order of work: resolve and validate the config; build data, objective, REPA encoder and metric (all
refusals happen here, before any MLflow run exists); resume from `<run dir>/checkpoints/last.pt` when
present; train; evaluate at the configured points; end the MLflow run FINISHED, FAILED (exception or
non-finite loss, reason tagged) or KILLED (SIGTERM/SIGUSR2: checkpoint written first).
"""
from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import make_grid, save_image

from models.config import ConfigError
from models.transformer import build_model

from . import distributed
from .checkpoint import keep_copy, load_checkpoint, save_checkpoint
from .configure import ResolvedConfig, flatten, resolve, to_yaml
from .data import StepBatches, build_dataset
from .ema import EMA
from .evaluate import build_metric, generate
from .objectives import make_objective
from .optim import base_lr, build_optimizer, clip_at, lr_at
from .tracking import NullTracker, Tracker, write_json

EXIT_INTERRUPTED = 3


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
    """Every step's randomness (noise, t, label dropout, hints, dropout) derives from (seed, rank, step),
    so resuming needs no generator state and is exact."""
    return (seed * 1_000_003 + rank * 7_919 + step) % (2 ** 63)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda: no CUDA device is available")
    return torch.device(name)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20      # KiB on Linux


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
    def __init__(self, resolved: ResolvedConfig):
        self.resolved = resolved
        cfg = self.cfg = resolved.cfg
        self.device = pick_device(cfg.run.device)
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"

        # Everything that can refuse the config comes before any MLflow run or file is created.
        self.dataset = build_dataset(cfg.data)
        if cfg.model.num_classes not in (0, self.dataset.num_classes):     # 0: unconditional, labels unused
            raise ConfigError(f"model.num_classes={cfg.model.num_classes}: the dataset {cfg.data.name!r} has "
                              f"{self.dataset.num_classes} classes (or 0 for an unconditional model)")
        self.objective = make_objective(cfg.objective, cfg.model)
        self.encoder = None
        if cfg.model.repa and cfg.repa.weight > 0:
            from .repa import RepaEncoder
            self.encoder = RepaEncoder(cfg.repa.encoder, cfg.repa.encoder_weights, cfg.model.grid_size,
                                       device=self.device)
            if self.encoder.dim != cfg.model.repa_dim:
                raise ConfigError(f"model.repa_dim={cfg.model.repa_dim}: the encoder {cfg.repa.encoder} "
                                  f"gives {self.encoder.dim}-d features")
        self.env = distributed.init(self.device)
        self.metric = build_metric(cfg, self.dataset, self.device) if self.env.is_main else None
        self.batches = StepBatches(self.dataset, cfg.train.global_batch, cfg.run.seed, self.env.rank,
                                   self.env.world_size, cfg.data.hflip, cfg.data.num_workers)
        spe = self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = cfg.train.steps or math.ceil(cfg.train.epochs * spe)
        self.eval_steps = sorted({round(e * spe) for e in cfg.eval.at_epochs} | set(cfg.eval.at_steps)
                                 | ({self.total_steps} if cfg.eval.at_end else set()))
        self.eval_steps = [s for s in self.eval_steps if 0 < s <= self.total_steps] if cfg.eval.metric != "none" else []

        torch.manual_seed(cfg.run.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.ema = EMA(self.model, cfg.ema.decays)
        self.lr0 = base_lr(cfg.optim, cfg.train.global_batch)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr0, fused=self.device.type == "cuda")
        self.ddp = None
        if self.env.world_size > 1:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.env.local_rank] if self.device.type == "cuda" else None)
        net = self.ddp or self.model
        self.net = torch.compile(net) if cfg.train.compile else net
        self.step = 0
        self.run_id = None

    # ---- state -------------------------------------------------------------------------------

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "epoch": self.step / self.steps_per_epoch, "mlflow_run_id": self.run_id or "",
                "signature": self.resolved.signature, "config": to_yaml(self.cfg)}

    def resume(self) -> bool:
        if self.cfg.run.resume != "auto" or not self.ckpt_path.exists():
            return False
        state = load_checkpoint(self.ckpt_path)
        if state["signature"] != self.resolved.signature:
            raise ConfigError(f"run.name={self.cfg.run.name!r}: {self.ckpt_path} holds a run of another config "
                              f"(signature {state['signature']} != {self.resolved.signature}); choose another "
                              f"run.name or run.resume=never")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.run_id = state["mlflow_run_id"] or None
        return True

    def save(self) -> None:
        if self.env.is_main:
            save_checkpoint(self.state(), self.ckpt_path)

    # ---- one step ----------------------------------------------------------------------------

    def losses(self, x, y, generator) -> dict[str, torch.Tensor]:
        cfg, objective = self.cfg, self.objective
        B = x.shape[0]
        drop = torch.rand(B, generator=generator, device=self.device) < cfg.train.label_dropout
        if cfg.model.num_classes == 0:            # unconditional: the null label (index 0) for every sample
            drop = torch.ones_like(drop)
        y = torch.where(drop, torch.full_like(y, cfg.model.num_classes), y)
        t = objective.sample_t(B, generator, self.device)
        eps = objective.sample_noise(x, generator)
        x_t = objective.corrupt(x, eps, t)
        hint = mask = weight = None
        if cfg.model.hint_fraction > 0:          # GT pixel hints: reveal clean pixels, down-weight their loss
            mask = torch.rand(B, 1, *x.shape[2:], generator=generator, device=self.device) < cfg.model.hint_fraction
            hint = x
            weight = torch.where(mask, cfg.model.hint_loss_weight, 1.0)
        bf16 = cfg.train.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.net(x_t, objective.network_time(t), y, hint, mask)
        terms = objective.loss(out.prediction.float(), x, eps, x_t, t, weight)
        if self.encoder is not None:
            from .repa import repa_loss
            terms["repa"] = repa_loss(out.repa.float(), self.encoder(x))
            terms["loss"] = terms["loss"] + cfg.repa.weight * terms["repa"]
        return terms

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimizer step on this rank's batch of the current step."""
        cfg = self.cfg
        seed = step_seed(cfg.run.seed, self.env.rank, self.step)
        torch.manual_seed(seed)
        generator = torch.Generator(self.device).manual_seed(seed)
        lr = lr_at(self.step, cfg.optim, self.lr0, self.steps_per_epoch, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        accum = cfg.train.grad_accum
        totals: dict[str, torch.Tensor] = {}
        for xb, yb, i in zip(x.chunk(accum), y.chunk(accum), range(accum)):
            last = i == accum - 1
            with (self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()):
                terms = self.losses(xb, yb, generator)
                (terms["loss"] / accum).backward()
            for key, value in terms.items():
                totals[key] = totals.get(key, 0) + value.detach() / accum
        clip = clip_at(self.step, cfg.optim, self.steps_per_epoch)
        totals["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        totals["lr"] = torch.tensor(lr)
        return totals

    # ---- evaluation --------------------------------------------------------------------------

    def evaluate(self, tracker) -> dict[str, float]:
        cfg = self.cfg
        ema_model = self.ema.model_copy(self.model, cfg.ema.eval_decay)
        images, labels = generate(ema_model, self.objective, cfg, cfg.eval.num_samples,
                                  seed=cfg.run.seed + self.step, env=self.env, device=self.device)
        if not self.env.is_main:
            return {}
        metrics = {k: float(v) for k, v in self.metric.evaluate(images, labels).items()} if self.metric else {}
        epoch = self.step / self.steps_per_epoch
        grid_path = self.run_dir / "samples" / f"step{self.step:08d}.png"
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid = make_grid(images[:cfg.eval.grid_samples], nrow=min(cfg.model.num_classes or 8, cfg.eval.grid_samples),
                         normalize=True, value_range=(-1, 1))
        save_image(grid, grid_path)
        tracker.log_artifact(grid_path, "samples")
        # Also under point-named keys, so a table of "FD at epoch 80" is one MLflow query for a sweep.
        at_points = {f"{k}/step_{self.step}": v for k, v in metrics.items()}
        at_points.update({f"{k}/epoch_{epoch:g}": v for k, v in metrics.items()})
        tracker.log_metrics({**metrics, **at_points, "epoch": epoch}, self.step)
        if cfg.checkpoint.keep_at_eval:
            self.save()
            keep_copy(self.ckpt_path, f"step{self.step:08d}.pt")
        return metrics

    # ---- the run -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.cfg
        resumed = self.resume()
        tags = {"experiment": cfg.experiment, "preset": self.resolved.model_preset,
                "signature": self.resolved.signature, "checkpoint": str(self.ckpt_path.resolve())}
        if self.encoder is not None and self.encoder.random_weights:
            tags["repa_encoder"] = "random"
        if "SLURM_JOB_ID" in os.environ:
            array = os.environ.get("SLURM_ARRAY_JOB_ID")
            tags["slurm_job_id"] = (f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array
                                    else os.environ["SLURM_JOB_ID"])
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tracker = Tracker(cfg.tracking, self.run_dir, cfg.run.name, self.run_id, tags, flatten(cfg))
            self.run_id = tracker.run_id
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
            if not resumed:
                tracker.log_artifact(self.run_dir / "config.yaml")
        else:
            tracker = NullTracker()
        stop = StopFlag()
        stop.install()
        metrics: dict[str, float] = {}
        try:
            metrics = self._loop(tracker, stop)
        except Interrupted:
            tracker.set_tags({"interrupted_at_step": str(self.step)})
            tracker.finish("KILLED")
            raise
        except BaseException as err:
            tracker.finish("FAILED", reason=f"{type(err).__name__}: {err}")
            raise
        finally:
            stop.restore()
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
        window_start, window_steps = time.perf_counter(), 0
        metrics: dict[str, float] = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        batches = self.batches.iterate(self.step)      # prefetching workers for image folders
        while self.step < self.total_steps:
            totals = self.train_step(*next(batches))
            for key, value in totals.items():
                window[key] = window.get(key, 0) + value
            window_steps += 1
            boundary = self.step % cfg.train.log_every == 0 or self.step == self.total_steps
            if boundary or self.step % cfg.checkpoint.every_steps == 0 or stop.signal or self.step in self.eval_steps:
                means = {k: float(v) / window_steps for k, v in window.items()}
                if not (math.isfinite(means["loss"]) and math.isfinite(means["grad_norm"])):
                    raise NonFiniteLoss(f"non-finite loss {means['loss']} or gradient norm {means['grad_norm']} "
                                        f"in the steps up to {self.step}")
                if boundary:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    elapsed = time.perf_counter() - window_start
                    means["images_per_s"] = window_steps * cfg.train.global_batch / elapsed
                    means["peak_memory_gb"] = peak_memory_gb(self.device)
                    means["epoch"] = self.step / self.steps_per_epoch
                    means["step"] = self.step
                    means["heartbeat"] = time.time()          # lets `run_sweep.py status` age runs in one query
                    tracker.log_metrics(means, self.step)
                    progress.update(self.step, means)
                    window, window_start, window_steps = {}, time.perf_counter(), 0
            if self.step % cfg.checkpoint.every_steps == 0 or self.step == self.total_steps:
                self.save()
            if self.step in self.eval_steps:
                metrics = self.evaluate(tracker)
                progress.note(f"step {self.step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            if stop.signal:
                self.save()
                raise Interrupted(f"signal {stop.signal} at step {self.step}; checkpoint {self.ckpt_path}", stop.signal)
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


def train(resolved: ResolvedConfig) -> RunResult:
    trainer = Trainer(resolved)
    try:
        return trainer.run()
    finally:
        distributed.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        result = train(resolve(argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"done: {result.step} steps, run {result.run_id} in {result.run_dir}"
          + "".join(f", {k}={v:.4g}" for k, v in result.metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
