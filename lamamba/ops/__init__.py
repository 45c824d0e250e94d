"""Low-level operators: the selective scan and the SS2D scan orders."""

from lamamba.ops.scan_orders import cross_merge, cross_scan, scan_orders
from lamamba.ops.selective_scan import BACKENDS, resolve_backend, selective_scan, selective_scan_reference

__all__ = ["BACKENDS", "cross_merge", "cross_scan", "resolve_backend", "scan_orders", "selective_scan",
           "selective_scan_reference"]
