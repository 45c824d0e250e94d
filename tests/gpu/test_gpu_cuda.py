"""Tests marked ``cuda``: run by benchmarks/gpu_acceptance.sh on a GPU (and in its ``--cpu --quick``
form on the CPU, LAMAMBA_TEST_DEVICE=cpu, so that they cannot rot); skipped elsewhere.

GPU results are compared with tolerances, not bit for bit: CUDA backward passes use atomics
(index_select/gather backward, SDPA, mamba's grouped dB/dC), so sums are not ordered.
"""

import os

import pytest
import torch

from lamamba.ops import explain_backend, selective_scan, selective_scan_reference

DEVICE = torch.device(os.environ.get("LAMAMBA_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")]


def scan_inputs(batch=2, dim=16, length=64, n=4, groups=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5
    A = -torch.rand(dim, n, generator=g) - 0.5
    B = torch.randn(batch, groups, n, length, generator=g)
    C = torch.randn(batch, groups, n, length, generator=g)
    D = torch.randn(dim, generator=g)
    bias = torch.randn(dim, generator=g) * 0.1
    return u, delta, A, B, C, D, bias


@pytest.mark.parametrize("n", [1, 16])
def test_torch_scan_on_the_device_matches_the_float64_reference(n):
    args = scan_inputs(n=n)
    ref = selective_scan_reference(*(a.double() for a in args), delta_softplus=True)
    got = selective_scan(*(a.to(DEVICE) for a in args), delta_softplus=True, backend="torch")
    torch.testing.assert_close(got.double().cpu(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["mamba_ssm", "triton"])
def test_kernel_backends_match_the_torch_scan(backend):
    try:
        explain_backend(backend, DEVICE, 16)
    except Exception as err:  # noqa: BLE001 - not installed / not runnable here: nothing to compare
        pytest.skip(f"{backend}: {err}")
    args = [a.to(DEVICE).requires_grad_(True) for a in scan_inputs(n=16)]
    ref_args = [a.detach().clone().requires_grad_(True) for a in args]
    got = selective_scan(*args, delta_softplus=True, backend=backend)
    ref = selective_scan(*ref_args, delta_softplus=True, backend="torch")
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)
    got.square().sum().backward()
    ref.square().sum().backward()
    for a, b in zip(args, ref_args):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-2, atol=1e-2)


def test_cfg_sampling_is_deterministic_within_tolerance():
    from lamamba.diffusion import create_diffusion, guided_forward
    from lamamba.models import ModelConfig, build_model
    from lamamba.rng import PerSampleGenerators

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", input_size=8, in_channels=4, num_classes=10)).to(DEVICE).eval()
    diffusion = create_diffusion(timestep_respacing="ddim5")
    y = torch.arange(4, device=DEVICE)

    def sample():
        with torch.no_grad():
            return diffusion.ddim_sample_loop(
                lambda x, t, y: guided_forward(model, x, t, y, scale=4.0, null_label=10, eps_channels=4),
                (4, 4, 8, 8), model_kwargs={"y": y}, generators=PerSampleGenerators(0, "sample", [(i,) for i in range(4)]),
                device=DEVICE)

    first, second = sample(), sample()
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)
