"""Training throughput and memory: the real DeepSpeed step (keyed draws, hybrid loss, ZeRO, bf16)
on random latents, one fresh torchrun job per setting.

  # CPU images/s of tiny and S per ZeRO stage (2 gloo ranks)
  PYTHONPATH=. python benchmarks/bench_train.py throughput --presets tiny S --stages 1 2 3 --nproc 2
  # peak memory of S at 512 px with and without activation checkpointing
  PYTHONPATH=. python benchmarks/bench_train.py memory --preset S --resolution 512 --batch 2
  # GPU: largest micro-batch that fits, images/s, MFU and peak memory, with and without checkpointing
  PYTHONPATH=. python benchmarks/bench_train.py max-batch --preset XL --resolution 256 --nproc 1

peak_gib is torch.cuda.max_memory_allocated on GPU; on CPU it is the growth of the process's peak
resident memory over the measured steps (activations, gradients, optimizer states), since the
resident baseline (libraries, weights) is the same with and without checkpointing. saved_gib is
the size of the tensors autograd keeps for the backward pass outside checkpointed blocks (the
activation memory that checkpointing removes; the inputs of checkpointed blocks are not counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAG = "BENCH_RESULT "


def worker(args) -> None:
    import torch

    from lamamba.config import load_config
    from lamamba.diffusion import create_diffusion
    from lamamba.models import build_model
    from lamamba.models.flops import count_flops
    from lamamba.training.config import TrainConfig
    from lamamba.training.distributed import init_distributed, shutdown
    from lamamba.training.engine import build_engine, plan_batches
    from lamamba.training.step import DiffusionTrainStep

    cfg = load_config(TrainConfig, None, [
        f"model.preset={args.preset}", f"model.input_size={args.resolution // 8}", f"global_batch={args.batch}",
        f"engine.zero_stage={args.stage}", f"engine.activation_checkpointing={args.ckpt}",
        f"engine.micro_batch={args.micro}", f"engine.precision={args.precision}"])
    world = init_distributed()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.set_activation_checkpointing(cfg.engine.activation_checkpointing)
    plan = plan_batches(cfg.global_batch, world.world_size, cfg.engine.micro_batch)
    engine = build_engine(model, cfg, plan)
    dtype = torch.bfloat16 if cfg.engine.precision == "bf16" else torch.float32
    step = DiffusionTrainStep(engine, create_diffusion(**dataclasses.asdict(cfg.diffusion)), plan, 0,
                              cfg.model.class_dropout_prob, dtype, world.device)
    b, r = plan.per_rank, cfg.model.input_size
    batch = {"x": torch.randn(b, cfg.model.in_channels, r, r), "y": torch.randint(0, 1000, (b,)),
             "index": torch.arange(world.rank * b, (world.rank + 1) * b), "epoch": torch.zeros(b, dtype=torch.long)}
    cuda = world.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step(batch)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved: dict[int, int] = {}  # storage address -> bytes of the tensors kept for backward

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(args.steps):
            step(batch)
    sync()
    seconds = time.perf_counter() - start
    images_per_s = args.steps * cfg.global_batch / seconds
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20
    result = {"preset": args.preset, "resolution": args.resolution, "stage": args.stage, "ckpt": args.ckpt,
              "precision": args.precision, "ranks": world.world_size, "global_batch": cfg.global_batch, "micro_batch": plan.micro_batch,
              "images_per_s": images_per_s, "peak_gib": peak, "saved_gib": sum(saved.values()) / 2**30,
              "device": str(world.device.type)}
    if cuda and args.peak_tflops > 0:
        gflops = count_flops(cfg.model)["gflops"]
        result["mfu"] = images_per_s * 6 * gflops * 1e9 / (args.peak_tflops * 1e12 * world.world_size)
    if world.is_main:
        print(TAG + json.dumps(result), flush=True)
    shutdown()


def launch(setting: dict, nproc: int, common: list[str]) -> dict | None:
    """Run one setting in a fresh torchrun job; None if it failed (e.g. out of memory)."""
    args = [f"--{k}={v}" for k, v in setting.items()] + common
    cmd = [str(Path(sys.executable).parent / "torchrun"), f"--nproc_per_node={nproc}", "--standalone",
           str(Path(__file__).resolve()), "worker", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    print(f"failed: {setting}\n{proc.stderr[-1500:]}", file=sys.stderr)
    return None


def table(rows: list[dict]) -> str:
    cols = ["preset", "resolution", "stage", "ckpt", "precision", "ranks", "global_batch", "micro_batch", "images_per_s",
            "peak_gib", "saved_gib", "mfu"]
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                       for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "memory", "max-batch", "worker"])
    parser.add_argument("--presets", nargs="+", default=["tiny", "S"])
    parser.add_argument("--preset", default="S")
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--ckpt", default="none")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--micro", type=int, default=0)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default="bf16-autocast", help="engine.precision (bf16-autocast, bf16, fp32)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if args.mode == "worker":
        return worker(args)
    common = [f"--steps={args.steps}", f"--precision={args.precision}", f"--peak-tflops={args.peak_tflops}"]
    rows = []
    if args.mode == "throughput":
        for preset in args.presets:
            for stage in args.stages:
                rows.append(launch({"preset": preset, "stage": stage, "resolution": args.resolution,
                                    "batch": args.batch, "warmup": args.warmup}, args.nproc, common))
    elif args.mode == "memory":
        for ckpt in ("none", "all"):  # no warm-up: the first step's growth is the step's memory
            rows.append(launch({"preset": args.preset, "stage": args.stage, "resolution": args.resolution,
                                "batch": args.batch, "ckpt": ckpt, "warmup": 0}, args.nproc, common))
    else:
        for ckpt in ("none", "all"):
            best, micro = None, 1
            while micro <= 1024:
                row = launch({"preset": args.preset, "stage": args.stage, "resolution": args.resolution,
                              "batch": micro * args.nproc, "micro": micro, "ckpt": ckpt, "warmup": args.warmup},
                             args.nproc, common)
                if row is None:
                    break
                best, micro = row, micro * 2
            rows.append(best)
    rows = [r for r in rows if r is not None]
    print(table(rows))


if __name__ == "__main__":
    main()
