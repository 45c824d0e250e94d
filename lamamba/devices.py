"""Which device a process computes on, and why: one policy for every entry point.

``select_device(requested, local_rank)`` answers for train ranks, sample workers, the evaluator
and encode tasks alike:

- ``"cpu"``: the CPU, as asked.
- ``"cuda"`` / ``"auto"`` with CUDA available: GPU ``LOCAL_RANK`` of the ones this process sees
  (torchrun starts one rank per GPU; a scheduler that binds one GPU per rank shows each rank a
  single device, which is then ``cuda:0``). ``"cuda:N"`` is device N as given.
- CUDA unavailable: a job that expects a GPU - it asked for ``cuda``, for the nccl backend, or the
  scheduler gave it GPUs (``CUDA_VISIBLE_DEVICES`` non-empty, ``SLURM_GPUS_ON_NODE`` > 0) -
  stops at once with :class:`GPUUnavailableError`, naming the torch build, its CUDA version, the
  driver and the devices visible. Only ``"auto"`` with none of those signs falls back to the CPU,
  and says so (the choice's ``fallback`` is set; the caller logs it once and records it).

The TF32 policy (``set_tf32``) is here too, so that training and sampling set it explicitly.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from typing import Mapping

import torch

DEVICE_CHOICES = ("auto", "cuda", "cpu")  # plus "cuda:N"


class GPUUnavailableError(RuntimeError):
    """The job expects a GPU and CUDA is unavailable; the message says why and what to do."""


@dataclass(frozen=True)
class CudaProbe:
    """What this process can see of CUDA (everything the diagnosis needs, nothing initialised twice)."""

    torch_version: str
    build_cuda: str | None  # torch.version.cuda; None for a CPU-only build
    available: bool
    device_count: int
    driver: str | None  # the NVIDIA kernel driver version, if one is loaded
    init_error: str  # what torch said when it could not initialise CUDA ("" if nothing)
    device_names: tuple[str, ...] = ()

    def explain(self) -> str:
        """Why CUDA is unavailable, and the fix, in one line."""
        if self.build_cuda is None:
            return (f"torch {self.torch_version} is a CPU-only build; install the CUDA build that matches "
                    f"the node's driver (docs/cluster.md, 'Installing on a GPU cluster')")
        driver = self.driver or "none loaded (no /proc/driver/nvidia/version, no nvidia-smi)"
        why = f" ({self.init_error})" if self.init_error else ""
        if self.driver is None:
            return (f"torch {self.torch_version} is built for CUDA {self.build_cuda} but no NVIDIA driver is "
                    f"loaded{why}: run on a GPU node, or check the driver")
        return (f"torch {self.torch_version} is built for CUDA {self.build_cuda}, NVIDIA driver {driver}, "
                f"{self.device_count} device(s) visible{why}: a driver older than the CUDA runtime needs "
                f"torch from the index of an older CUDA (docs/cluster.md)")


def _driver_version() -> str | None:
    try:
        text = open("/proc/driver/nvidia/version").read()
    except OSError:
        text = ""
    found = re.search(r"Kernel Module\s+([0-9.]+)", text)
    if found:
        return found.group(1)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out[0] if out else None
    return None


@functools.lru_cache(maxsize=1)
def probe_cuda() -> CudaProbe:
    """Probe torch's CUDA once per process (torch itself caches the answer)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    init_error = "; ".join(str(w.message).strip().splitlines()[0] for w in caught if "CUDA" in str(w.message))
    count = torch.cuda.device_count() if available else 0
    names = tuple(torch.cuda.get_device_name(i) for i in range(count))
    return CudaProbe(torch.__version__, torch.version.cuda, available, count, _driver_version(), init_error, names)


@dataclass(frozen=True)
class DeviceChoice:
    """The device picked and why; ``fallback`` is True when a GPU was possible in principle but
    the CPU is used (``auto`` on a machine without CUDA): the caller says so once."""

    device: torch.device
    reason: str
    fallback: bool = False

    def as_dict(self) -> dict[str, str | bool]:
        return {"device": str(self.device), "reason": self.reason, "fallback": self.fallback}


def _visible(env: Mapping[str, str]) -> str | None:
    """CUDA_VISIBLE_DEVICES when it names at least one device (Ray sets it empty for CPU work)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None or value.strip() in ("", "-1", "NoDevFiles", "none"):
        return None
    return value.strip()


def gpu_expectation(requested: str, env: Mapping[str, str], backend: str = "") -> str | None:
    """Why this job expects a GPU (a phrase for the error), or None if nothing says it does."""
    if requested.startswith("cuda"):
        return f"device={requested!r} was asked for"
    if requested == "cpu":
        return None
    if backend == "nccl":
        return "the nccl backend was asked for"
    visible = _visible(env)
    if visible is not None:
        return f"CUDA_VISIBLE_DEVICES={visible} gives this process GPUs"
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        gpus = env.get(key, "").split(":")[-1].strip()
        if gpus.isdigit() and int(gpus) > 0:
            return f"SLURM allocated GPUs ({key}={env[key]})"
    return None


def select_device(requested: str = "auto", local_rank: int = 0, env: Mapping[str, str] | None = None,
                  backend: str = "", probe: CudaProbe | None = None) -> DeviceChoice:
    """The device for this process; raises :class:`GPUUnavailableError` (see the module doc).

    requested: "auto" | "cuda" | "cuda:N" | "cpu"; local_rank: this process's rank on its node.
    """
    if requested not in DEVICE_CHOICES and not re.fullmatch(r"cuda:\d+", requested):
        raise ValueError(f"device: {requested!r} is not one of auto, cuda, cuda:N, cpu")
    env = os.environ if env is None else env
    if requested == "cpu":
        return DeviceChoice(torch.device("cpu"), "device='cpu' was asked for")
    probe = probe or probe_cuda()
    if not probe.available:
        expected = gpu_expectation(requested, env, backend)
        if expected is not None:
            raise GPUUnavailableError(f"{expected}, but CUDA is unavailable: {probe.explain()}. "
                                      "Use device=cpu to run on the CPU on purpose.")
        return DeviceChoice(torch.device("cpu"), f"no GPU: {probe.explain()}; computing on the CPU", fallback=True)
    if ":" in requested:
        index = int(requested.split(":")[1])
        if index >= probe.device_count:
            raise GPUUnavailableError(f"device={requested!r} but {probe.device_count} GPU(s) are visible")
        return DeviceChoice(torch.device("cuda", index), f"device={requested!r} was asked for")
    if local_rank < probe.device_count:
        return DeviceChoice(torch.device("cuda", local_rank),
                            f"GPU {local_rank} of {probe.device_count} visible (LOCAL_RANK={local_rank})")
    visible = _visible(env)
    if probe.device_count == 1 and visible is not None and "," not in visible:
        return DeviceChoice(torch.device("cuda", 0), f"the one GPU bound to this rank (CUDA_VISIBLE_DEVICES={visible})")
    raise GPUUnavailableError(
        f"LOCAL_RANK={local_rank} but only {probe.device_count} GPU(s) are visible "
        f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}): start one rank per GPU")


def bind_device(device: torch.device) -> None:
    """Make ``device`` this process's current CUDA device (streams, NCCL, ``.cuda()`` all follow it)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on Ampere and newer GPUs: on, or full IEEE fp32.

    Uses torch's ``fp32_precision`` switches (mixing them with the legacy ``allow_tf32`` flags is
    an error in torch >= 2.9). No effect on the CPU.
    """
    mode = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


def tf32_enabled() -> bool:
    return torch.backends.cuda.matmul.fp32_precision == "tf32"


@contextlib.contextmanager
def tf32_mode(enabled: bool):
    """Run the block with TF32 on or off, then restore both switches as they were."""
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    set_tf32(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved
