"""The torchrun command line of one node: the one place that knows torchrun's flags.

Both the entrypoint (standalone and SLURM rendezvous) and the Ray placement
(:mod:`launcher.ray_torchrun`) build a node's command here, so neither imports the other.
"""

from __future__ import annotations


def torchrun_prefix(python: str, nnodes: int, nproc_per_node: int, node_rank: int = 0,
                    master_addr: str = "", master_port: int = 0, log_dir: str = "", rdzv_id: str = "lamamba"
                    ) -> list[str]:
    """``python -m torch.distributed.run ...`` for one node.

    A single node uses a standalone store. Several nodes meet in a c10d rendezvous whose store
    node 0 hosts at ``master_addr:master_port`` (``is_host`` said, not guessed from hostnames).
    torchrun never restarts ranks itself: after a failure whoever launched it starts every node
    again (the entrypoint on one node, the SLURM batch script or Ray for several), with fresh
    processes, and the trainer resumes from its last commit.
    """
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and not master_addr:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={master_addr}:{master_port}",
                f"--rdzv-id={rdzv_id}", f"--rdzv-conf=is_host={'true' if node_rank == 0 else 'false'}"]
    if log_dir:  # per-rank stdout/stderr files, also teed to this process's output
        cmd += [f"--log-dir={log_dir}", "--tee=3"]
    return cmd
