"""What a sweep will cost before it is submitted: GPU-hours and memory per GPU of every run on a target GPU
(`run_sweep.py SWEEP --dry-run [--gpu h100_sxm]`), from harness/estimates.py, computed once per distinct run
configuration (seeds share theirs), with the sweep's total and every assumption said in words.
"""
from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass

from harness.accelerators import Accelerator
from harness.estimates import CostEstimate, MemoryEstimate, cost_estimate, memory_estimate

from .plan import PlannedRun

GIB = 2 ** 30
WIDTH = 120                       # the summary's lines are wrapped at this width


@dataclass(frozen=True)
class RunCost:
    cost: CostEstimate
    memory: MemoryEstimate
    capacity_gb: float            # the target GPU's memory (its datasheet's GB, compared as GiB)

    @property
    def fits(self) -> bool:
        return self.memory.total / GIB <= self.capacity_gb


def _key(run: PlannedRun) -> str:
    """What decides a run's cost: its config but the seed, and its ranks."""
    cfg = dataclasses.replace(run.cfg, run=dataclasses.replace(run.cfg.run, seed=0))
    return repr(cfg) + f"|{run.executor.world_size}"


def plan_costs(runs: list[PlannedRun], target: Accelerator) -> dict[str, RunCost]:
    """Run name -> its estimates on `target` (runs freshly planned: their configs are resolved)."""
    by_key: dict[str, RunCost] = {}
    costs = {}
    for run in runs:
        key = _key(run)
        if key not in by_key:
            by_key[key] = RunCost(cost_estimate(run.cfg, target), memory_estimate(run.cfg, run.executor.world_size),
                                  target.memory_gb)
        costs[run.run_name] = by_key[key]
    return costs


def run_columns(cost: RunCost) -> str:
    """The plan line's columns: GPU-hours, memory per GPU (marked ! when it does not fit the target)."""
    return f"{_hours(cost.cost.gpu_hours):>9s} GPU-h {cost.memory.total / GIB:7.2f} GiB/GPU{' ' if cost.fits else '!'}"


def _hours(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}" if hours >= 0.01 else "<0.01"


def _name(run: PlannedRun) -> str:
    return run.title.rsplit(" · ", 1)[0]


def summary(runs: list[PlannedRun], costs: dict[str, RunCost], target: Accelerator) -> list[str]:
    """The lines under the plan: the sweep's GPU-hours and what they assume, the memory per GPU of each distinct
    run in parts, and a warning for each that does not fit the target."""
    distinct = list({id(costs[r.run_name]): r for r in reversed(runs)}.values())[::-1]    # first run of each
    total = sum(costs[r.run_name].cost.gpu_hours for r in runs)
    amount = f"{_hours(total)} GPU-hours" if total >= 0.01 else f"{3600 * total:.2g} GPU-seconds"
    lines = [f"cost on {target.name}: {amount} for the sweep's {len(runs)} runs, each = training "
             f"FLOPs (model forward x 3) x images seen / (dense peak x MFU); evaluation not included. Peaks: "
             f"{target.source}"]
    groups: dict[tuple, list[str]] = {}
    for run in distinct:
        c = costs[run.run_name].cost
        groups.setdefault((c.mfu, c.mfu_source, c.peak_tflops), []).append(_name(run))
    for (mfu, source, peak), names in groups.items():
        which = "every run" if len(groups) == 1 else ", ".join(names)
        how = source or f"assumed: none measured for this model on {target.name} in BENCHMARKS.md"
        lines.append(f"  MFU {100 * mfu:.0f}% ({how}), dense peak {peak:g} TFLOP/s: {which}")
    notes = {costs[r.run_name].cost.images_note for r in distinct} - {None}
    lines += [f"  {note}" for note in sorted(notes)]
    encoder = max(costs[r.run_name].cost.flops.encoder_per_image for r in distinct)
    if encoder:
        lines.append(f"  REPA's encoder adds {encoder / 1e9:.4g} GFLOPs per image (forward only), the EMA a lerp per "
                     f"parameter and step: in a measured MFU's time, not in the model FLOPs")
    from harness.perceptual import active as perceptual_active  # torch: imported once a plan is costed
    if any(perceptual_active(r.cfg.perceptual) for r in distinct):
        lines.append("  PixelGen's perceptual networks (LPIPS VGG16, P-DINO), forward and backward to the image: not "
                     "in the model FLOPs either")
    lines.append("memory per GPU in GiB (parameters, gradients, optimizer state, EMA bank and frozen networks in "
                 "float32; activations: the peak of one forward + backward at the per-GPU batch, traced on fake "
                 "tensors; eager, before the allocator's fragmentation):")
    for run in distinct:
        m = costs[run.run_name].memory
        parts = ", ".join(f"{name} {value / GIB:.3g}" for name, value in m.parts().items() if value)
        setting = (f"batch {m.micro_batch}/GPU, {m.world_size} rank{'s' if m.world_size > 1 else ''}"
                   + (", FSDP" if m.sharded else "")
                   + (", activation checkpointing" if run.cfg.train.activation_checkpointing else ""))
        lines.append(f"  {_name(run)} ({setting}): {m.total / GIB:.3g} = {parts}")
    for run in distinct:
        cost = costs[run.run_name]
        if not cost.fits:
            lines.append(f"warning: {_name(run)}: {cost.memory.total / GIB:.1f} GiB per GPU exceeds the "
                         f"{target.name}'s {target.memory_gb:g} GB; lower the per-GPU batch (more ranks, "
                         f"train.grad_accum), or set train.activation_checkpointing=true or train.parallel=fsdp")
    return [wrapped for line in lines for wrapped in textwrap.wrap(
        line, WIDTH, initial_indent="", subsequent_indent=" " * (len(line) - len(line.lstrip()) + 4))]
