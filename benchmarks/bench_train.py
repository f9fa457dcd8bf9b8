"""Training-step throughput per objective, and the share of step time spent outside the model.

    python benchmarks/bench_train.py                      # CPU, the tiny_digits PixelDiT, 3 objectives
    python benchmarks/bench_train.py --device cuda --experiment pixeldit_xl_paper data.name=shapes ... [--compile]

"Inside the model" is forward + backward + optimizer step on a fixed batch; a full training step adds
data loading, t/noise/label-dropout sampling, the objective, gradient clipping, the EMA update and
MLflow logging (every `train.log_every` steps). Outside share = 1 - model time / full step time.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from harness.configure import resolve
from harness.trainer import StopFlag, Trainer

OBJECTIVES = {
    "flow / velocity (PixelDiT)": [],
    "flow / image, v-loss (JiT)": ["model.prediction=image", "objective.p_mean=-0.8", "objective.p_std=0.8"],
    "ddpm / eps + learned sigma (DiT)": ["model.prediction=noise", "model.learn_sigma=true", "objective.kind=ddpm",
                                         "eval.sampler.kind=ddpm"],
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(trainer: Trainer, steps: int) -> float:
    """Seconds per forward + backward + optimizer step on one fixed batch."""
    x, y = trainer.batches.batch(0)
    x, y = x.to(trainer.device), y.to(trainer.device)
    t = torch.rand(x.shape[0], device=trainer.device)
    bf16 = trainer.cfg.train.precision == "bf16"
    for i in range(steps + 2):
        if i == 2:
            sync(trainer.device)
            start = time.perf_counter()
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = trainer.net(x, t, y)
        out.prediction.float().square().mean().backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    sync(trainer.device)
    return (time.perf_counter() - start) / steps


def full_steps(trainer: Trainer, steps: int) -> float:
    """Seconds per step of the real training loop (with logging), after 2 warm-up steps."""
    trainer.total_steps = trainer.step + 2
    trainer._loop(trainer_tracker(trainer), StopFlag())
    sync(trainer.device)
    start = time.perf_counter()
    trainer.total_steps = trainer.step + steps
    trainer._loop(trainer_tracker(trainer), StopFlag())
    sync(trainer.device)
    return (time.perf_counter() - start) / steps


def trainer_tracker(trainer: Trainer):
    from harness.configure import flatten
    from harness.tracking import Tracker
    if not hasattr(trainer, "_bench_tracker"):
        trainer._bench_tracker = Tracker(trainer.cfg.tracking, trainer.run_dir, "bench", None, {}, flatten(trainer.cfg))
    return trainer._bench_tracker


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="tiny_digits")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="bench_train_")
    print(f"experiment={args.experiment} device={args.device} compile={args.compile} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}")
    print(f"{'objective':34s} {'batch':>5s} {'step ms':>8s} {'model ms':>9s} {'img/s':>7s} {'outside':>8s}")
    for name, extra in OBJECTIVES.items():
        overrides = [f"+experiment={args.experiment}", f"run.device={args.device}", f"run.out_dir={out}",
                     f"run.name={abs(hash(name))}", "eval.metric=none", "train.log_every=10",
                     f"checkpoint.every_steps={10 ** 9}", f"train.compile={args.compile}", *extra, *args.overrides]
        trainer = Trainer(resolve(overrides))
        step = full_steps(trainer, args.steps)
        model = model_only(trainer, args.steps)
        batch = trainer.cfg.train.global_batch
        print(f"{name:34s} {batch:5d} {step * 1e3:8.1f} {model * 1e3:9.1f} {batch / step:7.1f} "
              f"{100 * max(0.0, 1 - model / step):7.1f}%", flush=True)


if __name__ == "__main__":
    main()
