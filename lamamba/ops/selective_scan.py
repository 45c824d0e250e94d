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
  * ``"triton"``: the Triton kernels of :mod:`lamamba.ops.triton_scan` (GPU; CPU interpreter in tests).
  * ``"mamba_ssm"``: ``mamba_ssm.selective_scan_fn`` (the CUDA kernel), under its call contract.
  * ``"reference"``: a plain loop over time in the input dtype, for tests and benchmarks.
  * ``"auto"``: decided in :mod:`lamamba.ops.backend` (mamba_ssm, else triton on a GPU; torch elsewhere).

The torch scan works time-major inside each batch item, (batch, L, groups, channels per group,
N), so that one time step of every chunk is one strided block; the (batch, D, L) inputs and
outputs are moved in and out by 2-D transposed copies, torch's fast path for them. The sequence
is cut into about sqrt(L) chunks: a loop over the steps of a chunk finds every chunk's last state
from a zero start (all chunks at once), a short loop over the chunks carries the true states
across chunk edges through the product of a chunk's decays (which only ever underflows, never
overflows), and a second loop over the steps writes every state from its chunk's true entering
state. That is about 3 sqrt(L) vectorised ops instead of L, and no full-size temporary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lamamba.ops.backend import mamba_ssm_scan, resolve_backend
from lamamba.ops.scan_reference import selective_scan_reference  # noqa: F401 - the package's public name

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
    backend = resolve_backend(backend, u.device, A.shape[1])
    if backend == "mamba_ssm":
        return mamba_ssm_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if backend == "triton":
        from lamamba.ops.triton_scan import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus)
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


def _chunk_count(length: int) -> int:
    """How many chunks to cut L steps into: about sqrt(L), preferring a divisor of L.

    A scan runs about 2 vectorised ops per step of a chunk plus 1 per chunk; the time is flat
    from 8 to 64 chunks at L = 1024, so the count only has to be near sqrt(L). A divisor within
    a factor 1.5 of it avoids padding, which costs a full-size copy of both inputs.
    """
    target = math.sqrt(length)
    divisors = [n for n in range(math.ceil(target / 1.5), math.floor(target * 1.5) + 1) if length % n == 0]
    return min(divisors, key=lambda n: abs(n - target)) if divisors else max(1, round(target))


def _linear_scan_(a: torch.Tensor, b: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """Solve a first-order linear recurrence along dim 1, chunked, overwriting and returning ``b``.

    forward:  h_t = a_t * h_{t-1} + b_t     (h_{-1} = 0)
    adjoint:  g_t = a_{t+1} * g_{t+1} + b_t  (g_L = 0), the backward pass of the forward one.
    a, b: (batch, L, ...) float32 of the same shape, b contiguous; a is read only.

    Three sweeps, each vectorised over all chunks: (1) every chunk's last state (last in the scan's
    direction) from a zero entering state, kept in a small buffer; (2) a loop over the chunks turns
    those into the true last states, through the product of a chunk's decays (values in (0, 1]:
    they only ever underflow); (3) the recurrence inside every chunk from its true entering state,
    written over b. b is written once and no full-size temporary is made.
    """
    batch, length = b.shape[:2]
    rest = b.shape[2:]
    n_chunks = _chunk_count(length)
    chunk = -(-length // n_chunks)
    pad = n_chunks * chunk - length
    if pad:  # zero inputs at the end change no earlier state (and no adjoint state either)
        a = torch.cat([a, a.new_zeros(batch, pad, *rest)], dim=1)
        b = torch.cat([b, b.new_zeros(batch, pad, *rest)], dim=1)
    a = a.view(batch, n_chunks, chunk, *rest)
    h = b.view(batch, n_chunks, chunk, *rest)
    a_steps, h_steps = a.unbind(2), h.unbind(2)  # (batch, n_chunks, ...) views, one per step in a chunk
    # Inside a chunk the scan visits `order`; step order[i] is linked to order[i - 1] (= order[i] + back)
    # by coefs[i - 1]. Between chunks c and c + 1, a_steps[0][:, c + 1] links the one scanned first
    # to the other.
    if adjoint:
        order, coefs, back = range(chunk - 1, -1, -1), a_steps[:0:-1], 1
    else:
        order, coefs, back = range(chunk), a_steps[1:], -1
    if n_chunks > 1:
        last = h_steps[order[0]].clone()
        for t, coef in zip(order[1:], coefs):
            torch.addcmul(h_steps[t], coef, last, out=last)
        link = a_steps[0][:, 1:]
        into = a[:, :, 1:].prod(2)  # decay from a chunk's first step to its last
        if adjoint:
            into = into[:, :-1].mul_(link)
            for c in range(n_chunks - 2, -1, -1):
                last[:, c].addcmul_(into[:, c], last[:, c + 1])
            h_steps[order[0]][:, :-1].addcmul_(link, last[:, 1:])
        else:
            into = into[:, 1:].mul_(link)
            for c in range(1, n_chunks):
                last[:, c].addcmul_(into[:, c - 1], last[:, c - 1])
            h_steps[order[0]][:, 1:].addcmul_(link, last[:, :-1])
    for t, coef in zip(order[1:], coefs):
        h_steps[t].addcmul_(coef, h_steps[t + back])
    h = h.view(batch, n_chunks * chunk, *rest)
    return h[:, :length] if pad else h


def _sum_states(x: torch.Tensor) -> torch.Tensor:
    """Sum over the state dim N (last, kept); with N = 1 (S, B, XL-release) no reduction kernel runs."""
    return x if x.shape[-1] == 1 else x.sum(-1, keepdim=True)


def _add_summed_states_(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out += sum over N of x * w, in place; with N = 1 one fused pass and no temporary."""
    return out.addcmul_(x, w) if x.shape[-1] == 1 else out.add_(_sum_states(x * w))


def _swap_last_two(x: torch.Tensor) -> torch.Tensor:
    """(batch, P, Q) -> a new contiguous float32 (batch, Q, P), one 2-D transposed copy per batch item.

    torch copies a transposed 2-D matrix into a contiguous one blockwise, about 3x faster on CPU than
    the general strided copy that ``permute(...).contiguous()`` falls back to for 3-D tensors. On
    other devices one transposed copy of the whole tensor (one kernel, not one per batch item).
    """
    out = x.new_empty(x.shape[0], x.shape[2], x.shape[1], dtype=torch.float32)
    if x.device.type != "cpu":
        return out.copy_(x.transpose(1, 2))
    for dst, src in zip(out, x):
        dst.copy_(src.t())
    return out


class _ChunkedSelectiveScan(torch.autograd.Function):
    """The torch backend: forward by :func:`_linear_scan_`; backward by the adjoint scan
    g_t = C_t dy_t + a_{t+1} g_{t+1}, from the saved states h and decays a (no per-step graph).

    On CPU the full-size (batch, L, D) passes are bound by memory traffic, and one that writes a
    fresh multi-megabyte tensor costs several times one that writes in place (about 0.8 against
    0.1 ms at (1, 1024, 768) on 2 cores), so the code allocates as little as it can: it writes in
    place, reuses buffers whose contents are spent (``out=``), and never writes to a saved tensor
    (backward may run twice with retain_graph).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        batch, dim, length = u.shape
        groups = B.shape[1]
        per_group = dim // groups

        def channels(x):  # (batch, D, L) -> float32 (batch, L, G, D/G, 1)
            return _swap_last_two(x).view(batch, length, groups, per_group, 1)

        u_t = channels(u)
        dt_in = channels(delta).add_(delta_bias.float().view(groups, per_group, 1))
        dt = F.softplus(dt_in) if delta_softplus else dt_in
        dt_u = dt * u_t
        Bt, Ct = (x.float().permute(0, 3, 1, 2).unsqueeze(3) for x in (B, C))  # (batch, L, G, 1, N)
        A32 = A.float().view(groups, per_group, -1)
        a = torch.mul(dt, A32).exp_()  # (batch, L, G, D/G, N)
        h = _linear_scan_(a, torch.mul(dt_u, Bt))
        y = _sum_states(h * Ct).squeeze(-1).addcmul_(u_t.squeeze(-1), D.float().view(groups, per_group))
        ctx.save_for_backward(u_t, dt, dt_in if delta_softplus else None, dt_u, A32, Bt, Ct, D, a, h)
        ctx.dtypes = [x.dtype for x in (u, delta, A, B, C, D, delta_bias)]
        return _swap_last_two(y.reshape(batch, length, dim))

    @staticmethod
    def backward(ctx, dy):
        u_t, dt, dt_in, dt_u, A32, Bt, Ct, D, a, h = ctx.saved_tensors
        batch, length, groups, per_group, _ = u_t.shape
        dim = groups * per_group
        dy_t = _swap_last_two(dy).view(batch, length, groups, per_group, 1)
        g = _linear_scan_(a, Ct * dy_t, adjoint=True)  # dL/dh_t, (batch, L, G, D/G, N)
        work = h * dy_t  # one scratch buffer for the products that are only summed
        dC = work.sum(3)
        dB = torch.mul(g, dt_u, out=work).sum(3)
        dD = torch.mul(dy_t, u_t, out=work[..., :1]).sum((0, 1)).reshape(dim)
        # dL/d(dt * A) at step t = g_t * a_t * h_{t-1} = g_t * (h_t - dt_t u_t B_t).
        d_log_a = torch.addcmul(h, dt_u, Bt, value=-1.0, out=work).mul_(g)
        gB = _sum_states(g.mul_(Bt))  # dL/d(dt u)
        du = dy_t.mul_(D.float().view(groups, per_group, 1)).addcmul_(gB, dt)
        d_dt = _add_summed_states_(gB.mul_(u_t), d_log_a, A32)
        dA = d_log_a.mul_(dt).sum((0, 1)).reshape(dim, -1)
        if dt_in is not None:  # softplus'(x) = sigmoid(x)
            d_dt.mul_(torch.sigmoid(dt_in, out=work[..., :1]))
        d_bias = d_dt.sum((0, 1)).reshape(dim)

        def batch_major(x):  # (batch, L, G, D/G, 1) -> (batch, D, L)
            return _swap_last_two(x.reshape(batch, length, dim))

        grads = (batch_major(du), batch_major(d_dt), dA, dB.permute(0, 2, 3, 1), dC.permute(0, 2, 3, 1), dD, d_bias)
        return (*(grad.to(dtype) for grad, dtype in zip(grads, ctx.dtypes)), None)
