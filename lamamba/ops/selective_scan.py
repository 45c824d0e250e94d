"""The selective scan of Mamba (S6), with backends chosen at run time.

For every batch b, channel d and state n, over time t:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (h_0 = 0)
    y_t = sum_n C_t,n * h_t,n + D * u_t

with ``delta = softplus(delta + delta_bias)`` when asked. B and C are grouped: G groups of D / G
channels share one (N, L) input (SS2D uses one group per scan direction).

Backends:
  * ``"torch"``: the project's own chunked scan (below); float32 state whatever the input dtype,
    correct for every L, a hand-written backward from the saved states instead of an autograd
    graph per time step.
  * ``"mamba_ssm"``: ``mamba_ssm.selective_scan_fn`` (the CUDA kernel).
  * ``"reference"``: a plain loop over time in the input dtype, for tests and benchmarks.
  * ``"auto"``: ``mamba_ssm`` when it imports and the tensors are on a GPU, else ``torch``.

The torch scan works time-major, (L, batch, groups, channels per group, N), so that one time step
of every chunk is a contiguous block. The sequence is cut into chunks of about sqrt(L) steps;
a loop over the steps inside a chunk runs all chunks at once, then a short loop over the chunks
carries each chunk's final state into the next, weighted by the chunk-local product of the
decays (which only ever underflows, never overflows). That is about 2 sqrt(L) vectorised steps
instead of L.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "torch", "mamba_ssm", "reference")


@functools.lru_cache(maxsize=1)
def _mamba_ssm_scan():
    """``mamba_ssm``'s selective_scan_fn, or None when the package (or its CUDA build) is missing."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or an OSError/RuntimeError from a broken CUDA extension
        return None
    return selective_scan_fn


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that ``backend`` means for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "mamba_ssm" if device.type == "cuda" and _mamba_ssm_scan() is not None else "torch"
    if backend == "mamba_ssm" and _mamba_ssm_scan() is None:
        raise RuntimeError("selective-scan backend 'mamba_ssm' requested but mamba_ssm does not import "
                           "(install the 'cuda' extra on a GPU machine)")
    return backend


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan (same signature and layout as ``mamba_ssm.selective_scan_fn``).

    u, delta: (batch, D, L); A: (D, N); B, C: (batch, G, N, L) with D divisible by G;
    D, delta_bias: (D,) or None. Returns y: (batch, D, L) in u's dtype; the torch backend keeps
    its state and arithmetic in float32 whatever that dtype is.
    """
    _check_shapes(u, delta, A, B, C, D, delta_bias)
    if u.device.type == "meta":  # shape propagation only (FLOP counting): nothing to compute
        return torch.empty_like(u)
    backend = resolve_backend(backend, u.device)
    if backend == "mamba_ssm":
        return _mamba_ssm_scan()(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
    if backend == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if D is None:
        D = u.new_zeros(u.shape[1])
    if delta_bias is None:
        delta_bias = u.new_zeros(u.shape[1])
    y = _ChunkedSelectiveScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus)
    return y.to(u.dtype)


def _check_shapes(u, delta, A, B, C, D, delta_bias) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, D, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (D={dim}, N); got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n or t.shape[3] != length or dim % t.shape[1]:
            raise ValueError(f"{name} must be (batch={batch}, G, N={n}, L={length}) with G dividing D={dim}; "
                             f"got {tuple(t.shape)}")
    if B.shape[1] != C.shape[1]:
        raise ValueError(f"B and C must have the same number of groups; got {B.shape[1]} and {C.shape[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be ({dim},); got {tuple(t.shape)}")


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


def _linear_scan_(a: torch.Tensor, b: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """Solve a first-order linear recurrence along dim 0, chunked, overwriting and returning ``b``.

    forward:  h_t = a_t * h_{t-1} + b_t     (h_{-1} = 0)
    adjoint:  g_t = a_{t+1} * g_{t+1} + b_t  (g_L = 0), the backward pass of the forward one.
    a, b: (L, ...) float32 of the same shape, b contiguous; a is read only.
    """
    length = b.shape[0]
    chunk = math.isqrt(length - 1) + 1 if length > 1 else 1
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    rest = b.shape[1:]
    if pad:  # zero inputs at the end change no earlier state (and no adjoint state either)
        a = torch.cat([a, a.new_zeros(pad, *rest)])
        b = torch.cat([b, b.new_zeros(pad, *rest)])
    a = a.view(n_chunks, chunk, *rest)
    h = b.view(n_chunks, chunk, *rest)
    # decay (below): the product of the coefficients from the chunk's edge to step t, which carries
    # the state entering the chunk to step t (products of values in (0, 1] only ever underflow).
    if adjoint:
        for t in range(chunk - 2, -1, -1):  # every chunk at once, from a zero state
            h[:, t].addcmul_(a[:, t + 1], h[:, t + 1])
    else:
        for t in range(1, chunk):
            h[:, t].addcmul_(a[:, t], h[:, t - 1])
    if n_chunks > 1:
        if adjoint:  # decay[:, t] = prod of a over (t, chunk end]
            decay = torch.empty_like(h)
            decay[:, -1] = 1.0
            for t in range(chunk - 2, -1, -1):
                torch.mul(a[:, t + 1], decay[:, t + 1], out=decay[:, t])
        else:  # decay[:, t] = prod of a over [chunk start, t]
            decay = torch.cumprod(a, dim=1)
        carry = torch.zeros_like(h[:, 0])  # the state entering each chunk
        if adjoint:
            for c in range(n_chunks - 2, -1, -1):
                torch.addcmul(h[c + 1, 0], decay[c + 1, 0], carry[c + 1], out=carry[c]).mul_(a[c + 1, 0])
        else:
            for c in range(1, n_chunks):
                torch.addcmul(h[c - 1, -1], decay[c - 1, -1], carry[c - 1], out=carry[c])
        h.addcmul_(decay, carry[:, None])
    h = h.view(n_chunks * chunk, *rest)
    return h[:length] if pad else h


def _sum_states(x: torch.Tensor) -> torch.Tensor:
    """Sum over the state dim N (last, kept); with N = 1 (S, B, XL-release) no reduction kernel runs."""
    return x if x.shape[-1] == 1 else x.sum(-1, keepdim=True)


class _ChunkedSelectiveScan(torch.autograd.Function):
    """The torch backend: forward by :func:`_linear_scan_`; backward by the adjoint scan
    g_t = C_t dy_t + a_{t+1} g_{t+1}, from the saved states h and decays a (no per-step graph).

    Every large temporary is written in place where the algebra allows: on CPU a fresh
    multi-megabyte tensor costs page faults comparable to the arithmetic on it.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        batch, dim, length = u.shape
        groups = B.shape[1]

        def channels(x):  # (batch, D, L) -> float32 (L, batch, G, D/G, 1)
            return x.float().permute(2, 0, 1).reshape(length, batch, groups, dim // groups, 1)

        u_t = channels(u)
        dt = channels(delta).add_(delta_bias.float().view(groups, dim // groups, 1))
        if delta_softplus:
            dt = F.softplus(dt)
        Bt, Ct = (x.float().permute(3, 0, 1, 2).unsqueeze(3) for x in (B, C))  # (L, batch, G, 1, N)
        A32 = A.float().view(groups, dim // groups, -1)
        a = torch.mul(dt, A32).exp_()  # (L, batch, G, D/G, N)
        h = _linear_scan_(a, torch.mul(dt * u_t, Bt))
        y = _sum_states(h * Ct).squeeze(-1).addcmul_(u_t.squeeze(-1), D.float().view(groups, -1))
        ctx.save_for_backward(u_t, dt, A32, Bt, Ct, D, a, h)
        ctx.delta_softplus = delta_softplus
        ctx.dtypes = [x.dtype for x in (u, delta, A, B, C, D, delta_bias)]
        return y.reshape(length, batch, dim).permute(1, 2, 0)

    @staticmethod
    def backward(ctx, dy):
        u_t, dt, A32, Bt, Ct, D, a, h = ctx.saved_tensors
        length, batch, groups, per_group, _ = u_t.shape
        dim = groups * per_group
        dy_t = dy.float().permute(2, 0, 1).reshape(length, batch, groups, per_group, 1)
        dt_u = dt * u_t
        g = _linear_scan_(a, Ct * dy_t, adjoint=True)  # dL/dh_t, (L, batch, G, D/G, N)
        dC = (h * dy_t).sum(3)
        dB = (g * dt_u).sum(3)
        gB = _sum_states(g * Bt)  # dL/d(dt u)
        # dL/d(dt * A) at step t = g_t * a_t * h_{t-1} = g_t * (h_t - dt_t u_t B_t).
        d_log_a = torch.mul(dt_u, Bt).neg_().add_(h).mul_(g)
        d_dt = _sum_states(d_log_a * A32).addcmul_(gB, u_t)
        dA = (d_log_a.mul_(dt)).sum((0, 1)).reshape(dim, -1)
        du = gB.mul_(dt).addcmul_(dy_t, D.float().view(groups, -1, 1))
        dD = (dy_t * u_t).sum((0, 1)).reshape(dim)
        if ctx.delta_softplus:  # softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x))
            d_dt.mul_(torch.neg(dt).expm1_().neg_())
        d_bias = d_dt.sum((0, 1)).reshape(dim)

        def batch_major(x):  # (L, batch, G, D/G, 1) -> (batch, D, L)
            return x.reshape(length, batch, dim).permute(1, 2, 0)

        grads = (batch_major(du), batch_major(d_dt), dA, dB.permute(1, 2, 3, 0), dC.permute(1, 2, 3, 0), dD, d_bias)
        return (*(grad.to(dtype) for grad, dtype in zip(grads, ctx.dtypes)), None)
