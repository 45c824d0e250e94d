"""The selective scan as a plain loop over time steps: the reference every fast path is checked
against (the tests, the benchmarks, and the backend probe that runs a kernel once before use).

Its own module so that the backend probe (:mod:`lamamba.ops.backend`) and the scan that dispatches
through it (:mod:`lamamba.ops.selective_scan`) do not import each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """The scan as a loop over every time step, in the input dtype (tests and benchmarks only).

    Structured like ``mamba_ssm``'s ``selective_scan_ref``: discretise all steps up front, then
    one state update and one contraction with C per step; autograd differentiates it.
    """
    dtype_in = u.dtype
    batch, dim, length = u.shape
    groups = B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = B.repeat_interleave(dim // groups, dim=1)  # (batch, D, N, L)
    C = C.repeat_interleave(dim // groups, dim=1)
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_B_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    # unbind, not indexing per step: the backward of L index ops would materialise L full-size grads.
    steps = zip(delta_A.unbind(2), delta_B_u.unbind(2), C.unbind(3))
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for decay, drive, c in steps:
        h = decay * h + drive
        ys.append(torch.einsum("bdn,bdn->bd", h, c))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D[:, None]
    return y.to(dtype_in)
