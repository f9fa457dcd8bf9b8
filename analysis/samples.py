"""One sample grid per table row, every row from the same noise and the same labels, so rows compare
image by image: the grid at column c and line l shows class c from the same starting noise in every row.

Each row's grid comes from its first finished seed: the run's final checkpoint (its MLflow `checkpoint`
tag), with the EMA weights it was evaluated with (`ema.eval_decay`), sampled by the run's own sampler
config (`eval.sampler`: kind, steps, guidance) from a generator seeded with GRID_SEED — the same
initial noise tensor for every row of the same image shape.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from harness.evaluate import to_images
from harness.sampling import sample
from harness.sweep.evaluation import load_decoder, load_ema_model

from .runs import SweepRuns

GRID_SEED = 0          # the noise of every grid
CPU_BUDGET_GFLOP = 5000.0   # without a GPU, rows whose grid would cost more (minutes on a CPU) are skipped
MAX_CLASSES = 10       # classes shown (the first ones); one column each
PER_CLASS = 2          # lines: samples per class, each from its own noise
MIN_SIDE = 64          # small images are enlarged (nearest) to at least this many pixels


@dataclass
class RowGrid:
    label: str
    grid: str                    # the grid point (JSON) of this table row
    path: Path | None            # the PNG, None when there is no grid (reason says why)
    seed: int | None = None
    step: int | None = None
    labels: list | None = None   # the class of each sample, line by line
    reason: str = ""


def grid_labels(num_classes: int) -> torch.Tensor:
    """Classes 0..min(C, MAX_CLASSES)-1, PER_CLASS times; an unconditional model (C = 0) gets its null
    label 0, as in evaluation."""
    if num_classes == 0:
        return torch.zeros(PER_CLASS * MAX_CLASSES, dtype=torch.long)
    return torch.arange(min(num_classes, MAX_CLASSES)).repeat(PER_CLASS)


@torch.no_grad()
def sample_row(checkpoint: str | Path, device: torch.device | None = None, seed: int = GRID_SEED):
    """(images in [-1, 1] (B, C, H, W), labels, config, step) of one run, from the fixed noise (a latent run's
    decoded by its VAE)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, objective, cfg, step = load_ema_model(checkpoint, device)
    labels = grid_labels(cfg.model.num_classes).to(device)
    shape = (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
    generator = torch.Generator(device).manual_seed(seed)
    out = sample(lambda x, t, y: model(x, t, y).prediction.float(), objective, cfg.eval.sampler, labels, shape,
                 generator, cfg.model.num_classes)
    return to_images(out, cfg.model, load_decoder(cfg, device)).cpu(), labels.cpu(), cfg, step


def sample_grids(sweep: SweepRuns, out_dir: str | Path, device: torch.device | None = None) -> list[RowGrid]:
    """One grid per table row (sweep row x grid point), in the sweep's order, written as
    `<out_dir>/<row>.png`; rows without a finished run or a readable checkpoint get a reason instead."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frame = sweep.frame
    grids = []
    for index, ((label, grid), group) in enumerate(frame.groupby(["label", "grid"], sort=False)):
        done = group[group["state"] == "done"].sort_values("seed")
        if done.empty:
            grids.append(RowGrid(label, grid, None, reason="no finished run"))
            continue
        run = done.iloc[0]
        checkpoint = run.get("checkpoint")
        if not isinstance(checkpoint, str) or not Path(checkpoint).is_file():
            grids.append(RowGrid(label, grid, None, int(run["seed"]),
                                 reason=f"checkpoint {checkpoint} is not readable from here"))
            continue
        cost = _sampling_gflop(run)
        if device.type == "cpu" and cost > CPU_BUDGET_GFLOP:
            grids.append(RowGrid(label, grid, None, int(run["seed"]), reason=f"about {cost:,.0f} GFLOP of sampling, "
                                 f"too much for a CPU: run the report where a GPU is visible"))
            continue
        images, labels, cfg, step = sample_row(checkpoint, device)
        side = images.shape[-1]
        if side < MIN_SIDE:
            images = F.interpolate(images, scale_factor=-(-MIN_SIDE // side), mode="nearest")
        columns = min(cfg.model.num_classes, MAX_CLASSES) or MAX_CLASSES
        path = out_dir / f"{index:02d}_{_slug(label, grid)}.png"
        save_image(make_grid(images, nrow=columns, normalize=True, value_range=(-1, 1), pad_value=1.0), path)
        grids.append(RowGrid(label, grid, path, int(run["seed"]), step, labels.tolist()))
    return grids


def _sampling_gflop(run) -> float:
    """Rough cost of one grid: forward GFLOPs x sampler steps x 2 (second-order solvers, guidance) x images."""
    steps = run.get("param.eval.sampler.steps")
    steps = int(steps) if isinstance(steps, str) and steps.isdigit() else 1
    return float(run["gflops"]) * steps * 2 * PER_CLASS * MAX_CLASSES


def _slug(label: str, grid: str) -> str:
    text = label + ("" if grid in ("{}", "", None) else "_" + "_".join(f"{v}" for v in json.loads(grid).values()))
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:60] or "row"
