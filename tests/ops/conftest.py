"""Triton's interpreter for the kernel tests: it must be on before the kernels are imported (the
``triton.jit`` decorator reads it), so it is set when this directory is collected. On a GPU machine
``TRITON_INTERPRET=0`` runs the same tests compiled, on CUDA tensors."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
