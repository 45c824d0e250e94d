"""engine.collective_timeout_s reaches the process group: a rank left waiting in a collective longer
than that raises (NCCL's default would be 10 minutes; ours is 30, configurable), instead of hanging
or being killed by a default that a rank-0 checkpoint upload at XL can exceed."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = """
import os, sys, time
from lamamba.training.distributed import init_distributed, barrier
world = init_distributed("gloo", "cpu", timeout_s=float(sys.argv[1]))
flag = sys.argv[2]
if world.rank == 0:  # never joins the barrier: waits (bounded) until rank 1 has given up
    deadline = time.monotonic() + 120
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.1)
    os._exit(0)
start = time.monotonic()
try:
    barrier()
    print("no timeout")
except Exception as err:
    print(f"raised after {time.monotonic() - start:.1f} s: {type(err).__name__}: {err}")
finally:
    open(flag, "w").close()
    sys.stdout.flush()
    os._exit(0)
"""


@pytest.mark.slow
def test_a_rank_waiting_past_the_timeout_raises(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flag = tmp_path / "gave_up"
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, "4", str(flag)], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    line = next((ln for ln in outputs[1].splitlines() if ln.startswith(("raised", "no timeout"))), outputs[1][-2000:])
    assert line.startswith("raised after"), line
    waited = float(line.split()[2])
    assert 3.0 <= waited < 60.0, line  # the 4 s timeout, not the 30 min default
