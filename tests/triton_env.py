"""Triton's CPU interpreter for the kernel tests, without leaking it into the rest of the session.

The ``triton.jit`` decorator reads ``TRITON_INTERPRET`` when a function is decorated: when the
kernels are imported, and for Triton's own library functions (``tl.sum``'s combine, ...) when
``triton`` itself is first imported. Whatever test module imports triton first, directly or
through lamamba, fixes the mode for the session, so the session's conftest imports this module
before any test is collected: it sets the variable, imports triton and the kernels, and puts the
environment back as it was: tests elsewhere (e.g. what ``explain_backend("triton",
"cpu", ...)`` says) see the environment the session was given. tests/ops gets it back through an
autouse fixture. On a GPU machine ``TRITON_INTERPRET=0`` runs the same tests compiled.
"""

import os
import sys

if "triton" in sys.modules:  # its library functions would be compiled-mode: every kernel test fails
    raise RuntimeError("triton was imported before tests/triton_env.py: import this module first")
_given = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = INTERPRET = "1" if _given is None else _given
try:
    import triton  # noqa: F401  (its library functions are decorated now)
    import lamamba.ops.triton_scan  # noqa: F401  (interpreted unless TRITON_INTERPRET=0)
except ImportError:  # triton not installed: the kernel tests skip
    pass
finally:
    if _given is None:
        del os.environ["TRITON_INTERPRET"]

INTERPRETED = INTERPRET not in ("", "0")
