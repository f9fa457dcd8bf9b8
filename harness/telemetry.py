"""How efficiently a run trains, logged with every window of `train.log_every` steps (metric_registry.py):

    images_per_s     images of the global batch per second of training (checkpoints and evaluations excluded)
    step_time_s      seconds per optimizer step;  = data_wait_s + compute_s, up to the loop's bookkeeping
    data_wait_s      per step, the time the device waited for the next batch
    compute_s        per step, the step itself (forward, backward, optimizer, EMA)
    peak_memory_gb   the device's peak memory (GPU: allocated by torch; CPU: the process's peak RSS)
    model_tflops     the model's training FLOPs per second per device (forward x 3; harness/estimates.py)
    mfu              model_tflops / the device's dense peak (harness/accelerators.py); not logged on the CPU or
                     on a GPU the table does not know (the run says so once, and tags why)

On the CPU the split is wall-clock time around fetching the batch and around the step. On a GPU it is read from
CUDA events on the stream (no synchronisation per step): `data_wait_s` is the time the GPU sat idle between the
previous step's work and the next batch's arrival, `compute_s` the time from the step's first to its last queued
work, so a CPU that runs ahead of a busy GPU does not count as waiting.

GPU runs also log MLflow's system metrics (GPU utilisation and memory, CPU, disk, network; `system/...`, per node
when a run spans several), from the first process of each node.
"""
from __future__ import annotations

import socket
import time

import torch

from .accelerators import Accelerator, identify, matmul_precision
from .estimates import TrainingFlops


class StepTimer:
    """Data wait and compute of the steps of a window: `fetching()` before asking for the batch, `computing()`
    once it is here, `done()` after the step; `window()` gives the means per step and starts a new window."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple] = []          # per step: (fetch, compute, end) as perf_counter times or CUDA events

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def fetching(self) -> None:
        self.marks.append((self._mark(),))

    def computing(self) -> None:
        self.marks[-1] += (self._mark(),)

    def done(self) -> None:
        self.marks[-1] += (self._mark(),)

    def window(self) -> dict[str, float]:
        """{"data_wait_s", "compute_s"}: means per step since the last window (on a GPU, call after a
        synchronisation: the events must have run)."""
        steps = [m for m in self.marks if len(m) == 3]
        self.marks = []
        if not steps:
            return {}
        if self.cuda:
            wait = sum(a.elapsed_time(b) for a, b, _ in steps) / 1e3
            compute = sum(b.elapsed_time(c) for _, b, c in steps) / 1e3
        else:
            wait = sum(b - a for a, b, _ in steps)
            compute = sum(c - b for _, b, c in steps)
        return {"data_wait_s": wait / len(steps), "compute_s": compute / len(steps)}


class Efficiency:
    """MFU and achieved model FLOP/s of a run on its device, with the one line that says what they are."""

    def __init__(self, flops: TrainingFlops, device_name: str, precision: str):
        self.flops = flops
        self.device_name = device_name              # `device_name(device)`: the CUDA device's name, or "cpu"
        self.accelerator: Accelerator | None = identify(device_name) if device_name != "cpu" else None
        self.precision = matmul_precision(precision, torch.get_float32_matmul_precision())
        self.peak_tflops = self.accelerator.peak_tflops(self.precision) if self.accelerator else None

    def metrics(self, images_per_s: float, world_size: int) -> dict[str, float]:
        """{"model_tflops"[, "mfu"]} per device, from the run's throughput over all devices."""
        tflops = self.flops.model_per_image * images_per_s / world_size / 1e12
        return {"model_tflops": tflops, **({"mfu": tflops / self.peak_tflops} if self.peak_tflops else {})}

    def describe(self) -> str:
        """What MFU is computed against (or why it is not), and the FLOPs it leaves out."""
        counted = (f"model {self.flops.model_per_image / 1e9:.4g} GFLOPs/image (forward x 3)"
                   + (f"; REPA encoder {self.flops.encoder_per_image / 1e9:.4g} GFLOPs/image" if
                      self.flops.encoder_per_image else "")
                   + f" and EMA {self.flops.ema_per_step / 1e9:.3g} GFLOPs/step not counted in it")
        if self.peak_tflops is None:
            why = ("the CPU has no peak FLOP/s in harness/accelerators.py" if self.device_name == "cpu"
                   else f"{self.device_name} is not in harness/accelerators.py")
            return f"MFU: not computed ({why}); {counted}"
        return (f"MFU: against {self.accelerator.name}'s dense {self.precision} peak {self.peak_tflops:g} TFLOP/s "
                f"({self.device_name}); {counted}")

    def tags(self) -> dict[str, str]:
        return {"device_name": self.device_name, "mfu_basis": self.describe(),
                "flops_model_per_image": str(self.flops.model_per_image),
                "flops_repa_encoder_per_image": str(self.flops.encoder_per_image),
                "flops_ema_per_step": str(self.flops.ema_per_step)}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def system_metrics(run_id: str, tracking_uri: str, device: torch.device, local_rank: int, world_size: int,
                   resumed: bool, force: bool = False):
    """MLflow's system-metrics monitor for a GPU run, started on each node's first process (None elsewhere, and
    on the CPU unless `force`). Several ranks: metrics under `system/<host>/`. `.finish()` stops it."""
    if not (device.type == "cuda" or force) or local_rank != 0:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=tracking_uri,
                                   node_id=socket.gethostname() if world_size > 1 else None)
    monitor.start()
    return monitor
