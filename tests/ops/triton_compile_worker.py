"""Compile the scan kernels ahead of time for a GPU architecture, no GPU needed (run with
TRITON_INTERPRET=0): prints one JSON line per kernel with ptxas's resource usage from the cubin.

    python tests/ops/triton_compile_worker.py bf16 90 80   # bf16 I/O; sm_90 (H100 / H200), sm_80 (A100)
"""

import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lamamba.ops import triton_scan

IO_POINTERS = ("u_ptr", "dl_ptr", "B_ptr", "C_ptr", "y_ptr", "dy_ptr", "du_ptr", "ddl_ptr")


def signature(kernel, io: str, constexprs: dict) -> dict:
    sig = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "order_ptr":
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = f"*{io}" if name in IO_POINTERS else "*fp32"
        else:
            sig[name] = "i32"
    return sig


def main() -> None:
    io, archs = sys.argv[1], [int(a) for a in sys.argv[2:]]
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    # label -> (d_inner, N, batch, programs wanted): stage-0 shapes; "S-132" as on a GPU with 132 SMs
    shapes = {"S": (192, 1, 1, 0), "S-132": (192, 1, 8, 4 * 132), "XL": (640, 16, 1, 0)}
    for arch, (label, (channels, n, batch, wanted)) in ((a, shape) for a in archs for shape in shapes.items()):
        block_k, block_c, block_n = triton_scan._blocks(4, channels, n, batch, wanted)
        constexprs = dict(CHUNK=triton_scan.CHUNK, BLOCK_K=block_k, BLOCK_C=block_c, BLOCK_N=block_n, SOFTPLUS=True)
        for kernel in (triton_scan._scan_fwd_kernel, triton_scan._scan_bwd_kernel):
            compiled = triton.compile(ASTSource(kernel, signature(kernel, io, constexprs), constexprs),
                                      target=GPUTarget("cuda", arch, 32),
                                      options={"num_warps": triton_scan._warps(block_k, block_c, block_n)})
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                       check=True).stdout
            fields = dict(re.findall(r"(REG|LOCAL|STACK|SHARED):(\d+)", usage))
            print(json.dumps({"arch": arch, "kernel": kernel.fn.__name__, "shape": label,
                              **{k: int(v) for k, v in fields.items()}}))


if __name__ == "__main__":
    main()
