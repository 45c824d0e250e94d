"""The Triton backend (run by Triton's CPU interpreter, or compiled on a GPU with TRITON_INTERPRET=0):
the selective scan and the fused SS2D core against the torch backend and the float64 reference,
outputs and every gradient; inside the model, the fused core against the unfused path.

Shapes are tiny (the interpreter runs a step of every program as numpy calls); the chunk and the
channel block are shrunk so that they still cover several chunks with a partial last one (L not a
multiple of the chunk) and several channel blocks with a masked last one.
"""

import pytest
import torch

pytest.importorskip("triton")

from triton_env import INTERPRETED  # noqa: E402  (before the kernels are imported)
from scan_inputs import scan_inputs  # noqa: E402

from lamamba.ops import cross_merge, cross_scan, scan_orders, selective_scan, selective_scan_reference  # noqa: E402
from lamamba.ops import triton_scan  # noqa: E402
from lamamba.ops.triton_scan import ss2d_scan_triton  # noqa: E402

if INTERPRETED:
    DEVICE = torch.device("cpu")
elif torch.cuda.is_available():
    DEVICE = torch.device("cuda")
else:
    pytest.skip("TRITON_INTERPRET=0 and no CUDA device", allow_module_level=True)

FP32_TOL = 1e-5
# bf16 I/O: the float32 recurrence leaves only the rounding of the output (and of the gradients)
# to bf16, 2^-8 relative, against the float64 reference run on the same bf16-rounded inputs.
BF16_TOL = 1e-2


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(triton_scan, "CHUNK", 8)
    monkeypatch.setattr(triton_scan, "MAX_BLOCK_C", 4)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max abs difference over the reference's max abs, floored at 1e-2 (the inputs are O(1)): a
    gradient that is exactly zero in theory, e.g. dA at L = 1, is float32 noise (~1e-9) from the
    torch scan."""
    scale = max(want.abs().max().item(), 1e-2)
    return (got.double().cpu() - want.double().cpu()).abs().max().item() / scale


def run(fn, inputs: dict, grad_out: torch.Tensor):
    """fn(**inputs) and the gradient of <fn, grad_out> for every input (leaves on DEVICE)."""
    leaves = {k: v.detach().to(DEVICE).requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves)
    out.backward(grad_out.to(out.device, out.dtype))
    return out, {k: v.grad for k, v in leaves.items()}


def assert_close(got, want, tol, what):
    out, grads = got
    out_want, grads_want = want
    assert relative_error(out, out_want) < tol, f"{what}: output"
    for name in grads_want:
        assert relative_error(grads[name], grads_want[name]) < tol, f"{what}: d{name}"


# (batch, dim, groups, N, L): batch 1 and 3; L = 19 is 3 chunks of 8 with a partial last one;
# 6 channels per group are two blocks of 4, the last one masked; 3 groups are one block of 4 (masked).
SCAN_CASES = [(1, 18, 3, 1, 19), (3, 6, 2, 16, 19), (1, 4, 4, 16, 1)]


@pytest.mark.parametrize("batch,dim,groups,n,length", SCAN_CASES)
def test_selective_scan_matches_torch_and_float64(batch, dim, groups, n, length):
    inputs = scan_inputs(batch, dim, groups, n, length)
    grad_out = torch.randn(batch, dim, length, dtype=torch.float64)
    want = run(lambda **kw: selective_scan_reference(**kw, delta_softplus=True), inputs, grad_out)
    f32 = {k: v.float() for k, v in inputs.items()}
    got = run(lambda **kw: selective_scan(**kw, delta_softplus=True, backend="triton"), f32, grad_out)
    assert got[0].dtype == torch.float32
    torch_scan = run(lambda **kw: selective_scan(**kw, delta_softplus=True, backend="torch"),
                     {k: v.to(DEVICE) for k, v in f32.items()}, grad_out)
    assert_close(got, want, FP32_TOL, "vs float64")
    assert_close(got, torch_scan, FP32_TOL, "vs torch")


def test_selective_scan_without_softplus_or_optional_inputs():
    inputs = scan_inputs(1, 4, 2, 3, 10, seed=1)  # N = 3: a masked state block
    inputs = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    inputs["delta"] = inputs["delta"].abs() * 0.1
    grad_out = torch.randn(1, 4, 10, dtype=torch.float64)
    want = run(selective_scan_reference, inputs, grad_out)
    got = run(lambda **kw: selective_scan(**kw, backend="triton"), {k: v.float() for k, v in inputs.items()},
              grad_out)
    assert_close(got, want, FP32_TOL, "no softplus")


def test_selective_scan_bf16_io_keeps_a_float32_state():
    inputs = scan_inputs(1, 8, 2, 16, 19, seed=2)
    low = {k: v.bfloat16() if k in ("u", "delta", "B", "C") else v.float() for k, v in inputs.items()}
    grad_out = torch.randn(1, 8, 19, dtype=torch.float64).bfloat16()
    want = run(lambda **kw: selective_scan_reference(**kw, delta_softplus=True),
               {k: v.double() for k, v in low.items()}, grad_out.double())
    got = run(lambda **kw: selective_scan(**kw, delta_softplus=True, backend="triton"), low, grad_out)
    assert got[0].dtype == torch.bfloat16 and got[1]["B"].dtype == torch.bfloat16
    assert got[1]["A"].dtype == torch.float32
    assert_close(got, want, BF16_TOL, "bf16")


def ss2d_inputs(batch, height, width, dim, n, seed=0, rank=3):
    """Raster inputs as SS2D makes them: B and C are strided slices of one projection output."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    proj = torch.randn(batch, height, width, 4, rank + 2 * n, **f64)
    return dict(
        x=torch.randn(batch, height, width, dim, **f64),
        delta=torch.randn(batch, height, width, 4, dim, **f64) * 0.5 - 1.0,
        A=-torch.rand(4 * dim, n, **f64) * n - 0.1,
        proj=proj,
        D=torch.randn(4 * dim, **f64),
        delta_bias=torch.randn(4 * dim, **f64) * 0.1,
    )


def unfused(x, delta, A, proj, D, delta_bias, kind, backend_name, n):
    """cross_scan -> selective_scan -> cross_merge, the path the model takes for other backends."""
    batch, height, width, dim = x.shape
    length = height * width
    orders, _ = scan_orders(height, width, kind, x.device)
    rank = proj.shape[-1] - 2 * n
    bs, cs = proj[..., rank:rank + n], proj[..., rank + n:]

    def gather(t):  # raster (batch, H, W, 4, c) -> (batch, 4, c, L) in each direction's order
        t = t.reshape(batch, length, 4, -1).permute(0, 2, 3, 1)
        return torch.stack([t[:, k][..., orders[k]] for k in range(4)], dim=1)

    us = cross_scan(x.permute(0, 3, 1, 2), kind)
    ys = selective_scan(us.reshape(batch, 4 * dim, length), gather(delta).reshape(batch, 4 * dim, length), A,
                        gather(bs), gather(cs), D, delta_bias, delta_softplus=True, backend=backend_name)
    return cross_merge(ys.view(batch, 4, dim, length), height, width, kind).transpose(1, 2).reshape(x.shape)


def fused(x, delta, A, proj, D, delta_bias, kind, n):
    orders, _ = scan_orders(x.shape[1], x.shape[2], kind, x.device)
    rank = proj.shape[-1] - 2 * n
    return ss2d_scan_triton(x, delta, A, proj[..., rank:rank + n], proj[..., rank + n:], D, delta_bias, orders)


# (batch, H, W, d_inner, N, kind): H != W, batch 1 and 3, both families of four orders; the four
# directions of a program are its K axis; 6 channels are two blocks, the last one masked.
SS2D_CASES = [(1, 3, 5, 6, 1, "continuous"), (3, 4, 3, 3, 16, "continuous"), (1, 2, 5, 6, 16, "raster")]


@pytest.mark.parametrize("batch,height,width,dim,n,kind", SS2D_CASES)
def test_fused_ss2d_core_matches_the_unfused_path(batch, height, width, dim, n, kind):
    inputs = ss2d_inputs(batch, height, width, dim, n)
    grad_out = torch.randn(batch, height, width, dim, dtype=torch.float64)
    want = run(lambda **kw: unfused(**kw, kind=kind, backend_name="reference", n=n), inputs, grad_out)
    f32 = {k: v.float() for k, v in inputs.items()}
    got = run(lambda **kw: fused(**kw, kind=kind, n=n), f32, grad_out)
    torch_path = run(lambda **kw: unfused(**kw, kind=kind, backend_name="torch", n=n),
                     {k: v.to(DEVICE) for k, v in f32.items()}, grad_out)
    assert got[0].shape == (batch, height, width, dim) and got[0].dtype == torch.float32
    assert_close(got, want, FP32_TOL, "vs float64")
    assert_close(got, torch_path, FP32_TOL, "vs torch")


def test_fused_ss2d_core_bf16_io():
    inputs = ss2d_inputs(1, 3, 4, 4, 16, seed=5)
    low = {k: v.bfloat16() if k in ("x", "delta", "proj") else v.float() for k, v in inputs.items()}
    grad_out = torch.randn(1, 3, 4, 4, dtype=torch.float64).bfloat16()
    want = run(lambda **kw: unfused(**kw, kind="continuous", backend_name="reference", n=16),
               {k: v.double() for k, v in low.items()}, grad_out.double())
    got = run(lambda **kw: fused(**kw, kind="continuous", n=16), low, grad_out)
    assert got[0].dtype == torch.bfloat16
    assert_close(got, want, BF16_TOL, "bf16")


def test_nothing_of_size_L_times_D_times_N_is_saved():
    inputs = {k: v.float().to(DEVICE).requires_grad_() for k, v in ss2d_inputs(1, 4, 4, 8, 16).items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused(**inputs, kind="continuous", n=16)
    full = 1 * 16 * 4 * 8 * 16  # batch * L * (4 * d_inner) * N
    assert saved and max(t.numel() for t in saved) < full / 2


@pytest.mark.parametrize("preset", ["tiny", pytest.param("S", marks=pytest.mark.slow)])
def test_fused_core_inside_the_model_matches_the_unfused_path(preset, monkeypatch):
    from lamamba.models import ModelConfig, build_model

    if DEVICE.type == "cpu":  # one program per SS2D: the interpreter's cost is per program step
        monkeypatch.setattr(triton_scan, "MAX_BLOCK_C", 1024)
        monkeypatch.setattr(triton_scan, "TILE", 1 << 14)
    fused_calls = []
    monkeypatch.setattr(triton_scan, "ss2d_scan_triton",
                        lambda *a, **kw: fused_calls.append(1) or ss2d_scan_triton(*a, **kw))
    cfg = ModelConfig(preset=preset, input_size=4, num_classes=10, scan_backend="torch")
    torch.manual_seed(0)
    unfused_model = build_model(cfg).to(DEVICE)
    with torch.no_grad():  # wake the zero-initialised AdaLN gates, or no SS2D would matter
        for p in unfused_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fused_model = build_model(cfg.replace(scan_backend="triton")).to(DEVICE)
    fused_model.load_state_dict(unfused_model.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 4, 4, generator=g).to(DEVICE)
    t, y = torch.tensor([500], device=DEVICE), torch.tensor([3], device=DEVICE)
    w = torch.randn(1, 8, 4, 4, generator=g).to(DEVICE)
    results = []
    for model in (unfused_model, fused_model):
        out = model(x, t, y)
        (out * w).sum().backward()
        results.append((out.detach(), {name: p.grad for name, p in model.named_parameters()}))
    (out_u, grads_u), (out_f, grads_f) = results
    assert len(fused_calls) == sum(1 for m in fused_model.modules() if type(m).__name__ == "SS2D")
    ss2d_grads = [v for name, v in grads_u.items() if "ss2d" in name]
    assert ss2d_grads and all(v is not None for v in ss2d_grads) and max(v.abs().max() for v in ss2d_grads) > 0
    assert relative_error(out_f, out_u) < FP32_TOL
    for name, grad in grads_u.items():
        assert relative_error(grads_f[name], grad) < FP32_TOL, name


def test_short_grids_get_finer_channel_blocks(monkeypatch):
    # S's stage 0 (d_inner 192, N = 1) at batch 8: 24 programs with the default tile, too few for a
    # GPU with 132 SMs; XL's (640, N = 16) already has 1280.
    monkeypatch.setattr(triton_scan, "MAX_BLOCK_C", 64)
    assert triton_scan._blocks(4, 192, 1, batch=8) == (4, 64, 1)
    assert triton_scan._blocks(4, 192, 1, batch=8, programs_wanted=4 * 132) == (4, 8, 1)
    assert triton_scan._blocks(4, 640, 16, batch=8, programs_wanted=4 * 132) == (4, 4, 16)
