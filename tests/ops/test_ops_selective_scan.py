"""The torch selective scan against the float64 sequential reference: outputs and gradients."""

import pytest
import torch

from lamamba.ops import selective_scan, selective_scan_reference
from scan_inputs import scan_inputs


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    diff = (got.double() - want).abs().max().item()
    return diff / scale if scale > 0 else diff


# Lengths: trivial, one chunk, primes (no divisor near sqrt(L): padded chunks, also with batch 2 and
# N = 16), a length cut into chunks of a divisor, and the longest the issue asks.
CASES = [
    (2, 8, 4, 1, 1), (2, 8, 4, 16, 1), (2, 8, 2, 16, 2), (1, 8, 4, 16, 37), (2, 8, 4, 1, 127), (2, 8, 2, 16, 211),
    (1, 8, 4, 16, 257), (1, 4, 4, 16, 1000), (1, 8, 4, 1, 4096), (1, 4, 4, 16, 4096),
]


@pytest.mark.parametrize("batch,dim,groups,n,length", CASES)
def test_torch_scan_matches_float64_reference(batch, dim, groups, n, length):
    inputs = scan_inputs(batch, dim, groups, n, length)
    ref = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    want = selective_scan_reference(**ref, delta_softplus=True)
    grad_out = torch.randn_like(want)
    want.backward(grad_out)

    got_in = {k: v.float().requires_grad_() for k, v in inputs.items()}
    got = selective_scan(**got_in, delta_softplus=True, backend="torch")
    assert got.dtype == torch.float32 and got.shape == want.shape
    got.backward(grad_out.float())

    assert relative_error(got, want) < 1e-5
    for name in inputs:
        assert relative_error(got_in[name].grad, ref[name].grad) < 1e-5, name


def test_backward_twice_gives_the_same_gradients():
    # The backward reuses buffers in place; it must never overwrite what it saved.
    inputs = {k: v.float().requires_grad_() for k, v in scan_inputs(2, 8, 4, 1, 100, seed=4).items()}
    y = selective_scan(**inputs, delta_softplus=True, backend="torch")
    grad_out = torch.randn_like(y)
    first = torch.autograd.grad(y, list(inputs.values()), grad_out, retain_graph=True)
    second = torch.autograd.grad(y, list(inputs.values()), grad_out)
    for name, g1, g2 in zip(inputs, first, second):
        assert torch.equal(g1, g2), name


def test_without_optional_inputs_and_softplus():
    inputs = scan_inputs(1, 4, 1, 3, 50, seed=1)
    inputs["delta"] = inputs["delta"].abs() * 0.1
    want = selective_scan_reference(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    got = selective_scan(*(inputs[k].float() for k in ("u", "delta", "A", "B", "C")), backend="torch")
    assert relative_error(got, want) < 1e-5


def test_low_precision_inputs_keep_a_float32_state():
    inputs = scan_inputs(1, 8, 4, 16, 300, seed=2)
    want = selective_scan_reference(**inputs, delta_softplus=True)
    got = selective_scan(**{k: v.bfloat16() for k, v in inputs.items()}, delta_softplus=True, backend="torch")
    assert got.dtype == torch.bfloat16
    # Only the bf16 rounding of the inputs and the output remains, not an error growing with L.
    assert relative_error(got.float(), want) < 5e-2


def test_long_decay_does_not_overflow():
    inputs = scan_inputs(1, 4, 1, 16, 600, seed=3)
    inputs["delta"] = inputs["delta"] + 6.0  # exp(delta * A) far below float32's smallest normal
    got = selective_scan(**{k: v.float() for k, v in inputs.items()}, delta_softplus=True, backend="torch")
    want = selective_scan_reference(**inputs, delta_softplus=True)
    assert torch.isfinite(got).all() and relative_error(got, want) < 1e-5


def test_bad_shapes_are_named():
    inputs = {k: v.float() for k, v in scan_inputs(1, 8, 4, 2, 10).items()}
    inputs["B"] = inputs["B"][:, :3]
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**inputs)
