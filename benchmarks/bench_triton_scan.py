"""The fused SS2D core (Triton) forward + backward against the unfused path with the torch scan and
with mamba_ssm's kernel, at SS2D's stage-0 shapes of S (d_inner 192, N = 1) and XL (d_inner 640,
N = 16), L = 1024, 4096, 16384 (32^2, 64^2, 128^2 maps): median time, peak memory and achieved
memory bandwidth against the device's peak. A GPU benchmark (issue 12's goals: >= 60 % of peak
bandwidth, at least mamba_ssm's speed at N = 1, XL at L = 16384 without the (B, L, D, N) footprint).

    PYTHONPATH=. python benchmarks/bench_triton_scan.py [--batch 8] [--lengths 1024 4096 16384]
        [--json runs/bench_triton_scan.json] [--peak-tbps 4.8] [--tile 256] [--chunk 32]
    PYTHONPATH=. python benchmarks/bench_triton_scan.py --quick   # CPU, Triton's interpreter: tiny shapes,
                                                                  # checks that the script runs

Bandwidth counts the bytes the fused kernels are designed to move (each direction reads the
shared activation and dy, the backward reads the inputs twice: once to recompute a chunk's states,
once walking it back; partial sums written in float32; scratch and saved chunk states excluded:
they stay small), divided by the measured time. The unfused paths are timed, not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# Peak HBM bandwidth (TB/s) by device name, for --peak-tbps's default.
PEAK_TBPS = {"H200": 4.8, "H100 SXM": 3.35, "H100 PCIe": 2.0, "H100": 3.35, "A100-SXM4-80GB": 2.04,
             "A100": 1.56, "L40S": 0.864, "A10G": 0.6}

# name -> (d_inner, N): SS2D's stage-0 sizes
SHAPES = {"S": (192, 1), "XL": (640, 16)}


def make_inputs(torch, batch, side, d_inner, n, dtype, device, rank=8):
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(batch, side, side, 4, rank + 2 * n, generator=g)
    tensors = dict(x=torch.randn(batch, side, side, d_inner, generator=g),
                   delta=torch.randn(batch, side, side, 4, d_inner, generator=g) * 0.5 - 2.0, proj=proj)
    params = dict(A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(4 * d_inner, 1),
                  D=torch.ones(4 * d_inner), delta_bias=torch.zeros(4 * d_inner))
    out = {k: v.to(device, dtype).requires_grad_() for k, v in tensors.items()}
    out.update({k: v.to(device).requires_grad_() for k, v in params.items()})
    return out, rank


def fused(t, rank, n, orders):
    from lamamba.ops.triton_scan import ss2d_scan_triton

    proj = t["proj"]
    return ss2d_scan_triton(t["x"], t["delta"], t["A"], proj[..., rank:rank + n], proj[..., rank + n:], t["D"],
                            t["delta_bias"], orders)


def unfused(t, rank, n, orders, backend):
    """cross_scan -> selective_scan -> cross_merge, as SS2D runs every backend but triton."""
    import torch

    from lamamba.ops import cross_merge, cross_scan, selective_scan

    x, delta, proj = t["x"], t["delta"], t["proj"]
    batch, height, width, dim = x.shape
    length = height * width

    def gather(v):  # raster (batch, H, W, 4, c) -> (batch, 4, c, L) in each direction's order
        v = v.reshape(batch, length, 4, -1).permute(0, 2, 3, 1)
        return torch.stack([v[:, k][..., orders[k]] for k in range(4)], dim=1)

    us = cross_scan(x.permute(0, 3, 1, 2))
    ys = selective_scan(us.reshape(batch, 4 * dim, length), gather(delta).reshape(batch, 4 * dim, length),
                        t["A"], gather(proj[..., rank:rank + n]), gather(proj[..., rank + n:]), t["D"],
                        t["delta_bias"], delta_softplus=True, backend=backend)
    return cross_merge(ys.view(batch, 4, dim, length), height, width).transpose(1, 2).reshape(x.shape)


def fused_bytes(batch, length, d_inner, n, io_bytes, n_cblocks):
    """Bytes the fused forward + backward kernels read and write (see the module docstring)."""
    x, dl, bc = batch * length * d_inner, batch * length * 4 * d_inner, batch * length * 4 * n
    fwd = io_bytes * (4 * x + dl + 2 * bc + dl) + (io_bytes + 4) * dl  # kernel; merge reads y4, writes fp32
    recompute = io_bytes * (4 * x + dl + bc)
    reverse = io_bytes * (4 * x + dl + 2 * bc) + 4 * 4 * x + io_bytes * 2 * dl + 4 * 2 * n_cblocks * bc
    return fwd + recompute + reverse


def time_fwd_bwd(torch, fn, tensors, repeats, device):
    """(median seconds of forward + backward, peak bytes allocated above the inputs)."""
    times = []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats + 1):  # the first run compiles / warms up
        for v in tensors.values():
            v.grad = None
        sync()
        start = time.perf_counter()
        out = fn()
        out.backward(torch.ones_like(out))
        sync()
        times.append(time.perf_counter() - start)
        del out
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else 0
    return statistics.median(times[1:]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="micro-batch (default 8)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384], help="L = side^2")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="I/O dtype of the activations")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-tbps", type=float, default=None, help="device peak bandwidth (default: by name)")
    parser.add_argument("--tile", type=int, default=None, help="states per program (triton_scan.TILE; a sweep knob)")
    parser.add_argument("--chunk", type=int, default=None, help="steps between saved states (triton_scan.CHUNK)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--quick", action="store_true",
                        help="CPU, Triton's interpreter, tiny shapes: only checks that this script runs")
    args = parser.parse_args()
    if args.quick:  # before the kernels are imported
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from lamamba.ops import scan_orders
    from lamamba.ops.backend import probe_mamba_ssm

    device = torch.device("cpu" if args.quick else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_triton_scan: no CUDA device (this is a GPU benchmark; --quick runs a CPU check)")
    shapes = {"quick": (4, 2)} if args.quick else {name: SHAPES[name] for name in args.shapes}
    lengths = [16] if args.quick else args.lengths
    batch, repeats = (1, 1) if args.quick else (args.batch, args.repeats)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)"
    peak = args.peak_tbps or next((v for k, v in PEAK_TBPS.items() if k in name), None)
    mamba, mamba_why = probe_mamba_ssm(device) if device.type == "cuda" else (None, "cpu")
    from lamamba.ops import triton_scan

    triton_scan.TILE = args.tile or triton_scan.TILE
    triton_scan.CHUNK = args.chunk or triton_scan.CHUNK
    print(f"torch {torch.__version__}, {name}, batch {batch}, {args.dtype} I/O, median of {repeats}; "
          f"peak bandwidth {peak or '?'} TB/s; TILE {triton_scan.TILE}, CHUNK {triton_scan.CHUNK}; "
          f"mamba_ssm: {mamba_why}")
    print("| shape | d_inner | N | L | fused ms | GB/s | % peak | fused peak MiB | torch ms | torch peak MiB "
          "| mamba_ssm ms | (B, L, 4d, N) fp32 MiB | rel. err vs torch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []

    for shape, (d_inner, n) in shapes.items():
        for length in lengths:
            side = int(round(length ** 0.5))
            tensors, rank = make_inputs(torch, batch, side, d_inner, n, dtype, device)
            orders, _ = scan_orders(side, side, "continuous", device)
            row = dict(shape=shape, d_inner=d_inner, n=n, L=side * side, batch=batch, dtype=args.dtype,
                       tile=triton_scan.TILE, chunk=triton_scan.CHUNK,
                       full_states_mib=batch * side * side * 4 * d_inner * n * 4 / 2**20)
            seconds, mem = time_fwd_bwd(torch, lambda: fused(tensors, rank, n, orders), tensors, repeats, device)
            n_cblocks = -(-d_inner // triton_scan._blocks(4, d_inner, n)[1])
            moved = fused_bytes(batch, side * side, d_inner, n, dtype.itemsize, n_cblocks)
            row.update(fused_ms=seconds * 1e3, fused_gbps=moved / seconds / 1e9, fused_peak_mib=mem / 2**20)
            row["fused_pct_peak"] = 100 * row["fused_gbps"] / (peak * 1e3) if peak else None
            for label, backend in (("torch", "torch"), ("mamba_ssm", "mamba_ssm")):
                if backend == "mamba_ssm" and mamba is None:
                    row[f"{label}_ms"] = None
                    continue
                try:
                    seconds, mem = time_fwd_bwd(torch, lambda: unfused(tensors, rank, n, orders, backend), tensors,
                                                repeats, device)
                    row[f"{label}_ms"], row[f"{label}_peak_mib"] = seconds * 1e3, mem / 2**20
                    with torch.no_grad():  # the same function at full size: the fused output's error
                        want = unfused(tensors, rank, n, orders, backend).float()
                        got = fused(tensors, rank, n, orders).float()
                    row[f"vs_{label}_rel_err"] = ((got - want).abs().max() / want.abs().max()).item()
                    del want, got
                except torch.OutOfMemoryError:
                    row[f"{label}_ms"], row[f"{label}_peak_mib"] = "OOM", None
                    torch.cuda.empty_cache()
            rows.append(row)

            def cell(v, fmt="{:.1f}"):
                return "-" if v is None else v if isinstance(v, str) else fmt.format(v)

            print("| " + " | ".join([shape, str(d_inner), str(n), str(row["L"]), cell(row["fused_ms"], "{:.2f}"),
                                     cell(row["fused_gbps"], "{:.0f}"), cell(row["fused_pct_peak"], "{:.0f}"),
                                     cell(row["fused_peak_mib"], "{:.0f}"), cell(row["torch_ms"], "{:.2f}"),
                                     cell(row.get("torch_peak_mib"), "{:.0f}"), cell(row["mamba_ssm_ms"], "{:.2f}"),
                                     cell(row["full_states_mib"], "{:.0f}"),
                                     cell(row.get("vs_torch_rel_err"), "{:.1e}")]) + " |", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(device=name, peak_tbps=peak, mamba_ssm=mamba_why, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
