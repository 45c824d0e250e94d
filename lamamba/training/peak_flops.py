"""The peak dense FLOP/s of the device a run trains on, the denominator of MFU.

Figures are the vendors' dense (no sparsity) tensor-core peaks per device, in TFLOP/s, for the
math a run's matmuls use: ``bf16`` (or ``fp16``) under bf16 training, ``tf32`` for fp32 matmuls
with TF32 on, ``fp32`` for IEEE fp32. A device that is not in the table, the CPU, or a dtype the
device lacks has no known peak: MFU is then not reported unless ``monitor.peak_tflops`` gives one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# (pattern on torch.cuda.get_device_name, label, {dtype: dense TFLOP/s}); first match wins, so the
# more specific names come first ("GH200" before "H200", "H100 PCIe" before "H100").
_HOPPER_SXM = {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}
_HOPPER_NVL = {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}
PEAK_TFLOPS: tuple[tuple[str, str, dict[str, float]], ...] = (
    (r"\bGH200\b", "GH200", _HOPPER_SXM),
    (r"\bH200\b.*\bNVL\b", "H200 NVL", _HOPPER_NVL),
    (r"\bH200\b", "H200 SXM", _HOPPER_SXM),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", _HOPPER_NVL),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (r"\bH100\b", "H100 SXM", _HOPPER_SXM),
    (r"\bA100\b", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"\bL40S\b", "L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (r"\bL40\b", "L40", {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\bA10\b", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"\bV100\b.*\bPCIE\b", "V100 PCIe", {"fp16": 112.0, "fp32": 14.0}),
    (r"\bV100\b", "V100 SXM2", {"fp16": 125.0, "fp32": 15.7}),
    (r"\bT4\b", "T4", {"fp16": 65.0, "fp32": 8.1}),
    (r"\bMI300X\b", "MI300X", {"bf16": 1307.4, "fp16": 1307.4, "tf32": 653.7, "fp32": 163.4}),
)


@dataclass(frozen=True)
class Peak:
    """Per-device peak TFLOP/s (None = unknown: no MFU) and where the figure came from."""

    tflops: float | None
    source: str


def matmul_dtype(precision: str, tf32: bool) -> str:
    """The math of a run's matmuls: "bf16" under bf16 training, else "tf32" or "fp32"."""
    if precision in ("bf16", "bf16-autocast"):
        return "bf16"
    return "tf32" if tf32 else "fp32"


def table_peak(device_name: str, dtype: str) -> tuple[str, float | None] | None:
    """(table label, TFLOP/s or None if the device lacks ``dtype``) for a device name, or None."""
    for pattern, label, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return label, peaks.get(dtype)
    return None


def resolve_peak(override: float | None, device: torch.device, dtype: str) -> Peak:
    """The peak for MFU: ``override`` (monitor.peak_tflops) if given (0 = no MFU), else the table's
    figure for ``device`` and ``dtype``; the source says which, for the log."""
    if override is not None:
        if override == 0:
            return Peak(None, "monitor.peak_tflops=0: MFU not reported")
        return Peak(float(override), f"monitor.peak_tflops={override:g} (set in the config)")
    if device.type != "cuda":
        return Peak(None, f"peak FLOP/s of {device.type} is unknown: MFU not reported "
                          "(set monitor.peak_tflops to report it)")
    name = torch.cuda.get_device_name(device)
    found = table_peak(name, dtype)
    if found is None:
        return Peak(None, f"{name!r} is not in the peak table (lamamba/training/peak_flops.py): MFU not "
                          "reported (set monitor.peak_tflops to report it)")
    label, tflops = found
    if tflops is None:
        return Peak(None, f"{name!r} ({label}) has no {dtype} peak in the table: MFU not reported "
                          "(set monitor.peak_tflops to report it)")
    return Peak(tflops, f"{name} = {label}, dense {dtype}: {tflops:g} TFLOP/s (peak table)")
