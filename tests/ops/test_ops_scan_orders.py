"""The SS2D scan orders: continuity, reversal, the spec's 4 x 4 example, and merge inverting scan."""

import pytest
import torch

from lamamba.ops import cross_merge, cross_scan, scan_orders

SIZES = [(4, 4), (6, 8), (8, 6), (5, 3), (1, 7), (2, 2), (1, 1), (32, 32)]


@pytest.mark.parametrize("h,w", SIZES)
def test_continuous_orders_step_to_a_neighbour(h, w):
    orders, inverse = scan_orders(h, w)
    assert orders.shape == (4, h * w)
    for order in orders:
        assert sorted(order.tolist()) == list(range(h * w))  # a permutation
        rows, cols = order // w, order % w
        steps = (rows.diff().abs() + cols.diff().abs())
        assert (steps == 1).all()
    assert torch.equal(orders[1], orders[0].flip(0))
    assert torch.equal(orders[3], orders[2].flip(0))
    assert torch.equal(torch.gather(orders, 1, inverse), torch.arange(h * w).expand(4, -1))


def test_spec_example_4x4():
    _, inverse = scan_orders(4, 4)  # inverse[k, cell] = the step at which order k visits cell
    assert inverse[0].view(4, 4).tolist() == [[0, 1, 2, 3], [7, 6, 5, 4], [8, 9, 10, 11], [15, 14, 13, 12]]
    assert inverse[2].view(4, 4).tolist() == [[3, 4, 11, 12], [2, 5, 10, 13], [1, 6, 9, 14], [0, 7, 8, 15]]


def test_raster_orders_are_vmamba_cross_scan():
    orders, _ = scan_orders(3, 4, "raster")
    grid = torch.arange(12).view(3, 4)
    assert orders[0].tolist() == grid.flatten().tolist()
    assert orders[1].tolist() == grid.t().flatten().tolist()
    assert torch.equal(orders[2], orders[0].flip(0)) and torch.equal(orders[3], orders[1].flip(0))


@pytest.mark.parametrize("kind", ["continuous", "raster"])
def test_merge_inverts_scan(kind):
    x = torch.randn(2, 5, 6, 4)
    xs = cross_scan(x, kind)
    assert xs.shape == (2, 4, 5, 24)
    orders, _ = scan_orders(6, 4, kind)
    assert torch.equal(xs[1, 2], x[1].flatten(1)[:, orders[2]])
    assert torch.allclose(cross_merge(xs, 6, 4, kind), 4 * x.flatten(2))


def test_indices_are_cached_per_size_and_device():
    assert scan_orders(6, 8, "continuous", torch.device("cpu")) is scan_orders(6, 8, "continuous", torch.device("cpu"))
    assert scan_orders(6, 8)[0] is not scan_orders(8, 6)[0]
    with pytest.raises(ValueError, match="unknown scan kind"):
        scan_orders(4, 4, "zigzag")
