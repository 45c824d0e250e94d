"""Checkpoint save time and peak memory: the real Checkpointer.save (DeepSpeed shards,
consolidated fp32 weights + Adam moments, EMA, RNG, hashing, commit) of a model after one real
training step, in one torchrun job.

  PYTHONPATH=. torchrun --standalone --nproc_per_node 2 benchmarks/bench_checkpoint.py --preset S

Prints one line per rank: the whole save's wall time, its parts (timed in a second save of the
same state), and the growth of peak memory over the first save: host resident memory
(ru_maxrss) on the CPU, plus torch.cuda.max_memory_allocated on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import tempfile
import time


def peak_host_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="S")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--dir", default="", help="checkpoint directory (default: a temp dir)")
    args = parser.parse_args()

    import torch

    from lamamba.config import load_config
    from lamamba.diffusion import create_diffusion
    from lamamba.models import build_model
    from lamamba.models.io import save_model_weights
    from lamamba.training.checkpointer import Checkpointer
    from lamamba.training.config import TrainConfig
    from lamamba.training.distributed import barrier, broadcast_object, init_distributed, shutdown
    from lamamba.training.ema import EMA
    from lamamba.training.engine import build_engine, plan_batches
    from lamamba.training.step import DiffusionTrainStep

    world = init_distributed()
    cfg = load_config(TrainConfig, None, [f"model.preset={args.preset}", f"model.input_size={args.resolution // 8}",
                                          f"global_batch={world.world_size}", f"engine.zero_stage={args.stage}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    params = sum(p.numel() for p in model.parameters())
    plan = plan_batches(cfg.global_batch, world.world_size, 0)
    engine = build_engine(model, cfg, plan)
    ema = EMA(engine, cfg.ema.decays)
    step = DiffusionTrainStep(engine, create_diffusion(**dataclasses.asdict(cfg.diffusion)), plan, 0,
                              cfg.model.class_dropout_prob, torch.bfloat16, world.device)
    r = cfg.model.input_size
    step({"x": torch.randn(1, cfg.model.in_channels, r, r), "y": torch.zeros(1, dtype=torch.long),
          "index": torch.tensor([world.rank]), "epoch": torch.zeros(1, dtype=torch.long)})
    ema.update()
    root = broadcast_object(args.dir or tempfile.mkdtemp(prefix="bench-ckpt-"))
    checkpointer = Checkpointer(root, world, keep_last=10)
    checkpointer.acquire()
    state = {"step": 1, "world_size": world.world_size, "lr_scheduler": engine.lr_scheduler.state_dict()}
    cuda = world.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base_gpu = torch.cuda.max_memory_allocated() if cuda else 0
    base_host = peak_host_mib()
    barrier()
    start = time.perf_counter()
    checkpointer.save(1, engine, ema, state, "", cfg.model)
    total = time.perf_counter() - start
    grew_host = peak_host_mib() - base_host
    grew_gpu = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20 if cuda else 0.0

    parts = {}
    scratch = os.path.join(root, f"parts_rank{world.rank}")
    os.makedirs(scratch, exist_ok=True)
    barrier()
    t = time.perf_counter()
    engine.save_checkpoint(scratch, tag="deepspeed", save_latest=False)
    barrier()
    parts["deepspeed_s"] = time.perf_counter() - t
    t = time.perf_counter()
    checkpointer._save_consolidated(ema.layout, os.path.join(scratch, "consolidated.safetensors"))
    barrier()
    parts["consolidated_s"] = time.perf_counter() - t
    t = time.perf_counter()
    average = ema.state_dict()
    if world.is_main:
        save_model_weights(os.path.join(scratch, "ema.safetensors"), average, cfg.model)
    barrier()
    parts["ema_s"] = time.perf_counter() - t
    checkpointer.close()
    print("BENCH " + json.dumps({"rank": world.rank, "preset": args.preset, "params_m": round(params / 1e6, 1),
                                 "zero": args.stage, "ranks": world.world_size, "save_s": round(total, 2),
                                 **{k: round(v, 2) for k, v in parts.items()},
                                 "peak_host_growth_mib": round(grew_host), "peak_gpu_growth_mib": round(grew_gpu)}),
          flush=True)
    shutdown()


if __name__ == "__main__":
    main()
