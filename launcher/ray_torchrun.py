"""Training ranks on a Ray cluster: one torchrun per node, placed with a placement group.

``python -m launcher.ray_torchrun --nnodes N --nproc-per-node G -- -m launcher.cli train ...``
runs inside a Ray job (the driver started by :mod:`launcher.entrypoint`). It reserves N bundles
of G GPUs, one per node (STRICT_SPREAD), asks the first bundle's node for its address and a free
port, and runs on each node a Ray task that executes torchrun with that rendezvous (each task logs
its host and Ray node id). If any node's torchrun fails, or is lost with its node, that is said in
one line, the others are cancelled and the exit code is non-zero; the entrypoint's restart loop
then starts a fresh attempt, whose placement group waits until N nodes are alive again, and which
resumes from the newest committed checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from launcher.torchrun import torchrun_prefix


def ray_torchrun_command(python: str, nnodes: int, nproc_per_node: int, gpus_per_node: int,
                         module_args: list[str]) -> list[str]:
    """The driver command that places ``nnodes`` torchruns running ``python <module_args>``."""
    return [python, "-m", "launcher.ray_torchrun", f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}",
            f"--gpus-per-node={gpus_per_node}", f"--python={python}", "--", *module_args]


def node_bundle(gpus_per_node: int) -> dict[str, float]:
    """The resources one node's torchrun reserves: what the submission asked for, never what the
    cluster happens to have now (an autoscaler may still be adding the GPU nodes)."""
    return {"CPU": 1, **({"GPU": gpus_per_node} if gpus_per_node else {})}


def _die_with_parent() -> None:
    """Child processes get SIGTERM when the Ray worker that started them dies (Linux)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _node_exit_code(ray, ref, node_rank: int, others: list[int]) -> int:
    """The exit code of node ``node_rank``'s torchrun; a torchrun lost with its node or its Ray
    worker (a machine failure, a preemption) is a failure of the attempt, said in one line."""
    try:
        rc = ray.get(ref)
        why = f"exited with code {rc}"
    except ray.exceptions.RayError as err:
        rc = 1
        detail = str(err).strip().splitlines()
        why = f"was lost ({type(err).__name__}: {detail[0] if detail else ''})"
    if rc != 0:
        stopping = f"stopping node rank(s) {', '.join(map(str, others))}; " if others else ""
        print(f"[lamamba] node rank {node_rank}: torchrun {why}; {stopping}this attempt failed", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.ray_torchrun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nnodes", type=int, required=True)
    p.add_argument("--nproc-per-node", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs each node's bundle reserves (0: CPU ranks)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("module_args", nargs=argparse.REMAINDER, help="after '--': the arguments of each rank")
    args = p.parse_args(argv)
    module_args = args.module_args[1:] if args.module_args[:1] == ["--"] else args.module_args

    import socket
    import subprocess

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(address="auto")
    bundle = node_bundle(args.gpus_per_node)
    pg = placement_group([bundle] * args.nnodes, strategy="STRICT_SPREAD" if args.nnodes > 1 else "PACK")
    print(f"[lamamba] waiting for {args.nnodes} node(s) with {bundle} each (an autoscaler may be adding them)",
          flush=True)
    ray.get(pg.ready())

    def on_bundle(i: int):
        return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)

    @ray.remote(num_cpus=1)
    def rendezvous_address() -> tuple[str, int]:
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    @ray.remote(num_cpus=1, num_gpus=args.gpus_per_node, max_retries=0)
    def node_torchrun(node_rank: int, master_addr: str, master_port: int) -> int:
        cmd = torchrun_prefix(args.python, args.nnodes, args.nproc_per_node, node_rank, master_addr, master_port)
        node = ray.get_runtime_context().get_node_id()
        print(f"[lamamba] node rank {node_rank}: torchrun on {socket.gethostname()} "
              f"({ray.util.get_node_ip_address()}, Ray node {node})", flush=True)
        return subprocess.call(cmd + module_args, preexec_fn=_die_with_parent)

    master_addr, master_port = ray.get(rendezvous_address.options(scheduling_strategy=on_bundle(0)).remote())
    print(f"[lamamba] {args.nnodes} node(s) x {args.nproc_per_node} rank(s), rendezvous {master_addr}:{master_port}",
          flush=True)
    pending = [node_torchrun.options(scheduling_strategy=on_bundle(i)).remote(i, master_addr, master_port)
               for i in range(args.nnodes)]
    node_ranks = {ref: i for i, ref in enumerate(pending)}
    rc = 0
    try:
        while pending and rc == 0:
            done, pending = ray.wait(pending, num_returns=1)
            rc = _node_exit_code(ray, done[0], node_ranks[done[0]], sorted(node_ranks[r] for r in pending))
    finally:
        for ref in pending:  # a node failed: stop the others so the attempt ends as a whole
            ray.cancel(ref, force=True)
        remove_placement_group(pg)
    return rc


if __name__ == "__main__":
    sys.exit(main())
