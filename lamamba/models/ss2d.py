"""SS2D: the 2-D selective-scan module (VMamba), with LaMamba-Diff's spatially continuous scans.

(B, H, W, C) -> in_proj -> (x, z); x -> depthwise 3x3 conv -> SiLU -> four scans (one set of
x_proj / dt_proj / A / D per direction) -> merge back to raster order and sum -> LayerNorm -> * SiLU(z)
-> out_proj.

The scan backend is resolved per call (:func:`lamamba.ops.resolve_backend`). With ``triton`` the
fused core runs: the projections are computed in raster order and one kernel gathers the four
orders, scans and merges (no 4x copy of the activation); other backends take the unfused path
(``cross_scan`` -> ``selective_scan`` -> ``cross_merge``). Both compute the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lamamba.ops import cross_merge, cross_scan, resolve_backend, scan_orders, selective_scan

NUM_DIRECTIONS = 4


def mamba_dt_init(d_inner: int, dt_rank: int, dt_min: float = 1e-3, dt_max: float = 1e-1,
                  dt_floor: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's dt projection init: weight U(+-dt_rank^-0.5); bias = softplus^-1(dt), dt log-uniform
    in [dt_min, dt_max] and at least dt_floor. Returns (weight (d_inner, dt_rank), bias (d_inner,))."""
    bound = dt_rank ** -0.5
    weight = torch.empty(d_inner, dt_rank).uniform_(-bound, bound)
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
    return weight, bias


class SS2D(nn.Module):
    """The visual state-space module over a (B, H, W, C) map."""

    def __init__(self, dim: int, d_state: int = 16, ssm_ratio: float = 2.0, scan: str = "continuous",
                 backend: str = "auto"):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(dim / 16)
        self.scan, self.backend = scan, backend
        k = NUM_DIRECTIONS
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=False)
        # Per-direction projections, stacked so that one einsum serves all four directions.
        x_proj = torch.empty(k, self.dt_rank + 2 * d_state, d_inner)
        for w in x_proj:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's default init
        self.x_proj_weight = nn.Parameter(x_proj)
        dt_w, dt_b = zip(*(mamba_dt_init(d_inner, self.dt_rank) for _ in range(k)))
        self.dt_projs_weight = nn.Parameter(torch.stack(dt_w))  # (K, d_inner, dt_rank)
        self.dt_projs_bias = nn.Parameter(torch.stack(dt_b))  # (K, d_inner)
        # S4D-real: A = -(1..N) for every channel; no weight decay on A_log and D.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(a))  # (K * d_inner, N)
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        z = F.silu(z)
        # meta tensors (FLOP counting) only propagate shapes, through the unfused path: no backend is
        # resolved for them (selective_scan returns an empty tensor of the right shape).
        backend = self.backend if x.device.type == "meta" else resolve_backend(self.backend, x.device, self.d_state)
        if backend == "triton" and x.device.type != "meta":
            # A channels-last conv output, so that the fused core reads contiguous channels.
            x = self.conv2d(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
            y = self.fused_scan_2d(F.silu(x).permute(0, 2, 3, 1))  # (B, H, W, d_inner)
        else:
            x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
            y = self.scan_2d(x, backend).transpose(1, 2).reshape(b, h, w, self.d_inner)  # float32
        # The scan runs in float32; come back to the block's dtype (bf16 weights under DeepSpeed).
        y = self.out_norm(y.to(z.dtype)) * z
        return self.out_proj(y)

    def fused_scan_2d(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, d_inner) -> (B, H, W, d_inner): the Triton core (same function as ``scan_2d``)."""
        from lamamba.ops.triton_scan import ss2d_scan_triton

        h, w, n = x.shape[1], x.shape[2], self.d_state
        x_dbl = torch.einsum("bhwd,kcd->bhwkc", x, self.x_proj_weight.to(x.dtype))
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, n, n], dim=-1)
        dts = torch.einsum("bhwkr,kdr->bhwkd", dts, self.dt_projs_weight.to(dts.dtype))
        orders, _ = scan_orders(h, w, self.scan, x.device)
        return ss2d_scan_triton(x, dts, -torch.exp(self.A_logs.float()), bs, cs, self.Ds.float(),
                                self.dt_projs_bias.float().flatten(), orders)

    def scan_2d(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        """(B, d_inner, H, W) -> (B, d_inner, H*W): the four selective scans, merged and summed."""
        b, d, h, w = x.shape
        k, n, length = NUM_DIRECTIONS, self.d_state, h * w
        xs = cross_scan(x, self.scan)  # (B, K, d, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight.to(xs.dtype))
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, n, n], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight.to(dts.dtype))
        # The scan always runs in float32, whatever the autocast dtype.
        autocast_device = "cpu" if x.device.type == "meta" else x.device.type  # meta: FLOP counting
        with torch.autocast(device_type=autocast_device, enabled=False):
            ys = selective_scan(
                xs.float().reshape(b, k * d, length), dts.float().reshape(b, k * d, length),
                -torch.exp(self.A_logs.float()), bs.float().contiguous(), cs.float().contiguous(),
                self.Ds.float(), self.dt_projs_bias.float().flatten(), delta_softplus=True,
                backend=backend)
        return cross_merge(ys.view(b, k, d, length), h, w, self.scan)

    def extra_flops(self, x: torch.Tensor) -> int:
        """Multiply-adds of the x_proj and dt_proj einsums plus the scan's 9 BLDN + BDL (the
        paper's convention); in_proj, conv, out_norm and out_proj are counted on their own."""
        b, h, w, _ = x.shape
        length, k, d, n, r = h * w, NUM_DIRECTIONS, self.d_inner, self.d_state, self.dt_rank
        x_proj = b * k * length * d * (r + 2 * n)
        dt_proj = b * k * length * r * d
        scan = 9 * b * length * (k * d) * n + b * (k * d) * length
        return x_proj + dt_proj + scan
