"""Which selective-scan backend a job uses, and why: the one place that decides it.

``auto`` means, on a CUDA device: ``mamba_ssm`` where its CUDA kernel really loads and runs (the
package importing is not enough: newer releases wrap ``import selective_scan_cuda`` in a
try/except, so the import succeeds and every forward fails), else ``triton`` where its kernels
compile and run on the device, else the ``torch`` scan, but only with d_state = 1: with d_state > 1
the torch scan saves float32 (batch, L, 4 * d_inner, d_state) tensors per SS2D (about 5.4 GB for
XL at 256 px, micro-batch 32, stage 0), which does not fit, so ``auto`` refuses and names the fix.
On any other device ``auto`` is the torch scan. An explicit backend that cannot run here raises.

Every ``auto`` decision is logged once per (device, d_state) (a warning when it falls back to the
torch scan on a GPU) and kept in :func:`backend_choices` for the run's metadata.
:func:`explain_backend` gives the same decision without running anything else (``lamamba doctor``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable

import torch

log = logging.getLogger("lamamba.ops")

BACKENDS = ("auto", "torch", "triton", "mamba_ssm", "reference")

TRITON_FIX = "pip install 'lamamba[triton]' (triton==3.7.1, with torch's CUDA wheel)"
MAMBA_FIX = "install mamba_ssm against this torch build (the recipe in docs/cluster.md)"


class ScanBackendError(RuntimeError):
    """The requested (or the only remaining) scan backend cannot run here; the message names the fix."""


_CHOICES: dict[tuple[str, str, int], dict] = {}


def backend_choices() -> list[dict]:
    """Every ``auto`` decision this process made: requested, device, d_state, backend, reason."""
    return [dict(choice) for choice in _CHOICES.values()]


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _tiny_inputs(device: torch.device) -> dict[str, torch.Tensor]:
    """A (1, 2, 5) scan with N = 2, fixed values: enough to run every kernel path once."""
    g = torch.Generator().manual_seed(0)
    inputs = dict(u=torch.randn(1, 2, 5, generator=g), delta=torch.randn(1, 2, 5, generator=g) * 0.3,
                  A=-torch.rand(2, 2, generator=g) - 0.5, B=torch.randn(1, 1, 2, 5, generator=g),
                  C=torch.randn(1, 1, 2, 5, generator=g), D=torch.randn(2, generator=g),
                  delta_bias=torch.randn(2, generator=g) * 0.1)
    return {k: v.to(device) for k, v in inputs.items()}


def _run_matches_reference(scan: Callable, device: torch.device) -> str | None:
    """Run ``scan`` on a tiny input on ``device``; None when it matches the reference, else why not."""
    from lamamba.ops.scan_reference import selective_scan_reference

    inputs = _tiny_inputs(device)
    with torch.autocast(device_type=device.type, enabled=False):  # the first forward may run under autocast
        got = scan(**inputs)
    want = selective_scan_reference(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True)
    err = (got.double() - want).abs().max().item()
    return None if err < 1e-3 else f"wrong results on {device} (max error {err:.3g} on a tiny scan)"


@functools.lru_cache(maxsize=None)
def probe_mamba_ssm(device: torch.device) -> tuple[Callable | None, str]:
    """(mamba_ssm's selective_scan_fn, why it works) or (None, why not) for tensors on ``device``.

    Three checks, each recorded: the Python interface imports, its compiled module
    ``selective_scan_cuda`` imports (an ABI mismatch shows here as an undefined symbol), and a tiny
    call on ``device`` gives the reference's numbers (a build for another GPU fails here).
    """
    try:
        interface = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except ImportError as exc:
        return None, f"mamba_ssm does not import ({_failure(exc)})"
    try:
        importlib.import_module("selective_scan_cuda")
    except (ImportError, OSError) as exc:
        return None, f"mamba_ssm imports but its CUDA kernel does not load ({_failure(exc)})"
    scan = interface.selective_scan_fn

    def call(u, delta, A, B, C, D, delta_bias):
        return _mamba_ssm_call(scan, u, delta, A, B, C, D, delta_bias, True)

    try:
        wrong = _run_matches_reference(call, device)
    except (RuntimeError, AttributeError, TypeError) as exc:  # CUDA errors are RuntimeErrors
        return None, f"mamba_ssm's kernel loads but a call on {device} fails ({_failure(exc)})"
    if wrong:
        return None, f"mamba_ssm's kernel gives {wrong}"
    return scan, f"mamba_ssm's CUDA kernel loads and runs on {device}"


def triton_interpreted() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``, tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def probe_triton(device: torch.device) -> tuple[bool, str]:
    """(True, why) when the Triton scan compiles and gives the reference's numbers on ``device``."""
    try:
        from lamamba.ops import triton_scan
    except ImportError as exc:
        return False, f"triton does not import ({_failure(exc)})"
    errors: tuple[type[BaseException], ...] = (RuntimeError,)
    compile_error = getattr(importlib.import_module("triton.compiler.errors"), "CompilationError", None)
    if compile_error is not None:
        errors += (compile_error,)

    def call(u, delta, A, B, C, D, delta_bias):
        return triton_scan.selective_scan_triton(u, delta, A, B, C, D, delta_bias, True)

    try:
        wrong = _run_matches_reference(call, device)
    except errors as exc:
        return False, f"the Triton scan does not run on {device} ({_failure(exc)})"
    if wrong:
        return False, f"the Triton scan gives {wrong}"
    return True, f"the Triton scan compiles and runs on {device}"


def _torch_memory_note(d_state: int) -> str:
    return (f"the torch scan saves float32 (batch, L, 4*d_inner, {d_state}) tensors per SS2D (about 5.4 GB "
            "for XL at 256 px, micro-batch 32, stage 0): it does not fit")


def _decide(requested: str, device: torch.device, d_state: int) -> tuple[str, str]:
    if requested not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {requested!r}; choose one of {BACKENDS}")
    cuda = device.type == "cuda"
    if requested == "torch":
        return "torch", "requested"
    if requested == "reference":
        return "reference", "requested (a per-step loop, for tests)"
    if requested == "mamba_ssm":
        if not cuda:
            raise ScanBackendError(f"scan_backend=mamba_ssm: its kernel needs CUDA tensors, these are on {device}; "
                                   "use scan_backend=auto (the torch scan off the GPU)")
        scan, why = probe_mamba_ssm(device)
        if scan is None:
            raise ScanBackendError(f"scan_backend=mamba_ssm: {why}; fix: {MAMBA_FIX}, or use scan_backend=auto")
        return "mamba_ssm", why
    if requested == "triton":
        if not cuda and not triton_interpreted():
            raise ScanBackendError(f"scan_backend=triton: Triton kernels run on CUDA GPUs, these tensors are on "
                                   f"{device} (TRITON_INTERPRET=1 runs them on the CPU, for tests only); use "
                                   "scan_backend=auto or torch")
        if cuda:
            ok, why = probe_triton(device)
            if not ok:
                raise ScanBackendError(f"scan_backend=triton: {why}; fix: {TRITON_FIX}, or use scan_backend=auto")
            return "triton", why
        try:
            importlib.import_module("lamamba.ops.triton_scan")
        except ImportError as exc:
            raise ScanBackendError(f"scan_backend=triton: triton does not import ({_failure(exc)}); "
                                   f"fix: {TRITON_FIX}") from exc
        return "triton", "requested, in Triton's CPU interpreter (TRITON_INTERPRET=1)"
    if not cuda:
        return "torch", f"tensors on {device.type}: the torch scan"
    scan, mamba_why = probe_mamba_ssm(device)
    if scan is not None:
        return "mamba_ssm", mamba_why
    ok, triton_why = probe_triton(device)
    if ok:
        return "triton", f"{mamba_why}; {triton_why}"
    if d_state == 1:
        return "torch", f"{mamba_why}; {triton_why}; falling back to the torch scan (d_state = 1 fits)"
    raise ScanBackendError(f"scan_backend=auto on {device} with d_state={d_state}: no kernel backend works "
                           f"({mamba_why}; {triton_why}), and {_torch_memory_note(d_state)}. Fix: {TRITON_FIX}, "
                           f"or {MAMBA_FIX}, or set model.scan_backend=torch to accept that memory")


def explain_backend(requested: str, device: torch.device | str, d_state: int) -> tuple[str, str]:
    """(backend, reason) that a job asking for ``requested`` gets for tensors on ``device`` with
    ``d_state`` states; raises the error the job would raise (``ScanBackendError``, or ValueError
    for an unknown name). Cached probes: the first call on a GPU runs a tiny scan per kernel."""
    return _decide(requested, torch.device(device), d_state)


def resolve_backend(requested: str, device: torch.device | str, d_state: int) -> str:
    """The concrete backend for a scan on ``device``. An explicit one is checked (it raises where it
    cannot run); ``auto``'s first decision for each (device, d_state) is logged (a warning for a
    fallback to the torch scan on a GPU) and recorded in :func:`backend_choices`."""
    device = torch.device(device)
    if requested != "auto":
        return _decide(requested, device, d_state)[0]
    key = (requested, str(device), d_state)
    choice = _CHOICES.get(key)
    if choice is None:
        backend, reason = _decide(requested, device, d_state)
        choice = _CHOICES[key] = dict(requested=requested, device=str(device), d_state=d_state,
                                      backend=backend, reason=reason)
        fallback = device.type == "cuda" and backend == "torch"
        log.log(logging.WARNING if fallback else logging.INFO, "selective scan on %s (d_state=%d): %s backend "
                "(scan_backend=%s: %s)", device, d_state, backend, requested, reason)
    return choice["backend"]


def _mamba_ssm_call(scan: Callable, u, delta, A, B, C, D, delta_bias, delta_softplus: bool) -> torch.Tensor:
    """``mamba_ssm.selective_scan_fn`` under its call contract: A, D and delta_bias float32; delta, B
    and C in u's dtype; contiguous in the last dim (its kernel reads that stride as 1)."""
    def last_contiguous(x):
        return x if x.stride(-1) == 1 else x.contiguous()

    dtype = u.dtype
    return scan(last_contiguous(u), last_contiguous(delta.to(dtype)), A.float(), last_contiguous(B.to(dtype)),
                last_contiguous(C.to(dtype)), None if D is None else D.float(), None,
                None if delta_bias is None else delta_bias.float(), delta_softplus)


def mamba_ssm_scan(u, delta, A, B, C, D, delta_bias, delta_softplus: bool) -> torch.Tensor:
    """The scan by mamba_ssm's kernel (resolved on u's device first), under its call contract."""
    scan, why = probe_mamba_ssm(u.device)
    if scan is None:
        raise ScanBackendError(f"scan_backend=mamba_ssm: {why}; fix: {MAMBA_FIX}")
    return _mamba_ssm_call(scan, u, delta, A, B, C, D, delta_bias, delta_softplus)
