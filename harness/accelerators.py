"""Accelerators by name: their dense peak FLOP/s per precision and their memory, each number from its datasheet.

The peaks are DENSE tensor-core rates. NVIDIA's datasheets print the 2:4-structured-sparsity rate first (marked
"*" there: "with sparsity"), which is twice the dense rate; dividing model FLOPs by it halves the MFU. Sources:

* H100 SXM5 and H100 PCIe: NVIDIA H100 Tensor Core GPU datasheet (and the H100 whitepaper's Table 3): BF16
  1,979* / 1,513* TFLOP/s, TF32 989* / 756*, FP32 67 / 51 (no tensor cores), 80 GB.
* H100 NVL: the same datasheet, per GPU: BF16 1,671*, TF32 835*, FP32 60, 94 GB.
* H200 SXM and H200 NVL: NVIDIA H200 Tensor Core GPU datasheet: the H100's SXM5 and NVL rates (BF16 1,979* and
  1,671*, TF32 989* and 835*, FP32 67 and 60), 141 GB.
* GH200: NVIDIA GH200 Grace Hopper Superchip datasheet, its Hopper GPU: BF16 1,979*, TF32 989*, FP32 67, 96 GB.
* A100 (SXM4 and PCIe, 40 and 80 GB): NVIDIA A100 Tensor Core GPU datasheet: BF16 624* (312 dense), TF32 312*
  (156 dense), FP32 19.5.

A run's precision picks the column: bf16 autocast -> `bf16`; fp32 with torch's float32 matmul precision at
"highest" (torch's default: no TF32) -> `fp32`, at "high" or "medium" -> `tf32`. An accelerator not in the table
(and the CPU) has no peak: no MFU is computed for it (the run says so once).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accelerator:
    key: str                      # what `--gpu` and BENCHMARKS.md call it
    name: str                     # how people write it
    matches: tuple[str, ...]      # substrings of torch.cuda.get_device_name() that identify it (all must occur)
    bf16_tflops: float            # dense peaks, TFLOP/s
    tf32_tflops: float
    fp32_tflops: float
    memory_gb: float              # on-board memory as the datasheet states it (GB)
    source: str

    def peak_tflops(self, precision: str) -> float:
        """Dense peak for `precision` in ("bf16", "tf32", "fp32")."""
        return {"bf16": self.bf16_tflops, "tf32": self.tf32_tflops, "fp32": self.fp32_tflops}[precision]


H100_SHEET = "NVIDIA H100 Tensor Core GPU datasheet (dense = half the '*' sparsity figure)"
ACCELERATORS = (   # the more specific names first: "H100 NVL" before "H100"
    Accelerator("h100_nvl", "H100 NVL", ("H100", "NVL"), 835.5, 417.5, 60.0, 94, H100_SHEET),
    Accelerator("h100_pcie", "H100 PCIe", ("H100", "PCIe"), 756.5, 378.0, 51.0, 80, H100_SHEET),
    Accelerator("gh200", "GH200", ("GH200",), 989.4, 494.7, 67.0, 96,
                "NVIDIA GH200 Grace Hopper Superchip datasheet (dense = half the '*' sparsity figure)"),
    Accelerator("h100_sxm", "H100 SXM", ("H100",), 989.4, 494.7, 67.0, 80, H100_SHEET),
    Accelerator("h200_nvl", "H200 NVL", ("H200", "NVL"), 835.5, 417.5, 60.0, 141,
                "NVIDIA H200 Tensor Core GPU datasheet (dense = half the '*' sparsity figure)"),
    Accelerator("h200", "H200 SXM", ("H200",), 989.4, 494.7, 67.0, 141,
                "NVIDIA H200 Tensor Core GPU datasheet (dense = half the '*' sparsity figure)"),
    Accelerator("a100_40gb", "A100 40GB", ("A100", "40GB"), 312.0, 156.0, 19.5, 40,
                "NVIDIA A100 Tensor Core GPU datasheet (dense = half the '*' sparsity figure)"),
    Accelerator("a100_80gb", "A100 80GB", ("A100",), 312.0, 156.0, 19.5, 80,
                "NVIDIA A100 Tensor Core GPU datasheet (dense = half the '*' sparsity figure)"),
)
DEFAULT_TARGET = "h100_sxm"       # the dry run's target GPU unless `--gpu` names another


def by_key(key: str) -> Accelerator:
    """The accelerator a `--gpu` value names (KeyError for none)."""
    return next(a for a in ACCELERATORS if a.key == key)


def keys() -> list[str]:
    return [a.key for a in ACCELERATORS]


def identify(device_name: str) -> Accelerator | None:
    """The table's entry for a CUDA device name (`torch.cuda.get_device_name()`), None when it has none."""
    return next((a for a in ACCELERATORS if all(m.lower() in device_name.lower() for m in a.matches)), None)


def matmul_precision(train_precision: str, float32_matmul_precision: str) -> str:
    """The tensor-core column a run's matrix products run in: bf16 under autocast, else fp32 or TF32 as torch's
    `torch.get_float32_matmul_precision()` allows."""
    if train_precision == "bf16":
        return "bf16"
    return "fp32" if float32_matmul_precision == "highest" else "tf32"
