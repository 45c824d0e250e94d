"""Overhead of the diffusion itself, with a model that costs nothing (returns zeros).

Times, per sampler step, the DDPM / DDIM math with the global generator and with keyed
per-sample generators (docs/protocols.md, *Sample sets*), and per training step the keyed draws
(``training_draws``) and the hybrid loss math. Compare with the model's own time per forward.

  PYTHONPATH=. python benchmarks/bench_diffusion.py [--batch 64] [--train-batch 256] [--size 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from lamamba.diffusion import create_diffusion, training_draws
from lamamba.rng import PerSampleGenerators


def timed(fn, repeats: int, device: torch.device) -> float:
    """Milliseconds per call, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="sampling batch")
    parser.add_argument("--train-batch", type=int, default=256, help="training batch (keyed draws)")
    parser.add_argument("--size", type=int, default=32, help="latent resolution (4 channels)")
    parser.add_argument("--steps", type=int, default=50, help="respaced sampler steps timed (per-step figures)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = (args.batch, 4, args.size, args.size)

    def zero_model(x, t, **kwargs):
        return torch.zeros(x.shape[0], 8, *x.shape[2:], device=x.device)

    rows = []
    for name, spec in (("DDPM", f"{args.steps}"), ("DDIM eta=0", f"ddim{args.steps}"),
                       ("DDIM eta=1", f"ddim{args.steps}")):
        diffusion = create_diffusion(spec)
        eta = 1.0 if "eta=1" in name else 0.0
        for keyed in (False, True):
            def run():
                gens = PerSampleGenerators(0, "sample", range(args.batch)) if keyed else None
                if name == "DDPM":
                    return diffusion.p_sample_loop(zero_model, shape, generators=gens, device=device)
                return diffusion.ddim_sample_loop(zero_model, shape, generators=gens, device=device, eta=eta)
            ms = timed(run, 1, device) / diffusion.num_timesteps
            rows.append((f"{name} step, batch {args.batch}, {'keyed' if keyed else 'global'} noise", ms))

    diffusion = create_diffusion()
    keys = [(i, 0) for i in range(args.train_batch)]
    rows.append((f"training_draws, {args.train_batch} keys",
                 timed(lambda: training_draws(0, keys, 1000, (4, args.size, args.size), device=device), 5, device)))
    x0 = torch.randn(args.train_batch, 4, args.size, args.size, device=device)
    t, noise = training_draws(0, keys, 1000, (4, args.size, args.size), device=device)
    rows.append((f"training_losses math, batch {args.train_batch}",
                 timed(lambda: diffusion.training_losses(zero_model, x0, t, noise=noise), 5, device)))

    print(f"device {device}, torch threads {torch.get_num_threads()}, latents 4x{args.size}x{args.size}")
    for label, ms in rows:
        print(f"{label:55s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
