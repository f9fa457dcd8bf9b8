"""CPU training-step cost of the 2026 pixel-space switches on one small config (issue 25).

The base is PixelDiT's patch blocks without the pixel pathway (DiT's final layer): width 128, 8 blocks, 4
heads, 32 px with patch 4 (64 tokens), fp32; each row turns one switch on. A step is forward, backward and
an AdamW step (`bench_models.time_steps`); each row's time is the best of `--repeats` means of `--steps` steps,
taken round robin over the rows, as the machine is shared. FLOPs per image: the sampling forward and the
training forward (token routing runs fewer tokens through its route in training).

    python benchmarks/bench_switches.py [--batch 16] [--steps 10] [--repeats 3] [--threads 1]

One thread by default: on a shared, loaded machine two threads that wait on each other cost far more than
they gain.
"""
from __future__ import annotations

import argparse

import torch
from bench_models import time_steps

from models.complexity import count_flops
from models.families import build_model
from models.presets import model_config

BASE = ["pixel_pathway=false", "repa=false", "input_size=32", "patch_size=4", "hidden_size=128", "depth=8",
        "num_heads=4", "num_classes=10"]
ROUTE = ["routing_start=2", "routing_end=6"]
ROWS = {
    "linear (DiT final layer)": [],
    "decoder=deco (32 wide, 3 blocks)": ["decoder=deco"],
    "decoder=nerf (64 wide, 4 blocks)": ["decoder=nerf", "decoder_dim=64", "decoder_depth=4"],
    "token_routing=tread (0.5, 2..6)": ["token_routing=tread", *ROUTE],
    "token_routing=sprint (0.75, 2..6)": ["token_routing=sprint", "routing_fraction=0.75", *ROUTE],
    "moe_experts=12 (width 2D)": ["moe_experts=12"],
    "moe_experts=12 (width 1.5D)": ["moe_experts=12", "moe_expert_hidden=192"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, metavar="WORD", help="rows whose label has a WORD")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = {label: o for label, o in ROWS.items() if args.only is None or any(w in label for w in args.only)}
    models = {}
    for label, overrides in rows.items():
        cfg = model_config("pixeldit_xl", BASE + overrides)
        torch.manual_seed(0)
        models[label] = cfg, build_model(cfg).train()
    times = {label: [] for label in rows}
    for _ in range(args.repeats):                 # round robin: a load change on the machine hits every row
        for label, (cfg, model) in models.items():
            times[label].append(time_steps(model, cfg, args.batch, device, args.steps, warmup=2, bf16=False))
    print(f"cpu threads={torch.get_num_threads()} batch={args.batch} torch={torch.__version__}")
    print(f"{'switch':36s} {'params(M)':>10s} {'MFLOPs/img':>11s} {'train MFLOPs':>13s} {'ms/step':>9s} "
          f"{'x first':>8s}")
    first = None
    for label, (cfg, model) in models.items():
        ms = 1e3 * min(times[label])
        first = first or ms
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{label:36s} {params:10.2f} {count_flops(cfg) / 1e6:11.1f} "
              f"{count_flops(cfg, training=True) / 1e6:13.1f} {ms:9.1f} {ms / first:8.2f}")


if __name__ == "__main__":
    main()
