"""Process-group setup for any launcher: rank, world size and local rank come from the environment.

``torchrun`` and the ``deepspeed`` launcher both export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT; a plain ``python`` run is a world of one. The backend is nccl on GPU and gloo on
CPU unless the config names one.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (defaults: a single process) and pick the device."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return World(rank, world_size, local_rank, device)


def _disable_deepspeed_shm_op() -> None:
    """DeepSpeed's CPU shared-memory all-reduce JIT-compiles for minutes and can crash at exit;
    gloo does the same job, so the builder is replaced by one that declines."""
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    ds_torch.build_shm_op = lambda: None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str = "") -> World:
    """Initialise torch.distributed through DeepSpeed (a no-op if already initialised)."""
    import deepspeed

    if "WORLD_SIZE" not in os.environ:  # a plain single process: a private rendezvous
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    world = world_from_env()
    backend = backend or ("nccl" if world.device.type == "cuda" else "gloo")
    if world.device.type == "cpu":
        _disable_deepspeed_shm_op()
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return world


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small float64 tensor over ranks (in place on a copy); identity without a group."""
    out = values.clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        backend = dist.get_backend()
        if backend == "nccl":
            out = out.cuda()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out = out.cpu()
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s value of a picklable object on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    """Tear down the process group so that every rank exits promptly."""
    if dist.is_initialized():
        dist.destroy_process_group()
