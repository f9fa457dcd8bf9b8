"""CPU step-time cost of the 2026 recipe switches (PixelGen's perceptual losses, DeCo's frequency-aware loss, PRX's
Muon) on a small config, and the size and forward cost of the frozen networks the perceptual losses add.

    python benchmarks/bench_recipe_switches.py                          # tiny_mnist (the sweep's run): 16 px, batch 32
    python benchmarks/bench_recipe_switches.py --experiment tiny_digits # 32 px RGB, batch 64

Each row is the real training loop (data, draws, the losses, clipping, the optimizer, the EMA, logging every 10
steps) of the experiment with one switch on; the rows are measured in turns (`--rounds` rounds of `--steps`
steps each, after 2 warm-up steps) and each row reports its median round, so that a machine shared with other
work slows every row alike. The perceptual networks run with random weights (nothing downloads; the cost is
the same). Their parameters and forward multiply-accumulates (torch.utils.flop_counter: matmuls and
convolutions) follow for one image at the run's size and at PixelGen's 256 px.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.configure import resolve
from harness.trainer import StopFlag, Trainer

PERCEPTUAL_RANDOM = ["perceptual.vgg_weights=random", "perceptual.encoder_weights=random"]
SWITCHES = {
    "baseline (AdamW, flow loss)": [],
    "+ DeCo frequency loss (weight 1)": ["objective.freq_weight=1.0"],
    "+ PRX Muon": ["optim.optimizer=muon"],
    "+ PixelGen LPIPS (0.1, t >= 0.3)": ["perceptual.lpips_weight=0.1", "perceptual.t_min=0.3", *PERCEPTUAL_RANDOM],
    "+ PixelGen P-DINO (0.01, t >= 0.3)": ["perceptual.dino_weight=0.01", "perceptual.t_min=0.3", *PERCEPTUAL_RANDOM],
    "+ LPIPS + P-DINO (PixelGen-XL's)": ["perceptual.lpips_weight=0.1", "perceptual.dino_weight=0.01",
                                         "perceptual.t_min=0.3", *PERCEPTUAL_RANDOM],
}


def steps_time(trainer: Trainer, steps: int) -> float:
    """Seconds per step of the training loop over `steps` steps."""
    start = time.perf_counter()
    trainer.total_steps = trainer.step + steps
    trainer._loop(tracker(trainer), StopFlag())
    return (time.perf_counter() - start) / steps


def tracker(trainer: Trainer):
    from harness.configure import flatten
    from harness.tracking import Tracker
    if not hasattr(trainer, "_bench_tracker"):
        trainer._bench_tracker = Tracker(trainer.cfg.tracking, trainer.run_dir, "bench", None, {}, flatten(trainer.cfg))
    return trainer._bench_tracker


def network_costs(size: int) -> list[str]:
    """Parameters and forward GMACs of the perceptual networks for one image of `size` pixels (on meta tensors):
    LPIPS compares the prediction with the target in one call, P-DINO reads each once."""
    from harness.config import PerceptualConfig
    from harness.perceptual import dino_encoder, lpips_network
    image = torch.empty(1, 3, size, size, device="meta")
    lpips = lpips_network("random").to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        lpips(image, image)
    lines = [f"{size} px: LPIPS (VGG16 trunk + linear heads) {sum(p.numel() for p in lpips.parameters()) / 1e6:.2f} M "
             f"parameters, {counter.get_total_flops() / 2e9:.3f} GMACs for a prediction and its target"]
    dino = dino_encoder(PerceptualConfig(dino_weight=0.01, encoder_weights="random"), size).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        dino(image)
    params = sum(p.numel() for p in dino.parameters())
    lines.append(f"{size} px: P-DINO ({dino.name} at {dino.image_size} px) {params / 1e6:.2f} M parameters, "
                 f"{counter.get_total_flops() / 2e9:.3f} GMACs per image read")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="tiny_mnist")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a sweep lane runs on one core)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix="bench_recipe_switches_")
    trainers = {}
    for i, (name, extra) in enumerate(SWITCHES.items()):
        overrides = [f"+experiment={args.experiment}", "run.device=cpu", f"run.out_dir={out}", f"run.name=row{i}",
                     "eval.metric=none", "train.log_every=10", f"checkpoint.every_steps={10 ** 9}", *extra,
                     *args.overrides]
        trainers[name] = Trainer(resolve(overrides))
        steps_time(trainers[name], 2)                       # warm-up
    times = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            times[name].append(steps_time(trainer, args.steps))
    cfg = next(iter(trainers.values())).cfg
    print(f"experiment={args.experiment} ({cfg.model.image_size} px, {cfg.model.in_channels} channel(s), batch "
          f"{cfg.train.global_batch}) torch={torch.__version__} threads={torch.get_num_threads()} "
          f"rounds={args.rounds} x {args.steps} steps")
    base = statistics.median(times[next(iter(times))])
    print(f"{'row':36s} {'step ms':>8s} {'min ms':>7s} {'max ms':>7s} {'cost':>7s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:36s} {median * 1e3:8.1f} {min(values) * 1e3:7.1f} {max(values) * 1e3:7.1f} "
              f"{100 * (median / base - 1):+6.0f}%")
    for size in sorted({cfg.model.image_size, 256}):
        print("\n".join(network_costs(size)))


if __name__ == "__main__":
    main()
