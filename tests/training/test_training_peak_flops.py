"""MFU's denominator: the peak of the device actually used, an override, or "unknown" (no MFU)."""

import pytest
import torch

from lamamba.config import load_config
from lamamba.training.config import MonitorConfig, TrainConfig
from lamamba.training.peak_flops import matmul_dtype, resolve_peak, table_peak

CUDA = torch.device("cuda:0")  # only named here: get_device_name is replaced per test


@pytest.mark.parametrize("name,dtype,label,tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", "H100 SXM", 989.4),
    ("NVIDIA H100 PCIe", "bf16", "H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", "tf32", "H100 NVL", 417.5),
    ("NVIDIA H200", "bf16", "H200 SXM", 989.4),
    ("NVIDIA H200 NVL", "bf16", "H200 NVL", 835.5),
    ("NVIDIA GH200 480GB", "fp32", "GH200", 66.9),
    ("NVIDIA A100-SXM4-80GB", "bf16", "A100", 312.0),
    ("NVIDIA A100 80GB PCIe", "tf32", "A100", 156.0),
    ("NVIDIA L40S", "bf16", "L40S", 362.05),
    ("NVIDIA L40", "bf16", "L40", 181.05),
    ("NVIDIA L4", "bf16", "L4", 121.0),
    ("NVIDIA A10", "fp32", "A10", 31.2),
    ("Tesla V100-SXM2-32GB", "fp16", "V100 SXM2", 125.0),
    ("Tesla V100-PCIE-16GB", "fp32", "V100 PCIe", 14.0),
    ("Tesla T4", "fp16", "T4", 65.0),
    ("AMD Instinct MI300X", "bf16", "MI300X", 1307.4),
])
def test_peak_table_by_device_name_and_dtype(name, dtype, label, tflops):
    assert table_peak(name, dtype) == (label, tflops)


def test_a_dtype_the_device_lacks_and_an_unknown_device_have_no_peak():
    assert table_peak("Tesla V100-SXM2-32GB", "bf16") == ("V100 SXM2", None)
    assert table_peak("NVIDIA GeForce GTX 1080", "fp32") is None


def test_matmul_dtype_follows_precision_and_tf32():
    assert matmul_dtype("bf16", tf32=True) == "bf16" == matmul_dtype("bf16", tf32=False)
    assert matmul_dtype("fp32", tf32=True) == "tf32"
    assert matmul_dtype("fp32", tf32=False) == "fp32"


def test_resolve_peak_uses_the_device_actually_used(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    peak = resolve_peak(None, CUDA, "bf16")
    assert peak.tflops == 312.0  # not the H100's 989
    assert "NVIDIA A100-SXM4-40GB" in peak.source and "A100" in peak.source and "bf16" in peak.source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert resolve_peak(None, CUDA, "tf32").tflops == 494.7


def test_unknown_devices_report_no_mfu_unless_overridden(monkeypatch):
    cpu = resolve_peak(None, torch.device("cpu"), "bf16")
    assert cpu.tflops is None and "unknown" in cpu.source and "monitor.peak_tflops" in cpu.source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    other = resolve_peak(None, CUDA, "bf16")
    assert other.tflops is None and "'Some Future GPU' is not in the peak table" in other.source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert resolve_peak(None, CUDA, "bf16").tflops is None  # a T4 has no bf16 tensor cores
    override = resolve_peak(150.0, CUDA, "bf16")
    assert override.tflops == 150.0 and "monitor.peak_tflops=150" in override.source
    assert resolve_peak(150.0, torch.device("cpu"), "bf16").tflops == 150.0
    off = resolve_peak(0.0, CUDA, "bf16")
    assert off.tflops is None and "MFU not reported" in off.source


def test_peak_tflops_config_defaults_to_the_device():
    assert MonitorConfig().peak_tflops is None
    assert load_config(TrainConfig, None, ["monitor.peak_tflops=312"]).monitor.peak_tflops == 312.0
    with pytest.raises(Exception, match="peak_tflops"):
        load_config(TrainConfig, None, ["monitor.peak_tflops=-1"])
