"""Model training throughput: forward + backward images/s of a preset on this machine.

    PYTHONPATH=. python benchmarks/bench_model.py --preset S --resolution 256 --batch 4 [--threads 2]

Random latents, timesteps and labels; the loss is the mean square of the output (the cost of the
diffusion loss itself is negligible next to the network).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lamamba.models import ModelConfig, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="S")
    parser.add_argument("--resolution", type=int, default=256, help="image side; latents are 1/8 of it")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the scan stays float32)")
    parser.add_argument("--checkpointing", default="none", help="activation checkpointing policy")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(preset=args.preset, input_size=args.resolution // 8)
    model = build_model(cfg).to(args.device).train()
    model.set_activation_checkpointing(args.checkpointing)
    x = torch.randn(args.batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=args.device)
    t = torch.randint(0, 1000, (args.batch,), device=args.device)
    y = torch.randint(0, cfg.num_classes, (args.batch,), device=args.device)
    times = []
    for _ in range(args.steps + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            out = model(x, t, y)
        out.float().square().mean().backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    print(f"{args.preset} at {args.resolution} px, batch {args.batch}, threads {torch.get_num_threads()}, "
          f"bf16 {args.bf16}: {step:.2f} s per forward+backward, {args.batch / step:.2f} images/s")


if __name__ == "__main__":
    main()
