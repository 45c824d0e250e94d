"""Selective scan forward+backward: the torch backend against per-step loops, in the same run.

Baselines:
  * "mamba-ref loop": written like ``mamba_ssm``'s ``selective_scan_ref`` (discretise up front,
    then index step i of every tensor, update the state, contract with C, stack); autograd's
    backward of the per-step indexing is what makes that reference slow at long L.
  * "unbind loop": our test reference (``selective_scan_reference``), the same loop but with the
    tensors unbound along time first, so its backward stays linear in L (a stricter baseline).

Shapes are SS2D's stage-0 scans at batch 1: D = 4 directions x d_inner, one B/C group per direction.

    PYTHONPATH=. python benchmarks/bench_scan.py [--threads 1] [--repeats 3] [--lengths 1024 4096]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import torch.nn.functional as F

from lamamba.ops import selective_scan

# name -> (D = 4 * d_inner, N)
SHAPES = {"S stage 0": (4 * 2 * 96, 1), "XL stage 0": (4 * 2 * 320, 16)}


def inputs(dim: int, n: int, length: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(1, dim, length, generator=g),  # u
        torch.randn(1, dim, length, generator=g) * 0.5 - 2.0,  # delta (before softplus)
        -torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1),  # A
        torch.randn(1, 4, n, length, generator=g),  # B
        torch.randn(1, 4, n, length, generator=g),  # C
        torch.ones(dim),  # D
        torch.zeros(dim),  # delta_bias
    ]
    return [t.to(device).requires_grad_() for t in tensors]


def loop_like_mamba_ref(u, delta, A, B, C, D, delta_bias):
    """The scan as mamba_ssm's selective_scan_ref writes it (grouped B/C, softplus on delta)."""
    delta = F.softplus(delta + delta_bias[:, None])
    batch, dim, length = u.shape
    B = B.repeat_interleave(dim // B.shape[1], dim=1)
    C = C.repeat_interleave(dim // C.shape[1], dim=1)
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_B_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    x = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for i in range(length):
        x = delta_A[:, :, i] * x + delta_B_u[:, :, i]
        ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, i]))
    return torch.stack(ys, dim=2) + u * D[:, None]


def run_scan(impl: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    if impl == "mamba-ref loop":
        return loop_like_mamba_ref(*tensors)
    backend = "reference" if impl == "unbind loop" else "torch"
    return selective_scan(*tensors, delta_softplus=True, backend=backend)


def time_fwd_bwd(impl: str, tensors: list[torch.Tensor], repeats: int) -> float:
    """Median seconds of one forward + backward."""
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        for t in tensors:
            t.grad = None
        if tensors[0].is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        y = run_scan(impl, tensors)
        y.sum().backward()
        if tensors[0].is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-loops-above", type=int, default=1 << 30,
                        help="do not time the per-step loops for longer sequences")
    parser.add_argument("--loops", nargs="+", default=["mamba-ref", "unbind"], choices=["mamba-ref", "unbind"],
                        help="which per-step loops to time (mamba-ref is quadratic in L in its backward)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print("| shape | D | N | L | torch fwd+bwd (ms) | mamba-ref loop (ms) | speed-up | unbind loop (ms) | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.shapes:
        dim, n = SHAPES[name]
        for length in args.lengths:
            tensors = inputs(dim, n, length, args.device)
            fast = time_fwd_bwd("torch", tensors, args.repeats)
            row = [name, dim, n, length, f"{fast * 1e3:.1f}"]
            for impl in ("mamba-ref loop", "unbind loop"):
                if length <= args.skip_loops_above and impl.split()[0] in args.loops:
                    slow = time_fwd_bwd(impl, tensors, max(1, args.repeats // 2))
                    row += [f"{slow * 1e3:.0f}", f"{slow / fast:.1f}x"]
                else:
                    row += ["-", "-"]
            print("| " + " | ".join(str(c) for c in row) + " |", flush=True)

if __name__ == "__main__":
    main()
