"""Triton kernels for the selective scan and the fused SS2D core (forward and backward).

One kernel pair serves both entry points. A program owns one batch item b, up to four groups k (the
SS2D directions) and a block of channels, and walks the sequence step by step in a loop (groups and
channels are the parallel axes; no ``tl.associative_scan``, whose ``reverse=True`` form is wrong on
some GPUs, triton issue 4362). Step t of group k reads position ``p = order[k, t]``: for the fused
SS2D core the four scan orders are gathered inside the kernel from the raster (B, H, W, d_inner)
activation, never materialised as a 4x copy. Each step computes, in float32 whatever the I/O dtype:

    dt = softplus(delta + bias);  h = exp(dt A) h + dt u B;  y = C . h + D u

Memory (what is saved for the backward, what is recomputed):
  * saved: the inputs as given (u, delta, B, C and the parameters; for the fused core that is the
    raster activation and the raster projections, nothing gathered) and the float32 state at the
    start of every CHUNK steps, (batch, K, ceil(L / CHUNK), C, N): 1/CHUNK of a (batch, L, D, N)
    tensor, which is never stored;
  * recomputed in the backward: dt, exp(dt A) and the states inside a chunk. The backward visits
    the chunks last to first; for each it reruns the chunk's forward from its saved start state
    into a per-program scratch of CHUNK + 1 states (transient, programs x (CHUNK + 1) x tile
    floats), then walks the chunk's steps backwards through explicitly reversed indices (a forward
    loop over ``cnt - 1 - s``), carrying the adjoint state g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}.
  * reductions that cross programs are written as per-program partial sums and summed by torch
    (dB and dC over channel blocks, dA, dD and d_bias over the batch; the fused core's du and its
    output over the four directions): no atomics, so the results are deterministic.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

# tl.sum is itself a jit function, and the interpreter patches all of triton.language at every call
# of one (most of its run time here); tl.reduce with tl.sum's own combine function is the same
# reduction when compiled and is interpreted by numpy directly. The interpreter tests cover it.
_SUM = tl.standard._sum_combine

CHUNK = 32  # steps between saved states: memory 1/CHUNK of the full states, scratch CHUNK + 1 states
MAX_BLOCK_C = 64
MIN_BLOCK_C = 8
TILE = 256  # states per program (BLOCK_K x BLOCK_C x BLOCK_N): registers for h, g, dA, A


@triton.jit
def _tile_params(A_ptr, D_ptr, bias_ptr, k, c, n, K, CH, N):
    """A program's masks (K), (K, C), (K, N), (K, C, N) and its tiles of A (K, C, N), D and the dt
    bias (K, C), in fp32 (once per program: a helper is cheap outside the time loop)."""
    km, cm, nm = k < K, c < CH, n < N
    kc, kn = km[:, None] & cm[None, :], km[:, None] & nm[None, :]
    kcn = kc[:, :, None] & nm[None, None, :]
    kc_idx = k[:, None] * CH + c[None, :]  # (K, C): index into (K, CH) parameters
    A = tl.load(A_ptr + kc_idx[:, :, None] * N + n[None, None, :], mask=kcn, other=0.0).to(tl.float32)
    Dv = tl.load(D_ptr + kc_idx, mask=kc, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + kc_idx, mask=kc, other=0.0).to(tl.float32)
    return km, kc, kn, kcn, A, Dv, bias


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, order_ptr, y_ptr, hs_ptr,
    L, CH, N, K, n_chunks, so_k,
    su_b, su_k, su_c, su_p, sd_b, sd_k, sd_c, sd_p,
    sb_b, sb_k, sb_n, sb_p, sc_b, sc_k, sc_n, sc_p, sy_b, sy_k, sy_c, sy_p,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    k = (tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.arange(0, BLOCK_N)
    km, kc, kn, kcn, A, Dv, bias = _tile_params(A_ptr, D_ptr, bias_ptr, k, c, n, K, CH, N)
    o_off = k * so_k
    u_off = b * su_b + k[:, None] * su_k + c[None, :] * su_c
    d_off = b * sd_b + k[:, None] * sd_k + c[None, :] * sd_c
    y_off = b * sy_b + k[:, None] * sy_k + c[None, :] * sy_c
    b_off = b * sb_b + k[:, None] * sb_k + n[None, :] * sb_n
    c_off = b * sc_b + k[:, None] * sc_k + n[None, :] * sc_n
    hs_off = (b * K + k)[:, None, None] * n_chunks * CH * N + c[None, :, None] * N + n[None, None, :]
    h = tl.zeros([BLOCK_K, BLOCK_C, BLOCK_N], dtype=tl.float32)
    for i in range(0, n_chunks):
        tl.store(hs_ptr + hs_off + i * CH * N, h, mask=kcn)
        t0 = i * CHUNK
        for t in range(t0, tl.minimum(t0 + CHUNK, L)):
            p = tl.load(order_ptr + o_off + t, mask=km, other=0).to(tl.int64)[:, None]
            u = tl.load(u_ptr + u_off + p * su_p, mask=kc, other=0.0).to(tl.float32)
            dt = tl.load(dl_ptr + d_off + p * sd_p, mask=kc, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:  # inline (a helper costs a patch of triton.language per call in the interpreter)
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
            Bv = tl.load(B_ptr + b_off + p * sb_p, mask=kn, other=0.0).to(tl.float32)
            Cv = tl.load(C_ptr + c_off + p * sc_p, mask=kn, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, :, None] * A) * h + (dt * u)[:, :, None] * Bv[:, None, :]
            y = tl.reduce(h * Cv[:, None, :], 2, _SUM) + Dv * u
            tl.store(y_ptr + y_off + p * sy_p, y.to(y_ptr.dtype.element_ty), mask=kc)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, order_ptr, hs_ptr, dy_ptr, scratch_ptr,
    du_ptr, ddl_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    L, CH, N, K, n_chunks, BATCH, so_k,
    su_b, su_k, su_c, su_p, sd_b, sd_k, sd_c, sd_p,
    sb_b, sb_k, sb_n, sb_p, sc_b, sc_k, sc_n, sc_p, sg_b, sg_k, sg_c, sg_p,
    sdu_b, sdu_k, sdu_c, sdu_p, sdd_b, sdd_k, sdd_c, sdd_p,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(2).to(tl.int64)
    k_local, c_local, n = tl.arange(0, BLOCK_K), tl.arange(0, BLOCK_C), tl.arange(0, BLOCK_N)
    k = (tl.program_id(1) * BLOCK_K + k_local).to(tl.int64)
    c = cb * BLOCK_C + c_local
    km, kc, kn, kcn, A, Dv, bias = _tile_params(A_ptr, D_ptr, bias_ptr, k, c, n, K, CH, N)
    o_off = k * so_k
    u_off = b * su_b + k[:, None] * su_k + c[None, :] * su_c
    d_off = b * sd_b + k[:, None] * sd_k + c[None, :] * sd_c
    g_off = b * sg_b + k[:, None] * sg_k + c[None, :] * sg_c
    du_off = b * sdu_b + k[:, None] * sdu_k + c[None, :] * sdu_c
    dd_off = b * sdd_b + k[:, None] * sdd_k + c[None, :] * sdd_c
    b_off = b * sb_b + k[:, None] * sb_k + n[None, :] * sb_n
    c_off = b * sc_b + k[:, None] * sc_k + n[None, :] * sc_n
    # Partial sums over this program's channels: (n_cblocks, BATCH, K, N, L), contiguous.
    part_off = ((cb * BATCH + b) * K + k)[:, None] * N * L + n[None, :] * L
    hs_off = (b * K + k)[:, None, None] * n_chunks * CH * N + c[None, :, None] * N + n[None, None, :]
    tile = BLOCK_K * BLOCK_C * BLOCK_N
    program = (b * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + cb
    sc_off = program * (CHUNK + 1) * tile + (k_local[:, None, None] * BLOCK_C + c_local[None, :, None]) * BLOCK_N \
        + n[None, None, :]
    g = tl.zeros([BLOCK_K, BLOCK_C, BLOCK_N], dtype=tl.float32)  # dL/dh_t, carried backwards
    dA = tl.zeros([BLOCK_K, BLOCK_C, BLOCK_N], dtype=tl.float32)
    dD = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
    for j in range(0, n_chunks):
        i = n_chunks - 1 - j
        t0 = i * CHUNK
        cnt = tl.minimum(t0 + CHUNK, L) - t0
        # Recompute the chunk's states from its saved start: scratch[s] is the state before step t0 + s.
        h = tl.load(hs_ptr + hs_off + i * CH * N, mask=kcn, other=0.0)
        tl.store(scratch_ptr + sc_off, h)
        for s in range(0, cnt):
            p = tl.load(order_ptr + o_off + t0 + s, mask=km, other=0).to(tl.int64)[:, None]
            u = tl.load(u_ptr + u_off + p * su_p, mask=kc, other=0.0).to(tl.float32)
            dt = tl.load(dl_ptr + d_off + p * sd_p, mask=kc, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
            Bv = tl.load(B_ptr + b_off + p * sb_p, mask=kn, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, :, None] * A) * h + (dt * u)[:, :, None] * Bv[:, None, :]
            tl.store(scratch_ptr + sc_off + (s + 1) * tile, h)
        tl.debug_barrier()  # the scratch is read below by other threads of this program
        for s in range(0, cnt):
            r = cnt - 1 - s  # the chunk's steps in reverse, by explicit index
            p = tl.load(order_ptr + o_off + t0 + r, mask=km, other=0).to(tl.int64)[:, None]
            u = tl.load(u_ptr + u_off + p * su_p, mask=kc, other=0.0).to(tl.float32)
            dl = tl.load(dl_ptr + d_off + p * sd_p, mask=kc, other=0.0).to(tl.float32) + bias
            dt = dl
            if SOFTPLUS:
                dt = tl.where(dl > 20.0, dl, tl.log(1.0 + tl.exp(tl.minimum(dl, 20.0))))
            Bv = tl.load(B_ptr + b_off + p * sb_p, mask=kn, other=0.0).to(tl.float32)
            Cv = tl.load(C_ptr + c_off + p * sc_p, mask=kn, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + g_off + p * sg_p, mask=kc, other=0.0).to(tl.float32)
            h_prev = tl.load(scratch_ptr + sc_off + r * tile)
            h_t = tl.load(scratch_ptr + sc_off + (r + 1) * tile)
            a = tl.exp(dt[:, :, None] * A)
            g += dy[:, :, None] * Cv[:, None, :]
            tl.store(dC_ptr + part_off + p, tl.reduce(h_t * dy[:, :, None], 1, _SUM), mask=kn)
            tl.store(dB_ptr + part_off + p, tl.reduce(g * (dt * u)[:, :, None], 1, _SUM), mask=kn)
            gB = tl.reduce(g * Bv[:, None, :], 2, _SUM)
            g_log_a = g * h_prev * a  # dL/d(dt A)
            d_dt = gB * u + tl.reduce(g_log_a * A, 2, _SUM)
            dA += g_log_a * dt[:, :, None]
            dD += dy * u
            if SOFTPLUS:
                d_dt = d_dt / (1.0 + tl.exp(-dl))  # softplus'(x) = sigmoid(x)
            dbias += d_dt
            tl.store(du_ptr + du_off + p * sdu_p, (Dv * dy + gB * dt).to(du_ptr.dtype.element_ty), mask=kc)
            tl.store(ddl_ptr + dd_off + p * sdd_p, d_dt.to(ddl_ptr.dtype.element_ty), mask=kc)
            g = g * a
        tl.debug_barrier()  # the next chunk overwrites the scratch
    out_idx = (b * K + k)[:, None] * CH + c[None, :]
    tl.store(dA_ptr + out_idx[:, :, None] * N + n[None, None, :], dA, mask=kcn)
    tl.store(dD_ptr + out_idx, dD, mask=kc)
    tl.store(dbias_ptr + out_idx, dbias, mask=kc)


def _blocks(groups: int, channels: int, n: int, batch: int = 1, programs_wanted: int = 0) -> tuple[int, int, int]:
    """(BLOCK_K, BLOCK_C, BLOCK_N): up to 4 groups (the SS2D directions) per program, and channels
    to fill a tile of about TILE states; then, while the grid has fewer than ``programs_wanted``
    programs, channel blocks are halved (down to MIN_BLOCK_C): a program walks L sequentially, so
    the work in flight is the number of programs. Untuned: benchmarks/bench_triton_scan.py."""
    block_k, block_n = min(4, triton.next_power_of_2(groups)), triton.next_power_of_2(n)
    block_c = min(MAX_BLOCK_C, triton.next_power_of_2(channels), max(1, TILE // (block_k * block_n)))
    while block_c > MIN_BLOCK_C and batch * triton.cdiv(groups, block_k) * triton.cdiv(channels, block_c) \
            < programs_wanted:
        block_c //= 2
    return block_k, block_c, block_n


def _programs_wanted(device: torch.device) -> int:
    """Enough programs to keep every SM busy (4 per SM); no target off the GPU."""
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


def _warps(block_k: int, block_c: int, block_n: int) -> int:
    """Warps per program: about 2 states per thread, 1 to 4 warps."""
    return max(1, min(4, block_k * block_c * block_n // 64))


class _TritonScan(torch.autograd.Function):
    """u, delta: (batch, K, C, L) views of any strides (u may have stride 0 over K); A: (K, C, N);
    B, C: (batch, K, N, L) views; D, bias: (K, C) float32; order: (K, L) int32, step t of group k
    reads position order[k, t] (a stride-0 arange for the plain scan).
    Returns y (batch, K, C, L) in u's dtype, laid out like delta."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, bias, order, softplus):
        batch, K, CH, L = delta.shape
        N = A.shape[-1]
        n_chunks = triton.cdiv(L, CHUNK)
        block_k, block_c, block_n = _blocks(K, CH, N, batch, _programs_wanted(u.device))
        A, D, bias = (x.float().contiguous() for x in (A, D, bias))
        y = torch.empty_like(delta, dtype=u.dtype)
        hs = torch.empty(batch, K, n_chunks, CH, N, device=u.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(K, block_k), triton.cdiv(CH, block_c))
        _scan_fwd_kernel[grid](
            u, delta, A, B, C, D, bias, order, y, hs,
            L, CH, N, K, n_chunks, order.stride(0), *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *y.stride(),
            CHUNK=CHUNK, BLOCK_K=block_k, BLOCK_C=block_c, BLOCK_N=block_n, SOFTPLUS=softplus,
            num_warps=_warps(block_k, block_c, block_n))
        ctx.save_for_backward(u, delta, A, B, C, D, bias, order, hs)
        ctx.softplus = softplus
        ctx.dtypes = (u.dtype, delta.dtype, B.dtype, C.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, bias, order, hs = ctx.saved_tensors
        batch, K, CH, L = delta.shape
        N = A.shape[-1]
        n_chunks = hs.shape[2]
        block_k, block_c, block_n = _blocks(K, CH, N, batch, _programs_wanted(u.device))
        grid = (batch, triton.cdiv(K, block_k), triton.cdiv(CH, block_c))
        dev, f32 = u.device, torch.float32
        # du over a stride-0 K axis (the fused core's shared u) gets one slot per k, summed by autograd.
        du = torch.empty_like(delta, dtype=ctx.dtypes[0])
        ddelta = torch.empty_like(delta, dtype=ctx.dtypes[1])
        dB_part = torch.empty(grid[2], batch, K, N, L, device=dev, dtype=f32)
        dC_part = torch.empty_like(dB_part)
        dA_part = torch.empty(batch, K, CH, N, device=dev, dtype=f32)
        dD_part = torch.empty(batch, K, CH, device=dev, dtype=f32)
        dbias_part = torch.empty_like(dD_part)
        scratch = torch.empty(math.prod(grid) * (CHUNK + 1) * block_k * block_c * block_n, device=dev, dtype=f32)
        _scan_bwd_kernel[grid](
            u, delta, A, B, C, D, bias, order, hs, dy, scratch,
            du, ddelta, dB_part, dC_part, dA_part, dD_part, dbias_part,
            L, CH, N, K, n_chunks, batch, order.stride(0),
            *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *dy.stride(), *du.stride(), *ddelta.stride(),
            CHUNK=CHUNK, BLOCK_K=block_k, BLOCK_C=block_c, BLOCK_N=block_n, SOFTPLUS=ctx.softplus,
            num_warps=_warps(block_k, block_c, block_n))
        dB = dB_part.sum(0).to(ctx.dtypes[2])
        dC = dC_part.sum(0).to(ctx.dtypes[3])
        return du, ddelta, dA_part.sum(0), dB, dC, dD_part.sum(0), dbias_part.sum(0), None, None


def _params(A, D, bias, groups: int, channels: int, like: torch.Tensor):
    A3 = A.reshape(groups, channels, A.shape[-1])
    D2 = like.new_zeros(groups, channels, dtype=torch.float32) if D is None else D.reshape(groups, channels)
    b2 = like.new_zeros(groups, channels, dtype=torch.float32) if bias is None else bias.reshape(groups, channels)
    return A3, D2, b2


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False) -> torch.Tensor:
    """``selective_scan``'s triton backend: u, delta (batch, D, L); A (D, N); B, C (batch, G, N, L);
    D, delta_bias (D,) or None. Returns y (batch, D, L) in u's dtype; float32 state and arithmetic."""
    batch, dim, length = u.shape
    groups = B.shape[1]
    channels = dim // groups
    A3, D2, b2 = _params(A, D, delta_bias, groups, channels, u)
    steps = torch.arange(length, device=u.device, dtype=torch.int32).expand(groups, length)
    y = _TritonScan.apply(u.unflatten(1, (groups, channels)), delta.unflatten(1, (groups, channels)), A3, B, C,
                          D2, b2, steps, delta_softplus)
    return y.flatten(1, 2)


@functools.lru_cache(maxsize=64)
def _orders_int32(orders: torch.Tensor) -> torch.Tensor:
    return orders.to(torch.int32).contiguous()


def ss2d_scan_triton(x, delta, A, B, C, D, delta_bias, orders: torch.Tensor, delta_softplus: bool = True):
    """The fused SS2D core, from the raster activation to the merged raster output.

    x: (batch, H, W, d) (SS2D's u, shared by the K directions); delta: (batch, H, W, K, d) before the
    bias; B, C: (batch, H, W, K, N); A: (K * d, N); D, delta_bias: (K * d,); orders: (K, H * W) raster
    indices, ``orders[k, t]`` the cell that direction k visits at step t (``scan_orders``).
    Returns sum_k y_k, each scattered back to raster order: (batch, H, W, d) in x's dtype. Every
    tensor may be a strided view (e.g. B and C slices of one projection output): nothing is copied.
    """
    batch, height, width, dim = x.shape
    length, K, N = height * width, orders.shape[0], A.shape[-1]
    u4 = x.reshape(batch, length, 1, dim).permute(0, 2, 3, 1).expand(batch, K, dim, length)
    d4 = delta.reshape(batch, length, K, dim).permute(0, 2, 3, 1)
    B4, C4 = (t.reshape(batch, length, K, N).permute(0, 2, 3, 1) for t in (B, C))
    A3, D2, b2 = _params(A, D, delta_bias, K, dim, x)
    y4 = _TritonScan.apply(u4, d4, A3, B4, C4, D2, b2, _orders_int32(orders), delta_softplus)
    y = y4.permute(0, 3, 1, 2).sum(2, dtype=torch.float32)  # (batch, L, K, d) in memory: the merge
    return y.to(x.dtype).view(batch, height, width, dim)
