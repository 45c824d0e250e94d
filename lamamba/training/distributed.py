"""Process-group setup for any launcher: rank, world size and local rank come from the environment.

``torchrun`` and the ``deepspeed`` launcher both export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT; a plain ``python`` run is a world of one. Each rank computes on GPU LOCAL_RANK,
chosen by :func:`lamamba.devices.select_device` (a job that expects GPUs and finds none stops with
the reason). The backend is nccl on GPU and gloo on CPU unless the config names one.

Collectives time out after ``timeout_s`` (default :data:`DEFAULT_TIMEOUT_S`, 30 minutes, where
NCCL's own default is 10): a rank that waits longer for the others raises instead of hanging.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from lamamba.devices import DeviceChoice, bind_device, select_device

DEFAULT_TIMEOUT_S = 1800.0

@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    choice: DeviceChoice | None = field(default=None, compare=False)  # why this device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(device: str = "auto", backend: str = "") -> World:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (defaults: a single process), pick this rank's device
    (``device``: auto, cuda, cpu) and make it the current one."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    choice = select_device(device, local_rank, backend=backend)
    bind_device(choice.device)
    return World(rank, world_size, local_rank, choice.device, choice)


def _disable_deepspeed_shm_op() -> None:
    """DeepSpeed's CPU shared-memory all-reduce JIT-compiles for minutes and can crash at exit;
    gloo does the same job, so the builder is replaced by one that declines."""
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    ds_torch.build_shm_op = lambda: None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str = "", device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Initialise torch.distributed through DeepSpeed (a no-op if already initialised); every
    collective of the default group times out after ``timeout_s`` seconds."""
    import deepspeed

    if "WORLD_SIZE" not in os.environ:  # a plain single process: a private rendezvous
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    world = world_from_env(device, backend)
    backend = backend or ("nccl" if world.device.type == "cuda" else "gloo")
    if world.device.type == "cpu":
        _disable_deepspeed_shm_op()
    deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timedelta(seconds=timeout_s))
    return world


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small float64 tensor over ranks (on a copy, on the device the backend needs); the
    result is on the CPU. Identity without a group."""
    out = values.clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = out.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s value of a picklable object on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's value of a picklable object, in rank order (``[obj]`` without a group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Tear down the process group so that every rank exits promptly."""
    if dist.is_initialized():
        dist.destroy_process_group()
