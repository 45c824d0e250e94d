"""The EMA's fp32 master-weight layout on 2 gloo ranks, for ZeRO-1 (bf16 and fp32), ZeRO-2 and
ZeRO-3: gathering the shares gives DeepSpeed's own full fp32 values bit for bit, the EMA equals
the per-parameter average it replaced bit for bit, and a reload round-trips (see
master_weights_worker.py)."""

import os
import subprocess

from training_helpers import REPO, TORCHRUN


def test_master_layout_and_ema_match_deepspeed_per_parameter_values():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "training" / "master_weights_worker.py")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[:3000] + out[-3000:]
    assert proc.stdout.count("ok ZeRO-") == 2 * 4, out[-4000:]  # 4 settings on each of the 2 ranks
