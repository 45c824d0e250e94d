"""``python -m cluster.local``: bring up the local test cluster and keep it until Ctrl-C.

Example (as root):
  python -m cluster.local --hosts 2            # SLURM on node0, node1 and a Ray head + worker
  python -m cluster.local --hosts 3 --no-ray

It prints how to reach it: a shell on a host, SLURM_CONF for sbatch/squeue there, the Ray job
server address for `lamamba submit --backend ray --address ...`. Ctrl-C (or SIGTERM) cancels
the jobs, stops every daemon by PID and deletes the namespaces and the state dir.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from cluster.local.hosts import Network, unavailable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=2, help="namespace hosts (default 2)")
    p.add_argument("--cpus-per-node", type=int, default=2, help="CPUs each SLURM node / Ray node offers")
    p.add_argument("--no-slurm", action="store_true", help="no munge/slurmctld/slurmd")
    p.add_argument("--no-ray", action="store_true", help="no Ray head and workers")
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        print(f"cluster.local: {why}", file=sys.stderr)
        return 2
    from cluster.local.ray import RayCluster
    from cluster.local.slurm import SlurmCluster, unavailable as slurm_unavailable

    if not args.no_slurm and slurm_unavailable():
        print(f"cluster.local: {slurm_unavailable()}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="lmc", dir="/tmp"))  # short: Ray's socket paths are limited
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    slurm = ray = None
    try:
        with Network(args.hosts, root) as net:
            try:
                if not args.no_slurm:
                    slurm = SlurmCluster(net, root / "slurm", cpus_per_node=args.cpus_per_node)
                if not args.no_ray:
                    ray = RayCluster(net, root / "ray", cpus_per_node=args.cpus_per_node)
                print(f"hosts: {', '.join(f'{h.hostname}={h.address}' for h in net.hosts)}  (state in {root})")
                print(f"a shell on node0:  {shlex.join(net.hosts[0].command(['bash']))}")
                if slurm:
                    print(f"SLURM (run its commands on a host):  export SLURM_CONF={slurm.conf}")
                if ray:
                    print(f"Ray job server (from a host):  lamamba submit ... --backend ray --address {ray.address}")
                print("Ctrl-C to stop", flush=True)
                stop.wait()
            finally:
                for part in (ray, slurm):
                    if part is not None:
                        part.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
