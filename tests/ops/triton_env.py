"""Triton's CPU interpreter for the kernel tests, without leaking it into the rest of the session.

The ``triton.jit`` decorator reads ``TRITON_INTERPRET`` when the kernels are imported, so this
module (imported by this directory's conftest at collection) sets it, imports the kernels, and
puts the environment back as it was: tests elsewhere (e.g. what ``explain_backend("triton",
"cpu", ...)`` says) see the environment the session was given. The tests here get it back through
an autouse fixture. On a GPU machine ``TRITON_INTERPRET=0`` runs the same tests compiled.
"""

import os

_given = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = INTERPRET = "1" if _given is None else _given
try:
    import lamamba.ops.triton_scan  # noqa: F401  (decorated now: interpreted unless TRITON_INTERPRET=0)
except ImportError:  # triton not installed: the kernel tests skip
    pass
finally:
    if _given is None:
        del os.environ["TRITON_INTERPRET"]

INTERPRETED = INTERPRET not in ("", "0")
