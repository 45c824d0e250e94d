"""The scan backend dispatch: what `auto` picks and why, probes that see a kernel that does not load
or run, refusals that name the fix, and mamba_ssm's call contract."""

import logging
import sys
import textwrap

import pytest
import torch

from lamamba.ops import ScanBackendError, backend, backend_choices, explain_backend, resolve_backend
from lamamba.ops.selective_scan import selective_scan_reference

CUDA = torch.device("cuda", 0)


@pytest.fixture
def fresh(monkeypatch):
    """No cached probe results or recorded choices leak between tests (nor a fake mamba_ssm)."""
    monkeypatch.setattr(backend, "_CHOICES", {})
    probes = backend.probe_mamba_ssm, backend.probe_triton
    for probe in probes:
        probe.cache_clear()
    yield
    for name in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "selective_scan_cuda")]:
        del sys.modules[name]
    for probe in probes:
        probe.cache_clear()


def fake_mamba_ssm(root, kernel_module: str, scan_body: str):
    """A mamba_ssm package as newer releases write it: the interface wraps the kernel import."""
    pkg = root / "mamba_ssm"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "selective_scan_interface.py").write_text(
        "try:\n    import selective_scan_cuda\nexcept ImportError:\n    selective_scan_cuda = None\n\n"
        "def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):\n"
        + textwrap.indent(textwrap.dedent(scan_body).strip() + "\n", "    "))
    (root / "selective_scan_cuda.py").write_text(textwrap.dedent(kernel_module))


def test_auto_on_cpu_is_the_torch_scan(fresh):
    assert explain_backend("auto", "cpu", 16) == ("torch", "tensors on cpu: the torch scan")
    assert resolve_backend("auto", torch.device("cpu"), 16) == "torch"
    assert backend_choices() == [dict(requested="auto", device="cpu", d_state=16, backend="torch",
                                      reason="tensors on cpu: the torch scan")]
    assert explain_backend("reference", "cpu", 1)[0] == "reference"
    with pytest.raises(ValueError, match="unknown selective-scan backend 'cuda'"):
        explain_backend("cuda", "cpu", 1)


def test_explicit_kernels_off_the_gpu_refuse(fresh, monkeypatch):
    with pytest.raises(ScanBackendError, match="needs CUDA tensors"):
        explain_backend("mamba_ssm", "cpu", 1)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ScanBackendError, match="TRITON_INTERPRET=1"):
        explain_backend("triton", "cpu", 1)


def test_a_mamba_ssm_whose_kernel_does_not_load_is_seen(fresh, tmp_path, monkeypatch):
    fake_mamba_ssm(tmp_path, 'raise ImportError("selective_scan_cuda.so: undefined symbol: _ZN3c104cuda9SetDevice")',
                   "return selective_scan_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mamba_ssm.ops.selective_scan_interface  # noqa: F401  (imports fine: the trap)

    scan, why = backend.probe_mamba_ssm(torch.device("cpu"))
    assert scan is None
    assert "mamba_ssm imports but its CUDA kernel does not load" in why and "undefined symbol" in why


def test_a_mamba_ssm_kernel_that_fails_to_run_is_seen(fresh, tmp_path, monkeypatch):
    fake_mamba_ssm(tmp_path, "fwd = None",
                   'raise RuntimeError("CUDA error: no kernel image is available for execution on the device")')
    monkeypatch.syspath_prepend(str(tmp_path))
    scan, why = backend.probe_mamba_ssm(torch.device("cpu"))
    assert scan is None and "a call on cpu fails" in why and "no kernel image" in why


def test_a_working_kernel_is_called_under_its_contract(fresh, tmp_path, monkeypatch):
    fake_mamba_ssm(tmp_path, "fwd = None", """
        from lamamba.ops import selective_scan_reference
        seen = __import__("selective_scan_cuda")
        seen.dtypes = [t.dtype for t in (u, delta, A, B, C, D, delta_bias)]
        seen.last_strides = [t.stride(-1) for t in (u, delta, B, C)]
        return selective_scan_reference(u.double(), delta.double(), A.double(), B.double(), C.double(),
                                        D.double(), delta_bias.double(), delta_softplus).to(u.dtype)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    scan, why = backend.probe_mamba_ssm(torch.device("cpu"))
    assert scan is not None and why == "mamba_ssm's CUDA kernel loads and runs on cpu", why

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 4, 6, generator=g).bfloat16()
    args = dict(delta=torch.rand(2, 4, 6, generator=g), A=-torch.rand(4, 2, generator=g).bfloat16(),
                B=torch.randn(2, 1, 6, 2, generator=g).transpose(2, 3), C=torch.randn(2, 1, 2, 6, generator=g),
                D=torch.randn(4, generator=g).bfloat16(), delta_bias=torch.randn(4, generator=g).bfloat16())
    y = backend.mamba_ssm_scan(u, **args, delta_softplus=True)
    kernel = sys.modules["selective_scan_cuda"]
    bf16, f32 = torch.bfloat16, torch.float32
    assert kernel.dtypes == [bf16, bf16, f32, bf16, bf16, f32, f32]  # A, D, delta_bias fp32; B, C as u
    assert kernel.last_strides == [1, 1, 1, 1]
    assert y.dtype == bf16 and y.shape == u.shape


def test_auto_on_a_gpu_prefers_a_kernel_that_runs(fresh, monkeypatch):
    monkeypatch.setattr(backend, "probe_mamba_ssm", lambda d: (lambda *a: None, "mamba_ssm's CUDA kernel runs"))
    assert explain_backend("auto", CUDA, 16) == ("mamba_ssm", "mamba_ssm's CUDA kernel runs")
    monkeypatch.setattr(backend, "probe_mamba_ssm", lambda d: (None, "mamba_ssm does not import (x)"))
    monkeypatch.setattr(backend, "probe_triton", lambda d: (True, "the Triton scan compiles and runs on cuda:0"))
    name, why = explain_backend("auto", CUDA, 16)
    assert name == "triton" and "mamba_ssm does not import" in why and "Triton scan compiles" in why


def test_auto_on_a_gpu_without_kernels_falls_back_loudly_or_refuses(fresh, monkeypatch, caplog):
    monkeypatch.setattr(backend, "probe_mamba_ssm", lambda d: (None, "mamba_ssm does not import (x)"))
    monkeypatch.setattr(backend, "probe_triton", lambda d: (False, "triton does not import (y)"))
    with caplog.at_level(logging.INFO, logger="lamamba.ops"):
        for _ in range(3):
            assert resolve_backend("auto", CUDA, 1) == "torch"
    warnings = [r for r in caplog.records if r.name == "lamamba.ops"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING  # once, and loud
    assert "torch backend" in warnings[0].getMessage() and "d_state = 1 fits" in warnings[0].getMessage()
    assert [c["backend"] for c in backend_choices()] == ["torch"]

    with pytest.raises(ScanBackendError) as refused:
        resolve_backend("auto", CUDA, 16)
    message = str(refused.value)
    for part in ("d_state=16", "mamba_ssm does not import (x)", "triton does not import (y)",
                 "(batch, L, 4*d_inner, 16)", "triton==3.7.1", "model.scan_backend=torch"):
        assert part in message
    assert explain_backend("torch", CUDA, 16) == ("torch", "requested")  # asked for: no refusal


def test_the_meta_device_resolves_nothing(fresh):
    # FLOP counting runs SS2D on meta tensors: shapes only, no backend decided or recorded.
    from lamamba.models.ss2d import SS2D

    for name in ("auto", "triton", "mamba_ssm"):  # whatever was asked, even a kernel absent here
        out = SS2D(8, d_state=2, backend=name).to("meta")(torch.empty(1, 4, 4, 8, device="meta"))
        assert out.shape == (1, 4, 4, 8)
    assert backend_choices() == []


def test_the_probe_compares_with_the_reference(fresh):
    # The tiny input the probes run: a plain scan of it must pass, a wrong one must not.
    def right(**kw):
        return selective_scan_reference(**kw, delta_softplus=True)

    assert backend._run_matches_reference(right, torch.device("cpu")) is None
    assert "wrong results" in backend._run_matches_reference(lambda **kw: right(**kw) * 1.1, torch.device("cpu"))
