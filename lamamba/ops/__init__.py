"""Low-level operators: the selective scan (and which backend runs it), the SS2D scan orders.

The Triton kernels (:mod:`lamamba.ops.triton_scan`) are imported only when the ``triton`` backend
runs, so that this package imports without triton installed.
"""

from lamamba.ops.backend import (BACKENDS, ScanBackendError, backend_choices, explain_backend,
                                 resolve_backend)
from lamamba.ops.scan_orders import cross_merge, cross_scan, scan_orders
from lamamba.ops.selective_scan import selective_scan, selective_scan_reference

__all__ = ["BACKENDS", "ScanBackendError", "backend_choices", "cross_merge", "cross_scan", "explain_backend",
           "resolve_backend", "scan_orders", "selective_scan", "selective_scan_reference"]
