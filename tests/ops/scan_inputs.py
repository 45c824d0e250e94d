"""Random float64 inputs for a selective scan, shared by the torch-backend and Triton tests."""

import torch


def scan_inputs(batch, dim, groups, n, length, seed=0):
    """u, delta: (batch, dim, length); A: (dim, n); B, C: (batch, groups, n, length); D, delta_bias: (dim,)."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    return dict(
        u=torch.randn(batch, dim, length, **f64),
        delta=torch.randn(batch, dim, length, **f64) * 0.5 - 1.0,
        A=-torch.rand(dim, n, **f64) * n - 0.1,
        B=torch.randn(batch, groups, n, length, **f64),
        C=torch.randn(batch, groups, n, length, **f64),
        D=torch.randn(dim, **f64),
        delta_bias=torch.randn(dim, **f64) * 0.1,
    )
